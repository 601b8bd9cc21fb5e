"""The lesson preset end to end, as a class would meet it: the app started on this machine, Set up's
"Lesson preset" pressed and launched through the HTTP API (as the browser calls them), then the time until
the run, its queued CE-only baseline and Compare's verdict are there, and the held-out KL to the teacher
before and after training.

    python benchmarks/lesson.py [--cache-dir DIR] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ui_latency import start_app  # noqa: E402  (sits beside this file)

from gradio_client import Client  # noqa: E402


def finished(status: Path) -> str | None:
    try:
        state = json.loads(status.read_text()).get("state")
    except (OSError, ValueError):  # not written yet, or being replaced
        return None
    return state if state in ("succeeded", "failed", "cancelled") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="lesson-")) / "runs"
    proc, url = start_app(runs, args.cache_dir)
    results = {}
    try:
        client = Client(url, verbose=False)
        *values, note = client.predict(api_name="/lesson_preset")
        launched = time.perf_counter()
        verdict = client.predict(*values, api_name="/launch")
        if "Launched" not in verdict or "baseline" not in verdict:
            raise SystemExit(verdict)
        run = verdict.split("**Launched ", 1)[1].split("**", 1)[0]
        baseline = f"{run}-ce-baseline"
        pending = {run, baseline}
        while pending:
            for name in list(pending):
                state = finished(runs / name / "status.json")
                if state:
                    results[f"{'baseline' if name == baseline else 'run'}_done_s"] = time.perf_counter() - launched
                    results[f"{'baseline' if name == baseline else 'run'}_state"] = state
                    pending.discard(name)
            time.sleep(2)
        client.predict(None, api_name="/compare_runs")  # the tab opened: its run picker lists the runs
        answer = None
        # Until the store has ingested both final numbers the verdict says a run is "still training".
        while answer is None or re.search(r"\bstill (training|queued|starting)", answer):
            answer = client.predict([run, baseline], "held-out CE", {}, api_name="/on_compare")[2]
            time.sleep(1)
        results["verdict_s"] = time.perf_counter() - launched
        results["verdict"] = answer
        rows = [json.loads(line) for line in (runs / run / "metrics.jsonl").read_text().splitlines()]
        kd = [(row["step"], row["eval_kd"]) for row in rows if "eval_kd" in row]
        results["heldout_kl_first_last"] = [kd[0], kd[-1]]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"run finished {results['run_done_s'] / 60:.1f} min after Launch ({results['run_state']}); baseline "
          f"{results['baseline_done_s'] / 60:.1f} min ({results['baseline_state']}); verdict at "
          f"{results['verdict_s'] / 60:.1f} min")
    (s0, k0), (s1, k1) = results["heldout_kl_first_last"]
    print(f"held-out KL to the teacher: {k0:.2f} at step {s0} -> {k1:.2f} at step {s1} ({k0 / k1:.1f}x lower)")
    print(f"verdict: {results['verdict']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
