"""Hard-label (sequence-level) KD: the teacher wrote the data (workbench/hardlabel/generation.py), so training is
fine-tuning on its completions, CE on completion tokens only (the prompt's labels are -100).

Only text passes from teacher to student, so their tokenizers may differ: no vocabulary check, and the
teacher is not loaded for training. The loss is the soft-label loss without a teacher: the student's
CE, fused with its LM head when it can be.
"""
from __future__ import annotations

from workbench.engine.strategies.soft import SoftLabelStrategy


class HardLabelStrategy(SoftLabelStrategy):
    name = "hard_label"
    needs_teacher = False

    @classmethod
    def uses_teacher(cls, config) -> bool:
        return False

