"""Whether a run's teacher can be set beside its student: is it a checkpoint here (a hard-label teacher
may be an endpoint), and do both read the same tokens, so agreement, KL and the inspector compare them
position by position."""
from __future__ import annotations

from pathlib import Path

from workbench.config.schema import DistillConfig
from workbench.hardlabel.generation import read_manifest
from workbench.models.loading import load_tokenizer, tokenizer_hash
from workbench.models.students import student_tokenizer


def has_local_teacher(config: DistillConfig) -> bool:
    """Whether the run's teacher is a checkpoint here. A hard-label teacher may be an API endpoint, and a
    reused dataset counts as this teacher's only when its manifest says this checkpoint wrote it."""
    name, g = config.teacher.name_or_path.strip(), config.generation
    if not name or config.strategy != "hard_label":
        return bool(name)
    if g.dataset:
        settings = (read_manifest(Path(g.dataset).expanduser().parent) or {}).get("settings", {})
        return settings.get("backend") == "local" and settings.get("teacher") == name
    return g.backend == "local"


def token_comparable(config: DistillConfig) -> bool:
    """Whether teacher and student read the same tokens, so their next-token distributions can be compared
    position by position (agreement, KL, the inspector). Logit strategies check this at launch and a
    pruned student shares the teacher's tokenizer; a hard-label run may pair any two tokenizers."""
    if not has_local_teacher(config):
        return False
    if config.needs_shared_vocab() or config.student.init_from_teacher_layers:
        return True
    return tokenizer_hash(load_tokenizer(config.teacher, "teacher")) == tokenizer_hash(student_tokenizer(config))


def is_cross_tokenizer(config: DistillConfig) -> bool:
    """A cross-tokenizer run (loss.cross_tokenizer) whose local teacher reads other tokens than its student:
    the two are compared where both have read the same text (eval/aligned.py, eval/aligned_tokens.py). With
    one tokenizer such a run is compared token by token, as any other."""
    return config.loss.cross_tokenizer != "off" and has_local_teacher(config) and not token_comparable(config)
