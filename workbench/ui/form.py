"""The set-up form as plain data: its fields, its defaults, and the mapping to a DistillConfig.

No gradio here, so the mapping and its checks are tested without a browser. Checks that belong to the
UI edge live here too: local paths must be inside the allowed roots, uploads must be a known format
under the size limit, and a Hugging Face Space caps steps (DESIGN: validate at the edge).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path

from jobs.spec import MAX_PROCESSES
from workbench.config import DistillConfig
from workbench.configbase import ConfigError, show, text_problem
from workbench.gate import DATA_SUFFIXES, Gate
from workbench.paths import NAME_MAX, path_problem

DEFAULT_PAIR = "offline default: SmolLM2-135M-Instruct → 6 of its layers"
# Teacher -> student pairs that share a tokenizer, for users who have the hub.
KNOWN_PAIRS = {
    DEFAULT_PAIR: ("defaults:teacher", "defaults:student"),
    "gpt2 → distilgpt2": ("gpt2", "distilgpt2"),
    "SmolLM2-360M → SmolLM2-135M": ("HuggingFaceTB/SmolLM2-360M", "HuggingFaceTB/SmolLM2-135M"),
    "Qwen2.5-1.5B → Qwen2.5-0.5B": ("Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-0.5B"),
}
DATA_DEFAULT, DATA_UPLOAD, DATA_HUB = "offline default corpus", "upload a file", "hub dataset"
DATA_KINDS = (DATA_DEFAULT, DATA_UPLOAD, DATA_HUB)
STUDENT_CHECKPOINT, STUDENT_PRUNED = "a checkpoint", "pruned from the teacher"
@dataclass
class SetupForm:
    teacher: str = "defaults:teacher"
    student_kind: str = STUDENT_CHECKPOINT
    student: str = "defaults:student"
    keep_layers: int = 6
    strategy: str = "soft_label"
    divergence: str = "forward_kl"
    alpha: float = 0.5
    temperature: float = 1.0
    beta: float = 0.5
    max_steps: int = 200
    lr: float = 5e-4
    batch_size: int = 4
    seq_len: int = 256
    data_kind: str = DATA_DEFAULT
    upload: str | None = None
    hub_dataset: str = ""
    lora: bool = False
    bf16: str = "on"
    processes: int = 1
    accelerate_config: str = ""  # an accelerate config file (FSDP, DeepSpeed) for multi-GPU jobs
    run_name: str = ""
    evaluate: bool = True  # evaluate the student when the job ends (evaluation.at_end)
    on_nonfinite: str = "stop"  # a NaN/inf step stops the run, or is skipped (train.on_nonfinite)
    teacher_cache: str = ""  # a teacher-cache folder (loss.teacher_cache); empty = run the teacher live
    # Hard-label: how the teacher writes the data (the generation section).
    gen_backend: str = "local"
    gen_prompts: str = "project:instructions"
    gen_upload: str | None = None  # an uploaded prompt file, used instead of gen_prompts
    gen_api_base_url: str = ""
    gen_api_model: str = ""
    gen_api_key_env: str = "OPENAI_API_KEY"
    gen_temperature: float = 0.7
    gen_top_p: float = 0.95
    gen_max_new_tokens: int = 128
    gen_samples: int = 1
    gen_concurrency: int = 4
    gen_seed: int = 0
    gen_prompt_column: str = "prompt"
    gen_max_prompts: int | None = 0  # 0 (or None): every prompt
    gen_dataset: str = ""  # completions an earlier run wrote (generation.dataset); empty = generate
    # Co-distillation (the co_distillation section).
    co_teacher_lr: float = 5e-5
    co_alpha_start: float = 1.0
    co_alpha_end: float = 0.5
    co_warmup: int = 100
    co_schedule: str = "linear"
    co_mutual: bool = False
    co_mutual_weight: float = 0.5
    # Hidden-state / attention: the layer map and weight go to the chosen strategy's section.
    layer_map: str = ""  # "0:1, 1:3"; empty = evenly spaced
    layer_weight: float = 1.0
    hidden_loss: str = "mse"
    attention_loss: str = "kl"
    attention_heads: str = "average"
    base: dict = field(default_factory=dict)  # the rest of the config (warm-up, logging, ...) kept as is

    @classmethod
    def from_config(cls, config: DistillConfig) -> "SetupForm":
        c = config
        layers = c.attention if c.strategy == "attention" else c.hidden
        return cls(teacher=c.teacher.name_or_path, student=c.student.name_or_path or "",
                   student_kind=STUDENT_PRUNED if c.student.init_from_teacher_layers else STUDENT_CHECKPOINT,
                   keep_layers=c.student.init_from_teacher_layers or 6, strategy=c.strategy,
                   divergence=c.loss.divergence, alpha=c.loss.alpha, temperature=c.loss.temperature,
                   beta=c.loss.beta, max_steps=c.train.max_steps, lr=c.train.lr, batch_size=c.train.batch_size,
                   seq_len=c.train.seq_len, lora=c.student.lora.enabled, bf16=c.train.bf16,
                   run_name=c.output.run_name or "", evaluate=c.evaluation.at_end,
                   on_nonfinite=c.train.on_nonfinite,
                   teacher_cache=c.loss.teacher_cache or "", gen_backend=c.generation.backend,
                   gen_prompts=c.generation.prompts, gen_api_base_url=c.generation.api_base_url,
                   gen_api_model=c.generation.api_model, gen_api_key_env=c.generation.api_key_env,
                   gen_temperature=c.generation.temperature, gen_top_p=c.generation.top_p,
                   gen_max_new_tokens=c.generation.max_new_tokens, gen_samples=c.generation.samples_per_prompt,
                   gen_concurrency=c.generation.concurrency, gen_seed=c.generation.seed,
                   gen_prompt_column=c.generation.prompt_column, gen_max_prompts=c.generation.max_prompts or 0,
                   gen_dataset=c.generation.dataset or "", co_teacher_lr=c.co_distillation.teacher_lr,
                   co_alpha_start=c.co_distillation.alpha_start, co_alpha_end=c.co_distillation.alpha_end,
                   co_warmup=c.co_distillation.alpha_warmup_steps, co_schedule=c.co_distillation.alpha_schedule,
                   co_mutual=c.co_distillation.mutual, co_mutual_weight=c.co_distillation.mutual_weight,
                   layer_map=", ".join(layers.layer_map), layer_weight=layers.weight, hidden_loss=c.hidden.loss,
                   attention_loss=c.attention.loss, attention_heads=c.attention.heads, base=c.to_dict())


_HINTS = typing.get_type_hints(SetupForm)


def _check_reference(gate: Gate, value: str | None, name: str, problems: list, suffixes=()) -> None:
    problem = gate.reference_problem(value, suffixes)
    if problem:
        problems.append((name, problem))


def _as_int(value, name: str, problems: list) -> int | None:
    """A whole number from what a Number or Slider sends (a float), refused naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        problems.append((name, f"must be a whole number, got {show(value)}"))
        return None
    try:
        number = float(value)
        whole = int(number)
    except (ValueError, OverflowError):  # text, NaN, inf, 10**400
        problems.append((name, f"must be a whole number, got {show(value)}"))
        return None
    if number != whole:
        problems.append((name, f"must be a whole number, got {show(value)}"))
        return None
    return whole


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond the float range
        return False


def _typed(form: SetupForm) -> SetupForm:
    """The form with each value of the type its field declares, or ConfigError naming the field. Every
    handler is an HTTP endpoint too: a visitor may send any JSON value for any field, not only what the
    components offer. Text is checked (configbase.text_problem: length, NUL, lone surrogates) before
    anything looks at it as a path."""
    problems, values = [], {}
    for f in dataclasses.fields(SetupForm):
        value, kind = getattr(form, f.name), _HINTS[f.name]
        if f.name == "base":
            values[f.name] = value
        elif kind in (str, str | None):
            if value is None:
                values[f.name] = None if kind != str else ""
            elif not isinstance(value, str):
                problems.append((f.name, f"expected text, got {show(value)}"))
            elif problem := text_problem(value):
                problems.append((f.name, problem))
            else:
                values[f.name] = value
        elif kind is bool:
            if not isinstance(value, (bool, type(None))):
                problems.append((f.name, f"expected true or false, got {show(value)}"))
            values[f.name] = bool(value)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
                problems.append((f.name, f"expected a finite number, got {show(value)}"))
            values[f.name] = value
        else:  # whole numbers: checked by _as_int where they are read
            values[f.name] = value
    if problems:
        raise ConfigError(problems)
    return SetupForm(**values)


@dataclass
class Launch:
    config: DistillConfig
    processes: int
    accelerate_config: str | None


def form_to_config(form: SetupForm, gate: Gate, uploads_dir: Path) -> Launch:
    """The config and how to launch it. Raises ConfigError naming every bad field; copies an upload into
    uploads_dir so the job still finds it after the browser's temporary file is gone. Every path and model
    reference passes the gate (workbench/gate.py), whichever data kind or strategy the form says."""
    form = _typed(form)
    problems: list[tuple[str, str]] = []
    ints = {name: _as_int(getattr(form, name), key, problems) for name, key in
            (("max_steps", "train.max_steps"), ("batch_size", "train.batch_size"), ("seq_len", "train.seq_len"),
             ("keep_layers", "student.init_from_teacher_layers"), ("processes", "num_processes"),
             ("gen_max_new_tokens", "generation.max_new_tokens"), ("gen_samples", "generation.samples_per_prompt"),
             ("gen_concurrency", "generation.concurrency"), ("gen_seed", "generation.seed"),
             ("co_warmup", "co_distillation.alpha_warmup_steps"))}
    max_prompts = _as_int(form.gen_max_prompts, "generation.max_prompts", problems) if form.gen_max_prompts else None
    if ints["processes"] is not None and not 1 <= ints["processes"] <= MAX_PROCESSES:
        problems.append(("num_processes", f"must be from 1 to {MAX_PROCESSES}, got {ints['processes']}"))
    data = dict(form.base)
    pruned = form.student_kind == STUDENT_PRUNED
    teacher, student = form.teacher.strip(), "" if pruned else form.student.strip()
    _check_reference(gate, teacher, "teacher.name_or_path", problems)
    _check_reference(gate, student, "student.name_or_path", problems)
    accelerate_config = form.accelerate_config.strip() or None
    if ints["processes"] is not None:
        problems.extend(gate.launch_problems(ints["processes"], accelerate_config))
    data["teacher"] = {**data.get("teacher", {}), "name_or_path": teacher}
    data["student"] = {**data.get("student", {}), "name_or_path": student,
                       "init_from_teacher_layers": (ints["keep_layers"] or 0) if pruned else 0,
                       "lora": {**data.get("student", {}).get("lora", {}), "enabled": bool(form.lora)}}
    if form.strategy == "hard_label":
        # The teacher writes the data: the runner points data.source at its completions.
        data["data"] = {**data.get("data", {}), "source": "", "validation_source": None, "validation_split": None}
        data["generation"] = {**_generation_section(form, data.get("generation", {}), ints, gate, uploads_dir,
                                                    problems), "max_prompts": max_prompts or None}
    else:
        data["data"] = _data_section(form, data.get("data", {}), gate, uploads_dir, problems)
    data["strategy"] = form.strategy
    data["co_distillation"] = {**data.get("co_distillation", {}), "teacher_lr": form.co_teacher_lr,
                               "alpha_start": form.co_alpha_start, "alpha_end": form.co_alpha_end,
                               "alpha_warmup_steps": ints["co_warmup"], "alpha_schedule": form.co_schedule,
                               "mutual": bool(form.co_mutual), "mutual_weight": form.co_mutual_weight}
    if form.strategy in ("hidden_state", "attention"):
        section = "hidden" if form.strategy == "hidden_state" else "attention"
        pairs = [p.strip() for p in (form.layer_map or "").replace(";", ",").split(",") if p.strip()]
        chosen = {"layer_map": pairs, "weight": form.layer_weight}
        chosen.update({"loss": form.hidden_loss} if section == "hidden" else
                      {"loss": form.attention_loss, "heads": form.attention_heads})
        data[section] = {**data.get(section, {}), **chosen}
    # Only soft_label reads a cache; the panel is hidden for the others, so its value must not leak in.
    cache = (form.teacher_cache or "").strip() or None if form.strategy == "soft_label" else None
    if cache and (problem := gate.path_problem(cache)):
        problems.append(("loss.teacher_cache", problem))
    data["loss"] = {**data.get("loss", {}), "divergence": form.divergence, "alpha": form.alpha,
                    "temperature": form.temperature, "beta": form.beta, "teacher_cache": cache}
    train = data.get("train", {})
    # A curve needs points: log at least ~20 times per run, whatever the base config's interval.
    logging = min(train.get("logging_steps", 10), max(1, (ints["max_steps"] or 0) // 20))
    data["train"] = {**train, "max_steps": ints["max_steps"], "lr": form.lr, "batch_size": ints["batch_size"],
                     "seq_len": ints["seq_len"], "bf16": form.bf16, "logging_steps": logging,
                     "on_nonfinite": form.on_nonfinite}
    data["output"] = {**data.get("output", {}), "run_name": form.run_name.strip() or None}
    data["evaluation"] = {**data.get("evaluation", {}), "at_end": bool(form.evaluate)}
    if gate.max_steps is not None and (ints["max_steps"] or 0) > gate.max_steps:
        problems.append(("train.max_steps", f"this app is reachable by others: at most {gate.max_steps} steps "
                                            "per run"))
    if problems:
        raise ConfigError(problems)
    config = gate.check(DistillConfig.from_dict(data))
    if pruned and not teacher:
        raise ConfigError([("teacher.name_or_path", "is required to prune a student from it")])
    return Launch(config, ints["processes"], accelerate_config)


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


def _generation_section(form: SetupForm, section: dict, ints: dict, gate: Gate, uploads_dir: Path,
                        problems: list) -> dict:
    prompts = form.gen_prompts.strip()
    if form.gen_upload:
        upload = Path(form.gen_upload)
        if upload.suffix.lower() not in DATA_SUFFIXES:
            problems.append(("generation.prompts", f"{upload.name}: use a .jsonl, .json, .csv or .parquet file"))
        elif not _is_file(upload):
            problems.append(("generation.prompts", f"the upload {upload.name} is not a file"))
        elif problem := gate.upload_problem(str(upload)):
            problems.append(("generation.prompts", problem))
        else:
            prompts = _keep_upload(upload, uploads_dir, "generation.prompts")
    else:
        _check_reference(gate, prompts, "generation.prompts", problems, DATA_SUFFIXES)
    dataset = (form.gen_dataset or "").strip() or None
    if dataset and (problem := gate.path_problem(dataset)):
        problems.append(("generation.dataset", problem))
    return {**section, "backend": form.gen_backend, "prompts": prompts, "api_base_url": form.gen_api_base_url.strip(),
            "api_model": form.gen_api_model.strip(), "api_key_env": form.gen_api_key_env.strip(),
            "temperature": form.gen_temperature, "top_p": form.gen_top_p,
            "max_new_tokens": ints["gen_max_new_tokens"], "samples_per_prompt": ints["gen_samples"],
            "concurrency": ints["gen_concurrency"], "seed": ints["gen_seed"],
            "prompt_column": form.gen_prompt_column.strip() or "prompt", "dataset": dataset}


def _data_section(form: SetupForm, section: dict, gate: Gate, uploads_dir: Path, problems: list) -> dict:
    if form.data_kind == DATA_DEFAULT:
        return {**section, "source": "defaults:corpus/train.jsonl",
                "validation_source": "defaults:corpus/validation.jsonl"}
    section = {**section, "validation_source": None, "validation_split": None}
    if form.data_kind == DATA_HUB:
        if not form.hub_dataset.strip():
            problems.append(("data.source", "name a hub dataset id, e.g. roneneldan/TinyStories"))
        _check_reference(gate, form.hub_dataset, "data.source", problems, DATA_SUFFIXES)
        return {**section, "source": form.hub_dataset.strip()}
    if not form.upload:
        problems.append(("data.source", "choose a file to upload (.txt, .jsonl, .json, .csv or .parquet)"))
        return section
    upload = Path(form.upload)
    limit_mb = min(section.get("max_file_mb", 512), gate.max_upload_mb or float("inf"))
    if upload.suffix.lower() not in DATA_SUFFIXES:
        problems.append(("data.source", f"{upload.name}: use a .txt, .jsonl, .json, .csv or .parquet file"))
    elif not _is_file(upload):
        problems.append(("data.source", f"the upload {upload.name} is not a file"))
    elif problem := gate.upload_problem(form.upload):
        problems.append(("data.source", problem))
    elif upload.stat().st_size > limit_mb * 2**20:
        problems.append(("data.source", f"{upload.name} is {upload.stat().st_size / 2**20:.1f} MiB, over the "
                                        f"{limit_mb} MiB limit (data.max_file_mb)"))
    else:
        return {**section, "source": _keep_upload(upload, uploads_dir, "data.source")}
    return section
