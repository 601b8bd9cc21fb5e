"""KD against a cached teacher that keeps its top tokens and a sample of the rest (random-sampling KD,
Anshumann et al. 2025, "Sparse Logit Sampling"): per position, the h = k - s most likely tokens with
their log-probabilities, then s tokens drawn with replacement from the teacher's distribution outside
those h (its tail), each with its own log-probability, and the log of the tail's mass.

A plain top-k cache tells the student only how much mass the tail holds, never how it is spread; here
each sampled token stands for tail_mass / s of the teacher's probability, so the sparse target
    p_hat = exact p on the h head tokens + (tail_mass / s) on each sampled token
has expectation p. Forward KL and skew KL are sums over the teacher's measure, sum_v p_v f(p_v, q_v),
so replacing p by p_hat gives an unbiased estimate of the full loss and of its gradient at T = 1
(the student's side, q, is its full softmax). At T != 1 the softened target p^(1/T) / Z is estimated
by self-normalised importance weights: consistent, but biased at few draws, most at T > 1 where a
rare token's weight p^(1/T - 1) grows (tests/test_sampled_tail.py shows by how much).

The other divergences (reverse KL, JSD, TVD, skew reverse KL) also sum over the student's measure,
which needs p at every token the student likes; for them the sampled tokens only refine the buckets:
the h head tokens, each distinct sampled token, and one bucket for the rest, all exact masses on both
sides (finer than top-k's one tail bucket, so never a worse bound).

Shapes: student_logits (..., V); logp, ids (..., k) with the last s slots sampled; tail (...) the log
of the mass outside the h head tokens (-inf when there is none).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.losses.divergences import KL_TYPE, kd_loss, masked_reduce

# Divergences of the form sum_v p_v f(p_v, q_v): a sample of the teacher's measure estimates them.
TEACHER_MEASURE = frozenset({"forward_kl", "skew_kl"})
# The teacher's rest bucket keeps at least this share of its tail: fp16 log-probabilities of the sampled
# tokens can sum past the stored tail mass, and an empty teacher bucket the student still fills would
# make reverse KL infinite.
REST_FLOOR = 2.0 ** -10


def sampled_kd_loss(student_logits: Tensor, logp: Tensor, ids: Tensor, tail: Tensor, labels: Tensor, sampled: int,
                    divergence: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                    skew_lambda: float = 0.1, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """The KD term against a sampled-tail cache row, reduced and T^2-scaled as kd_loss. Returns 0-dim."""
    if not 0 < sampled <= ids.shape[-1]:
        raise ValueError(f"sampled must be in [1, {ids.shape[-1]}] (the stored slots), got {sampled}")
    if divergence in TEACHER_MEASURE:
        per_position = _estimated(student_logits, logp.float(), ids, tail.float(), sampled, divergence,
                                  temperature, skew_lambda, labels)
        loss = masked_reduce(per_position, labels, num_items_in_batch)
        return loss * temperature ** 2 if divergence in KL_TYPE else loss
    # Ignored positions get a harmless finite row (kd_loss drops them, but a NaN under its masking would
    # still reach the gradient through log_softmax's backward).
    ignored = labels == -100
    student, teacher = _refined_buckets(student_logits.float().masked_fill(ignored[..., None], 0.0),
                                        logp.float().masked_fill(ignored[..., None], 0.0), ids,
                                        tail.float().masked_fill(ignored, 0.0), sampled)
    return kd_loss(student, teacher, labels, divergence, temperature, beta, skew_lambda, num_items_in_batch)


def _estimated(student_logits: Tensor, logp: Tensor, ids: Tensor, tail: Tensor, sampled: int, divergence: str,
               temperature: float, skew_lambda: float, labels: Tensor) -> Tensor:
    """sum_j w_j (log p_T(v_j) - log m(v_j)) per position (...), the importance-weighted estimate of
    KL(p_T || m) with m = q_T (forward KL) or lambda p_T + (1 - lambda) q_T (skew KL)."""
    ignored = (labels == -100)[..., None]
    # As for the buckets: ignored positions get a harmless finite row.
    logp, tail = logp.masked_fill(ignored, 0.0), tail.masked_fill(ignored[..., 0], 0.0)
    weight, log_p, present = sample_weights(logp, tail, sampled, temperature)
    log_q = F.log_softmax(student_logits.float().masked_fill(ignored, 0.0) * (1.0 / temperature), -1).gather(-1, ids)
    if divergence == "skew_kl" and skew_lambda > 0:
        log_q = torch.logaddexp(log_p + math.log(skew_lambda), log_q + math.log1p(-skew_lambda))
    return torch.where(present, weight * (log_p - log_q), 0.0).sum(-1)


def sample_weights(logp: Tensor, tail: Tensor, sampled: int, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher's side of the estimate, for stored rows (..., k) and their tail (...): each slot's weight
    (summing to 1 over a row), log p_T at its token (0 where it weighs nothing) and whether it weighs."""
    inverse = 1.0 / temperature
    head = logp.shape[-1] - sampled
    # log of each slot's (unnormalised) share of sum_v p_v^(1/T): a head token's own; a sample's
    # tail_mass / s * p_i^(1/T - 1), the importance weight of a draw from the tail.
    # A draw stored with no mass (from a row with no tail) weighs nothing: masked, not computed, since
    # -inf * (1/T - 1) is +inf at T > 1 and NaN at T = 1.
    drawn = logp[..., head:]
    massless = torch.isneginf(drawn) | torch.isneginf(tail)[..., None]
    sample_share = tail[..., None] - math.log(sampled) + torch.where(massless, 0.0, drawn) * (inverse - 1.0)
    log_share = torch.cat([logp[..., :head] * inverse, sample_share.masked_fill(massless, -math.inf)], -1)
    log_z = torch.logsumexp(log_share, -1, keepdim=True)
    weight = (log_share - log_z).exp()                                   # (..., k), sums to 1
    present = weight > 0
    log_p = torch.where(present, logp * inverse - log_z, 0.0)            # log p_T at each slot's token
    return weight, log_p, present


def _refined_buckets(student_logits: Tensor, logp: Tensor, ids: Tensor, tail: Tensor,
                     sampled: int) -> tuple[Tensor, Tensor]:
    """Both sides' log-masses (..., k + 1) over the head tokens, each distinct sampled token (a repeat
    holds no mass) and the rest: normalised log-probabilities, so kd_loss re-softens them at T."""
    head = logp.shape[-1] - sampled
    # Sorted, a repeated draw sits next to its first: mark it, and give it no mass on either side.
    sample_ids, order = ids[..., head:].sort(-1)
    sample_logp = logp[..., head:].gather(-1, order)
    repeat = torch.zeros_like(sample_ids, dtype=torch.bool)
    repeat[..., 1:] = sample_ids[..., 1:] == sample_ids[..., :-1]
    # A row with no tail has no samples either (its draws are stored with no mass, and may be head tokens).
    unused = repeat | torch.isneginf(tail)[..., None]
    sample_logp = sample_logp.masked_fill(unused, float("-inf"))
    all_ids = torch.cat([ids[..., :head], sample_ids], -1)

    log_q = F.log_softmax(student_logits.float(), -1)
    student_slots = log_q.gather(-1, all_ids)
    student_slots = torch.cat([student_slots[..., :head], student_slots[..., head:].masked_fill(unused, -math.inf)],
                              -1)
    # The rest is everything outside the slots that hold mass: a repeat names its first's token (no change);
    # an unused draw of a row with no tail is pointed at its first head token (such a row has one).
    taken = torch.cat([ids[..., :head], torch.where(torch.isneginf(tail)[..., None], all_ids[..., :1], sample_ids)],
                      -1)
    outside = log_q.scatter(-1, taken, float("-inf"))
    # The slots may name every token (a tiny vocabulary): then the rest is empty on both sides, and its
    # logsumexp over an all -inf row (NaN gradient) is not taken.
    empty = torch.isneginf(outside).all(-1)
    student_rest = torch.where(empty, -math.inf, torch.where(empty[..., None], 0.0, outside).logsumexp(-1))

    # The teacher's rest: its tail less the distinct sampled tokens' mass, kept above REST_FLOOR of it.
    sampled_mass = torch.logsumexp(sample_logp, -1)
    left = -torch.expm1(torch.clamp(sampled_mass - tail, max=0.0))       # share of the tail not sampled
    teacher_rest = torch.where(torch.isneginf(tail) | empty, -math.inf,
                               tail + torch.log(left.clamp(min=REST_FLOOR)))
    student = torch.cat([student_slots, student_rest[..., None]], -1)
    teacher = torch.cat([logp[..., :head], sample_logp, teacher_rest[..., None]], -1)
    return student, teacher
