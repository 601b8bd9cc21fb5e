"""The Learn tab's arithmetic: at one position of a sentence, the teacher's soft label next to the hard one,
the untrained student's loss α·CE + (1−α)·T²·KL split into its two terms, and how the size of KL's gradient
changes with T. Pure functions of two kept logit rows (teacher, student), so α, T and the position move
without a model running; the loss terms are the training losses' own (workbench/losses/divergences.py).

Every knob an HTTP caller can send is checked here, naming the field: α in [0, 1], T in (0, 20], the position
a row of the sentence."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.config.fields import number_in
from workbench.eval.token_stats import TokenAnalysis, softened
from workbench.losses.divergences import ce_loss, forward_kl, kd_loss

MAX_TEMPERATURE = 20.0
TOP_TOKENS = 10
# Where the gradient plot draws its curves: T from 0.1 to 20 (the slider's range), 12 points a decade on a log
# axis, 1 among them (the note compares T = 1 with T = 20).
GRADIENT_TEMPERATURES = (*(round(10 ** (i / 12 - 1), 4) for i in range(28)), MAX_TEMPERATURE)


def check_alpha(alpha) -> float:
    """α, the weight of CE on the actual next token; 1 − α weighs the teacher's term."""
    return number_in(alpha, "alpha", 0.0, 1.0)


def check_temperature(temperature) -> float:
    return number_in(temperature, "temperature", 0.0, MAX_TEMPERATURE, open_low=True)


def check_position(position, rows: int) -> int:
    """A row of the sentence: row i is the prediction of token i + 1 from tokens 0..i."""
    return number_in(position, "position", 0, rows - 1, whole=True)


@dataclass(frozen=True)
class LossTerms:
    """The untrained student's loss at one position, each term alone and weighted."""
    alpha: float
    temperature: float
    ce: float        # −log q(actual next token) at T = 1
    kl: float        # KL(p_T ‖ q_T)
    kd: float        # T²·KL: the teacher's term as training adds it

    @property
    def weighted_ce(self) -> float:
        return self.alpha * self.ce

    @property
    def weighted_kd(self) -> float:
        return (1 - self.alpha) * self.kd

    @property
    def total(self) -> float:
        return self.weighted_ce + self.weighted_kd


def loss_terms(teacher_row: Tensor, student_row: Tensor, actual_id: int, alpha: float,
               temperature: float) -> LossTerms:
    """teacher_row, student_row (V,) logits at one position; actual_id the token that came next."""
    student, teacher = student_row[None], teacher_row[None]  # one position as a batch of one
    label = torch.tensor([actual_id])
    # The training losses themselves, so what the tab shows is what a soft-label run optimises.
    ce, kd = ce_loss(student, label), kd_loss(student, teacher, label, "forward_kl", temperature)
    return LossTerms(alpha, temperature, float(ce), float(forward_kl(student, teacher, temperature)[0]), float(kd))


def kl_gradient(teacher_row: Tensor, student_row: Tensor, temperature: float) -> Tensor:
    """d KL(p_T ‖ q_T) / d student logits (V,) = (q_T − p_T) / T: softening divides the logits by T, and
    the chain rule brings that 1/T out once more, so the gradient falls about as 1/T² when T is large."""
    return (softened(student_row, temperature) - softened(teacher_row, temperature)) / temperature


def gradient_size(teacher_row: Tensor, student_row: Tensor, temperature: float) -> float:
    """‖d KL(p_T ‖ q_T) / d student logits‖; times T² it is the size with the T² factor."""
    return float(kl_gradient(teacher_row, student_row, temperature).norm())


@dataclass(frozen=True)
class GradientCurve:
    temperatures: list[float]
    plain: list[float]      # ‖d KL / d student logits‖ at each T
    scaled: list[float]     # the same with the T² factor: ‖T·(q_T − p_T)‖


def gradient_sizes(teacher_row: Tensor, student_row: Tensor,
                   temperatures: tuple[float, ...] = GRADIENT_TEMPERATURES) -> GradientCurve:
    """gradient_size at every temperature, all at once: one (temperatures, V) softmax per model instead of a
    loop of small ones, each of which waits for a thread when the machine is busy training."""
    column = torch.tensor(temperatures, dtype=torch.float32)[:, None]
    gaps = softened(student_row[None] / column, 1.0) - softened(teacher_row[None] / column, 1.0)  # q_T − p_T
    norms = (gaps.norm(dim=-1) / column[:, 0]).tolist()
    return GradientCurve(list(temperatures), norms, [norm * t * t for norm, t in zip(norms, temperatures)])


@dataclass(frozen=True)
class PositionView:
    """The soft and the hard label at one position: the teacher's top tokens (the actual next token added
    when it is not among them), each model's probability of them at T = 1 and at T."""
    position: int
    context: str              # the text the models have read: tokens 0..position
    ids: list[int]
    tokens: list[str]
    teacher_t1: list[float]
    teacher_t: list[float]
    student_t: list[float]
    hard: list[float]         # the one-hot label on the actual next token
    teacher_rest_t: float     # the teacher's mass at T on every other token
    actual_id: int            # the token that came next

    @property
    def argmax_id(self) -> int:
        """The teacher's most likely token, first in `ids` (at any T: softening keeps the order)."""
        return self.ids[0]

    def token(self, token_id: int) -> str:
        return self.tokens[self.ids.index(token_id)]


def position_view(analysis: TokenAnalysis, tokenizer, position: int, temperature: float,
                  top: int = TOP_TOKENS) -> PositionView:
    teacher_row, student_row = analysis.teacher_logits[position], analysis.student_logits[position]
    actual_id = analysis.token_ids[position + 1]
    p1, pt, qt = softened(teacher_row, 1.0), softened(teacher_row, temperature), softened(student_row, temperature)
    ids = pt.topk(min(top, pt.numel())).indices.tolist()
    if actual_id not in ids:
        ids.append(actual_id)
    chosen = torch.tensor(ids)
    return PositionView(
        position=position, context=tokenizer.decode(analysis.token_ids[:position + 1]), ids=ids,
        tokens=[tokenizer.decode([i]) for i in ids], teacher_t1=p1[chosen].tolist(), teacher_t=pt[chosen].tolist(),
        student_t=qt[chosen].tolist(), hard=[1.0 if i == actual_id else 0.0 for i in ids],
        teacher_rest_t=float((1 - pt[chosen].sum()).clamp(min=0)), actual_id=actual_id)


def top_k_mass(teacher_row: Tensor, k: int) -> float:
    """The teacher's probability (T = 1) on its k most likely tokens: what a top-k cache keeps here."""
    p = softened(teacher_row, 1.0)
    return float(p.topk(min(k, p.numel())).values.sum())


def teaching_position(analysis: TokenAnalysis) -> int:
    """The row to show first: where the teacher's second choice is likeliest, so the soft label visibly says
    more than the hard one ("on 34%, at 30%" after "The cat sat"), instead of a near one-hot. Rows that predict
    a word after at least two tokens of context are preferred: punctuation and a sentence's first guess teach
    less."""
    second = torch.softmax(analysis.teacher_logits.float(), -1).topk(2, -1).values[:, 1]
    words = [row for row in range(1, len(analysis)) if any(c.isalpha() for c in analysis.tokens[row + 1])]
    return max(words or range(len(analysis)), key=lambda row: float(second[row]))
