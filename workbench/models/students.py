"""A run's models at any point of its training: the initial student (step 0), each complete checkpoint,
and the final student, next to the run's teacher and tokenizer. The runner builds the initial student
here; the inspector and the evaluation load every later point through the same code."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.config.schema import DistillConfig
from workbench.models.loading import load_model, load_student, load_tokenizer
from workbench.models.pruning import student_from_teacher
from workbench.store.rundir import CONFIG, RunDir

ADAPTER_CONFIG = "adapter_config.json"  # what peft writes into a LoRA student's checkpoint


@dataclass(frozen=True)
class StudentPoint:
    step: int
    label: str               # "initial", "checkpoint-50", "final"
    path: Path | None        # None for the initial student, which is built from the config

    @property
    def key(self) -> str:
        return f"{self.label} (step {self.step})"


def initial_student(config: DistillConfig, teacher: torch.nn.Module | None = None) -> tuple[torch.nn.Module, object]:
    """(student before training, its tokenizer): a named checkpoint, or the teacher's layers kept
    (then with the teacher's tokenizer, which a pruned student shares). `teacher`: an fp32 teacher
    already loaded, to prune from instead of loading it again (its weights are copied, not changed)."""
    if config.student.init_from_teacher_layers:
        source = teacher if teacher is not None else load_model(config.teacher, "teacher", torch.float32)
        return student_from_teacher(source, config.student.init_from_teacher_layers), student_tokenizer(config)
    return load_student(config.student), student_tokenizer(config)


def student_tokenizer(config: DistillConfig):
    """The tokenizer training used (the student's; the teacher's for a student pruned from it), so held-out
    text is tokenized for evaluation and inspection exactly as for training."""
    if config.student.init_from_teacher_layers:
        return load_tokenizer(config.teacher, "teacher")
    return load_tokenizer(config.student, "student")


def student_points(run: RunDir, config: DistillConfig) -> list[StudentPoint]:
    """Step 0, every complete checkpoint, and the final student when saved; ordered by step. A final
    student replaces a checkpoint taken at the same step (they hold the same weights)."""
    points = {0: StudentPoint(0, "initial", None)}
    for path in run.checkpoints.glob("checkpoint-*"):
        step = path.name.split("-")[-1]
        if step.isdigit() and run.is_complete_checkpoint(path) and _within(path, run):
            # A checkpoint of a student trained with other parts keeps it in its own folder.
            student = path / "student" if (path / "student" / "config.json").exists() else path
            points[int(step)] = StudentPoint(int(step), path.name, student)
    if (run.student / "config.json").exists() and _within(run.student, run):
        step = run.read_status().get("step") or config.train.max_steps
        points[int(step)] = StudentPoint(int(step), "final", run.student)
    return [points[s] for s in sorted(points)]


def load_student_at(config: DistillConfig, point: StudentPoint, teacher: torch.nn.Module | None = None,
                    initial: torch.nn.Module | None = None) -> torch.nn.Module:
    """The student at `point` in fp32 eval mode. A LoRA run's checkpoints hold only adapters: they are
    applied to (a copy of) the initial student and merged, so every point is a plain causal LM.
    `teacher` (fp32) and `initial` (the step-0 student) spare loading them again when already in memory."""
    def base() -> torch.nn.Module:
        return copy.deepcopy(initial) if initial is not None else initial_student(config, teacher)[0]

    if point.path is None:
        model = base()
    elif is_adapter_only(point.path):
        from peft import PeftModel
        model = PeftModel.from_pretrained(base(), str(point.path)).merge_and_unload()
    else:
        from transformers import AutoModelForCausalLM
        # Never the checkpoint's own code, whatever its config.json asks (auto_map).
        model = AutoModelForCausalLM.from_pretrained(point.path, dtype=torch.float32, local_files_only=True,
                                                     trust_remote_code=False)
    model.eval().requires_grad_(False)
    return model


def is_adapter_only(folder: Path) -> bool:
    """A LoRA checkpoint: adapter weights and no model config of its own."""
    return (folder / ADAPTER_CONFIG).exists() and not (folder / "config.json").exists()


def reading_config(run: RunDir, config: DistillConfig | None = None) -> DistillConfig:
    """A run's config as its readers (evaluation, inspector) need it: a co-distillation run trained its
    teacher too, so once it is saved (RUN/teacher) the student is compared with that teacher. Not for a
    student pruned from the teacher: its step-0 point must be cut from the teacher it started from.
    `config`: the run's config.json already loaded."""
    config = config or DistillConfig.load(run.file(CONFIG))
    trained = run.path / "teacher"
    if (config.strategy == "co_distillation" and not config.student.init_from_teacher_layers
            and (trained / "config.json").exists() and _within(trained, run)):
        config = config.replace(teacher=dataclasses.replace(config.teacher, name_or_path=str(trained), revision=None,
                                                            gguf_file=None))
    return config


def _within(path: Path, run: RunDir) -> bool:
    """Whether a saved model of the run lies in the run's folder once links are followed: a folder copied
    in from elsewhere may hold links to anywhere, and nothing read from it passes the gate otherwise."""
    try:
        resolved, home = path.resolve(), run.path.resolve()
    except (OSError, RuntimeError):
        return False
    return home in resolved.parents


def load_teacher_fp32(config: DistillConfig) -> torch.nn.Module:
    """The teacher as the inspector and evaluation use it: fp32 (exact probabilities), eval, frozen."""
    return load_model(config.teacher, "teacher", torch.float32).eval().requires_grad_(False)
