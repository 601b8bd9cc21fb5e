"""The distillation loss computed in chunks of positions and fused with the LM heads, so full-vocabulary
logits for the whole batch never exist at once (Liger-Kernel's fused linear + loss, in plain torch).

For each chunk of c positions the student's and the teacher's logits (c, V) are computed from their last
hidden states and LM-head weights, the loss terms of workbench/losses/divergences.py are evaluated on them, and the
gradients with respect to the student's hidden states and head weight are taken right there; only those
gradients (the size of the hidden states and of the head) are kept for backward. Peak extra memory is a
few (c, V) blocks instead of several (N, V) ones, and the value and gradients equal the naive
`distill_loss` on full logits.

Two ways through a chunk, same values and gradients:
- closed form, for CE alone and for forward KL against a dense teacher (the default): one softmax per side,
  the gradient written down (alpha (q - onehot) + (1 - alpha) T (q_T - p_T)) into the softmax's own buffer,
  and only target positions visited. Autograd over (c, V) costs several more passes over memory than the
  loss itself, and at V 49k those passes, not the matrix products, made the fused loss slower than the plain one.
  Against stored top-k rows under forward KL the same, in workbench/losses/fused_cached.py.
- autograd per chunk, for every other divergence and signal (stored top-k rows, whatever a signal computes).

Shapes: student_hidden (N, H_s), student_weight (V_s, H_s), labels (N,) already shifted (labels[i] is the
target of position i), -100 ignored; the teacher is a signal over the same N positions
(workbench/losses/signal.py).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.losses import fused_cached
from workbench.losses.divergences import IGNORE_INDEX, combine
from workbench.losses.signal import LiveHead, LiveLogits, TeacherSignal

DEFAULT_CHUNK = 128

Rows = slice | Tensor  # positions of a chunk: a slice, or the indices of its target positions


def _dense_logits(teacher: TeacherSignal | None, spec) -> Callable[[Rows], Tensor] | None:
    """The teacher's logits (c, kd_vocab) at some rows, where the closed form applies: a dense teacher
    (its logits, or its hidden states and head) under forward KL. None: the autograd path."""
    if spec.divergence != "forward_kl":
        return None
    if isinstance(teacher, LiveHead):
        return lambda rows: F.linear(teacher.hidden[rows], teacher.weight, teacher.bias)[:, :teacher.kd_vocab]
    if isinstance(teacher, LiveLogits):
        return lambda rows: teacher.logits[rows][:, :teacher.kd_vocab]
    return None


def _closed_form(s_logits: Tensor, t_logits: Tensor | None, labels: Tensor, spec, need_grad: bool,
                 kd_vocab: int | None = None):
    """Summed CE and forward KL (times T^2, over the first kd_vocab logits) of c target positions, and the
    gradient of their weighted sum with respect to s_logits (c, V) float32. t_logits None: CE alone."""
    alpha, temp = (1.0, 1.0) if t_logits is None else (spec.alpha, spec.temperature)
    picked = torch.arange(len(labels), device=labels.device), labels
    log_q = torch.log_softmax(s_logits, -1)
    ce = -log_q[picked].sum()
    kd = grad = None
    if t_logits is not None:
        kd_logits = s_logits[:, :kd_vocab]
        if kd_logits.shape[-1] != t_logits.shape[-1]:
            raise ValueError(f"vocabulary sizes differ: student has {s_logits.shape[-1]}, teacher has "
                             f"{t_logits.shape[-1]}; slice the padded rows off first")
        shared = temp == 1 and kd_logits.shape == s_logits.shape  # KD's student softmax is CE's
        log_q_kd = log_q if shared else torch.log_softmax(kd_logits / temp, -1)
        log_p = torch.log_softmax(t_logits.float() / temp if temp != 1 else t_logits.float(), -1)
        p = log_p.exp()
        # sum p (log p - log q), in log_p's buffer. A token without teacher mass (-inf logit) adds 0, as in
        # divergences.py: its log p is clamped to a finite number, so 0 * log 0 is not NaN.
        log_p.clamp_(min=torch.finfo(log_p.dtype).min)
        kd = torch.linalg.vecdot(p, log_p.sub_(log_q_kd)).sum() * temp ** 2
    if not need_grad:
        return ce, kd, None
    if t_logits is None or alpha == 1:  # CE alone: q - onehot
        grad = log_q.exp_()
    elif shared:  # alpha (q - onehot) + (1 - alpha) (q - p) = q - (1 - alpha) p - alpha onehot
        grad = log_q.exp_().sub_(p, alpha=1 - alpha)
    else:  # alpha (q - onehot) + (1 - alpha) T (q_T - p_T), KD on its columns only
        grad_kd = log_q_kd.exp_().sub_(p).mul_((1 - alpha) * temp)
        if alpha == 0:
            return ce, kd, F.pad(grad_kd, (0, s_logits.shape[-1] - grad_kd.shape[-1]))
        grad = log_q.exp_().mul_(alpha)
        grad[:, :grad_kd.shape[-1]] += grad_kd
    if alpha > 0:
        grad[picked] -= alpha
    return ce, kd, grad


def _autograd_chunk(s_logits: Tensor, teacher: TeacherSignal | None, rows: slice, labels: Tensor, spec,
                    need_grad: bool):
    """The closed form's (ce, kd, grad) by autograd over the chunk's (c, V) logits: any divergence, any signal.
    num_items_in_batch=1 makes the signal's KD the chunk's sum (with T^2)."""
    with torch.set_grad_enabled(need_grad):
        s_logits = s_logits.detach().requires_grad_(need_grad)  # the chunk's graph starts here, ends at its loss
        ce = F.cross_entropy(s_logits, labels, reduction="sum", ignore_index=IGNORE_INDEX)
        kd = None if teacher is None else teacher.kd(s_logits, labels, spec, num_items_in_batch=1, rows=rows)
        total = ce if kd is None else combine(ce, kd, spec.alpha)
        grad = torch.autograd.grad(total, s_logits)[0] if need_grad else None
    return ce.detach(), None if kd is None else kd.detach(), grad


def _chunks(labels: Tensor, chunk: int, closed: bool):
    """The rows of each chunk. The closed form visits target positions only (an ignored one adds nothing,
    and its logits need not be finite); slices while every position is a target, so nothing is copied."""
    targets = (labels != IGNORE_INDEX).nonzero().squeeze(1) if closed else None
    if targets is None or len(targets) == len(labels):
        return [slice(start, start + chunk) for start in range(0, len(labels), chunk)]
    return list(targets.split(chunk))


class _FusedDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_hidden, student_weight, student_bias, teacher, labels, spec, count, chunk, need_grad):
        # The heads run in the precision the surrounding autocast chooses, like the model's own head (the
        # weight cast once, not per chunk), and so do the gradient's matrix products, as autograd's would;
        # the loss terms and the gradient buffers are float32.
        device = student_hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else student_weight.dtype
        hidden_all, weight = student_hidden.detach().to(dtype), student_weight.detach().to(dtype)
        bias = None if student_bias is None else student_bias.detach().to(dtype)
        # Gradient buffers only when a backward will come (not under no_grad, as in evaluation), and only for
        # what trains: a frozen head (LoRA, train.freeze_embeddings) skips the (V, H) product per chunk, a
        # third of the head's work.
        grad_hidden = torch.zeros_like(student_hidden, dtype=torch.float32) if need_grad else None
        trains_head = need_grad and student_weight.requires_grad
        grad_weight = torch.zeros_like(student_weight, dtype=torch.float32) if trains_head else None
        grad_bias = (torch.zeros_like(student_bias, dtype=torch.float32)
                     if need_grad and bias is not None and student_bias.requires_grad else None)
        dense = None if teacher is None else _dense_logits(teacher, spec)
        cached = fused_cached.applies(teacher, spec, student_weight.shape[0])
        closed = teacher is None or dense is not None or cached
        ce_total = torch.zeros((), dtype=torch.float32, device=student_hidden.device)
        kd_total = None if teacher is None else torch.zeros_like(ce_total)
        for rows in _chunks(labels, chunk, closed):
            hidden = hidden_all[rows]
            s_logits = F.linear(hidden, weight, bias).float()
            if cached:
                ce, kd, grad = fused_cached.cached_closed_form(s_logits, teacher, rows, labels[rows], spec, need_grad)
            elif closed:
                ce, kd, grad = _closed_form(s_logits, dense and dense(rows), labels[rows], spec, need_grad,
                                            None if teacher is None else teacher.kd_vocab)
            else:
                ce, kd, grad = _autograd_chunk(s_logits, teacher, rows, labels[rows], spec, need_grad)
            ce_total += ce
            if kd is not None:
                kd_total += kd
            if need_grad:
                _accumulate(grad.to(dtype), hidden, weight, rows, grad_hidden, grad_weight, grad_bias)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias, count)
        ctx.dtypes = (student_hidden.dtype, student_weight.dtype, None if student_bias is None else student_bias.dtype)
        ce_mean = ce_total / count
        kd_mean = ce_mean.new_zeros(()) if kd_total is None else kd_total / count
        ctx.mark_non_differentiable(ce_mean, kd_mean)
        # The loss must be a tensor of its own: at alpha 0 or 1 (and without a teacher) combine returns one
        # of the two terms, which mark_non_differentiable has just cut from the graph.
        loss = ce_mean if kd_total is None else combine(ce_mean, kd_mean, spec.alpha)
        return loss.clone(), ce_mean, kd_mean

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        # Only the total loss carries gradients; ce and kd are returned for logging. The buffers hold sums
        # over positions: the mean's 1/count is applied here, once, instead of on every (c, V) gradient.
        # In place: the buffers are this call's own, and a head-sized copy (V x H) is worth not making.
        *grads, count = ctx.saved_tensors
        scale = grad_loss.float() / count
        return (*(None if g is None else g.mul_(scale).to(dtype) for g, dtype in zip(grads, ctx.dtypes)),
                None, None, None, None, None, None)


def _accumulate(grad: Tensor, hidden: Tensor, weight: Tensor, rows: Rows, grad_hidden: Tensor,
                grad_weight: Tensor | None, grad_bias: Tensor | None) -> None:
    """Add one chunk's share to the gradient buffers, from its gradient wrt logits (c, V); a frozen head has
    no buffer."""
    grad_hidden[rows] = (grad @ weight).float()
    if grad_weight is not None and grad_weight.dtype == grad.dtype:
        grad_weight.addmm_(grad.T, hidden)  # in place: no (V, H) temporary per chunk
    elif grad_weight is not None:
        grad_weight += grad.T @ hidden
    if grad_bias is not None:
        grad_bias += grad.sum(0)


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
