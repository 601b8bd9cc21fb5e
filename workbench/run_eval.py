"""Evaluate a run's student at one saved point: held-out metrics against the teacher (and the untrained
student, and a CE-only baseline when one finished), speed and size, generations, and the run card.
The report goes to RUN/evaluations/step-STEP.json, which the store ingests (evals, split "evaluation")."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from workbench.config import DistillConfig, ModelSpec
from workbench.data import PadCollator, heldout_dataset
from workbench.evaluate import heldout_metrics, quality_retained
from workbench.modelcard import set_evaluation_section
from workbench.models import hub_snapshot, resolve_source, shared_logit_size
from workbench.run_models import (StudentPoint, is_adapter_only, load_student_at, load_teacher_fp32,
                                  student_points, student_tokenizer)
from workbench.rundir import CONFIG, RunDir, write_json_atomic
from workbench.speed import generate, speed_and_size

Progress = Callable[[str, float], None]


def _model_folder(spec: ModelSpec, role: str) -> Path | None:
    """The folder holding a model's weights: a local folder, or its snapshot in the hub cache."""
    source, _ = resolve_source(spec, role)
    return Path(source) if Path(source).is_dir() else hub_snapshot(source, spec.revision)


def pick_point(points: list[StudentPoint], key: str | None) -> StudentPoint:
    """The point named `key` (StudentPoint.key or label), else the latest one."""
    if key is None:
        return points[-1]
    for point in points:
        if key in (point.key, point.label):
            return point
    raise ValueError(f"no saved student {key!r}; saved: {', '.join(p.key for p in points)}")


def _final_student(run: RunDir) -> tuple[DistillConfig, StudentPoint] | None:
    config = DistillConfig.load(run.file(CONFIG))
    last = student_points(run, config)[-1]
    return (config, last) if last.label == "final" else None


def evaluate_run(run: RunDir, point_key: str | None = None, baseline: RunDir | None = None,
                 config: DistillConfig | None = None, progress: Progress | None = None) -> dict:
    """Evaluate the student at `point_key` (default: the latest saved) on the GPU when there is one.
    A baseline is compared only with a final student: both then had the same number of steps."""
    say = progress or (lambda _message, _fraction: None)
    config = config or DistillConfig.load(run.file(CONFIG))
    points = student_points(run, config)
    point = pick_point(points, point_key)
    tokenizer = student_tokenizer(config)
    held = heldout_dataset(config.data, tokenizer, config.train.seq_len, config.train.seed)
    if held is None or len(held) == 0:
        raise ValueError("data.validation_fraction: the run has no held-out text to evaluate on; give "
                         "data.validation_source or a validation_fraction > 0")
    say("loading teacher and students", 0.02)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = load_teacher_fp32(config)
    initial = load_student_at(config, points[0], teacher=teacher)
    models = {"teacher": teacher, "student": initial if point.step == 0 else
              load_student_at(config, point, teacher=teacher, initial=initial)}
    if point.step != 0:
        models["untrained"] = initial
    found = _final_student(baseline) if baseline is not None and point.label == "final" else None
    if found is not None:
        models["baseline"] = load_student_at(*found)
    models = {name: model.to(device) for name, model in models.items()}
    heldout = heldout_metrics(models, held, PadCollator(tokenizer), config.train.batch_size,
                              shared_logit_size(models["teacher"], models["student"]),
                              lambda message, f: say(message, 0.05 + 0.55 * f))
    metrics = heldout.result()
    if "untrained_ce" in metrics:
        metrics["quality_retained"] = quality_retained(metrics["untrained_ce"], metrics["student_ce"],
                                                       metrics["teacher_ce"])
    speed = {}
    if config.evaluation.speed:
        say("measuring speed", 0.65)
        sample_ids = torch.as_tensor([held[0]["input_ids"]])
        prompt = tokenizer(config.evaluation.prompts[0] if config.evaluation.prompts else "The",
                           return_tensors="pt").input_ids
        # An adapter-only checkpoint's folder holds no model weights: its size on disk says nothing here.
        student_folder = point.path if point.path is not None and not is_adapter_only(point.path) else None
        speed = {"teacher": speed_and_size(models["teacher"], _model_folder(config.teacher, "teacher"), sample_ids,
                                           prompt),
                 "student": speed_and_size(models["student"], student_folder, sample_ids, prompt)}
        metrics.update(_ratios(speed))
    generations = []
    prompts = config.evaluation.prompts if config.evaluation.max_new_tokens else []
    for i, prompt in enumerate(prompts):
        say(f"generating {i + 1}/{len(prompts)}", 0.8 + 0.18 * i / len(prompts))
        generations.append({"prompt": prompt, **{role: generate(models[role], tokenizer, prompt,
                                                                config.evaluation.max_new_tokens)
                                                 for role in ("teacher", "student")}})
    report = {"run_id": run.path.name, "step": point.step, "student": point.label, "created": time.time(),
              "device": str(device), "baseline": baseline.path.name if found is not None else None,
              "metrics": metrics, "speed": speed,
              "reliability": {name: heldout.reliability(name) for name in ("teacher", "student")},
              "generations": generations}
    report["card"] = run_card(metrics, device.type)
    run.evaluations.mkdir(exist_ok=True)
    write_json_atomic(run.evaluation_file(point.step), report)
    if point.label == "final" and (run.student / "README.md").exists():
        set_evaluation_section(run.student / "README.md", report["card"])
    say("evaluation done", 1.0)
    return report


def _ratios(speed: dict) -> dict:
    t, s = speed["teacher"], speed["student"]
    return {"size_ratio": t["params"] / s["params"],
            "forward_speedup": s["forward_tokens_per_s"] / t["forward_tokens_per_s"],
            "generation_speedup": t["generation_ms_per_token"] / s["generation_ms_per_token"],
            **{f"{role}_{key}": value for role, numbers in speed.items() for key, value in numbers.items()
               if value is not None}}


def _times(ratio: float, more: str, less: str) -> str:
    return f"{ratio:.1f}× {more}" if ratio >= 1 else f"{1 / ratio:.1f}× {less}"


def run_card(m: dict, device: str = "cpu") -> str:
    """DistilBERT's summary line for this student, then the numbers behind it (markdown)."""
    claims = []
    if "size_ratio" in m:
        claims.append(_times(m["size_ratio"], "smaller", "larger"))
    if "generation_speedup" in m:
        claims.append(_times(m["generation_speedup"], "faster", "slower") + " at generating")
    if m.get("quality_retained") is not None:
        claims.append(f"keeps {100 * m['quality_retained']:.0f}% of the teacher's quality")
    lines = [f"**{', '.join(claims)}.**" if claims else "**Evaluation**", ""]
    if m.get("quality_retained") is not None:
        lines += ["Quality = the share of the teacher's held-out cross-entropy advantage over the untrained "
                  "student that the trained student recovers: (CE untrained − CE student) / "
                  "(CE untrained − CE teacher).", ""]
    ppl = [f"teacher {m['teacher_perplexity']:.2f}", f"student {m['student_perplexity']:.2f}"]
    if "untrained_perplexity" in m:
        ppl.append(f"untrained student {m['untrained_perplexity']:.2f}")
    if "baseline_perplexity" in m:
        ppl.append(f"CE-only baseline {m['baseline_perplexity']:.2f}")
    lines.append(f"- Held-out perplexity ({m['heldout_tokens']:.0f} tokens): {', '.join(ppl)}")
    lines.append(f"- Agreement with the teacher: top-1 {100 * m['top1_agreement']:.1f}%, "
                 f"top-5 {100 * m['top5_agreement']:.1f}%; KL(teacher ‖ student) {m['forward_kl']:.3f} nats/token")
    lines.append(f"- Calibration error (ECE): student {m['student_ece']:.3f}, teacher {m['teacher_ece']:.3f}")
    if "baseline_perplexity" in m:
        better = m["baseline_perplexity"] - m["student_perplexity"]
        lines.append(f"- Against plain fine-tuning: distillation is {'better' if better > 0 else 'not better'} "
                     f"(perplexity {m['student_perplexity']:.2f} vs {m['baseline_perplexity']:.2f})")
    if "student_forward_tokens_per_s" in m:
        lines.append(f"- Speed here ({device}): forward {m['teacher_forward_tokens_per_s']:.0f} → "
                     f"{m['student_forward_tokens_per_s']:.0f} tokens/s, generation "
                     f"{m['teacher_generation_ms_per_token']:.1f} → {m['student_generation_ms_per_token']:.1f} "
                     f"ms/token; parameters {m['teacher_params']:,.0f} → {m['student_params']:,.0f}")
    return "\n".join(lines)
