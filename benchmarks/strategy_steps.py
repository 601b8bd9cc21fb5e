"""Seconds per training step of every strategy that trains on the corpus, and of soft_label under
torch.compile, on the offline default pair (SmolLM2-135M-Instruct -> 6 of its layers, batch 4 x 256
tokens, bf16 as in default.yaml), each a short run in this one process, printed as ratios to soft_label
measured in the same run. The first step (compilation, warm-up) is reported apart.

    python benchmarks/strategy_steps.py [--steps 6] [--settings soft_label,compiled] [--runs-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from workbench.config.schema import DistillConfig  # noqa: E402
from workbench.engine.runner import run_training  # noqa: E402
from workbench.store.rundir import RunDir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"soft_label": [], "co_distillation": ["strategy=co_distillation"], "hidden_state": ["strategy=hidden_state"],
            "attention": ["strategy=attention"], "compiled": ["train.torch_compile=true"]}


def step_times(run: RunDir) -> tuple[float, float]:
    """(seconds of the first step, seconds per step after it) from the metrics' wall-clock times; the
    first step counts from the step-0 held-out evaluation's log."""
    times = [(m["step"], m["time"]) for m in run.read_metrics() if "time" in m]
    start = next(t for step, t in times if step == 0)
    steps = [(step, t) for step, t in times if step > 0]
    (first_step, first_time), (last_step, last_time) = steps[0], steps[-1]
    return first_time - start, (last_time - first_time) / max(last_step - first_step, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument("--runs-dir", default="/tmp/strategy_steps")
    parser.add_argument("--cache-dir")
    args = parser.parse_args()
    results = {}
    for name in args.settings.split(","):
        config = DistillConfig.load(ROOT / "assets/configs/default.yaml", [
            *SETTINGS[name], f"train.max_steps={args.steps}", "train.logging_steps=1",
            f"train.save_steps={args.steps + 1}", "evaluation.at_end=false", "data.max_eval_examples=4",
            "loss.reuse_teacher=false",  # the teacher's forward in every step, as each strategy runs it live
            f"output.runs_dir={args.runs_dir}", f"output.run_name={name}-{int(time.time())}"])
        run_training(config, cache_dir=Path(args.cache_dir) if args.cache_dir else None)
        first, per_step = step_times(RunDir(Path(args.runs_dir) / config.output.run_name))
        results[name] = {"first_step_s": first, "s_per_step": per_step}
        print(f"{name:16s} first step {first:6.1f} s, then {per_step:6.2f} s/step", flush=True)
    if "soft_label" in results:
        base = results["soft_label"]["s_per_step"]
        print("ratio to soft_label: " + ", ".join(f"{k} {v['s_per_step'] / base:.2f}" for k, v in results.items()))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
