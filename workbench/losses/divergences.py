"""Distillation losses: pure functions over logits, no model code and no I/O.

Shapes: student_logits, teacher_logits are (..., V), usually (B, L, V); labels are (...), already
aligned with the logits (labels[b, i] is the target of logits[b, i]; the caller did the causal shift).
Positions where labels == -100 are ignored by every term: they add exactly zero to values and gradients,
even where a model's logits there are not finite. p = teacher, q = student, both softened by the
temperature T; softmaxes run in float32 whatever the input dtype, so every result is float32. A logit of
-inf is a token with no mass (the empty tail bucket of a cached teacher at k = V): it contributes 0, as
0 * log 0 = 0, and no NaN reaches a value or a gradient.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def _log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(log q, log p), each (..., V) in float32. Upcast before dividing so bf16 logits lose nothing more."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: student has {student_logits.shape[-1]}, "
                         f"teacher has {teacher_logits.shape[-1]}; slice the padded rows off first")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return log_q, log_p


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) = sum_v a (log a - log b), over the last dim: (..., V) -> (...). Entries where a has
    no mass (log a = -inf) add 0; they are replaced before the arithmetic, not after, because
    0 * (-inf) would be NaN in the gradient even where a where() drops it from the value."""
    present = ~torch.isneginf(log_a)  # not `> -inf`: a NaN must stay NaN, never read as "no mass"
    safe_a = torch.where(present, log_a, 0.0)
    safe_b = torch.where(present, log_b, 0.0)
    return torch.where(present, safe_a.exp() * (safe_a - safe_b), 0.0).sum(-1)


def _log_mix(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    """log(weight * a + (1 - weight) * b) via logsumexp; the edges return an input as is, since log(0)
    would put -inf into the sum. Where both have no mass the mixture has none either (-inf), with a
    zero gradient rather than logaddexp's NaN at (-inf, -inf)."""
    if weight == 0:
        return log_b
    if weight == 1:
        return log_a
    empty = (log_a == float("-inf")) & (log_b == float("-inf"))
    mixed = torch.logaddexp(torch.where(empty, 0.0, log_a) + math.log(weight),
                            torch.where(empty, 0.0, log_b) + math.log1p(-weight))
    return torch.where(empty, float("-inf"), mixed)


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(p || q) per position (mean-seeking: the student must cover all the teacher's mass)."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _kl(log_p, log_q)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(q || p) per position (mode-seeking: the student may drop low-probability teacher modes)."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _kl(log_q, log_p)


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
                    beta: float = 0.5) -> Tensor:
    """Generalized JSD per position, as TRL's GKDTrainer.generalized_jsd_loss.

    For 0 < beta < 1 this is the mixture JSD: with m = beta*p + (1-beta)*q,
    beta*KL(p || m) + (1-beta)*KL(q || m); beta = 0.5 is the symmetric JSD, bounded by ln 2.
    The edges are not the (vanishing) limits of that formula but the two KLs, as in TRL:
    beta = 0 gives forward KL(p || q), beta = 1 gives reverse KL(q || p).
    """
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    if beta == 0:
        return _kl(log_p, log_q)
    if beta == 1:
        return _kl(log_q, log_p)
    log_m = _log_mix(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


def skew_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
            skew_lambda: float = 0.1) -> Tensor:
    """DistiLLM skew KL per position: KL(p || lambda*p + (1-lambda)*q). lambda = 0 is forward KL;
    a small lambda keeps the target finite where q has almost no mass, which steadies gradients."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _kl(log_p, _log_mix(log_p, log_q, skew_lambda))


def skew_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
                    skew_lambda: float = 0.1) -> Tensor:
    """DistiLLM skew reverse KL per position: KL(q || lambda*q + (1-lambda)*p). lambda = 0 is reverse KL."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _kl(log_q, _log_mix(log_q, log_p, skew_lambda))


def total_variation(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Total variation distance 0.5 * sum_v |p - q| per position, in [0, 1]."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": generalized_jsd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": total_variation,
}
# Divergences whose gradients shrink as 1/T^2 with temperature, so kd_loss scales them back by T^2.
# TVD is a bounded distance of probabilities, not a KL, and is left unscaled.
KL_TYPE = frozenset({"forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"})


def masked_reduce(values: Tensor, labels: Tensor, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """Sum of values (...) where labels (...) != -100, over num_items_in_batch if given, else over the
    local valid count. num_items_in_batch is the valid-token count of the whole accumulated batch (as
    transformers' Trainer passes it): summing the micro-batch losses then equals the full-batch mean,
    which averaging per-micro-batch means does not when micro-batches hold unequal token counts.
    Both counts are clamped to >= 1 so an all-masked batch gives 0, not NaN. Returns a 0-dim tensor."""
    if values.shape != labels.shape:
        raise ValueError(f"values shape {tuple(values.shape)} does not match labels shape {tuple(labels.shape)}")
    mask = labels != IGNORE_INDEX
    # where, not multiply: a non-finite value at an ignored position must not leak into the sum.
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    count = torch.as_tensor(count, device=values.device).to(values.dtype).clamp(min=1)
    return total / count


def ce_loss(student_logits: Tensor, labels: Tensor, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """Token cross-entropy at T = 1 against labels, reduced as masked_reduce. Returns a 0-dim tensor."""
    vocab = student_logits.shape[-1]
    # cross_entropy wants (N, V) logits and (N,) targets; ignored positions come back as 0.
    per_token = F.cross_entropy(student_logits.float().reshape(-1, vocab), labels.reshape(-1),
                                reduction="none", ignore_index=IGNORE_INDEX).view(labels.shape)
    return masked_reduce(per_token, labels, num_items_in_batch)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, divergence: str = "forward_kl",
            temperature: float = 1.0, beta: float = 0.5, skew_lambda: float = 0.1,
            num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """The chosen divergence per position, reduced as masked_reduce and multiplied by T^2 for KL-type
    divergences (Hinton et al.: keeps gradient magnitudes independent of T). Returns a 0-dim tensor."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; allowed: {', '.join(DIVERGENCES)}")
    per_position = divergence_per_position(student_logits, teacher_logits, labels, divergence, temperature,
                                           beta, skew_lambda)
    loss = masked_reduce(per_position, labels, num_items_in_batch)
    return loss * temperature ** 2 if divergence in KL_TYPE else loss


def divergence_per_position(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, divergence: str,
                            temperature: float, beta: float = 0.5, skew_lambda: float = 0.1) -> Tensor:
    """The divergence at each position (...,), computed with both models' logits zeroed where labels are
    -100: a non-finite logit at an ignored position (a padded row, a prompt token) would otherwise send
    NaN into the student's gradient through 0 * NaN, although masked_reduce drops its value."""
    knobs = {"jsd": {"beta": beta}, "skew_kl": {"skew_lambda": skew_lambda},
             "skew_reverse_kl": {"skew_lambda": skew_lambda}}.get(divergence, {})
    ignored = (labels == IGNORE_INDEX)[..., None]
    return DIVERGENCES[divergence](student_logits.masked_fill(ignored, 0.0), teacher_logits.masked_fill(ignored, 0.0),
                                   temperature, **knobs)


def sparse_kd_loss(student_logits: Tensor, top_logp: Tensor, top_ids: Tensor, tail_logp: Tensor, labels: Tensor,
                   divergence: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                   skew_lambda: float = 0.1, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """kd_loss against a stored top-k teacher (workbench/engine/teacher_cache.py): both distributions are
    compared over k + 1 buckets, the teacher's top k tokens and everything else as one. student_logits
    (..., V); top_logp, top_ids (..., k) at T = 1; tail_logp (...) the log of the teacher's remaining mass
    (-inf when nothing remains). With k = V this is kd_loss on full logits at every T (the empty tail
    buckets hold no mass on either side); at k < V and T != 1 it is exact within the top k, the tail
    bucket re-softened as one token."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    student_top = log_q.gather(-1, top_ids)
    if top_ids.shape[-1] >= log_q.shape[-1]:
        # Nothing outside the top k: the empty bucket is -inf without a gradient (logsumexp over an
        # all -inf row has a NaN one).
        student_rest = torch.full_like(student_top[..., 0], float("-inf"))
    else:
        student_rest = log_q.scatter(-1, top_ids, float("-inf")).logsumexp(-1)
    # Normalised log-probabilities as "logits": kd_loss's softmax(x / T) re-softens them at T.
    student_buckets = torch.cat([student_top, student_rest[..., None]], -1)
    teacher_buckets = torch.cat([top_logp.float(), tail_logp.float()[..., None]], -1)
    return kd_loss(student_buckets, teacher_buckets, labels, divergence, temperature, beta, skew_lambda,
                   num_items_in_batch)


def combine(ce: Tensor, kd: Tensor, alpha: float) -> Tensor:
    """alpha*CE + (1-alpha)*KD; at the edges exactly the one term (a non-finite unused term stays out)."""
    if alpha == 1:
        return ce
    if alpha == 0:
        return kd
    return alpha * ce + (1 - alpha) * kd
