"""The strategy interface: how one batch becomes named loss terms.

The trainer knows nothing about teachers or divergences. It asks the strategy for the module to
optimise (`trainable_model`), calls `compute_loss` on every micro-batch and logs every returned term
by name. Hard-label, co-distillation, hidden-state and attention strategies plug in here: a strategy
that trains extra weights (a projection, a live teacher) returns a module holding them from
`trainable_model` and saves them in `save_extra`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch

from workbench.config import DistillConfig


class Strategy(ABC):
    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True
    # Logit-based strategies compare distributions token by token: one vocabulary is required.
    needs_shared_vocab: ClassVar[bool] = True

    @classmethod
    def uses_teacher(cls, config: DistillConfig) -> bool:
        """Whether this run needs the teacher loaded (a strategy may do without it for some settings)."""
        return cls.needs_teacher

    def __init__(self, config: DistillConfig, teacher: torch.nn.Module | None, shared_vocab: int | None,
                 cache=None):
        self.config = config
        self.teacher = teacher
        self.shared_vocab = shared_vocab
        self.cache = cache  # a TeacherCache when loss.teacher_cache is set: the stored teacher signal

    def to(self, device: torch.device) -> "Strategy":
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    def trainable_model(self, student: torch.nn.Module) -> torch.nn.Module:
        return student

    @abstractmethod
    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     num_items_in_batch: torch.Tensor | int | None) -> dict[str, torch.Tensor]:
        """Return {"loss": total, <term>: value, ...}; each a 0-dim tensor normalised per target token
        over the whole accumulated batch (num_items_in_batch) so accumulation is exact."""

    def save_extra(self, output_dir: Path) -> None:
        """Save whatever the strategy trained besides the student."""
