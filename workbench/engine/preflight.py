"""Pre-flight: what the set-up form shows before anything is launched, and what it refuses.

Parameter counts and the compression ratio come from the architectures on the meta device (no
weights read); the memory estimate from workbench/models/sizing.py; the vocabulary check loads only the two
tokenizers. Every problem names the config field to fix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from workbench.config.escaping import plain
from workbench.config.fields import ConfigError
from workbench.config.paths import BUILDERS, looks_like_local_path
from workbench.config.schema import DistillConfig
from workbench.data.defaults import default_fields, prepared_root, resolve_defaults
from workbench.data.loading import DataError, load_raw, resolve_format
from workbench.data.prompts import load_prompts, prompt_source_path
from workbench.engine.strategies import strategy_class
from workbench.engine.trainer import use_bf16
from workbench.losses.features import layer_map
from workbench.models.loading import ModelLoadError, VocabMismatchError, check_vocab, load_tokenizer
from workbench.models.pruning import evenly_spaced
from workbench.models.sizing import GIB, arch_info, estimate_memory

# LoRA trains roughly this share of the weights at r=16 on all linear layers: enough for an estimate.
LORA_TRAINABLE_SHARE = 0.02


@dataclass
class Preflight:
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    teacher_params: int | None = None
    student_params: int | None = None
    memory_gib: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def markdown(self) -> str:
        # Messages quote what the user typed (a teacher id, a file name, a data row's column): escaped, so
        # a value holding HTML shows as text. The notes' own Markdown (**bold**) survives escaping.
        lines = [f"- **{plain(name)}**: {plain(msg)}" for name, msg in self.problems] + \
                [f"- {plain(note)}" for note in self.notes]
        head = "**Ready to launch.**" if self.ok else "**Not launched — fix these first:**"
        return "\n".join([head, *lines])


def preflight(config: DistillConfig, cache_dir: Path | None = None, processes: int = 1) -> Preflight:
    report = Preflight()
    if default_fields(config):
        if prepared_root(cache_dir) is None:
            report.problems.append(("teacher.name_or_path", "the offline default is still being prepared "
                                                            "(see the banner); launch when it is ready"))
            return report
        config = resolve_defaults(config, cache_dir)
    _check_data(config, report)
    if config.strategy == "hard_label":
        _check_generation(config, report)
    try:
        keep = config.student.init_from_teacher_layers
        teacher = arch_info(config.teacher, "teacher") if config.teacher_model_needed() else None
        student = arch_info(config.teacher, "teacher", layers=keep) if keep else arch_info(config.student, "student")
    except ModelLoadError as err:
        role = "student" if str(err).startswith("student") else "teacher"
        report.problems.append((f"{role}.name_or_path", str(err)))
        return report
    report.student_params = student.params
    if teacher is None:
        report.notes.append(f"student {_count(student.params)} parameters ({student.layers} layers, hidden "
                            f"{student.hidden}); the teacher is an API endpoint or an earlier run's data")
    else:
        if keep and keep > teacher.layers:
            report.problems.append(("student.init_from_teacher_layers",
                                    f"the teacher has {teacher.layers} layers; keep 1 to {teacher.layers}"))
        report.teacher_params = teacher.params
        report.notes.append(f"teacher {_count(teacher.params)} parameters ({teacher.layers} layers, hidden "
                            f"{teacher.hidden}); student {_count(student.params)} ({student.layers} layers, "
                            f"hidden {student.hidden}): **{teacher.params / student.params:.1f}x smaller**")
        _check_vocabulary(config, teacher.vocab, student.vocab, report)
        if config.strategy in ("hidden_state", "attention"):
            _check_layers(config, teacher, student, report)
    share = LORA_TRAINABLE_SHARE if config.student.lora.enabled else 1.0
    # Hard-label training holds no teacher: it writes its data before the student trains.
    strategy = strategy_class(config.strategy)
    memory = estimate_memory(config, teacher if strategy.needs_teacher else None, student, use_bf16(config), share,
                             teacher_trains=strategy.trains_teacher)
    report.memory_gib = memory.as_gib()
    _check_memory(memory.total, processes, report)
    return report


def _check_layers(config: DistillConfig, teacher, student, report: Preflight) -> None:
    """The layer map against both architectures, and what the layer term will need."""
    section = "hidden" if config.strategy == "hidden_state" else "attention"
    keep = config.student.init_from_teacher_layers
    try:
        pairs = layer_map(getattr(config, section).layer_map, student.layers, teacher.layers, f"{section}.layer_map",
                          evenly_spaced(keep, teacher.layers) if 0 < keep <= teacher.layers else None)
    except ConfigError as err:
        report.problems.extend(err.problems)
        return
    shown = ", ".join(f"{s}:{t}" for s, t in pairs)
    if section == "hidden":
        width = ("same width" if student.hidden == teacher.hidden
                 else f"a learned projection {student.hidden} → {teacher.hidden}")
        report.notes.append(f"hidden states: student:teacher layers {shown}; {width}")
        return
    if config.attention.heads == "map" and teacher.heads % student.heads:
        report.problems.append(("attention.heads", f"map needs the teacher's {teacher.heads} heads to be a multiple "
                                                   f"of the student's {student.heads}; use average"))
    report.notes.append(f"attention: student:teacher layers {shown}; heads {config.attention.heads} "
                        f"({student.heads} student, {teacher.heads} teacher); eager attention, slower than the "
                        "default kernels")


def _check_generation(config: DistillConfig, report: Preflight) -> None:
    """The prompts (or the reused completions) are read now, and an API key must be where the config says."""
    g = config.generation
    if g.dataset:
        if not Path(g.dataset).expanduser().is_file():
            report.problems.append(("generation.dataset", f"no such file: {g.dataset}"))
        else:
            report.notes.append(f"data: the completions in {g.dataset}; no teacher runs")
        return
    writer = f"{g.api_model} at {g.api_base_url}" if g.backend == "openai" else "the teacher"
    try:
        local = prompt_source_path(g.prompts.strip()) is not None
        prompts = load_prompts(g, config.data.max_file_mb) if local else None  # hub data: when the job runs
    except DataError as err:
        report.problems.append((err.field, str(err).split(": ", 1)[-1]))
        return
    count = (f"{len(prompts) * g.samples_per_prompt:,} completions ({len(prompts):,} prompts × "
             f"{g.samples_per_prompt}" if prompts is not None else f"completions for the hub prompts ({g.prompts}")
    report.notes.append(f"data: {writer} writes {count}, up to {g.max_new_tokens} tokens each) before the student "
                        "trains on them; teacher and student may use different tokenizers")
    if g.backend == "openai" and g.api_key_env and not os.environ.get(g.api_key_env):
        report.problems.append(("generation.api_key_env", f"the environment variable {g.api_key_env} is not set "
                                                          "in this app's environment; export the key in it and "
                                                          "restart, or clear the field for an endpoint without keys"))


def _check_data(config: DistillConfig, report: Preflight) -> None:
    """Local files are read now (a format problem shows before launch); hub datasets when the job runs."""
    local = [(name, value) for name in ("source", "validation_source")
             if (value := getattr(config.data, name)) and looks_like_local_path(value, tuple(BUILDERS))]
    missing = [(f"data.{name}", f"no such file: {value}") for name, value in local if not Path(value).expanduser().exists()]
    report.problems.extend(missing)
    if missing or not any(name == "source" for name, _ in local):
        return
    try:
        train, _ = load_raw(config.data, config.train.seed)
        fmt = resolve_format(config.data, train.column_names)
    except DataError as err:
        report.problems.append((err.field, str(err).split(": ", 1)[-1]))
    else:
        report.notes.append(f"data: {len(train):,} training rows, format {fmt}")


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _check_vocabulary(config: DistillConfig, teacher_vocab: int, student_vocab: int, report: Preflight) -> None:
    if not config.needs_shared_vocab() or config.student.init_from_teacher_layers:
        return
    try:
        check = check_vocab(load_tokenizer(config.teacher, "teacher"), load_tokenizer(config.student, "student"),
                            teacher_vocab, student_vocab)
    except VocabMismatchError as err:
        report.problems.append(("student.name_or_path", str(err)))
    except ModelLoadError as err:
        report.problems.append(("student.name_or_path" if "student" in str(err) else "teacher.name_or_path", str(err)))
    else:
        report.notes.append(f"vocabulary: one tokenizer, {check.shared_size:,} logits compared")


def _check_memory(total: float, processes: int, report: Preflight) -> None:
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        where = "GPU"
    else:
        free, where = psutil.virtual_memory().available / max(processes, 1), "RAM"
    verdict = "fits" if total < free else "**may not fit**: lower batch size or sequence length, or turn on LoRA"
    report.notes.append(f"memory estimate per process {total / GIB:.2f} GiB; {free / GIB:.1f} GiB {where} "
                        f"available: {verdict}")
