"""How fast the Learn tab answers, through the HTTP API as a browser calls it, on the offline default pair:
the first sentence after the app starts (both models load), each new sentence after that (one forward of
teacher and student), and slider moves (α, T, position: kept logits re-read, no model runs).

    python benchmarks/learn_speed.py [--moves 60] [--cache-dir DIR] [--json out.json]

The offline default must be prepared (python -m workbench prepare-defaults). Prints min / p50 / p95 / max in
seconds. No browser opens the page, so the tab's warm-up on page load does not run: the first sentence pays
the model loading, as it would for a visitor who reads one before the page's first tick (3 s).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradio_client import Client  # noqa: E402
from ui_latency import start_app, summary, timed  # noqa: E402 - the app started and timed as there

from workbench.data.defaults import prepared_root  # noqa: E402
from workbench.ui.learn_tab import SENTENCES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=60)
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if prepared_root(Path(args.cache_dir) if args.cache_dir else None) is None:
        raise SystemExit("prepare the offline default first: python -m workbench prepare-defaults")
    proc, url = start_app(Path(tempfile.mkdtemp(prefix="learn-speed-")) / "runs", args.cache_dir)
    try:
        client = Client(url, verbose=False)
        read = lambda text: client.predict(text, 0.5, 2.0, api_name="/learn_read")  # noqa: E731
        results = {"first sentence (models load)": timed(lambda: read(SENTENCES[0])),
                   "new sentence": summary([timed(lambda text=text: read(text)) for text in SENTENCES[1:]])}
        rows = len(client.predict(SENTENCES[-1], 0.5, 2.0, api_name="/learn_read")[0]) - 1
        knobs = itertools.islice(itertools.cycle(itertools.product(range(rows), (1.0, 2.0, 4.0, 20.0),
                                                                   (0.0, 0.5, 1.0))), args.moves)
        results["slider move"] = summary([timed(lambda p=p, t=t, a=a: client.predict(a, t, p, api_name="/learn_view"))
                                          for p, t, a in knobs])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    for label, numbers in results.items():
        if isinstance(numbers, dict):
            print(f"{label:30s} min {numbers['min']:.3f}  p50 {numbers['p50']:.3f}  p95 {numbers['p95']:.3f}  "
                  f"max {numbers['max']:.3f} s  (n={numbers['n']})")
        else:
            print(f"{label:30s} {numbers:.3f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
