"""The student's README.md: what it was distilled from, how, and how well it did on held-out text."""
from __future__ import annotations

import math
import os
from pathlib import Path

from workbench.config.schema import DistillConfig


def _metric_rows(final: dict) -> list[str]:
    rows = [f"| {k.removeprefix('eval_')} | {v:.4f} |" for k, v in sorted(final.items()) if isinstance(v, float)]
    if isinstance(final.get("eval_ce"), float) and final["eval_ce"] < 50:
        rows.append(f"| perplexity (exp ce) | {math.exp(final['eval_ce']):.2f} |")
    return rows


def write_model_card(path: Path, config: DistillConfig, final: dict, params: int, run_name: str) -> Path:
    c, loss, t, co = config, config.effective_loss(), config.train, config.co_distillation
    # A co-distilled student's α followed its schedule, not loss.alpha.
    alpha = (f"{co.alpha_start} → {co.alpha_end} over {co.alpha_warmup_steps} steps ({co.alpha_schedule})"
             if c.strategy == "co_distillation" else loss.alpha)
    knobs = [("teacher", c.teacher.name_or_path), ("student initialised from",
             f"{c.teacher.name_or_path}, {c.student.init_from_teacher_layers} of its layers"
             if c.student.init_from_teacher_layers else c.student.name_or_path),
             ("strategy", c.strategy),
             ("divergence", f"{loss.cross_tokenizer} (across tokenizers)" if loss.cross_tokenizer != "off"
              else loss.divergence), ("alpha (CE weight)", alpha),
             ("temperature T", loss.temperature)]
    if c.strategy == "co_distillation":
        knobs.append(("teacher trained too", f"learning rate {co.teacher_lr}"
                                             + (f", mutual KD weight {co.mutual_weight}" if co.mutual else "")))
    if c.strategy in ("hidden_state", "attention"):
        layers = c.hidden if c.strategy == "hidden_state" else c.attention
        knobs.append(("layer term", f"{layers.loss}, weight {layers.weight}, layers "
                                    f"{', '.join(layers.layer_map) or 'evenly spaced'}"))
    if c.strategy == "on_policy":
        o = c.on_policy
        knobs.append(("on-policy", f"share of sampled steps (lmbda) {o.lmbda}, prompts {o.prompts}, "
                                   f"{o.max_new_tokens} sampled tokens at temperature {o.temperature}, top-p {o.top_p}"
                                   + (", the teacher's samples on the other steps" if o.seq_kd else "")))
    if loss.divergence == "jsd" and loss.cross_tokenizer == "off":
        knobs.append(("beta", loss.beta))
    if loss.divergence.startswith("skew") and loss.cross_tokenizer == "off":
        knobs.append(("skew lambda", loss.skew_lambda))
    knobs += [("steps", t.max_steps), ("tokens per step", t.batch_size * t.grad_accum * t.seq_len),
              ("learning rate", t.lr), ("data", c.data.source), ("seed", t.seed),
              ("LoRA", f"r={c.student.lora.r}, alpha={c.student.lora.alpha}" if c.student.lora.enabled else "no"),
              ("parameters", f"{params:,}")]
    lines = ["---", "library_name: transformers", "tags:", "- distillation", "- distill-workbench", "---", "",
             f"# {run_name}", "",
             f"A student distilled from `{c.teacher.name_or_path}` with Distill Workbench.", "",
             "| setting | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in knobs], ""]
    rows = _metric_rows(final)
    if rows:
        lines += ["## Held-out metrics at the last step", "", "| metric | value |", "| --- | --- |", *rows, ""]
    lines += ["## Reproduce", "", "The run directory's `config.json` holds the full configuration:", "",
              "```", "python -m workbench train config.json", "```", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


EVALUATION_HEADING = "## Evaluation"


def set_evaluation_section(path: Path, card: str) -> Path:
    """Put the run card under an Evaluation heading, replacing the one an earlier evaluation wrote."""
    text = path.read_text(encoding="utf-8")
    head, found, tail = text.partition(EVALUATION_HEADING + "\n")
    rest = tail[tail.find("\n## "):] if found and "\n## " in tail else ""
    body = head if found else text.rstrip("\n") + "\n\n"
    # Atomic: a cancel during the evaluation must not leave half a model card.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{body}{EVALUATION_HEADING}\n\n{card}\n{rest}", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_trained_teacher_card(path: Path, config: DistillConfig, final: dict, params: int, run_name: str) -> Path:
    """The README of a teacher that trained alongside its student (co-distillation)."""
    c = config
    rows = [f"| {k.removeprefix('eval_teacher_')} | {v:.4f} |" for k, v in sorted(final.items())
            if k.startswith("eval_teacher_") and isinstance(v, float)]
    lines = ["---", "library_name: transformers", "tags:", "- co-distillation", "- distill-workbench", "---", "",
             f"# {run_name}: teacher", "",
             f"`{c.teacher.name_or_path}` trained on the labels alongside its student "
             f"({'mutual learning' if c.co_distillation.mutual else 'co-distillation'}) with Distill Workbench: "
             f"{c.train.max_steps} steps at learning rate {c.co_distillation.teacher_lr}, {params:,} parameters. "
             "The student is in the run's `student/` folder.", ""]
    if rows:
        lines += ["## Held-out metrics at the last step", "", "| metric | value |", "| --- | --- |", *rows, ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


INT8_HEADING = "## int8 export"


def write_int8_card(path: Path, student_card: str | None, run_name: str, line: str, weights_file: str) -> Path:
    """The int8 export's README: the fp32 student's card (when it has one) with an int8 section that says
    how it was quantised, what it costs in quality, and how to load it."""
    head = student_card.partition("\n" + INT8_HEADING + "\n")[0].rstrip("\n") if student_card else (
        "---\nlibrary_name: transformers\ntags:\n- distillation\n- distill-workbench\n---\n\n"
        f"# {run_name}\n\nA student distilled with Distill Workbench.")
    section = [INT8_HEADING, "", f"**{line}.**", "",
               f"The weights in `{weights_file}` are the student after PyTorch dynamic quantisation of every "
               "linear layer to int8 (activations are quantised per batch at run time; embeddings and norms "
               "stay fp32). Perplexity, size and speed are measured against the fp32 student on the run's "
               "held-out text, on the CPU (the int8 kernels are CPU-only); `quantization.json` holds the numbers.",
               "", "Load it with Distill Workbench:", "", "```python",
               "from workbench.models.quantize import load_int8", "model = load_int8('path/to/this/folder')", "```", ""]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(head + "\n\n" + "\n".join(section), encoding="utf-8")
    os.replace(tmp, path)
    return path
