"""The set-up form as plain data: its values by key over the config it started from, and the one mapping
to a DistillConfig and how to launch it.

The keys are the config's field paths (workbench/ui/form_fields.py generates them) and a few UI-only
choices (UI_FIELDS). No gradio here, so the mapping and its checks are tested without a browser. Checks
that belong to the UI edge live here too: local paths must be inside the allowed roots, uploads must be a
known format under the size limit, and a Hugging Face Space caps steps (DESIGN: validate at the edge).
"""
from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jobs.spec import MAX_PROCESSES
from workbench.config.fields import ConfigError, show, text_problem
from workbench.config.gate import DATA_SUFFIXES, Gate
from workbench.config.paths import NAME_MAX, path_problem
from workbench.config.schema import DistillConfig
from workbench.ui.form_fields import FormField, config_fields, config_values, text_items

DATA_DEFAULT, DATA_UPLOAD, DATA_HUB = "offline default corpus", "upload a file", "hub dataset"
DATA_KINDS = (DATA_DEFAULT, DATA_UPLOAD, DATA_HUB)
DEFAULT_SOURCE, DEFAULT_VALIDATION = "defaults:corpus/train.jsonl", "defaults:corpus/validation.jsonl"
STUDENT_CHECKPOINT, STUDENT_PRUNED = "a checkpoint", "pruned from the teacher"
# A strategy's own section applies only when that strategy is chosen (the form shows it only then);
# otherwise the base config's section stands.
STRATEGY_SECTIONS = {"generation": "hard_label", "co_distillation": "co_distillation", "hidden": "hidden_state",
                     "attention": "attention", "on_policy": "on_policy"}
# The form's choices that are no config field: how a run's data, student and prompts are picked and how it
# is launched. Each names, in its errors, the field it sets.
UI_FIELDS = (
    FormField("student_kind", str, choices=(STUDENT_CHECKPOINT, STUDENT_PRUNED), names="student.name_or_path"),
    FormField("data_kind", str, choices=DATA_KINDS, names="data.source"),
    FormField("data_upload", str, optional=True, names="data.source"),
    FormField("hub_dataset", str, names="data.source"),
    FormField("prompt_upload", str, optional=True, names="generation.prompts"),
    FormField("num_processes", int),
    FormField("accelerate_config", str),  # an accelerate config file (FSDP, DeepSpeed) for multi-GPU jobs
    FormField("with_baseline", bool),  # queue the run's CE-only baseline behind it (Compare's verdict needs one)
)


@cache
def setup_fields(cls: type = DistillConfig) -> tuple[FormField, ...]:
    """Every value of the form, in the one order the components and the HTTP endpoints use."""
    return config_fields(cls) + UI_FIELDS


def start_values(config: DistillConfig) -> dict[str, Any]:
    """The form's values for a config: each field's, and the UI-only choices that say the same."""
    source = config.data.source.strip()
    own_data = source not in ("", DEFAULT_SOURCE)
    choices = {"student_kind": STUDENT_PRUNED if config.student.init_from_teacher_layers else STUDENT_CHECKPOINT,
               "data_kind": DATA_HUB if own_data else DATA_DEFAULT, "data_upload": None,
               "hub_dataset": source if own_data else "", "prompt_upload": None, "num_processes": 1,
               "accelerate_config": "", "with_baseline": False}
    return {**config_values(config), **{f.key: choices[f.key] for f in UI_FIELDS}}


@dataclass(frozen=True)
class SetupForm:
    """What the Set-up form holds: a value per key, over the config it started from (fields the form does
    not set keep that config's values). Every handler is also an HTTP endpoint: a value may be any JSON."""
    base: DistillConfig
    values: dict[str, Any]

    @classmethod
    def from_config(cls, config: DistillConfig) -> SetupForm:
        return cls(config, start_values(config))

    @classmethod
    def from_list(cls, base: DistillConfig, values: Sequence) -> SetupForm:
        """The values Gradio passes, in the order of setup_fields (the inputs list is built from it)."""
        return cls(base, dict(zip((f.key for f in setup_fields(type(base))), values, strict=True)))

    def replace(self, changes: dict[str, Any]) -> SetupForm:
        unknown = set(changes) - set(self.values)
        if unknown:
            raise KeyError(f"not fields of the set-up form: {', '.join(sorted(unknown))}")
        return SetupForm(self.base, {**self.values, **changes})

    def as_list(self) -> list:
        return [self.values[f.key] for f in setup_fields(type(self.base))]


@dataclass
class Launch:
    config: DistillConfig
    processes: int
    accelerate_config: str | None
    with_baseline: bool = False


def _as_int(value: Any) -> tuple[int | None, str | None]:
    """A whole number from what a Number or Slider sends (a float), or why not."""
    problem = f"must be a whole number, got {show(value)}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None, problem
    try:
        number = float(value)
        whole = int(number)
    except (ValueError, OverflowError):  # text, NaN, inf, 10**400
        return None, problem
    return (whole, None) if number == whole else (None, problem)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond the float range
        return False


def _as_type(field: FormField, value: Any) -> tuple[Any, str | None]:
    """(the value as its field's kind, None) or (None, why not). Text is checked (fields.text_problem:
    length, NUL, lone surrogates) before anything looks at it as a path; an empty optional one is None."""
    if value is None and (field.optional or field.kind in (str, list, bool)):
        return (None if field.optional else {str: "", list: [], bool: False}[field.kind]), None
    if field.optional and field.kind in (int, float) and isinstance(value, str):  # a Textbox: empty = unset
        return _number_text(field, value)
    if field.kind in (str, list):
        if not isinstance(value, str):
            return None, f"expected text, got {show(value)}"
        if problem := text_problem(value):
            return None, problem
        text = value.strip()
        return (text_items(text) if field.kind is list else text or (None if field.optional else "")), None
    if field.kind is bool:
        return (value, None) if isinstance(value, bool) else (None, f"expected true or false, got {show(value)}")
    if field.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            return None, f"expected a finite number, got {show(value)}"
        return value, None
    return _as_int(value)


def _number_text(field: FormField, text: str) -> tuple[Any, str | None]:
    """An optional number given as text: empty is None, else the number it reads as."""
    if problem := text_problem(text):
        return None, problem
    if not text.strip():
        return None, None
    if field.kind is int:
        return _as_int(text.strip())
    try:
        number = float(text)
    except ValueError:
        return None, f"expected a number, got {show(text)}"
    return (number, None) if math.isfinite(number) else (None, f"expected a finite number, got {show(text)}")


def _typed(form: SetupForm, problems: list) -> dict[str, Any]:
    """Each value as its field's kind. A bad one is named in `problems` and the start value stands in, so
    the checks after still run and every problem is named at once."""
    start = start_values(form.base)
    typed = {}
    for field in setup_fields(type(form.base)):
        value, problem = _as_type(field, form.values[field.key])
        if problem:
            problems.append((field.field, problem))
            value, _ = _as_type(field, start[field.key])
        typed[field.key] = value
    return typed


def _set(data: dict, path: str, value: Any) -> None:
    *sections, name = path.split(".")
    for section in sections:
        data = data[section]
    data[name] = value


def _check_reference(gate: Gate, value: str | None, name: str, problems: list, suffixes=()) -> None:
    problem = gate.reference_problem(value, suffixes)
    if problem:
        problems.append((name, problem))


def form_to_config(form: SetupForm, gate: Gate, uploads_dir: Path) -> Launch:
    """The config and how to launch it. Raises ConfigError naming every bad field; copies an upload into
    uploads_dir so the job still finds it after the browser's temporary file is gone. Every path and model
    reference passes the gate (workbench/config/gate.py), whichever data kind or strategy the form says."""
    problems: list[tuple[str, str]] = []
    v = _typed(form, problems)
    strategy = v["strategy"]
    data = form.base.to_dict()
    for field in config_fields(type(form.base)):
        if STRATEGY_SECTIONS.get(field.key.split(".")[0], strategy) == strategy:
            _set(data, field.key, v[field.key])
    pruned = _student(v, data, gate, problems)
    processes, accelerate_config = v["num_processes"], v["accelerate_config"] or None
    if not 1 <= processes <= MAX_PROCESSES:
        problems.append(("num_processes", f"must be from 1 to {MAX_PROCESSES}, got {processes}"))
    problems.extend(gate.launch_problems(processes, accelerate_config))
    if strategy == "hard_label":
        # The teacher writes the data: the runner points data.source at its completions.
        data["data"].update(source="", validation_source=None, validation_split=None)
        data["generation"]["prompts"] = _prompts(v, gate, uploads_dir, problems)
        if (dataset := v["generation.dataset"]) and (problem := gate.path_problem(dataset)):
            problems.append(("generation.dataset", problem))
    else:
        data["data"] = _data_section(v, data["data"], gate, uploads_dir, problems)
    # Only soft_label reads a cache; the panel is hidden for the others, so its values must not leak in.
    cache = v["loss.teacher_cache"] if strategy == "soft_label" else None
    if cache and (problem := gate.path_problem(cache)):
        problems.append(("loss.teacher_cache", problem))
    data["loss"]["teacher_cache"] = cache
    data["loss"]["build_teacher_cache"] = v["loss.build_teacher_cache"] if strategy == "soft_label" else False
    steps = v["train.max_steps"]
    # A curve needs points: log at least ~20 times per run, whatever the interval the form says.
    data["train"]["logging_steps"] = min(v["train.logging_steps"], max(1, steps // 20))
    if gate.max_steps is not None and steps > gate.max_steps:
        problems.append(("train.max_steps", f"this app is reachable by others: at most {gate.max_steps} steps "
                                            "per run"))
    if problems:
        raise ConfigError(problems)
    config = gate.check(type(form.base).from_dict(data))
    if pruned and not v["teacher.name_or_path"]:
        raise ConfigError([("teacher.name_or_path", "is required to prune a student from it")])
    return Launch(config, processes, accelerate_config, v["with_baseline"])


def _student(v: dict, data: dict, gate: Gate, problems: list) -> bool:
    """Teacher and student references through the gate, the student a checkpoint or the teacher cut to
    student.init_from_teacher_layers layers; whether it is pruned."""
    pruned = v["student_kind"] == STUDENT_PRUNED
    student = "" if pruned else v["student.name_or_path"]
    _check_reference(gate, v["teacher.name_or_path"], "teacher.name_or_path", problems)
    _check_reference(gate, student, "student.name_or_path", problems)
    layers = v["student.init_from_teacher_layers"] if pruned else 0
    if pruned and layers < 1:
        problems.append(("student.init_from_teacher_layers", "keep at least one teacher layer to prune a "
                                                             "student from it"))
    data["student"].update(name_or_path=student, init_from_teacher_layers=layers)
    return pruned


def _is_file(path: Path) -> bool:
    try:
        return path_problem(str(path)) is None and path.is_file()
    except (OSError, ValueError, RuntimeError):
        return False


def _keep_upload(upload: Path, uploads_dir: Path, field: str) -> str:
    """A copy the job still finds after the browser's temporary file is gone, named by its content and as
    much of the upload's name as fits in one file name (Gradio keeps the browser's name, of any length)."""
    uploads_dir.mkdir(parents=True, exist_ok=True)
    stem = upload.stem.encode("utf-8")[:NAME_MAX - 64].decode("utf-8", "ignore")
    try:
        # Named by content: checking or launching the same file again keeps one copy, not one per click.
        with open(upload, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()[:16]
        kept = uploads_dir / f"{digest}-{stem}{upload.suffix[:16]}"
        if not kept.exists():
            shutil.copyfile(upload, kept)
    except OSError as err:
        raise ConfigError([(field, f"the upload {upload.name[:80]} could not be kept: {err.strerror or err}")]) from None
    return str(kept)


def _prompts(v: dict, gate: Gate, uploads_dir: Path, problems: list) -> str:
    """generation.prompts: an uploaded prompt file (kept), else the named set through the gate."""
    prompts = v["generation.prompts"]
    if not v["prompt_upload"]:
        _check_reference(gate, prompts, "generation.prompts", problems, DATA_SUFFIXES)
        return prompts
    upload = Path(v["prompt_upload"])
    if upload.suffix.lower() not in DATA_SUFFIXES:
        problems.append(("generation.prompts", f"{upload.name}: use a .jsonl, .json, .csv or .parquet file"))
    elif not _is_file(upload):
        problems.append(("generation.prompts", f"the upload {upload.name} is not a file"))
    elif problem := gate.upload_problem(str(upload)):
        problems.append(("generation.prompts", problem))
    else:
        return _keep_upload(upload, uploads_dir, "generation.prompts")
    return prompts


def _data_section(v: dict, section: dict, gate: Gate, uploads_dir: Path, problems: list) -> dict:
    """The data section the data choice says: the offline corpus, a hub dataset id, or an upload (kept)."""
    if v["data_kind"] == DATA_DEFAULT:
        return {**section, "source": DEFAULT_SOURCE, "validation_source": DEFAULT_VALIDATION}
    section = {**section, "validation_source": None, "validation_split": None}
    if v["data_kind"] == DATA_HUB:
        if not v["hub_dataset"]:
            problems.append(("data.source", "name a hub dataset id, e.g. roneneldan/TinyStories"))
        _check_reference(gate, v["hub_dataset"], "data.source", problems, DATA_SUFFIXES)
        return {**section, "source": v["hub_dataset"]}
    if not v["data_upload"]:
        problems.append(("data.source", "choose a file to upload (.txt, .jsonl, .json, .csv or .parquet)"))
        return section
    upload = Path(v["data_upload"])
    limit_mb = min(section.get("max_file_mb", 512), gate.max_upload_mb or float("inf"))
    if upload.suffix.lower() not in DATA_SUFFIXES:
        problems.append(("data.source", f"{upload.name}: use a .txt, .jsonl, .json, .csv or .parquet file"))
    elif not _is_file(upload):
        problems.append(("data.source", f"the upload {upload.name} is not a file"))
    elif problem := gate.upload_problem(str(upload)):
        problems.append(("data.source", problem))
    elif upload.stat().st_size > limit_mb * 2**20:
        problems.append(("data.source", f"{upload.name} is {upload.stat().st_size / 2**20:.1f} MiB, over the "
                                        f"{limit_mb} MiB limit (data.max_file_mb)"))
    else:
        return {**section, "source": _keep_upload(upload, uploads_dir, "data.source")}
    return section
