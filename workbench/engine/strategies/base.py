"""The strategy interface: how one batch becomes named loss terms.

The trainer knows nothing about teachers or divergences. It asks the strategy for the module to
optimise (`trainable_model`), lets it replace a training batch's tokens (`prepare_batch`), calls
`compute_loss` on every micro-batch and logs every returned term by name. A strategy that trains extra weights (a live teacher, a projection) returns them with the
student in a TrainedTogether (strategies/together.py) from `trainable_model`: the trainer checkpoints
and resumes it part by part, and the runner saves each part where it belongs.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from workbench.config.schema import DistillConfig
from workbench.engine.phase_clock import PhaseClock


class Strategy(ABC):
    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True
    # A teacher that trains too (co-distillation) loads in fp32 with gradients, like a student.
    trains_teacher: ClassVar[bool] = False

    @classmethod
    def uses_teacher(cls, config: DistillConfig) -> bool:
        """Whether this run needs the teacher loaded (a strategy may do without it for some settings)."""
        return cls.needs_teacher

    def __init__(self, config: DistillConfig, teacher: torch.nn.Module | None, shared_vocab: int | None,
                 cache=None, bridge=None):
        self.config = config
        self.teacher = teacher
        self.shared_vocab = shared_vocab
        self.cache = cache  # a TeacherCache when loss.teacher_cache is set: the stored teacher signal
        # A TokenBridge when loss.cross_tokenizer is on: the teacher reads its own tokens of the same text.
        self.bridge = bridge
        self.clock = PhaseClock()  # the run's, set by the runner: the strategy times its teacher and its loss
        # KeptStates with loss.reuse_teacher, set by the runner: the teacher's held-out hidden states across runs.
        self.states = None

    def to(self, device: torch.device) -> "Strategy":
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    def configure(self, tokenizer, vocab_limit: int | None) -> None:
        """Told the student's tokenizer and how many logits both models share, before training starts
        (a strategy that samples needs its pad and end tokens)."""

    def logged_samples(self) -> list[dict]:
        """Sampled completions to keep in the run's samples.jsonl since the last log (and forget them)."""
        return []

    def trainable_model(self, student: torch.nn.Module) -> torch.nn.Module:
        return student

    def prepare_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training batch the loss will see: by default the data's. A strategy may replace its tokens
        (input_ids, attention_mask, labels: (B, L), labels -100 where no loss is taken), e.g. with
        completions the student samples (on-policy distillation). The trainer calls it for each
        micro-batch of a step before their target tokens are counted, so the per-token mean over the
        accumulated batch stays exact; held-out batches are never prepared."""
        return batch

    @abstractmethod
    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     num_items_in_batch: torch.Tensor | int | None) -> dict[str, torch.Tensor]:
        """Return {"loss": total, <term>: value, ...}; each a 0-dim tensor normalised per target token
        over the whole accumulated batch (num_items_in_batch) so accumulation is exact."""

    global_step: int = 0  # set by the trainer before every loss: for schedules
    rank: int = 0  # this process's index in a multi-process run, set by the trainer
    # Set by the trainer while it evaluates on held-out data: those batches are the same at every
    # evaluation (a frozen teacher's answers to them may be kept).
    evaluating: bool = False

    def begin_step(self, step: int) -> None:
        """Called once per optimizer step, before its micro-batches are prepared; `step` counts the steps
        already taken (0 for the first)."""
        self.global_step = step

    def end_step(self) -> None:
        """Called once the step's update is done (before logging, evaluation and checkpointing)."""

    def step_values(self, step: int) -> dict[str, float]:
        """Per-step values to log beside the loss terms (e.g. a scheduled weight)."""
        return {}

    def parameter_groups(self, model: torch.nn.Module) -> list[dict] | None:
        """Parts trained at their own learning rates: [{"params": [(name, parameter), ...], "lr": ...}, ...]
        (no "lr": train.lr), or None for Trainer's usual groups. The first group's gradient norm is the
        one logged; each group is clipped on its own."""
        return None
