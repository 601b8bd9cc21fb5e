"""The dark-knowledge inspector across two tokenizers (a cross-tokenizer run): the student reads the text in
its tokens, the teacher in its own, and a student position is compared with the teacher position that has
read exactly the same text (workbench/models/token_bridge.py). There the two next-token distributions are
over different vocabularies, so they are compared as training compares them: by ULD, the L1 distance of
the two sorted probability vectors (workbench/losses/cross_tokenizer.py). A student position with no such
teacher position has no teacher value: it is NaN in every teacher statistic, never 0.

Like token_stats, everything here is a pure function of kept logits except `analyse_aligned`."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from workbench.eval.token_stats import MAX_TOKENS, Trajectory, entropy, softened
from workbench.losses.cross_tokenizer import uld_distance
from workbench.models.token_bridge import TokenBridge, decoded_pieces

# Per-position statistics across tokenizers, in the order the UI offers them. KL and JSD need one
# vocabulary; ULD is the distance training used instead.
ALIGNED_STATS = {
    "uld": "ULD (sorted probabilities, 0 to 2)",
    "dark_mass": "teacher mass outside its top token",
    "teacher_entropy": "teacher entropy (nats)",
    "student_entropy": "student entropy (nats)",
    "student_nll": "student surprise at the actual token (nats)",
}
# A one-tokenizer statistic chosen in the UI, read across tokenizers: the divergences become ULD.
AS_ALIGNED = {"forward_kl": "uld", "reverse_kl": "uld", "jsd": "uld"}
# Shown on a token whose predicting row has no teacher partner: the text before it ends inside a teacher token.
UNALIGNED = "no teacher position ends here (inside one of the teacher's tokens): nothing to compare"


@dataclass
class AlignedAnalysis:
    """Row i is the student's distribution after its tokens[:i+1] and, where aligned[i], the teacher's after
    its tokens[:partner[i]+1], the same text: L student tokens give L-1 rows."""
    token_ids: list[int]        # (L,) the student's tokens
    tokens: list[str]           # (L,) their texts, decoded in sequence so spaces and characters survive
    teacher_ids: list[int]      # (L_t,) the teacher's tokens of the same text
    aligned: Tensor             # (L-1,) bool
    partner: Tensor             # (L-1,) long, the teacher row compared (0 where not aligned)
    teacher_logits: Tensor      # (L-1, V_t) float32, the teacher's row at each partner (unaligned: meaningless)
    student_logits: Tensor      # (L-1, V_s)
    bridge: TokenBridge = field(repr=False, compare=False)
    seconds: float = 0.0
    stats_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.token_ids) - 1

    @property
    def share(self) -> float:
        """Aligned rows / rows."""
        return float(self.aligned.float().mean()) if len(self) else 0.0


@dataclass
class AlignedTopK:
    """Each model's own k most likely next tokens at one position, by its own probability, with its own
    texts; `shared` are the texts in both lists. The two lists are compared rank by rank (ULD)."""
    teacher_tokens: list[str]   # empty where the position is not aligned
    teacher: list[float]
    student_tokens: list[str]
    student: list[float]
    shared: list[str]
    uld: float                  # NaN where not aligned
    actual: str


def stream_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text as it appears in the decoded sequence; a token inside a character shows as its raw
    name (e.g. <0xE2>)."""
    return [piece or tokenizer.convert_ids_to_tokens(token)
            for token, piece in zip(ids, decoded_pieces(tokenizer, ids))]


def analyse_aligned(teacher, student, bridge: TokenBridge, text: str, max_tokens: int = MAX_TOKENS,
                    teacher_logits: Tensor | None = None) -> AlignedAnalysis:
    """The student reads the first `max_tokens` of its tokens of `text`, the teacher its own tokens of that
    same text (fp32, no gradients). `teacher_logits` (L-1, V_t): the teacher's rows from an earlier analysis
    of this text, so several students of one run share one teacher pass."""
    if not text or not text.strip():
        raise ValueError("inspector text: write or pick a text first")
    ids = bridge.student(text, return_tensors="pt").input_ids[:, :max_tokens]  # (1, L)
    if ids.shape[1] < 2:
        raise ValueError("inspector text: needs at least two tokens (one to predict from, one to predict)")
    alignment = bridge.align(ids, torch.ones_like(ids))
    partner, aligned = alignment.partner[0, :-1], alignment.aligned[0, :-1]
    start = time.perf_counter()
    with torch.no_grad():
        if teacher_logits is None:
            rows = teacher(input_ids=alignment.teacher_ids).logits[0, :, :bridge.teacher_vocab].float()
            teacher_logits = rows[partner]
        s_logits = student(input_ids=ids).logits[0, :-1, :bridge.student_vocab].float()
    seconds = time.perf_counter() - start
    token_ids = ids[0].tolist()
    return AlignedAnalysis(token_ids, stream_texts(bridge.student, token_ids), alignment.teacher_ids[0].tolist(),
                           aligned, partner, teacher_logits, s_logits, bridge, seconds)


def aligned_stats(analysis: AlignedAnalysis, temperature: float = 1.0) -> dict[str, Tensor]:
    """Each ALIGNED_STATS entry per row (L-1,), plus "agree" (1.0 where both most likely next tokens have
    one text); the teacher's are NaN at unaligned rows. Cached per temperature."""
    if temperature not in analysis.stats_cache:
        analysis.stats_cache[temperature] = _aligned_stats(analysis, temperature)
    return analysis.stats_cache[temperature]


def _aligned_stats(analysis: AlignedAnalysis, temperature: float) -> dict[str, Tensor]:
    t, s = analysis.teacher_logits, analysis.student_logits
    p, q = softened(t, temperature), softened(s, temperature)
    nxt = torch.tensor(analysis.token_ids[1:])
    student_texts, teacher_texts = analysis.bridge.token_texts()
    same = [student_texts[i] is not None and student_texts[i] == teacher_texts[j]
            for i, j in zip(q.argmax(-1).tolist(), p.argmax(-1).tolist())]
    gap = ~analysis.aligned
    return {
        "uld": uld_distance(s, t, temperature).masked_fill(gap, math.nan),
        "dark_mass": (1 - p.max(-1).values).masked_fill(gap, math.nan),
        "teacher_entropy": entropy(p).masked_fill(gap, math.nan),
        "student_entropy": entropy(q),
        "student_nll": -q.gather(-1, nxt[:, None]).squeeze(-1).clamp_min(1e-30).log(),
        "agree": torch.tensor(same, dtype=torch.float32).masked_fill(gap, math.nan),
    }


def _text(texts: list[str | None], tokenizer, token: int) -> str:
    """A compared id's text, or its raw name where it is not whole characters (a byte token)."""
    found = texts[token] if token < len(texts) else None
    return found if found is not None else tokenizer.convert_ids_to_tokens(token)


def aligned_top_k(analysis: AlignedAnalysis, position: int, temperature: float = 1.0, k: int = 10) -> AlignedTopK:
    """Both models' top-k at row `position` (predicting student token position + 1)."""
    if not 0 <= position < len(analysis):
        raise ValueError(f"position must be in [0, {len(analysis) - 1}], got {position}")
    bridge = analysis.bridge
    student_texts, teacher_texts = bridge.token_texts()
    q = softened(analysis.student_logits[position], temperature)
    q_top = q.topk(min(k, q.numel()))
    student = [_text(student_texts, bridge.student, i) for i in q_top.indices.tolist()]
    teacher, t_probs, uld, shared = [], [], math.nan, []
    if analysis.aligned[position]:
        p = softened(analysis.teacher_logits[position], temperature)
        p_top = p.topk(min(k, p.numel()))
        teacher = [_text(teacher_texts, bridge.teacher, i) for i in p_top.indices.tolist()]
        t_probs = p_top.values.tolist()
        uld = float(uld_distance(analysis.student_logits[position][None], analysis.teacher_logits[position][None],
                                 temperature)[0])
        both = {student_texts[i] for i in q_top.indices.tolist()} & {teacher_texts[i] for i in p_top.indices.tolist()}
        shared = [teacher_texts[i] for i in p_top.indices.tolist() if teacher_texts[i] in both - {None}]
    return AlignedTopK(teacher, t_probs, student, q_top.values.tolist(), shared, uld, analysis.tokens[position + 1])


def aligned_trajectory(analysis_rows: list[tuple[int, AlignedAnalysis]], position: int, temperature: float = 1.0,
                       k: int = 5) -> Trajectory:
    """One aligned position across saved students: the student's probability of the token with the text of
    each of the teacher's top-k (NaN where the student has no such token) and, in `forward_kl`, the ULD."""
    latest = analysis_rows[-1][1]  # every student of a run reads the text alike: one teacher row
    if not 0 <= position < len(latest):
        raise ValueError(f"position must be in [0, {len(latest) - 1}], got {position}")
    if not latest.aligned[position]:
        raise ValueError(f"position {position}: {UNALIGNED}; pick a coloured token")
    bridge = latest.bridge
    student_texts, teacher_texts = bridge.token_texts()
    by_text = {text: i for i, text in enumerate(student_texts) if text is not None}
    teacher_row = latest.teacher_logits[position]
    p = softened(teacher_row, temperature)
    top = p.topk(min(k, p.numel())).indices.tolist()
    own = [by_text.get(teacher_texts[i]) if teacher_texts[i] is not None else None for i in top]
    steps, student, distance = [], [], []
    for step, found in analysis_rows:
        row = found.student_logits[position]
        q = softened(row, temperature)
        steps.append(step)
        student.append([float(q[i]) if i is not None else math.nan for i in own])
        distance.append(float(uld_distance(row[None], teacher_row[None], temperature)[0]))
    return Trajectory(steps, [_text(teacher_texts, bridge.teacher, i) for i in top], p[top].tolist(), student,
                      distance)
