"""The Learn tab's words: one short text per concept, shown next to the picture it explains, and the notes
that put the numbers of the current view into sentences. Token text and cache names are not ours: they
pass through escaping.plain before they join the Markdown."""
from __future__ import annotations

from pathlib import Path

from workbench.config.escaping import plain
from workbench.engine.storage_cost import Scenario, human_bytes, label_bytes, per_token
from workbench.eval.lesson import GradientCurve, LossTerms, PositionView
from workbench.eval.lesson_reader import MAX_TOKENS, Reading

INTRO = """## What does a student learn from a teacher?
No run needed: the offline default teacher (SmolLM2-135M-Instruct) and its student (6 of its 30 layers, not yet
trained) read a sentence of yours once. Then move the position, T and α: every picture is recomputed from the
kept logits, so what you see is exactly what a soft-label run would compute at that token, before its first step."""

SOFT_VS_HARD = """**Hard label vs soft label.** Plain fine-tuning learns from the text alone: at each position one
right answer, the token that came next (the dark bar, a one-hot vector). The teacher says much more: how likely
every other token was. That ranking of the wrong answers (*dark knowledge*: "dog" is a far better guess than
"carrot" where the text said "cat") is what a soft-label run trains the student towards, thousands of tokens per
position instead of one. The teacher's top choice is not always the token that came; where they differ, the
two labels pull the student different ways."""

TEMPERATURE = """**Temperature.** Both models' distributions are softmax(logits / T). T = 1 is the model as it is;
a larger T flattens it: the top token gives mass to the runners-up, whose order never changes, so the small
probabilities, where most of the dark knowledge sits, grow large enough to count in the loss. T < 1 sharpens
towards the argmax, towards a hard label. Teacher and student are softened with the same T; CE on the actual
token always uses T = 1."""

ALPHA = """**α balances the two signals.** The loss at a position is
α·CE + (1−α)·T²·KL(teacher_T ‖ student_T). Each term's full bar is its value alone; the coloured part is what
enters the loss at this α, and the right bar is their sum. α = 1 is plain fine-tuning on the text, α = 0 learns
from the teacher only. The student has had no training step, so this is the loss a run starts from at this
token."""

WHY_T2 = """**Why T².** The gradient of KL(p_T ‖ q_T) with respect to the student's logits is (q_T − p_T) / T.
Softening also shrinks the gap q_T − p_T, by about 1/T once T is large, so the teacher's pull fades as 1/T²
(the dashed curve): raising T would quietly turn the teacher down against CE. Multiplying KL by T² makes the
gradient T·(q_T − p_T), about the same size at every large T (the solid curve), so α alone sets the balance
and T only how soft the target is. Both curves are the real gradient norms at the chosen position."""

STORAGE = """**What storing the teacher costs.** A soft-label run needs the teacher's distribution at every token.
Run the teacher live and nothing is stored; store it once to train many students without the teacher, and a
full distribution costs vocabulary × bytes per token. The teacher cache (`python -m workbench cache`) keeps
only the top k per token: k fp16 log-probabilities, k token ids (uint16 while the vocabulary fits 65,536
entries, else int32) and one fp16 log of the mass left outside them. A hard label is one token id. Units
are decimal (1 GB = 10⁹ bytes)."""


def token(text: str) -> str:
    """A token as Markdown text: quoted, whitespace shown as escapes, escaped."""
    return plain(repr(text))


def read_status(reading: Reading, seconds: float) -> str:
    rows = len(reading.analysis)
    cut = f" (only its first {MAX_TOKENS} tokens: the rest is left unread)" if reading.cut else ""
    return (f"Read {rows + 1} tokens{cut} and shown in {seconds:.2f} s: both models ran once, in "
            f"{reading.analysis.seconds:.2f} s (a sentence read before is not run again; the first one also "
            "loads the models). Moving the sliders now re-reads the kept logits.")


def labels_note(view: PositionView, temperature: float) -> str:
    actual, argmax = token(view.token(view.actual_id)), token(view.token(view.argmax_id))
    top1 = view.teacher_t1[0]
    agree = ("the same token" if view.actual_id == view.argmax_id
             else "not the token that came: here the hard and the soft label disagree")
    return (f"**Position {view.position}**: the text continues with {actual}; the teacher's top choice is {argmax} "
            f"({100 * top1:.0f}% at T = 1), {agree}. At T = {temperature:g} the top token keeps "
            f"{100 * view.teacher_t[0]:.0f}% and every other token together gets {100 * (1 - view.teacher_t[0]):.0f}%; "
            f"the hard label gives {actual} 100% and every other token nothing.")


def loss_note(terms: LossTerms) -> str:
    share = terms.weighted_kd / terms.total if terms.total > 0 else 0.0
    return (f"CE = −log q(actual token) = {terms.ce:.3f} nats; KL(p_T ‖ q_T) = {terms.kl:.4f}, "
            f"× T² = {terms.kd:.3f}. "
            f"At α = {terms.alpha:g}: {terms.alpha:g}·CE = {terms.weighted_ce:.3f} and "
            f"{1 - terms.alpha:g}·T²·KL = {terms.weighted_kd:.3f}, so the loss is {terms.total:.3f}, "
            f"{100 * share:.0f}% of it from the teacher.")


def gradient_note(curve: GradientCurve, temperature: float, at_t: float) -> str:
    one = curve.temperatures.index(1.0)
    return (f"At T = {temperature:g}: ‖gradient‖ = {at_t:.3g} for KL alone, {at_t * temperature ** 2:.3g} with "
            f"T². From T = 1 to {curve.temperatures[-1]:g}, KL alone changes "
            f"×{curve.plain[-1] / curve.plain[one]:.2g}, "
            f"T²·KL ×{curve.scaled[-1] / curve.scaled[one]:.2g}.")


def _per_token_line(vocab: int, k: int) -> str:
    sizes = per_token(vocab, k)
    ids = label_bytes(vocab)
    return (f"Per token at vocabulary {vocab:,}: full logits {sizes['full logits, fp32']:,} bytes in fp32, "
            f"{sizes['full logits, fp16']:,} in fp16; the top-{k} cache {k}·2 + {k}·{ids} + 2 = "
            f"{sizes['top-k cache']:,} bytes (what the teacher cache stores); a hard label {ids} bytes.")


def storage_note(scenario: Scenario, k: int, caches: list[dict], caches_dir: Path,
                 here: tuple[int, float] | None) -> str:
    """The per-token arithmetic of the user's numbers, their totals, and what the top k keep of the teacher."""
    k = min(k, scenario.vocab)
    totals = ", ".join(f"{name.replace('top-k', f'top-{k}')} {human_bytes(size * scenario.tokens)}"
                       for name, size in per_token(scenario.vocab, k).items())
    lines = [_per_token_line(scenario.vocab, k), f"For {scenario.tokens:,} tokens: {totals}."]
    rest = "The rest is kept as one bucket: its total is right, how it spreads over the other tokens is lost."
    if caches:
        lines.append("**What the top k keep**, as the caches here recorded it (their manifest's mean share of the "
                     "teacher's probability inside the top k): " + "; ".join(
                         f"{plain(c['name'])} (k = {c['k']}): {100 * c['mass kept']:.1f}%" for c in caches) +
                     f". {rest}")
    else:
        lines.append(f"**What the top k keep**: no teacher cache in {plain(caches_dir)} yet, so no measured share: "
                     "a cache's manifest records the mean share of the teacher's probability its top k hold (on the "
                     f"default corpus, k = 32 kept 85% in `benchmarks/teacher_cache.py`). {rest}")
    if here is not None:
        position, mass = here
        lines.append(f"At position {position} of your sentence, the teacher's top {k} hold {100 * mass:.1f}% of its "
                     "probability.")
    return "\n\n".join(lines)
