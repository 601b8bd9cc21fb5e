"""What the teacher gives a loss (DistillKit's dense and sparse signals): its logits, its last hidden states
and head (logits made on demand, chunk by chunk, by the fused loss), or its stored top-k rows. No teacher
is None. Every signal answers one question, the KD term against the student's logits for some of its
positions, so the plain loss and the fused loss never ask where the teacher came from.

Positions: a signal's leading dims match the student's logits without their last dim, usually (B, L-1).
The fused loss works on positions flattened to (N,): `flat()` gives that view. kd_vocab: compare only the
first kd_vocab logits (models whose logit counts differ by padding rows, or a cache over a smaller vocabulary).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.losses.cross_tokenizer import hybrid_distance, uld_distance
from workbench.losses.divergences import IGNORE_INDEX, kd_loss, masked_reduce, sparse_kd_loss
from workbench.losses.sampled_tail import sampled_kd_loss

ALL = slice(None)


@dataclass(frozen=True)
class LiveLogits:
    """Dense: the teacher's logits (..., V_t), as a forward pass returns them."""
    logits: Tensor
    kd_vocab: int | None = None

    def flat(self) -> "LiveLogits":
        return LiveLogits(self.logits.reshape(-1, self.logits.shape[-1]).detach(), self.kd_vocab)

    def kd(self, student_logits: Tensor, labels: Tensor, spec, num_items_in_batch=None, rows: slice = ALL) -> Tensor:
        """kd_loss of student_logits (..., V) against this signal's positions `rows`."""
        v = self.kd_vocab
        return kd_loss(student_logits[..., :v], self.logits[rows][..., :v], labels, spec.divergence,
                       spec.temperature, spec.beta, spec.skew_lambda, num_items_in_batch)


@dataclass(frozen=True)
class LiveHead:
    """Dense, made on demand: the teacher's last hidden states (..., H_t) and its LM head (V_t, H_t), so
    the fused loss builds (c, V_t) logits for c positions at a time instead of (N, V_t) at once."""
    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None
    kd_vocab: int | None = None

    def flat(self) -> "LiveHead":
        return LiveHead(self.hidden.reshape(-1, self.hidden.shape[-1]).detach(), self.weight.detach(),
                        None if self.bias is None else self.bias.detach(), self.kd_vocab)

    def kd(self, student_logits: Tensor, labels: Tensor, spec, num_items_in_batch=None, rows: slice = ALL) -> Tensor:
        v = self.kd_vocab
        logits = F.linear(self.hidden[rows], self.weight, self.bias).float()
        return kd_loss(student_logits[..., :v], logits[..., :v], labels, spec.divergence, spec.temperature,
                       spec.beta, spec.skew_lambda, num_items_in_batch)


@dataclass(frozen=True)
class CachedTopK:
    """Sparse: teacher-cache rows (workbench/engine/teacher_cache.py): k log-probs and ids (..., k) at
    T = 1 and the log of the mass outside the head (...). sampled = 0: all k are the top k, the KD term
    is sparse_kd_loss's; else the last `sampled` slots are draws from the tail (losses/sampled_tail.py)."""
    top_logp: Tensor
    top_ids: Tensor
    tail: Tensor
    kd_vocab: int | None = None
    sampled: int = 0

    def flat(self) -> "CachedTopK":
        k = self.top_logp.shape[-1]
        return CachedTopK(self.top_logp.reshape(-1, k), self.top_ids.reshape(-1, k), self.tail.reshape(-1),
                          self.kd_vocab, self.sampled)

    def kd(self, student_logits: Tensor, labels: Tensor, spec, num_items_in_batch=None, rows: slice = ALL) -> Tensor:
        student = student_logits[..., :self.kd_vocab]
        if self.sampled:
            return sampled_kd_loss(student, self.top_logp[rows], self.top_ids[rows], self.tail[rows], labels,
                                   self.sampled, spec.divergence, spec.temperature, spec.beta, spec.skew_lambda,
                                   num_items_in_batch)
        return sparse_kd_loss(student, self.top_logp[rows], self.top_ids[rows], self.tail[rows], labels,
                              spec.divergence, spec.temperature, spec.beta, spec.skew_lambda, num_items_in_batch)


@dataclass(frozen=True)
class AlignedLogits:
    """A teacher with another tokenizer (workbench/models/token_bridge.py): its logits (N, V_t) at the
    partners of the N aligned student positions (in the row-major order of `aligned`, (...) bool), so only
    rows that are compared exist. The KD term is a cross-tokenizer distance (losses/cross_tokenizer.py:
    mode "uld" or "hybrid", with the shared ids) at aligned target positions; the other targets add 0 but
    still count in the per-token mean, so accumulation stays exact and the term's weight follows the
    aligned share (logged beside it). Never fused: `rows` must select every position."""
    logits: Tensor
    aligned: Tensor
    mode: str
    student_vocab: int
    student_shared: Tensor | None = None
    teacher_shared: Tensor | None = None

    def _targets(self, labels: Tensor) -> Tensor:
        return (labels != IGNORE_INDEX) & self.aligned

    def share(self, labels: Tensor, num_items_in_batch=None) -> Tensor:
        """Aligned target positions over target positions (over num_items_in_batch when given)."""
        return masked_reduce(self._targets(labels).float(), labels, num_items_in_batch)

    def kd(self, student_logits: Tensor, labels: Tensor, spec, num_items_in_batch=None, rows: slice = ALL) -> Tensor:
        if rows != ALL:
            raise ValueError("cross-tokenizer KD runs on whole batches, not the fused loss's chunks")
        targets = self._targets(labels)
        student = student_logits[..., :self.student_vocab][targets]   # (n, V_s)
        teacher = self.logits[targets[self.aligned]]                   # (n, V_t): the stored rows that are targets
        if self.mode == "hybrid":
            per_position = hybrid_distance(student, teacher, self.student_shared, self.teacher_shared,
                                           spec.temperature)
        else:
            per_position = uld_distance(student, teacher, spec.temperature)
        count = (labels != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
        return per_position.sum() / torch.as_tensor(count, device=per_position.device).float().clamp(min=1)


TeacherSignal = LiveLogits | LiveHead | CachedTopK | AlignedLogits
