"""Soft-label KD (Hinton et al.): the student matches the teacher's softened next-token distribution.

total = alpha * CE(student, data) + (1 - alpha) * T^2 * D(teacher_T || student_T)
"""
from __future__ import annotations

import torch

from workbench.losses import distill_loss
from workbench.strategies.base import Strategy


class SoftLabelStrategy(Strategy):
    name = "soft_label"

    @classmethod
    def uses_teacher(cls, config) -> bool:
        # alpha = 1 is plain fine-tuning (the CE-only baseline): the teacher would never run.
        return config.loss.alpha < 1.0

    def compute_loss(self, model, inputs, num_items_in_batch):
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        # Causal shift: logits at i predict token i+1. (B, L-1, V) logits vs (B, L-1) labels.
        labels = inputs["labels"][:, 1:]
        student_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        teacher_logits = None
        if self.config.loss.alpha < 1.0:
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        return distill_loss(student_logits, teacher_logits, labels, self.config.loss,
                            num_items_in_batch=num_items_in_batch, kd_vocab=self.shared_vocab)
