"""Distances between next-token distributions over two different vocabularies: pure functions over logits.

ULD (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss"):
sort each model's probabilities in decreasing order, pad the shorter vector with zeros, and take the L1
distance, sum_k |q_(k) - p_(k)|. It is the Wasserstein-1 distance between the two sorted probability
vectors seen as distributions over ranks; it is 0 for equal distributions, blind to which token holds
which probability (a permuted vocabulary gives the same value), and never more than the plain L1 distance
of two distributions over one vocabulary (sorting both is the best matching of their entries).

Hybrid (GOLD's idea, Patiño et al. 2025): tokens whose text both vocabularies have ("shared") are compared
directly, |q[s] - p[t]| for each pair (s, t) of ids with one text, and the probabilities left over are
compared by ULD. Both parts measure probability mass, so they add without weights: with one vocabulary
(every token shared) the hybrid is the plain L1 distance, 2 x total variation.

Shapes: student_logits (N, V_s), teacher_logits (N, V_t); shared ids (M,) each. Both are softened by the
temperature T; like total variation, a distance of probabilities is not scaled by T^2. Float32 throughout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

def _sorted_l1(p: Tensor, q: Tensor) -> Tensor:
    """sum_k |p_(k) - q_(k)| over the last dim, each sorted in decreasing order and zero-padded to one
    length: (N, V_p), (N, V_q) -> (N,). Beyond the shorter vector's length the sum is the longer one's
    remaining mass, so the longer one needs only its top entries (topk: 1.8 s against 6.7 for a full sort
    of 512 x 262k here) and no padding is built."""
    if p.shape[-1] < q.shape[-1]:
        p, q = q, p  # the distance is symmetric; p is now the longer
    width = q.shape[-1]
    top = p.topk(width, -1).values if p.shape[-1] > width else p.sort(-1, descending=True).values
    return (top - q.sort(-1, descending=True).values).abs().sum(-1) + (p.sum(-1) - top.sum(-1))


def _probs(logits: Tensor, temperature: float) -> Tensor:
    return F.softmax(logits.float() / temperature, dim=-1)


def uld_distance(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """ULD per position: (N, V_s), (N, V_t) -> (N,), in [0, 2]."""
    return _sorted_l1(_probs(student_logits, temperature), _probs(teacher_logits, temperature))


def _complement(ids: Tensor, size: int) -> Tensor:
    keep = torch.ones(size, dtype=torch.bool, device=ids.device)
    keep[ids] = False
    return keep.nonzero().squeeze(-1)


def hybrid_distance(student_logits: Tensor, teacher_logits: Tensor, student_shared: Tensor, teacher_shared: Tensor,
                    temperature: float = 1.0) -> Tensor:
    """Shared tokens compared directly, the rest by ULD, per position: (N,), in [0, 2]. student_shared[m]
    and teacher_shared[m] are the two ids of one text; each id appears at most once."""
    q, p = _probs(student_logits, temperature), _probs(teacher_logits, temperature)
    direct = (q[:, student_shared] - p[:, teacher_shared]).abs().sum(-1)
    rest_q = q[:, _complement(student_shared, q.shape[-1])]
    rest_p = p[:, _complement(teacher_shared, p.shape[-1])]
    return direct + _sorted_l1(rest_q, rest_p)
