"""Intermediate-representation losses, pure functions over tensors: which student layer learns from
which teacher layer (the layer map), hidden-state matching (MSE or cosine, TinyBERT / DistilBERT) and
attention transfer (KL or MSE between attention distributions, MiniLM / TinyBERT).

Every term is summed over the positions whose next token is a target (labels[:, 1:] != -100, as the CE
term) and divided by `num_items` (the targets of the whole accumulated batch), so gradient
accumulation is exact and padding never counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.config.fields import ConfigError
from workbench.config.schema import parse_pair


def layer_map(pairs: list[str], student_layers: int, teacher_layers: int, field: str,
              pruned_from: list[int] | None = None) -> list[tuple[int, int]]:
    """[(student layer, teacher layer), ...], 0-based decoder layers. Empty `pairs`: a student pruned
    from the teacher matches the layers it was cut from; any other student is spread evenly (layer i to
    the teacher layer at the same relative depth, so the last layers meet)."""
    if not pairs:
        if pruned_from and len(pruned_from) == student_layers and max(pruned_from) < teacher_layers:
            return list(enumerate(pruned_from))
        return [(i, max(0, round((i + 1) * teacher_layers / student_layers) - 1)) for i in range(student_layers)]
    out, problems = [], []
    for i, text in enumerate(pairs):
        pair = parse_pair(text)
        if pair is None:
            problems.append((f"{field}[{i}]", f"{text!r} must be STUDENT:TEACHER layer numbers, e.g. 1:3"))
            continue
        s, t = pair
        if s >= student_layers or t >= teacher_layers:
            problems.append((f"{field}[{i}]", f"{text!r} is out of range: the student has layers 0..{student_layers - 1}, "
                                              f"the teacher 0..{teacher_layers - 1}"))
        elif pair in out:
            problems.append((f"{field}[{i}]", f"{text!r} is listed twice"))
        else:
            out.append(pair)
    if problems:
        raise ConfigError(problems)
    return out


def _targets(labels: Tensor) -> Tensor:
    """(B, L-1) bool: positions whose next token is learned; labels are the unshifted (B, L) labels."""
    return labels[:, 1:] != -100


def _normaliser(mask: Tensor, num_items) -> Tensor:
    count = mask.sum() if num_items is None else torch.as_tensor(num_items, device=mask.device)
    return count.clamp(min=1).to(torch.float32)


def hidden_state_loss(student: list[Tensor], teacher: list[Tensor], labels: Tensor, kind: str = "mse",
                      num_items=None) -> Tensor:
    """student[i], teacher[i]: (B, L, H) hidden states of the i-th mapped pair, the student's already
    projected to the teacher's width. mse: mean over features of the squared difference; cosine:
    1 - cosine similarity. Summed over pairs and target positions, / num_items."""
    mask = _targets(labels)
    keep = mask[..., None]
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher):
        # Zeroed before the arithmetic, not only dropped after: a NaN in an ignored position would
        # otherwise reach the student's gradient through 0 * NaN.
        s, t = torch.where(keep, s[:, :-1].float(), 0.0), torch.where(keep, t[:, :-1].float(), 0.0)
        per_position = ((s - t) ** 2).mean(-1) if kind == "mse" else 1 - F.cosine_similarity(s, t, dim=-1)
        total = total + per_position[mask].sum()
    return total / _normaliser(mask, num_items)


def reduce_heads(attention: Tensor, heads: int | None) -> Tensor:
    """(B, H, L, L) -> (B, 1, L, L) averaged over heads (heads None), or (B, heads, L, L) with
    consecutive groups of H / heads heads averaged (teacher heads mapped onto the student's)."""
    if heads is None:
        return attention.mean(1, keepdim=True)
    b, h, length, _ = attention.shape
    if h % heads:
        raise ValueError(f"{h} heads cannot be grouped onto {heads}")
    return attention.view(b, heads, h // heads, length, length).mean(2)


def attention_loss(student: list[Tensor], teacher: list[Tensor], labels: Tensor, kind: str = "kl",
                   mapped_heads: bool = False, num_items=None) -> Tensor:
    """student[i]: (B, Hs, L, L), teacher[i]: (B, Ht, L, L) attention probabilities (rows = queries) of
    the i-th mapped pair. Heads averaged, or the teacher's grouped onto the student's (mapped_heads).
    kl: KL(teacher row ‖ student row) per query; mse: squared difference summed over keys. Averaged
    over heads, summed over pairs and target query rows, / num_items."""
    mask = _targets(labels)
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher):
        s = reduce_heads(s.float(), None) if not mapped_heads else s.float()
        t = reduce_heads(t.float(), s.shape[1] if mapped_heads else None)
        s, t = s[:, :, :-1], t[:, :, :-1]  # query rows that predict a next token
        rows_kept = mask[:, None, :, None]  # (B, 1, L-1, 1): ignored query rows zeroed before the arithmetic
        s, t = torch.where(rows_kept, s, 0.0), torch.where(rows_kept, t, 0.0)
        if kind == "kl":
            # Masked keys have probability 0 for both: xlogy gives 0 there, and clamping keeps log finite.
            rows = (torch.xlogy(t, t) - t * s.clamp_min(1e-12).log()).sum(-1)
        else:
            rows = ((s - t) ** 2).sum(-1)
        total = total + rows.mean(1)[mask].sum()
    return total / _normaliser(mask, num_items)
