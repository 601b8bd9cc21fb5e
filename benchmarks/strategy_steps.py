"""Seconds per training step of every strategy that trains on the corpus, on the offline default pair
(SmolLM2-135M-Instruct -> 6 of its layers, batch 4 x 256 tokens, bf16 as in default.yaml), each a short
run in this one process, printed as ratios to soft_label measured in the same run.

    python benchmarks/strategy_steps.py [--steps 6] [--runs-dir /tmp/strategy_steps] [--cache-dir DIR]
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

from workbench.config import DistillConfig  # noqa: E402
from workbench.runner import run_training  # noqa: E402
from workbench.rundir import RunDir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("soft_label", "co_distillation", "hidden_state", "attention")


def seconds_per_step(run: RunDir) -> float:
    """From the metrics' wall-clock times: the steps after the first (warm-up) one."""
    times = [(m["step"], m["time"]) for m in run.read_metrics() if "loss" in m and "time" in m]
    (first_step, first_time), (last_step, last_time) = times[0], times[-1]
    return (last_time - first_time) / max(last_step - first_step, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--runs-dir", default="/tmp/strategy_steps")
    parser.add_argument("--cache-dir")
    args = parser.parse_args()
    results = {}
    for strategy in STRATEGIES:
        config = DistillConfig.load(ROOT / "assets/configs/default.yaml", [
            f"strategy={strategy}", f"train.max_steps={args.steps}", "train.logging_steps=1",
            f"train.save_steps={args.steps}", "evaluation.at_end=false", "data.max_eval_examples=4",
            f"output.runs_dir={args.runs_dir}", f"output.run_name={strategy}-{int(time.time())}"])
        run_training(config, cache_dir=Path(args.cache_dir) if args.cache_dir else None)
        results[strategy] = seconds_per_step(RunDir(Path(args.runs_dir) / config.output.run_name))
        print(f"{strategy:16s} {results[strategy]:6.2f} s/step", flush=True)
    base = results["soft_label"]
    print("ratio to soft_label: " + ", ".join(f"{k} {v / base:.2f}" for k, v in results.items()))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
