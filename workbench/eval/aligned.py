"""Held-out comparison of a student with a teacher that reads other tokens (cross-tokenizer runs).

Token-level metrics need one vocabulary; across two, they are taken where both models have read the same
text (workbench/models/token_bridge.py), per aligned student target position:
  aligned_share            aligned positions / student target positions
  aligned_top1_agreement   the two models' most likely next tokens have the same text
  aligned_uld              ULD between their next-token distributions at T = 1 (losses/cross_tokenizer.py)
and per character of the scored text, each model over its own tokens (a per-token perplexity depends
on how finely a tokenizer cuts, so only per-character numbers compare across tokenizers):
  teacher_nats_per_char, student_nats_per_char
The scored text is the characters of the student's target tokens (with packed text everything after each
row's first token; with task data the completions); the teacher's -log p counts for its tokens that lie
wholly inside it (a character split over byte tokens counts with the token that completes it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.losses.cross_tokenizer import uld_distance
from workbench.losses.divergences import IGNORE_INDEX
from workbench.models.token_bridge import TokenBridge


def _spans(ends: list[int | None]) -> list[tuple[int, int]]:
    """[start, end) characters per token; a token inside a character spans its completing token's text."""
    spans, start, pending = [], 0, 0
    for end in ends:
        pending += 1
        if end is not None:
            spans.extend([(start, end)] * pending)
            start, pending = end, 0
    return spans + [(start, start)] * pending


def _scored(student_ends, teacher_ends, targets: list[bool]) -> tuple[int, list[bool]]:
    """(scored characters, which teacher tokens 1.. lie wholly inside them) for one row; targets[k] says
    whether student token k + 1 is a target."""
    covered: set[int] = set()
    for (start, end), target in zip(_spans(student_ends)[1:], targets):
        if target:
            covered.update(range(start, end))
    inside = [end > start and all(c in covered for c in range(start, end)) for start, end in _spans(teacher_ends)[1:]]
    return len(covered), inside


def _nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Summed -log p of the labels (B, L) under logits (B, L, V); -100 labels skipped."""
    return float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum"))


@torch.no_grad()
def aligned_metrics(teacher, student, bridge: TokenBridge, dataset, collator, batch_size: int,
                    progress=None) -> dict[str, float]:
    student_texts, teacher_texts = bridge.token_texts()
    sums = dict(targets=0, aligned=0, top1=0, uld=0.0, teacher_nll=0.0, student_nll=0.0, characters=0)
    device = next(student.parameters()).device
    total = len(dataset)
    for start in range(0, total, batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, total))])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        labels = batch["labels"][:, 1:].to(device)
        alignment = bridge.align(ids, mask)
        s_logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1, :bridge.student_vocab]
        t_logits = teacher(input_ids=alignment.teacher_ids, attention_mask=alignment.teacher_mask
                           ).logits[..., :bridge.teacher_vocab]
        targets = labels != IGNORE_INDEX
        aligned = targets & alignment.aligned[:, :-1]
        rows = aligned.nonzero(as_tuple=True)[0]
        s_rows, t_rows = s_logits[aligned], t_logits[rows, alignment.partner[:, :-1][aligned]]  # (N, V_s), (N, V_t)
        sums["targets"] += int(targets.sum())
        sums["aligned"] += int(aligned.sum())
        sums["uld"] += float(uld_distance(s_rows, t_rows).sum())
        sums["top1"] += sum(student_texts[s] is not None and student_texts[s] == teacher_texts[t]
                            for s, t in zip(s_rows.argmax(-1).tolist(), t_rows.argmax(-1).tolist()))
        teacher_labels = torch.full_like(alignment.teacher_ids[:, 1:], IGNORE_INDEX)
        for row, target_row in enumerate(targets.tolist()):
            characters, inside = _scored(alignment.student_ends[row], alignment.teacher_ends[row], target_row)
            sums["characters"] += characters
            keep = torch.tensor(inside, dtype=torch.bool, device=device)
            teacher_labels[row, :len(inside)][keep] = alignment.teacher_ids[row, 1:len(inside) + 1][keep]
        sums["teacher_nll"] += _nll(t_logits[:, :-1], teacher_labels)
        sums["student_nll"] += _nll(s_logits, labels)
        if progress:
            done = min(start + batch_size, total)
            progress(f"held-out text across tokenizers: {done}/{total} blocks", done / total)
    aligned_count, chars = max(sums["aligned"], 1), max(sums["characters"], 1)
    return {"aligned_share": sums["aligned"] / max(sums["targets"], 1),
            "aligned_top1_agreement": sums["top1"] / aligned_count, "aligned_uld": sums["uld"] / aligned_count,
            "teacher_nats_per_char": sums["teacher_nll"] / chars, "student_nats_per_char": sums["student_nll"] / chars}
