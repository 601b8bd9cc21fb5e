"""The fused loss's closed form against stored teacher rows (a CachedTopK signal) under forward KL: CE and
KD from one student softmax per chunk, the gradient with respect to the student's logits written into its
buffer, as workbench/losses/fused.py does for a dense teacher. Autograd over the (c, V) logits of a chunk
made the cached step slower than a plain CE step; here the KD term costs O(c k) beside CE's passes.

Plain top-k rows (sparse_kd_loss): the k + 1 buckets are the student's log q at the stored ids and the log of
its mass elsewhere, Q_rest; with P, Qb the teacher's and the student's buckets softened at T,
    KD = T^2 sum_b P_b (log P_b - log Qb_b),   g_b = dKD/ds_b = T (Qb_b - P_b)
and, through s_b = log q_v (a stored id) or log Q_rest,
    dKD/dz_v = g_v - q_v sum_b g_b            at a stored id v
             = q_v (g_rest / Q_rest - sum_b g_b)   elsewhere.
Sampled-tail rows (losses/sampled_tail.py): KD = T^2 sum_j w_j (log p_j - log q_T(v_j)) with the teacher's
weights w (summing to 1), so dKD/dz = T (q_T - scatter(w)).

Shapes: s_logits (c, V) float32 at target positions only (labels (c,), none ignored); the signal's rows (c, k).
"""
from __future__ import annotations

import torch
from torch import Tensor

from workbench.losses.sampled_tail import sample_weights
from workbench.losses.signal import CachedTopK


def applies(signal, spec, vocab: int) -> bool:
    """Stored rows under forward KL whose KD softmax is CE's (the cache's vocabulary is the student's)."""
    return (isinstance(signal, CachedTopK) and spec.divergence == "forward_kl"
            and signal.kd_vocab in (None, vocab))


def cached_closed_form(s_logits: Tensor, signal: CachedTopK, rows, labels: Tensor, spec, need_grad: bool):
    """Summed CE and KD (times T^2) of the chunk's c target positions, and the gradient of
    alpha CE + (1 - alpha) KD with respect to s_logits (c, V) float32 (None without need_grad)."""
    alpha, temp = spec.alpha, spec.temperature
    picked = torch.arange(len(labels), device=labels.device), labels
    log_q = torch.log_softmax(s_logits, -1)
    ce = -log_q[picked].sum()
    ids, logp, tail = signal.top_ids[rows], signal.top_logp[rows].float(), signal.tail[rows].float()
    if signal.sampled:
        kd, grad = _sampled(s_logits, log_q, ids, logp, tail, signal.sampled, alpha, temp, need_grad)
    else:
        kd, grad = _top_k(log_q, ids, logp, tail, alpha, temp, need_grad)
    if grad is not None and alpha > 0:
        grad[picked] -= alpha
    return ce, kd, grad


def _top_k(log_q: Tensor, ids: Tensor, logp: Tensor, tail: Tensor, alpha: float, temp: float, need_grad: bool):
    q = log_q.exp_()  # log_q's buffer from here on: it becomes the gradient
    q_top = q.gather(-1, ids)
    # Q_rest summed over the tokens outside the stored ids (not 1 - sum q_top, which cancels when the
    # stored tokens hold nearly all the mass): zero them, sum, put them back.
    q.scatter_(-1, ids, 0.0)
    q_rest = q.sum(-1)
    q.scatter_(-1, ids, q_top)
    student = torch.cat([q_top.log(), q_rest.log()[:, None]], -1)       # (c, k + 1) bucket log-masses
    teacher = torch.cat([logp, tail[:, None]], -1)
    log_qb = torch.log_softmax(student / temp, -1)
    log_pb = torch.log_softmax(teacher / temp, -1)
    pb = log_pb.exp()
    # A bucket without teacher mass adds 0 (0 * log 0 clamped, not NaN), as in divergences.py.
    tiny = torch.finfo(log_pb.dtype).min
    kd = (pb * (log_pb.clamp(min=tiny) - log_qb.clamp(min=tiny))).sum() * temp ** 2
    if not need_grad:
        return kd, None
    g = (log_qb.exp() - pb) * temp                                      # dKD/d bucket, (c, k + 1)
    total = g.sum(-1, keepdim=True)  # 0 but for rounding: both sides' buckets are normalised
    # Where the student has no mass outside the stored ids, neither side's rest bucket has any: no gradient.
    rest_scale = torch.where(q_rest > 0, g[:, -1] / q_rest.clamp(min=torch.finfo(q.dtype).tiny), 0.0)[:, None]
    top = alpha * q_top + (1 - alpha) * (g[:, :-1] - q_top * total)
    grad = q.mul_(alpha + (1 - alpha) * (rest_scale - total))
    return kd, grad.scatter_(-1, ids, top)


def _sampled(s_logits: Tensor, log_q: Tensor, ids: Tensor, logp: Tensor, tail: Tensor, sampled: int, alpha: float,
             temp: float, need_grad: bool):
    weight, log_p, present = sample_weights(logp, tail, sampled, temp)
    log_q_t = log_q if temp == 1 else torch.log_softmax(s_logits * (1.0 / temp), -1)
    kd = torch.where(present, weight * (log_p - log_q_t.gather(-1, ids)), 0.0).sum() * temp ** 2
    if not need_grad:
        return kd, None
    if temp == 1:  # alpha (q - onehot) + (1 - alpha) (q - w) = q - (1 - alpha) w - alpha onehot
        grad = log_q.exp_()
    else:
        grad = log_q_t.exp_().mul_((1 - alpha) * temp)
        if alpha > 0:
            grad.add_(log_q.exp_(), alpha=alpha)
    return kd, grad.scatter_add_(-1, ids, weight.mul_(-(1 - alpha) * temp))
