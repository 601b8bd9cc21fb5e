"""How long the Inspect tab takes on the offline default pair, through the view its handlers call
(inspect_tab.inspect_view over a run of the default pair's untrained student):

- first view: a text not seen before, 256 tokens: both models run, every statistic at T, the heatmap and
  both plots;
- temperature move: the same text at a T not seen before (the kept logits re-softened, no model runs);
- position move: the same text and T at another position (statistics kept, a position's top-k and plots).

    python benchmarks/inspector_speed.py [--reps 5] [--cache-dir DIR] [--json out.json]

Prints min / p50 / p95 / max seconds of each over --reps repetitions (after one of each to warm up, which
also loads the models), wall-clock and the process's CPU time (all its threads: on a busy machine the wall
clock also counts the waits for a core, the CPU time does not), and the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from types import SimpleNamespace  # noqa: E402

from ui_latency import summary  # noqa: E402 - summarised as the other UI benchmarks

from workbench.config.schema import DistillConfig  # noqa: E402
from workbench.data.defaults import resolve_defaults  # noqa: E402
from workbench.data.loading import heldout_documents  # noqa: E402
from workbench.eval.inspector import Inspector  # noqa: E402
from workbench.eval.token_stats import MAX_TOKENS  # noqa: E402
from workbench.store.rundir import CONFIG  # noqa: E402
from workbench.ui.inspect_tab import inspect_view  # noqa: E402

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "assets" / "configs" / "default.yaml"
RUN = "default-pair"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    config = resolve_defaults(DistillConfig.load(DEFAULT_YAML), args.cache_dir)
    runs = Path(tempfile.mkdtemp(prefix="inspector-speed-"))
    (runs / RUN).mkdir()
    config.save(runs / RUN / CONFIG)  # a run not started yet: its one student is the untrained one
    inspector = Inspector(runs)
    services = SimpleNamespace(inspector=inspector)
    load_before = os.getloadavg()
    start = time.perf_counter()
    inspector.analysis(RUN, inspector.points(RUN)[0].key, "warm up: load both models")
    load_s = time.perf_counter() - start
    texts = long_texts(heldout_documents(config.data, inspector.tokenizer(RUN), config.train.seed),
                       inspector.tokenizer(RUN), args.reps + 1)

    def view(text: str, temperature: float, position: int | None) -> object:
        return inspect_view(services, RUN, None, text, temperature, 10, "forward_kl", position)

    times = {"first_view": [], "temperature_move": [], "position_move": []}
    for rep, text in enumerate(texts):
        times["first_view"].append(timed(lambda: view(text, 1.0, None)))
        # A T of its own per repetition, so no move finds its statistics kept.
        times["temperature_move"].append(timed(lambda: view(text, 1.5 + rep / 4, 100)))
        times["position_move"].append(timed(lambda: view(text, 1.5 + rep / 4, 50)))
    found = inspector.analysis(RUN, inspector.points(RUN)[0].key, texts[-1])
    result = {"tokens": len(found) + 1, "vocab": found.teacher_logits.shape[-1], "load_models_s": round(load_s, 2),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    for name, pairs in times.items():  # the first repetition warms up (allocator, kernels): left out
        result[f"{name}_s"] = rounded(summary([wall for wall, _ in pairs[1:]]))
        result[f"{name}_cpu_s"] = rounded(summary([cpu for _, cpu in pairs[1:]]))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def long_texts(documents: list[str], tokenizer, count: int) -> list[str]:
    """`count` texts of at least MAX_TOKENS tokens, held-out documents joined, none read twice: each first
    view reads a text not seen before."""
    texts, current = [], []
    for document in documents:
        current.append(document)
        if len(tokenizer(" ".join(current)).input_ids) >= MAX_TOKENS:
            texts.append(" ".join(current))
            current = []
        if len(texts) == count:
            return texts
    raise SystemExit(f"the default corpus's held-out documents make {len(texts)} texts of {MAX_TOKENS} tokens, "
                     f"fewer than --reps + 1 = {count}")


def timed(call) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of call()."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def rounded(times: dict) -> dict:
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in times.items()}


if __name__ == "__main__":
    main()
