"""Off-policy, hard-label and on-policy students of the offline default pair, each given the same minutes of
training: held-out perplexity and top-1 agreement with the teacher on the default corpus's held-out blocks,
and the on-policy measure (the teacher's reverse KL and log-probability per token on the student's own
greedy and sampled answers to held-out prompts), with seconds per step. One run each, same seed: noisy.

    python benchmarks/on_policy.py [--minutes 8] [--runs-dir runs/on_policy] [--cache-dir DIR]
        [--setting NAME:strategy=on_policy,on_policy.lmbda=1 ...]

Each setting first trains 6 steps without evaluations to time a step, then gets max_steps = minutes /
(seconds per step) with the default schedule (warm-up and cosine decay over those steps). A hard-label
run's teacher writes its data first (in the timing run, reused by the real one); that time is in wall_s,
not in the minutes. A setting whose student exists in the runs folder is only scored again.
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

from workbench.config.fields import apply_overrides  # noqa: E402
from workbench.config.schema import DistillConfig  # noqa: E402
from workbench.data.defaults import resolve_defaults  # noqa: E402
from workbench.data.loading import PadCollator, heldout_dataset  # noqa: E402
from workbench.engine.runner import run_training  # noqa: E402
from workbench.eval.on_policy_measure import (  # noqa: E402
    ANSWER_TOKENS,
    PROMPT_TOKENS,
    heldout_prompts,
    on_policy_measure,
)
from workbench.models.loading import load_model, load_teacher, load_tokenizer  # noqa: E402
from workbench.store.rundir import RunDir  # noqa: E402

DEFAULT_SETTINGS = ["soft_label:strategy=soft_label",
                    "hard_label:strategy=hard_label",
                    "on_policy:strategy=on_policy"]


def _config(base: DistillConfig, setting: str, runs: Path, name: str, extra: dict) -> DistillConfig:
    overrides = [pair for pair in setting.split(":", 1)[1].split(",") if pair]
    data = apply_overrides(base.to_dict(), overrides)
    for key, value in extra.items():
        section, field = key.split(".")
        data.setdefault(section, {})[field] = value
    data["output"] = {"runs_dir": str(runs), "run_name": name}
    return DistillConfig.from_dict(data)


def seconds_per_step(config: DistillConfig, runs: Path, name: str) -> float:
    """A 6-step run without held-out data or evaluation: the mean of steps 3-6 (the first ones warm up)."""
    timing = _config(config, "x:", runs, f"{name}-timing", {
        "train.max_steps": 6, "train.logging_steps": 1, "train.save_steps": 1000, "evaluation.at_end": False})
    if timing.strategy != "hard_label":
        timing = timing.replace(data=dataclasses.replace(timing.data, validation_source=None, validation_fraction=0.0))
    run_training(timing)
    times = [r["time"] for r in RunDir(runs / f"{name}-timing").read_metrics() if "loss" in r]
    return (times[-1] - times[1]) / (len(times) - 2)


def held_out_scores(student_dir: Path, base: DistillConfig, teacher, tokenizer) -> dict:
    """Perplexity and top-1 agreement on the default corpus's held-out blocks, for any student."""
    student = load_model(base.student.__class__(name_or_path=str(student_dir)), "student", torch.float32).eval()
    held = heldout_dataset(base.data, tokenizer, base.train.seq_len, base.train.seed)
    collate, nll, agree, count = PadCollator(tokenizer), 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(held), 4):
            batch = collate([held[j] for j in range(i, min(i + 4, len(held)))])
            labels = batch["labels"][:, 1:]
            s = student(input_ids=batch["input_ids"]).logits[:, :-1].float()
            t = teacher(input_ids=batch["input_ids"]).logits[:, :-1].float()
            v = min(s.shape[-1], t.shape[-1])
            mask = labels != -100
            nll += torch.nn.functional.cross_entropy(s[mask], labels[mask], reduction="sum").item()
            agree += (s[..., :v].argmax(-1) == t[..., :v].argmax(-1))[mask].sum().item()
            count += int(mask.sum())
    measure = on_policy_measure(teacher, student, tokenizer, heldout_prompts(held, PROMPT_TOKENS), ANSWER_TOKENS)
    return {"perplexity": math.exp(nll / count), "top1_agreement": agree / count, **measure}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="assets/configs/default.yaml")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--runs-dir", default="runs/on_policy")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the base config, e.g. train.bf16=off")
    parser.add_argument("--setting", action="append", help="NAME:key=value,... over the base config")
    args = parser.parse_args()
    # the live teacher in every run (kept rows would make the soft-label rows' cost depend on earlier runs)
    base = resolve_defaults(DistillConfig.load(args.config, ["loss.reuse_teacher=false", *args.set]), args.cache_dir)
    runs = Path(args.runs_dir)
    tokenizer = load_tokenizer(base.student if not base.student.init_from_teacher_layers else base.teacher)
    teacher = load_teacher(base.teacher, train_bf16=False).eval()
    results = {}
    for setting in args.setting or DEFAULT_SETTINGS:
        name = setting.split(":", 1)[0]
        run = RunDir(runs / name)
        began = time.time()
        if not (run.student / "config.json").is_file():
            config = _config(base, setting, runs, name, {})
            per_step = seconds_per_step(config, runs, name)
            steps = max(10, int(args.minutes * 60 / per_step))
            print(f"{name}: {per_step:.2f} s/step -> {steps} steps in {args.minutes:g} min", flush=True)
            reuse = ({"generation.dataset": str(runs / f"{name}-timing" / "generated" / "completions.jsonl")}
                     if config.strategy == "hard_label" else {})
            run_training(_config(base, setting, runs, name, {
                "train.max_steps": steps, "train.save_steps": steps, "train.logging_steps": max(1, steps // 20),
                "train.eval_steps": 0, "evaluation.at_end": False, **reuse}))
        logs = [r for r in run.read_metrics() if "loss" in r]
        spans = [r["time"] for r in logs]
        split = {k: sum(r.get(k, 0) for r in logs) / len(logs)
                 for k in ("sample_s", "teacher_s", "update_s", "sampled_tokens_per_s") if any(k in r for r in logs)}
        results[name] = {"steps": logs[-1]["step"], "train_minutes": round((spans[-1] - spans[0]) / 60, 2),
                         "wall_s": round(time.time() - began), **split,
                         **held_out_scores(run.student, base, teacher, tokenizer)}
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    print(json.dumps(results, indent=1))
    Path(runs / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
