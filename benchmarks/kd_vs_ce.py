"""Does soft-label KD beat plain fine-tuning on the offline default pair? Runs the same student, data,
steps and seed once per setting and prints held-out perplexities side by side (one run each: noisy).

    python benchmarks/kd_vs_ce.py [--steps N (default: the config's)] [--lr X] [--runs-dir runs/kd_vs_ce]
        [--cache-dir DIR] [--setting ce:alpha=1 --setting kd:alpha=0,temperature=1 ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from workbench.config.schema import DistillConfig  # noqa: E402
from workbench.data.defaults import resolve_defaults  # noqa: E402
from workbench.data.loading import PadCollator, tokenize_datasets  # noqa: E402
from workbench.engine.runner import run_training  # noqa: E402
from workbench.losses.divergences import ce_loss  # noqa: E402
from workbench.models.loading import load_teacher, load_tokenizer  # noqa: E402
from workbench.store.rundir import RunDir  # noqa: E402

DEFAULT_SETTINGS = ["ce:alpha=1", "kd:alpha=0,temperature=1", "mix:alpha=0.5,temperature=1"]


def teacher_perplexity(config: DistillConfig) -> float:
    """The teacher on exactly the held-out blocks the runs evaluate on."""
    tok = load_tokenizer(config.student)
    _, held = tokenize_datasets(config.data, tok, config.train.seq_len, config.train.seed)
    teacher = load_teacher(config.teacher, train_bf16=False)
    collate, total, count = PadCollator(tok), 0.0, 0
    with torch.no_grad():
        for i in range(0, len(held), 4):
            batch = collate([held[j] for j in range(i, min(i + 4, len(held)))])
            labels = batch["labels"][:, 1:]
            logits = teacher(input_ids=batch["input_ids"]).logits[:, :-1]
            n = int(labels.ne(-100).sum())
            total, count = total + ce_loss(logits, labels).item() * n, count + n
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="assets/configs/default.yaml")
    parser.add_argument("--steps", type=int, help="training steps (default: the config's train.max_steps)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--runs-dir", default="runs/kd_vs_ce")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--setting", action="append", help="NAME:key=value,... over the loss section")
    args = parser.parse_args()
    # the live teacher, as the perplexities in default.yaml were measured
    base = resolve_defaults(DistillConfig.load(args.config, ["loss.reuse_teacher=false"]), args.cache_dir)
    overrides = {**({"max_steps": args.steps} if args.steps else {}), **({"lr": args.lr} if args.lr else {})}
    base = base.replace(train=dataclasses.replace(base.train, **overrides))
    results = {"teacher_ppl": round(teacher_perplexity(base), 2), "runs": {}}
    print(f"teacher held-out perplexity: {results['teacher_ppl']}", flush=True)
    for setting in args.setting or DEFAULT_SETTINGS:
        name, _, knobs = setting.partition(":")
        loss = {**base.loss.__dict__, **{k: float(v) for k, v in (kv.split("=") for kv in knobs.split(",") if kv)}}
        config = DistillConfig.from_dict({**base.to_dict(), "loss": loss,
                                          "output": {"runs_dir": args.runs_dir, "run_name": name}})
        start = time.perf_counter()
        final = run_training(config, RunDir(Path(args.runs_dir) / name),
                             echo=lambda m, n=name: print(f"[{n}] {m}", flush=True))
        first = next(r for r in RunDir(Path(args.runs_dir) / name).read_metrics() if "eval_ce" in r)
        results["runs"][name] = {"loss": loss, "minutes": round((time.perf_counter() - start) / 60, 1),
                                 "ppl_before": round(math.exp(first["eval_ce"]), 2),
                                 "ppl_after": round(math.exp(final["eval_ce"]), 2),
                                 "kd_before": round(first.get("eval_kd", float("nan")), 4),
                                 "kd_after": round(final.get("eval_kd", float("nan")), 4)}
        print(json.dumps({name: results["runs"][name]}), flush=True)
    Path(args.runs_dir, "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
