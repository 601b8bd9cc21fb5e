"""The distillation loss computed in chunks of positions and fused with the LM heads, so full-vocabulary
logits for the whole batch never exist at once (Liger-Kernel's fused linear + loss, in plain torch).

For each chunk of c positions the student's and the teacher's logits (c, V) are computed from their last
hidden states and LM-head weights, the loss terms of workbench/losses/divergences.py are evaluated on them, and the
gradients with respect to the student's hidden states and head weight are taken right there; only those
gradients (the size of the hidden states and of the head) are kept for backward. Peak extra memory is a
few (c, V) blocks instead of several (N, V) ones, and the value and gradients equal the naive
`distill_loss` on full logits.

Shapes: student_hidden (N, H_s), student_weight (V_s, H_s), labels (N,) already shifted (labels[i] is the
target of position i), -100 ignored; the teacher is a signal over the same N positions
(workbench/losses/signal.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.losses.divergences import IGNORE_INDEX, combine
from workbench.losses.signal import TeacherSignal

DEFAULT_CHUNK = 128


def _chunk_terms(s_logits: Tensor, teacher: TeacherSignal | None, rows: slice, labels: Tensor,
                 spec) -> tuple[Tensor, Tensor | None]:
    """Summed (not averaged) CE and KD of one chunk: (c, V) logits, (c,) labels -> two 0-dim tensors.
    num_items_in_batch=1 makes the signal's KD the chunk's sum (with T^2); forward divides by the count."""
    ce = F.cross_entropy(s_logits, labels, reduction="sum", ignore_index=IGNORE_INDEX)
    return ce, (None if teacher is None else teacher.kd(s_logits, labels, spec, num_items_in_batch=1, rows=rows))


class _FusedDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_hidden, student_weight, student_bias, teacher, labels, spec, count, chunk, need_grad):
        # The heads run in whatever precision the surrounding autocast chooses, like the model's own head;
        # the loss terms and the gradient buffers are float32.
        alpha = spec.alpha
        # Gradient buffers only when a backward will come (not under no_grad, as in evaluation).
        grad_hidden = torch.zeros_like(student_hidden, dtype=torch.float32) if need_grad else torch.empty(0)
        grad_weight = torch.zeros_like(student_weight, dtype=torch.float32) if need_grad else torch.empty(0)
        grad_bias = (torch.zeros_like(student_bias, dtype=torch.float32)
                     if student_bias is not None and need_grad else None)
        ce_total = torch.zeros((), dtype=torch.float32, device=student_hidden.device)
        kd_total = torch.zeros_like(ce_total) if teacher is not None else None
        for start in range(0, student_hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            hidden = student_hidden[rows]
            with torch.set_grad_enabled(need_grad):
                # (c, V) float32 leaf: the chunk's graph starts here and ends at its loss
                s_logits = F.linear(hidden, student_weight, student_bias).float().detach().requires_grad_(need_grad)
                ce, kd = _chunk_terms(s_logits, teacher, rows, labels[rows], spec)
                ce_total += ce.detach()
                if kd is not None:
                    kd_total += kd.detach()
                if not need_grad:  # evaluation: the terms only
                    continue
                total = ce if kd is None else combine(ce, kd, alpha)
                (grad_logits,) = torch.autograd.grad(total / count, s_logits)
            grad_hidden[rows] = grad_logits @ student_weight.to(grad_logits.dtype)
            grad_weight += grad_logits.T @ hidden.to(grad_logits.dtype)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias if grad_bias is not None else torch.empty(0))
        ctx.has_bias = grad_bias is not None
        ctx.dtypes = (student_hidden.dtype, student_weight.dtype, None if student_bias is None else student_bias.dtype)
        ce_mean = ce_total / count
        kd_mean = ce_mean.new_zeros(()) if kd_total is None else kd_total / count
        ctx.mark_non_differentiable(ce_mean, kd_mean)
        # The loss must be a tensor of its own: at alpha 0 or 1 (and without a teacher) combine returns one
        # of the two terms, which mark_non_differentiable has just cut from the graph.
        loss = ce_mean if kd_total is None else combine(ce_mean, kd_mean, alpha)
        return loss.clone(), ce_mean, kd_mean

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        # Only the total loss carries gradients; ce and kd are returned for logging.
        # In place: the buffers are this call's own, and a head-sized copy (V x H) is worth not making.
        grad_hidden, grad_weight, grad_bias = (g.mul_(grad_loss.float()) for g in ctx.saved_tensors)
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        return (grad_hidden.to(hidden_dtype), grad_weight.to(weight_dtype),
                grad_bias.to(bias_dtype) if ctx.has_bias else None,
                None, None, None, None, None, None)


def fused_distill_loss(student_hidden: Tensor, student_weight: Tensor, labels: Tensor, spec,
                       teacher: TeacherSignal | None = None, student_bias: Tensor | None = None,
                       num_items_in_batch: int | Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> dict[str, Tensor]:
    """The same {"loss", "ce"[, "kd"]} as distill_loss on full logits, from hidden states and head weights,
    chunk positions at a time, against any teacher signal (LiveHead keeps the teacher's logits chunked too);
    None: the CE-only baseline, as distill_loss with None."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    labels = labels.reshape(-1)
    student_hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    if student_hidden.shape[0] != labels.shape[0]:
        raise ValueError(f"{student_hidden.shape[0]} hidden rows but {labels.shape[0]} labels")
    teacher = None if teacher is None else teacher.flat()
    count = (labels != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
    count = torch.as_tensor(count, device=student_hidden.device, dtype=torch.float32).clamp(min=1)
    loss, ce, kd = _FusedDistill.apply(student_hidden, student_weight, student_bias, teacher, labels, spec, count,
                                       chunk, torch.is_grad_enabled() and (student_hidden.requires_grad
                                                                           or student_weight.requires_grad))
    if teacher is None:
        return {"loss": loss, "ce": ce}
    return {"loss": loss, "ce": ce, "kd": kd}
