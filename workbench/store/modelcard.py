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
    return _set_section(path, EVALUATION_HEADING, card)


def _set_section(path: Path, heading: str, content: str) -> Path:
    """`content` under `heading` in the card at `path`, replacing that section if it is there already."""
    text = path.read_text(encoding="utf-8")
    head, found, tail = text.partition(heading + "\n")
    rest = tail[tail.find("\n## "):] if found and "\n## " in tail else ""
    body = head if found else text.rstrip("\n") + "\n\n"
    # Atomic: a cancel during the evaluation must not leave half a model card.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{body}{heading}\n\n{content}\n{rest}", encoding="utf-8")
    os.replace(tmp, path)
    return path


EXPORTS_HEADING = "## Exports"


def set_exports_section(path: Path, lines: dict[str, str]) -> Path:
    """List the run's exports (folder -> its summary line, e.g. the measured int8 numbers) in the
    student's own card, so the card a user reads first says what the student costs in int8 or GGUF."""
    return _set_section(path, EXPORTS_HEADING, "\n".join(f"- `{folder}/`: {line}" for folder, line in lines.items()))


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
GGUF_HEADING = "## GGUF export"
DEFAULT_HEAD = ("---\nlibrary_name: transformers\ntags:\n- distillation\n- distill-workbench\n---\n\n"
                "# {run_name}\n\nA student distilled with Distill Workbench.")


def _write_export_card(path: Path, student_card: str | None, run_name: str, heading: str,
                       section: list[str], front_matter: dict[str, str] | None = None) -> Path:
    """The student's card (when it has one) cut before any export section, then this export's section.
    `front_matter` lines replace or join the card's YAML header (the hub reads library_name from it)."""
    head = student_card if student_card else DEFAULT_HEAD.format(run_name=run_name)
    for other in (INT8_HEADING, GGUF_HEADING):
        head = head.partition("\n" + other + "\n")[0]
    before, found, after = head.partition("\n" + EXPORTS_HEADING + "\n")
    if found:  # the student's list of exports belongs to the student's card, not to each export's
        head = before + (after[after.find("\n## "):] if "\n## " in after else "")
    head = _with_front_matter(head.rstrip("\n"), front_matter or {})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(head + "\n\n" + "\n".join([heading, "", *section]), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _with_front_matter(card: str, keys: dict[str, str]) -> str:
    if not keys or not card.startswith("---\n") or "\n---\n" not in card[3:]:
        return card
    header, _, body = card[4:].partition("\n---\n")
    lines = [line for line in header.split("\n") if line.split(":")[0] not in keys]
    lines[:0] = [f"{key}: {value}" for key, value in keys.items()]
    return "---\n" + "\n".join(lines) + "\n---\n" + body


def write_int8_card(path: Path, student_card: str | None, run_name: str, line: str, weights_file: str) -> Path:
    """The int8 export's README: the fp32 student's card (when it has one) with an int8 section that says
    how it was quantised, what it costs in quality, and how to load it."""
    section = [f"**{line}.**", "",
               f"The weights in `{weights_file}` are the student after PyTorch dynamic quantisation: the linear "
               "layers' weights in int8 per output row (activations are quantised per batch at run time), the "
               "input embedding in int8 per row, and a tied LM head rebuilt from that int8 embedding when the "
               "model loads, so the embedding is stored once. The MLP output projections (down_proj, whose inputs "
               "hold outlier activations) and the norms stay fp32. Perplexity, size and speed are "
               "measured against the full-precision student on the run's held-out text, on the CPU (the int8 "
               "kernels are CPU-only); `quantization.json` holds the numbers.",
               "", "Load it with Distill Workbench:", "", "```python",
               "from workbench.models.quantize import load_int8", "model = load_int8('path/to/this/folder')", "```", ""]
    return _write_export_card(path, student_card, run_name, INT8_HEADING, section)


def write_gguf_card(path: Path, student_card: str | None, run_name: str, file_name: str, info: dict) -> Path:
    """The GGUF export's README: the student's card with a section on the file, its tensor type, the
    pre-tokenizer llama.cpp will use, and how to run it with llama.cpp, Ollama or transformers."""
    pre = (f"`{info['pre_tokenizer']}`" if info["pre_tokenizer"] != "default" else
           "`default`: llama.cpp has no name for this tokenizer's pre-tokenizer, so it splits text with its "
           "generic rules, which may differ from the original tokenizer on digits or spaces")
    section = [f"`{file_name}`: {info['architecture']} architecture, {info['dtype']} weights (norms f32), "
               f"{info['tensors']} tensors, {info['bytes'] / 1e6:.1f} MB. Pre-tokenizer: {pre}.", "",
               "```sh", f"llama-cli -m {file_name} -p 'In the beginning'",
               f"printf 'FROM ./{file_name}\\n' > Modelfile && ollama create student -f Modelfile", "```", "",
               "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
               f"model = AutoModelForCausalLM.from_pretrained('.', gguf_file='{file_name}')",
               f"tokenizer = AutoTokenizer.from_pretrained('.', gguf_file='{file_name}')", "```", ""]
    return _write_export_card(path, student_card, run_name, GGUF_HEADING, section,
                              {"library_name": "gguf"})


def write_plain_card(path: Path, run_name: str) -> Path:
    """A card for a student folder that has none (an older run), so that nothing is pushed without one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(DEFAULT_HEAD.format(run_name=run_name) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
