"""Co-distillation: teacher and student train together on the same batches (Anil et al., online
distillation). The teacher learns the labels; the student learns

    alpha(step) * CE(student) + (1 - alpha(step)) * KD(teacher_T || student_T)

against the live teacher's logits (detached: the student's term never moves the teacher). Early on
the teacher is noise, so α starts high (alpha_start, default 1: CE alone) and moves to alpha_end over
alpha_warmup_steps, linearly or on a half cosine. In mutual mode (deep mutual learning) the teacher
also gets mutual_weight * KD(student_T || teacher_T) against the detached student. Both models sit in
one TrainedTogether; the teacher has its own learning rate.
"""
from __future__ import annotations

import math

import torch

from workbench.engine.strategies.base import Strategy
from workbench.engine.strategies.together import STUDENT, TrainedTogether
from workbench.losses.divergences import ce_loss, combine
from workbench.losses.signal import LiveLogits

TEACHER = "teacher"


def scheduled_alpha(step: int, start: float, end: float, warmup: int, shape: str = "linear") -> float:
    """α at `step`: start at 0, end from `warmup` on; linear, or cosine (slow at both ends)."""
    if warmup <= 0 or step >= warmup:
        return end
    t = step / warmup
    if shape == "cosine":
        t = (1 - math.cos(math.pi * t)) / 2
    return start + (end - start) * t


class CoDistillationStrategy(Strategy):
    name = "co_distillation"
    trains_teacher = True

    def alpha(self, step: int) -> float:
        c = self.config.co_distillation
        return scheduled_alpha(step, c.alpha_start, c.alpha_end, c.alpha_warmup_steps, c.alpha_schedule)

    def step_values(self, step: int) -> dict[str, float]:
        # Logged after step `step` is taken; that step's loss was computed with global_step = step - 1.
        return {"alpha": self.alpha(max(step - 1, 0))}

    def trainable_model(self, student: torch.nn.Module) -> torch.nn.Module:
        self.teacher.train().requires_grad_(True)
        return TrainedTogether(student, **{TEACHER: self.teacher})

    def parameter_groups(self, model: torch.nn.Module) -> list[dict]:
        # Names are relative to the TrainedTogether, as Trainer's weight-decay rules see them.
        return [{"params": [(f"parts.{STUDENT}.{n}", p) for n, p in model.student.named_parameters()]},
                {"params": [(f"parts.{TEACHER}.{n}", p) for n, p in model.parts[TEACHER].named_parameters()],
                 "lr": self.config.co_distillation.teacher_lr}]

    def compute_loss(self, model, inputs, num_items_in_batch):
        spec, vocab = self.config.loss, self.shared_vocab
        labels = inputs["labels"][:, 1:]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        student, teacher = outputs[STUDENT].logits[:, :-1], outputs[TEACHER].logits[:, :-1]
        n = num_items_in_batch

        def kd(learner, target):
            # The other model's logits as a fixed signal: each model learns only from its own side.
            return LiveLogits(target.detach(), vocab).kd(learner, labels, spec, n)

        ce, teacher_ce, student_kd = ce_loss(student, labels, n), ce_loss(teacher, labels, n), kd(student, teacher)
        terms = {"ce": ce, "kd": student_kd, "teacher_ce": teacher_ce}
        teacher_loss = teacher_ce
        if self.config.co_distillation.mutual:
            terms["teacher_kd"] = kd(teacher, student)
            teacher_loss = teacher_loss + self.config.co_distillation.mutual_weight * terms["teacher_kd"]
        terms["loss"] = combine(ce, student_kd, self.alpha(self.global_step)) + teacher_loss
        return terms
