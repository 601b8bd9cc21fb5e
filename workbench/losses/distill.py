"""The distillation loss on full logits: alpha * CE(student, data) + (1 - alpha) * KD(teacher signal, student),
each term logged on its own. The fused form (workbench/losses/fused.py) gives the same values and gradients
from hidden states, chunk by chunk."""
from __future__ import annotations

import torch
from torch import Tensor

from workbench.losses.divergences import ce_loss, combine
from workbench.losses.signal import TeacherSignal


def distill_loss(student_logits: Tensor, teacher: TeacherSignal | None, labels: Tensor, spec,
                 num_items_in_batch: int | Tensor | None = None) -> dict[str, Tensor]:
    """{"loss": alpha*CE + (1-alpha)*KD, "ce": CE, "kd": KD} for a LossSpec `spec`; all 0-dim tensors.
    student_logits (..., V), labels (...) already shifted; `teacher` a signal over the same positions.

    teacher None is the CE-only baseline: no "kd" key and loss = CE. A term whose weight is 0 is still
    computed for logging, but under no_grad so it costs no backward, and loss is then exactly the other
    term."""
    alpha = spec.alpha
    if teacher is None:
        ce = ce_loss(student_logits, labels, num_items_in_batch)
        return {"loss": ce, "ce": ce}

    # set_grad_enabled(is_grad_enabled() and ...) so a caller's own no_grad (evaluation) still holds.
    with torch.set_grad_enabled(torch.is_grad_enabled() and alpha != 0):
        ce = ce_loss(student_logits, labels, num_items_in_batch)
    with torch.set_grad_enabled(torch.is_grad_enabled() and alpha != 1):
        kd_value = teacher.kd(student_logits, labels, spec, num_items_in_batch)
    return {"loss": combine(ce, kd_value, alpha), "ce": ce, "kd": kd_value}
