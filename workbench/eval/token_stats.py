"""The dark-knowledge inspector: teacher vs student next-token distributions, token by token, for a text.

Both models run once per (student, text) and their logits are kept, so the temperature, top-k, the
position shown and the statistic coloured are re-read from memory without running a model again.
Everything here is a pure function of logits except `analyse`, which runs the models; the divergences
are those of workbench/losses/divergences.py, so what the inspector shows is what training optimises.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from workbench.losses.divergences import forward_kl
from workbench.models.loading import shared_logit_size

MAX_TOKENS = 256

# Per-position statistics, in the order the UI offers them to colour the text by.
STATS = {
    "forward_kl": "KL(teacher ‖ student)",
    "reverse_kl": "KL(student ‖ teacher)",
    "jsd": "JSD (symmetric)",
    "dark_mass": "teacher mass outside its top token",
    "teacher_entropy": "teacher entropy (nats)",
    "student_entropy": "student entropy (nats)",
    "student_nll": "student surprise at the actual token (nats)",
}


@dataclass
class TokenAnalysis:
    """Row i of each logits tensor is the distribution over the token after tokens[:i+1], so it is
    compared with token i+1: L tokens give L-1 rows."""
    token_ids: list[int]        # (L,)
    tokens: list[str]           # (L,) each token decoded on its own
    teacher_logits: Tensor      # (L-1, V) float32, V = the logit rows both models share
    student_logits: Tensor      # (L-1, V)
    seconds: float              # time spent running the two models
    # token_stats per temperature: moving the position, k or the colouring reuses them
    stats_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.token_ids) - 1


@dataclass
class TopK:
    """The union of the teacher's and the student's k most likely tokens at one position, ordered by
    the teacher's probability, with the mass each model puts on everything else."""
    ids: list[int]
    tokens: list[str]
    teacher: list[float]
    student: list[float]
    teacher_rest: float
    student_rest: float
    actual: str                 # the token that really came next


def analyse(teacher, student, tokenizer, text: str, max_tokens: int = MAX_TOKENS,
            teacher_logits: Tensor | None = None) -> TokenAnalysis:
    """Run both models over the first `max_tokens` tokens of `text` (fp32, no gradients).
    `teacher_logits` (L-1, V_teacher): the teacher's rows for this text from an earlier analysis, so
    comparing several students with one teacher runs the teacher once."""
    if not text or not text.strip():
        raise ValueError("inspector text: write or pick a text first")
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens]  # (1, L)
    if ids.shape[1] < 2:
        raise ValueError("inspector text: needs at least two tokens (one to predict from, one to predict)")
    vocab = shared_logit_size(teacher, student)
    start = time.perf_counter()
    with torch.inference_mode():  # no autograd bookkeeping: these logits are only ever read
        if teacher_logits is None:
            teacher_logits = teacher(input_ids=ids).logits[0, :-1].float()
        s_logits = student(input_ids=ids).logits[0, :-1, :vocab].float()
    seconds = time.perf_counter() - start
    token_ids = ids[0].tolist()
    # One batch call instead of a decode per token (a fast tokenizer decodes the batch in Rust).
    tokens = tokenizer.batch_decode([[i] for i in token_ids])
    return TokenAnalysis(token_ids, tokens, teacher_logits[:, :vocab], s_logits, seconds)


def softened(logits: Tensor, temperature: float) -> Tensor:
    """softmax(logits / T) over the last dim, in float32."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(logits.float() / temperature, dim=-1)


def entropy(probs: Tensor) -> Tensor:
    """Entropy in nats of distributions over the last dim: (..., V) -> (...)."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def token_stats(analysis: TokenAnalysis, temperature: float = 1.0) -> dict[str, Tensor]:
    """Each STATS entry per position (L-1,), plus "agree" (1.0 where both argmaxes match)."""
    if temperature not in analysis.stats_cache:
        analysis.stats_cache[temperature] = _token_stats(analysis, temperature)
    return analysis.stats_cache[temperature]


def _token_stats(analysis: TokenAnalysis, temperature: float) -> dict[str, Tensor]:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows = max(1, _BLOCK_VALUES // analysis.teacher_logits.shape[-1])
    nxt = torch.tensor(analysis.token_ids[1:])
    with torch.inference_mode():
        blocks = [_block_stats(t, s, n, temperature) for t, s, n in zip(
            analysis.teacher_logits.split(rows), analysis.student_logits.split(rows), nxt.split(rows))]
    return {key: torch.cat([block[key] for block in blocks]) for key in blocks[0]}


# Rows are read in blocks of about this many values (two rows at V = 49k, 512 KB a tensor): a block's
# temporaries stay in cache and in memory the allocator reuses. Whole (L-1, V) temporaries are 50 MB each,
# fresh pages every time, and page faults, not arithmetic, then took most of a second per temperature.
_BLOCK_VALUES = 2**17
_LOG_HALF = math.log(0.5)


def _block_stats(t: Tensor, s: Tensor, nxt: Tensor, temperature: float) -> dict[str, Tensor]:
    """token_stats over a block of rows from one log-softmax per model. The KLs and the JSD are
    workbench/losses/divergences.py's formulas (tests/test_inspect.py holds them equal), written over the
    shared log-probabilities: called one by one, each of them softens both models' logits again."""
    log_p = torch.log_softmax(t.float() / temperature, dim=-1)
    log_q = torch.log_softmax(s.float() / temperature, dim=-1)
    p, q = log_p.exp(), log_q.exp()
    gap = log_p - log_q
    log_m = torch.logaddexp(log_p + _LOG_HALF, log_q + _LOG_HALF)  # the mixture (p + q) / 2
    top, teacher_top = p.max(-1)
    return {
        "forward_kl": _expect(p, gap),
        "reverse_kl": -_expect(q, gap),
        "jsd": 0.5 * _expect(p, log_p - log_m) + 0.5 * _expect(q, log_q - log_m),
        "dark_mass": 1 - top,
        "teacher_entropy": -_expect(p, log_p),
        "student_entropy": -_expect(q, log_q),
        "student_nll": -log_q.gather(-1, nxt[:, None]).squeeze(-1),
        "agree": (teacher_top == q.argmax(-1)).float(),
    }


def _expect(probs: Tensor, values: Tensor) -> Tensor:
    """sum_v probs * values per row. A token without mass adds 0, as in the losses' _kl: where a -inf logit
    made that 0 * inf = NaN, the row is summed again without such tokens (models give finite logits, so the
    common case costs one fused multiply-add pass)."""
    found = torch.linalg.vecdot(probs, values)
    broken = found.isnan()
    if broken.any():
        weights, terms = probs[broken], values[broken]
        found[broken] = torch.where(weights > 0, weights * terms, 0.0).sum(-1)
    return found


def top_k(analysis: TokenAnalysis, tokenizer, position: int, temperature: float = 1.0, k: int = 10) -> TopK:
    """The distributions at row `position` (predicting token position + 1)."""
    return top_k_rows(analysis, tokenizer, [position], temperature, k)[0]


def top_k_rows(analysis: TokenAnalysis, tokenizer, positions: list[int], temperature: float = 1.0,
               k: int = 10) -> list[TopK]:
    """top_k at each of `positions`, their softmax and top-k taken at once: a whole answer's rows cost about
    what one costs (row by row, a 49k-wide softmax each, 256 rows took seconds)."""
    for position in positions:
        if not 0 <= position < len(analysis):
            raise ValueError(f"position must be in [0, {len(analysis) - 1}], got {position}")
    if not positions:
        return []
    rows = torch.tensor(positions, dtype=torch.long)
    p_rows, q_rows = softened(analysis.teacher_logits[rows], temperature), softened(analysis.student_logits[rows],
                                                                                    temperature)
    k = min(k, p_rows.shape[-1])
    found = []
    for position, p, q, p_top, q_top in zip(positions, p_rows, q_rows, p_rows.topk(k, -1).indices.tolist(),
                                            q_rows.topk(k, -1).indices.tolist()):
        union = list(dict.fromkeys(p_top + q_top))
        union.sort(key=lambda i: (-float(p[i]), -float(q[i])))
        chosen = torch.tensor(union)
        found.append(TopK(ids=union, tokens=[tokenizer.decode([i]) for i in union], teacher=p[chosen].tolist(),
                          student=q[chosen].tolist(), teacher_rest=float(1 - p[chosen].sum().clamp(max=1)),
                          student_rest=float(1 - q[chosen].sum().clamp(max=1)), actual=analysis.tokens[position + 1]))
    return found


@dataclass
class Trajectory:
    """One position across training: the student's probability of the teacher's top tokens per step."""
    steps: list[int]
    tokens: list[str]           # the teacher's top-k at the position
    teacher: list[float]        # (k,)
    student: list[list[float]]  # (steps, k)
    forward_kl: list[float]     # (steps,)


def trajectory(teacher_row: Tensor, student_rows: list[tuple[int, Tensor]], tokenizer, temperature: float = 1.0,
               k: int = 5) -> Trajectory:
    """teacher_row (V,) and, per step, the student's logits (V,) at one position."""
    p = softened(teacher_row, temperature)
    top = p.topk(min(k, p.numel())).indices
    steps, student, kl = [], [], []
    for step, row in student_rows:
        steps.append(step)
        student.append(softened(row, temperature)[top].tolist())
        kl.append(float(forward_kl(row, teacher_row, temperature)))
    return Trajectory(steps, [tokenizer.decode([int(i)]) for i in top], p[top].tolist(), student, kl)
