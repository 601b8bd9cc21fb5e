"""Evaluate a run's student at one saved point: held-out metrics against the teacher (and the untrained
student, and a CE-only baseline when one finished), speed and size, generations, and the run card.
The report goes to RUN/evaluations/step-STEP.json, which the store ingests (evals, split "evaluation")."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from workbench.config.schema import DEFAULT_PROMPTS, DistillConfig, ModelSpec
from workbench.data.loading import PadCollator, heldout_dataset, load_raw, render_chat
from workbench.eval.aligned import aligned_metrics
from workbench.eval.metrics import heldout_metrics, heldout_summary
from workbench.eval.out_of_domain import card_lines, load_ood, ood_metrics
from workbench.eval.on_policy_measure import ANSWER_TOKENS, PROMPT_TOKENS, heldout_prompts, on_policy_measure
from workbench.eval.pairing import has_local_teacher, token_comparable
from workbench.eval.speed import generate, speed_and_size
from workbench.models.kept_states import KeptStates
from workbench.models.loading import (
    context_length,
    hub_snapshot,
    load_tokenizer,
    loaded_identity,
    logit_size,
    resolve_source,
    shared_logit_size,
)
from workbench.models.students import (
    StudentPoint,
    is_adapter_only,
    load_student_at,
    load_teacher_fp32,
    reading_config,
    student_points,
    student_tokenizer,
)
from workbench.models.token_bridge import TokenBridge
from workbench.store.modelcard import set_evaluation_section
from workbench.store.rundir import CONFIG, RunDir, write_json_atomic

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
                 config: DistillConfig | None = None, progress: Progress | None = None,
                 states_root: Path | None = None) -> dict:
    """Evaluate the student at `point_key` (default: the latest saved) on the GPU when there is one, on the
    held-out text and, when evaluation.ood_source names one, on out-of-domain text (out_of_domain.py).
    A baseline is compared only with a final student: both then had the same number of steps. With
    `states_root`, where the run kept its teacher's rows (loss.reuse_teacher), the teacher's last hidden states
    over the text are kept there too (models/kept_states.py): a repeated run's teacher runs only its head."""
    say = progress or (lambda _message, _fraction: None)
    config = config or reading_config(run)
    points = student_points(run, config)
    point = pick_point(points, point_key)
    tokenizer = student_tokenizer(config)
    held = heldout_dataset(config.data, tokenizer, config.train.seq_len, config.train.seed)
    if held is None or len(held) == 0:
        raise ValueError("data.validation_fraction: the run has no held-out text to evaluate on; give "
                         "data.validation_source or a validation_fraction > 0")
    ood = load_ood(config, tokenizer)
    say("loading teacher and students", 0.02)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # A teacher is compared token by token only when it reads the student's tokens; a hard-label teacher
    # with another tokenizer is still measured for speed and generations, an API teacher not at all.
    local, comparable = has_local_teacher(config), token_comparable(config)
    teacher = load_teacher_fp32(config) if local else None
    models, found = _models(config, points, point, teacher if comparable else None, teacher, baseline)
    models = {name: model.to(device) for name, model in models.items()}
    collator, vocab, batch = PadCollator(tokenizer), shared_logit_size(*models.values()), config.train.batch_size
    kept = _kept_teacher(config, models, states_root)
    heldout = heldout_metrics(models, held, collator, batch, vocab, lambda message, f: say(message, 0.05 + 0.4 * f),
                              kept)
    metrics = heldout_summary(heldout)
    metrics.update(ood_metrics(models, ood, collator, batch, vocab,
                               lambda message, f: say(f"out of domain: {message}", 0.45 + 0.1 * f), kept))
    if local and (comparable or config.loss.cross_tokenizer != "off"):
        metrics.update(_teacher_measures(config, tokenizer, teacher.to(device), models["student"], held, comparable,
                                         lambda message, f: say(message, 0.55 + 0.08 * f)))
    teachers = {"teacher": (teacher.to(device), load_tokenizer(config.teacher, "teacher"))} if local else {}
    roles = {**teachers, "student": (models["student"], tokenizer)}
    speed = _speed(config, point, roles, held, say) if config.evaluation.speed else {}
    metrics.update(_ratios(speed) if speed else {})
    report = {"run_id": run.path.name, "step": point.step, "student": point.label, "created": time.time(),
              "device": str(device), "baseline": baseline.path.name if found is not None else None,
              "metrics": metrics, "speed": speed, "ood_source": ood.source, "ood_error": ood.error,
              "reliability": {name: heldout.reliability(name) for name in ("teacher", "student")},
              "generations": _generations(config, roles, say)}
    report["card"] = run_card(metrics, device.type, ood.error)
    run.evaluations.mkdir(exist_ok=True)
    write_json_atomic(run.evaluation_file(point.step), report)
    if point.label == "final" and (run.student / "README.md").exists():
        set_evaluation_section(run.student / "README.md", report["card"])
    say("evaluation done", 1.0)
    return report


def _kept_teacher(config: DistillConfig, models: dict, states_root: Path | None) -> dict[str, KeptStates]:
    """{"teacher": its kept states} where the run keeps the teacher's answers and the teacher is measured."""
    teacher = models.get("teacher")
    if states_root is None or teacher is None or not config.reuses_teacher_rows():
        return {}
    states = KeptStates.open(states_root, loaded_identity(config.teacher, teacher), teacher)
    return {"teacher": states} if states is not None else {}


def _models(config: DistillConfig, points: list[StudentPoint], point: StudentPoint, compared: torch.nn.Module | None,
            teacher: torch.nn.Module | None, baseline: RunDir | None) -> tuple[dict, tuple | None]:
    """The models measured on held-out text, by role (student, untrained, baseline, teacher when `compared`),
    and the baseline's (config, final point) when it has a final student."""
    initial = load_student_at(config, points[0], teacher=teacher)
    models = {"student": initial if point.step == 0 else load_student_at(config, point, teacher=teacher,
                                                                          initial=initial)}
    if point.step != 0:
        models["untrained"] = initial
    found = _final_student(baseline) if baseline is not None and point.label == "final" else None
    if found is not None:
        models["baseline"] = load_student_at(*found)
    if compared is not None:
        models["teacher"] = compared
    return models, found


def _teacher_measures(config: DistillConfig, tokenizer, teacher: torch.nn.Module, student: torch.nn.Module, held,
                      comparable: bool, say: Progress) -> dict:
    """A teacher that reads the student's tokens scores the student's own answers token by token
    (on-policy measures); one with another tokenizer is compared where both have read the same text."""
    collator, batch = PadCollator(tokenizer), config.train.batch_size
    if comparable:
        return on_policy_measure(teacher, student, tokenizer, heldout_prompts(held, PROMPT_TOKENS), ANSWER_TOKENS,
                                 batch, say)
    bridge = TokenBridge(tokenizer, load_tokenizer(config.teacher, "teacher"), logit_size(student),
                         logit_size(teacher), context_length(teacher))
    return aligned_metrics(teacher, student, bridge, held, collator, batch, say)


def _speed(config: DistillConfig, point: StudentPoint, roles: dict, held, say: Progress) -> dict:
    """Forward tokens/s, generation ms/token and size of each role's model."""
    say("measuring speed", 0.65)
    local = "teacher" in roles
    sample = roles["student"][1].decode(held[0]["input_ids"])
    prompt = config.evaluation.prompts[0] if config.evaluation.prompts else "The"
    # An adapter-only checkpoint's folder holds no model weights: its size on disk says nothing here.
    folders = {"teacher": _model_folder(config.teacher, "teacher") if local else None,
               "student": point.path if point.path is not None and not is_adapter_only(point.path) else None}
    speed = {}
    for role, (model, tok) in roles.items():
        # Each model reads the same text in its own tokens (one tokenizer: the same ids).
        ids = tok(sample, return_tensors="pt", add_special_tokens=False).input_ids[:, :len(held[0]["input_ids"])]
        speed[role] = speed_and_size(model, folders[role], ids, tok(prompt, return_tensors="pt").input_ids)
    return speed


def _generations(config: DistillConfig, roles: dict, say: Progress) -> list[dict]:
    """Each role's greedy continuation of each generation prompt."""
    generations = []
    prompts = _generation_prompts(config) if config.evaluation.max_new_tokens else []
    chat = config.strategy == "hard_label"  # its student learned to answer a user turn, in its own template
    for i, prompt in enumerate(prompts):
        say(f"generating {i + 1}/{len(prompts)}", 0.8 + 0.18 * i / len(prompts))
        generations.append({"prompt": prompt, **{
            role: generate(model, tok, render_chat(tok, [{"role": "user", "content": prompt}], True) if chat else prompt,
                           config.evaluation.max_new_tokens, add_special_tokens=not (chat and tok.chat_template))
            for role, (model, tok) in roles.items()}})
    return generations


def _generation_prompts(config: DistillConfig) -> list[str]:
    """evaluation.prompts; a hard-label run left at the default continuations gets its first held-out
    prompts instead (the teacher's answers to them are in the data, the student's are news)."""
    prompts = config.evaluation.prompts
    if config.strategy != "hard_label" or prompts != DEFAULT_PROMPTS:
        return prompts
    _, held = load_raw(config.data, config.train.seed)
    return held["prompt"][:len(prompts)] if held is not None and "prompt" in held.column_names else prompts


def _ratios(speed: dict) -> dict:
    s = speed["student"]
    t = speed.get("teacher")
    ratios = {f"{role}_{key}": value for role, numbers in speed.items() for key, value in numbers.items()
              if value is not None}
    if t is None:
        return ratios
    return {**ratios, "size_ratio": t["params"] / s["params"],
            "forward_speedup": s["forward_tokens_per_s"] / t["forward_tokens_per_s"],
            "generation_speedup": t["generation_ms_per_token"] / s["generation_ms_per_token"]}


def _times(ratio: float, more: str, less: str) -> str:
    return f"{ratio:.1f}× {more}" if ratio >= 1 else f"{1 / ratio:.1f}× {less}"


def run_card(m: dict, device: str = "cpu", ood_error: str | None = None) -> str:
    """DistilBERT's summary line for this student, then the numbers behind it (markdown); the out-of-domain
    numbers beside the held-out ones (or `ood_error`, why there are none)."""
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
    ppl = [f"{role} {m[f'{role}_perplexity']:.2f}" for role in ("teacher", "student")
           if f"{role}_perplexity" in m]
    if "untrained_perplexity" in m:
        ppl.append(f"untrained student {m['untrained_perplexity']:.2f}")
    if "baseline_perplexity" in m:
        ppl.append(f"CE-only baseline {m['baseline_perplexity']:.2f}")
    lines.append(f"- Held-out perplexity ({m['heldout_tokens']:.0f} tokens): {', '.join(ppl)}")
    lines += card_lines(m, ood_error)
    if "top1_agreement" in m:
        lines.append(f"- Agreement with the teacher: top-1 {100 * m['top1_agreement']:.1f}%, "
                     f"top-5 {100 * m['top5_agreement']:.1f}%; KL(teacher ‖ student) {m['forward_kl']:.3f} "
                     "nats/token")
        lines.append(f"- Calibration error (ECE): student {m['student_ece']:.3f}, teacher {m['teacher_ece']:.3f}")
    elif "aligned_top1_agreement" in m:
        lines.append(f"- Across tokenizers, where both have read the same text ({100 * m['aligned_share']:.0f}% of "
                     f"the student's positions): top-1 agreement {100 * m['aligned_top1_agreement']:.1f}% (the same "
                     f"next-token text), ULD {m['aligned_uld']:.3f}; per character of held-out text: teacher "
                     f"{m['teacher_nats_per_char']:.3f}, student {m['student_nats_per_char']:.3f} nats")
        lines.append(f"- Calibration error (ECE): student {m['student_ece']:.3f}")
    else:
        lines.append("- The teacher reads other tokens than the student (or is an API), so token-level agreement "
                     "and KL are not measured; the perplexities are on the teacher-written held-out text")
        lines.append(f"- Calibration error (ECE): student {m['student_ece']:.3f}")
    if "onpolicy_rkl_greedy" in m:
        lines.append(f"- On its own answers ({m['onpolicy_prompts']:.0f} held-out prompts; greedy / sampled at T = 1): "
                     f"KL(student ‖ teacher) {m['onpolicy_rkl_greedy']:.3f} / {m['onpolicy_rkl_sampled']:.3f} "
                     f"nats/token, the teacher's log-probability of the student's tokens "
                     f"{m['onpolicy_teacher_logp_greedy']:.2f} / {m['onpolicy_teacher_logp_sampled']:.2f}. The "
                     "held-out numbers read the data's text; these read what the student writes itself, where "
                     "its own mistakes compound")
    if "baseline_perplexity" in m:
        better = m["baseline_perplexity"] - m["student_perplexity"]
        lines.append(f"- Against plain fine-tuning: distillation is {'better' if better > 0 else 'not better'} "
                     f"(perplexity {m['student_perplexity']:.2f} vs {m['baseline_perplexity']:.2f})")
    if "teacher_forward_tokens_per_s" in m:
        lines.append(f"- Speed here ({device}): forward {m['teacher_forward_tokens_per_s']:.0f} → "
                     f"{m['student_forward_tokens_per_s']:.0f} tokens/s, generation "
                     f"{m['teacher_generation_ms_per_token']:.1f} → {m['student_generation_ms_per_token']:.1f} "
                     f"ms/token; parameters {m['teacher_params']:,.0f} → {m['student_params']:,.0f}")
    elif "student_forward_tokens_per_s" in m:
        lines.append(f"- Speed here ({device}): forward {m['student_forward_tokens_per_s']:.0f} tokens/s, "
                     f"generation {m['student_generation_ms_per_token']:.1f} ms/token; "
                     f"{m['student_params']:,.0f} parameters")
    return "\n".join(lines)
