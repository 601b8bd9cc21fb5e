"""How the app answers while a job trains: the default run is launched through the app on this machine, and
while it trains the pre-flight check and each tab's own server event (what a tab switch waits for) are
timed through the HTTP API, as a browser calls them. Also the time from Launch to the first training step.

    python benchmarks/ui_latency.py [--samples 20] [--set train.bf16=off ...] [--cache-dir DIR] [--json out.json]

Prints min / p50 / p95 / max per call, in seconds. The job is cancelled at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client  # noqa: E402

from jobs.launcher import free_port  # noqa: E402
from workbench.config.schema import DistillConfig  # noqa: E402
from workbench.ui.app import DEFAULT_CONFIG  # noqa: E402
from workbench.ui.form import SetupForm  # noqa: E402

# A tab's server event, as its select handler is exposed: (api name, arguments).
TAB_EVENTS = {"Runs": ("/runs", (None,)), "Inspect": ("/inspect_runs", (None,)),
              "Evaluate": ("/evaluate_runs", (None,)), "Compare": ("/compare_runs", ([],))}


def start_app(runs: Path, cache_dir: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "app.py", "--port", str(port), "--runs-dir", str(runs)]
    proc = subprocess.Popen(args + (["--cache-dir", cache_dir] if cache_dir else []), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the app did not start")


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"min": ordered[0], "p50": statistics.median(ordered), "p95": p95, "max": ordered[-1], "n": len(ordered)}


def wait_for_step(status: Path, timeout: float = 3600) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if json.loads(status.read_text()).get("step", 0) >= 1:
                return
        except (OSError, ValueError):  # not written yet, or being replaced
            pass
        time.sleep(0.5)
    raise SystemExit("the job never reached step 1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a form field of the launched run (e.g. train.bf16=off on a CPU without bf16)")
    args = parser.parse_args()
    changes = dict(item.split("=", 1) for item in args.set)
    runs = Path(tempfile.mkdtemp(prefix="ui-latency-")) / "runs"
    proc, url = start_app(runs, args.cache_dir)
    try:
        client = Client(url, verbose=False)
        form = SetupForm.from_config(DistillConfig.load(DEFAULT_CONFIG)).replace({"output.run_name": "latency",
                                                                                  **changes})
        launched = time.perf_counter()
        verdict = client.predict(*form.as_list(), api_name="/launch")
        if "Launched" not in verdict:
            raise SystemExit(verdict)
        wait_for_step(runs / "latency" / "status.json")
        results = {"launch_to_first_step_s": time.perf_counter() - launched}
        calls = {"pre-flight": lambda: client.predict(*form.as_list(), api_name="/check")}
        calls.update({f"tab {tab}": (lambda name=name, a=a: client.predict(*a, api_name=name))
                      for tab, (name, a) in TAB_EVENTS.items()})
        for label, call in calls.items():
            call()  # the first call warms caches: what a user meets after the first click
            results[label] = summary([timed(call) for _ in range(args.samples)])
        client.predict("latency", api_name="/cancel")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"launch -> first training step: {results['launch_to_first_step_s']:.1f} s")
    for label, numbers in results.items():
        if isinstance(numbers, dict):
            print(f"{label:14s} min {numbers['min']:.3f}  p50 {numbers['p50']:.3f}  p95 {numbers['p95']:.3f}  "
                  f"max {numbers['max']:.3f} s  (n={numbers['n']}, while the job trains)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
