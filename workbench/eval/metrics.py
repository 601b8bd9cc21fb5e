"""Held-out evaluation of a student against its teacher: perplexity, agreement, KL and calibration.

Metrics are accumulated batch by batch as sums over target tokens (token-weighted, like the trainer's
held-out terms), so nothing holds more than one batch of logits. Definitions, per target position
(labels[i] != -100; p = teacher, q = student, T = 1):
  *_ce, *_perplexity   mean -log prob of the actual token, and exp of it
  top1_agreement       argmax q == argmax p
  top5_agreement       argmax p is among the 5 tokens q ranks highest
  forward_kl           KL(p || q)
  *_ece                expected calibration error of next-token confidence: the max probability is the
                       confidence, "correct" means the argmax is the actual token; |accuracy - confidence|
                       per confidence bin, weighted by the bin's share of tokens (Guo et al. 2017)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.losses.divergences import IGNORE_INDEX
from workbench.models.heads import fusable, last_hidden
from workbench.models.kept_states import KeptStates

ECE_BINS = 15
# Positions measured at once: their (CHUNK, V) logits take 25 MB at V 49k (4 GB for one model's 4 x 2048
# positions at V 128k, whole), below glibc's 32 MB mmap threshold, so each chunk's buffers come from the heap
# instead of fresh mappings faulted in page by page. Two 4 x 256 batches of three models, measured alternately:
# 9.4 s whole, 6.9 s in chunks.
CHUNK = 128


def calibration_bins(confidence: Tensor, correct: Tensor, bins: int = ECE_BINS) -> Tensor:
    """(bins, 3) per equal-width confidence bin: [count, sum of confidence, sum of correct]. Bin b holds
    confidences in (b/bins, (b+1)/bins]; confidence 0 goes to the first bin."""
    index = (confidence.float() * bins).ceil().long().clamp(1, bins) - 1
    out = torch.zeros(bins, 3, dtype=torch.float64, device=confidence.device)
    out[:, 0].index_add_(0, index, torch.ones_like(confidence, dtype=torch.float64))
    out[:, 1].index_add_(0, index, confidence.double())
    out[:, 2].index_add_(0, index, correct.double())
    return out.cpu()


def ece_from_bins(table: Tensor) -> float:
    count, conf, correct = table[:, 0], table[:, 1], table[:, 2]
    total = count.sum()
    if total == 0:
        return float("nan")
    used = count > 0
    gap = (correct[used] / count[used] - conf[used] / count[used]).abs()
    return float((gap * count[used]).sum() / total)


@dataclass
class HeldoutMetrics:
    """Running sums over target tokens of every metric in the module docstring."""
    tokens: int = 0
    nll: dict[str, float] = field(default_factory=dict)        # model name -> summed -log p(actual)
    calibration: dict[str, Tensor] = field(default_factory=dict)
    top1: float = 0.0
    top5: float = 0.0
    kl: float = 0.0

    def add(self, logits: dict[str, Tensor], labels: Tensor, vocab: int | None = None) -> None:
        """logits: model name -> (B, L, V_model) or (N, V_model), aligned with labels (B, L) or (N,). Each model's
        CE and calibration use its own full logits, as its training CE does; "teacher" vs "student" agreement
        and KL compare the first `vocab` logits (the rows both have), as the KD term does."""
        mask = labels != IGNORE_INDEX
        targets = labels[mask]                                       # (N,)
        self.tokens += int(targets.numel())
        every = bool(mask.all())  # packed blocks: no position to drop, so no (N, V) gather to copy
        log_probs, guesses = {}, {}
        for name, x in logits.items():
            lp = torch.log_softmax((x.reshape(-1, x.shape[-1]) if every else x[mask]).float(), -1)  # (N, V_model)
            self.nll[name] = self.nll.get(name, 0.0) - float(lp.gather(-1, targets[:, None]).sum())
            confidence, guess = lp.max(-1)
            bins = calibration_bins(confidence.exp(), (guess == targets).float())
            self.calibration[name] = self.calibration.get(name, 0) + bins
            log_probs[name], guesses[name] = lp, guess
        if "teacher" in log_probs and "student" in log_probs:
            t, s = log_probs["teacher"], log_probs["student"]
            t_best, s_best = guesses["teacher"], guesses["student"]
            if vocab is not None and vocab < max(t.shape[-1], s.shape[-1]):  # renormalised over the shared rows
                t, s = torch.log_softmax(t[:, :vocab], -1), torch.log_softmax(s[:, :vocab], -1)
                t_best, s_best = t.argmax(-1), s.argmax(-1)
            self.top1 += float((s_best == t_best).sum())
            top5 = s.topk(min(5, s.shape[-1]), -1).indices
            self.top5 += float((top5 == t_best[:, None]).any(-1).sum())
            # KL(p || q) = sum p (log p - log q); a token without mass on either side (-inf, clamped to the
            # lowest float) adds 0 (as divergences.forward_kl), in the teacher's buffer, which is done with.
            tiny = torch.finfo(t.dtype).min
            p = t.exp()
            self.kl += float(torch.linalg.vecdot(p, t.clamp_(min=tiny).sub_(s.clamp(min=tiny))).sum())

    def result(self) -> dict[str, float]:
        n = max(self.tokens, 1)
        out: dict[str, float] = {"heldout_tokens": float(self.tokens)}
        for name, total in self.nll.items():
            out[f"{name}_ce"] = total / n
            out[f"{name}_perplexity"] = float(torch.tensor(total / n).exp())
            out[f"{name}_ece"] = ece_from_bins(self.calibration[name])
        if "teacher" in self.nll and "student" in self.nll:
            out.update(top1_agreement=self.top1 / n, top5_agreement=self.top5 / n, forward_kl=self.kl / n)
        return out

    def reliability(self, name: str) -> list[dict]:
        """Per non-empty bin: mean confidence, accuracy, token count (a reliability diagram's points)."""
        table = self.calibration.get(name)
        if table is None:
            return []
        return [{"confidence": float(c / n), "accuracy": float(k / n), "tokens": int(n)}
                for n, c, k in table.tolist() if n > 0]


def _outputs(model, ids: Tensor, mask: Tensor, kept: KeptStates | None) -> tuple[Tensor, torch.nn.Module | None]:
    """(N, H) last hidden states at positions 0..L-2 of every row and the head that makes logits of them (kept
    ones read from `kept`), or, for a head that is more than a linear map, the (N, V) logits and None."""
    if kept is not None or fusable(model):
        hidden = kept.hidden(model, ids, mask) if kept is not None else last_hidden(model, ids, mask)
        return hidden.reshape(-1, hidden.shape[-1]), model.get_output_embeddings()
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return logits.reshape(-1, logits.shape[-1]), None


def heldout_metrics(models: dict[str, torch.nn.Module], dataset, collator, batch_size: int, vocab: int,
                    progress=None, kept: dict[str, KeptStates] | None = None) -> HeldoutMetrics:
    """Run every model over the held-out blocks (on the device of the models); `vocab` = the logit rows
    teacher and student share (HeldoutMetrics.add). Logits are made and measured CHUNK positions at a time from
    the models' last hidden states; a model named in `kept` (a frozen teacher) has its states read from there
    where an earlier run kept them, and only its head runs."""
    kept = kept or {}
    metrics = HeldoutMetrics()
    device = next(iter(models.values())).device
    total = len(dataset)
    for start in range(0, total, batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, total))])
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch["labels"][:, 1:].reshape(-1)  # causal shift: logits at i predict token i + 1
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            outputs = {name: _outputs(model, ids, mask, kept.get(name)) for name, model in models.items()}
            for rows in range(0, len(labels), CHUNK):
                part = slice(rows, rows + CHUNK)
                metrics.add({name: x[part] if head is None else F.linear(x[part].to(head.weight.dtype), head.weight,
                                                                         head.bias)
                             for name, (x, head) in outputs.items()}, labels[part], vocab)
        if progress:
            progress(f"held-out text: {min(start + batch_size, total)}/{total} blocks",
                     min(start + batch_size, total) / total)
    return metrics


def quality_retained(untrained_ce: float, student_ce: float, teacher_ce: float) -> float | None:
    """The share of the teacher's held-out CE advantage over the untrained student that the trained
    student recovers: 1 = as good as the teacher, 0 = no better than before training. None when the
    untrained student was already at least as good as the teacher (nothing to recover)."""
    gap = untrained_ce - teacher_ce
    return (untrained_ce - student_ce) / gap if gap > 0 else None


def heldout_summary(measured: HeldoutMetrics) -> dict[str, float | None]:
    """HeldoutMetrics.result() and, where the untrained student and the teacher were both measured, the
    quality the student kept (quality_retained)."""
    out: dict[str, float | None] = dict(measured.result())
    if "untrained_ce" in out and "teacher_ce" in out:
        out["quality_retained"] = quality_retained(out["untrained_ce"], out["student_ce"], out["teacher_ce"])
    return out
