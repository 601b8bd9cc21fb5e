"""The on-policy measure: how the teacher judges text the student writes itself.

Held-out metrics read the data's text (teacher forcing), so a student that drifts once it conditions on
its own words looks fine there; on-policy distillation (GKD) trains against exactly that. This measure
is taken for every strategy's student, so runs of any strategy compare on it.

For each held-out prompt the student answers twice, greedily (T = 0) and sampled (T = 1, top-p 1, the
fixed seed MEASURE_SEED), up to on_policy.max_new_tokens tokens, cut after its first eos (eos included).
Teacher and student then read prompt + answer in one forward each, and per answer token (q = student,
p = teacher, next-token distributions at T = 1 over the logit rows both models have):
  onpolicy_rkl_{kind}            KL(q ‖ p), the reverse KL on-policy distillation minimises (0 = the teacher
                                 would have written each token with the student's odds)
  onpolicy_teacher_logp_{kind}   log p(answer token): how likely the teacher finds the student's text
                                 (closer to 0 = more teacher-like; its negative is the teacher's CE on it)
  onpolicy_student_logp_{kind}   log q(answer token), the same under the student; for sampled answers
                                 student − teacher log-prob is a one-sample estimate of the reverse KL
  onpolicy_answer_tokens_{kind}  answer tokens measured
  onpolicy_prompts               prompts answered
Means are token-weighted over all answers, like every held-out metric.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from workbench.eval.token_stats import TokenAnalysis
from workbench.losses.divergences import IGNORE_INDEX, reverse_kl
from workbench.models.loading import context_length, shared_logit_size
from workbench.models.sampling import SamplingSettings, sample

# 16 prompts × 2 answers × ≤ 32 tokens: ~11 s on 2 CPU cores for the default pair (SmolLM2-135M teacher,
# 6-layer student; its held-out metrics take ~45 s there), ~0.2 s for the tests' tiny models. Cost is
# linear in prompts; fewer make the mean noisier.
HELDOUT_PROMPTS = 16
# The same prompt and answer lengths for every student, whatever its run's on_policy settings: Compare lines
# up these numbers across runs, and longer answers drift further (a higher KL for the same student).
PROMPT_TOKENS = 32
ANSWER_TOKENS = 32
# One seed for every run and every saved student, so their sampled answers differ by the weights alone.
MEASURE_SEED = 0
KINDS = {"greedy": 0.0, "sampled": 1.0}  # answer kind -> sampling temperature

Progress = Callable[[str, float], None]


def heldout_prompts(held, prompt_tokens: int, count: int = HELDOUT_PROMPTS) -> list[list[int]]:
    """Prompts from the first `count` held-out rows: a packed block's first `prompt_tokens` tokens; an
    example whose leading tokens are unlabelled (a prompt, e.g. a chat turn) gives the last
    `prompt_tokens` of that prompt, the tokens an answer continues."""
    prompts = []
    for row in held.select(range(min(count, len(held)))):
        ids, labels = list(row["input_ids"]), list(row["labels"])
        lead = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        prompt = ids[:lead][-prompt_tokens:] if lead else ids[:prompt_tokens]
        if prompt:
            prompts.append(prompt)
    return prompts


def answer_batch(prompts: list[list[int]], answers: list[list[int]], pad_id: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded prompt + answer rows: ids and attention mask (B, L), and targets (B, L-1) aligned with
    the logits (targets[b, i] is the token logits[b, i] predict), IGNORE_INDEX off the answer."""
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    targets = torch.full((len(prompts), width), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        end = len(prompt) + len(answer)
        ids[row, :end] = torch.as_tensor(prompt + answer, dtype=torch.long)
        mask[row, :end] = 1
        targets[row, len(prompt):end] = torch.as_tensor(answer, dtype=torch.long)
    return ids, mask, targets[:, 1:]


def answer_terms(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, vocab: int
                 ) -> dict[str, Tensor]:
    """Per answer token (targets != IGNORE_INDEX), each (N,), at T = 1: "rkl" KL(q ‖ p) over the first
    `vocab` logit rows (those both models have, as the KD term compares them); "teacher_logp" and
    "student_logp", each model's log-probability of the token under its own full logits (as its CE)."""
    mask = targets != IGNORE_INDEX
    tokens = targets[mask][:, None]
    s, t = student_logits[mask].float(), teacher_logits[mask].float()
    return {"rkl": reverse_kl(s[:, :vocab], t[:, :vocab]),
            "teacher_logp": torch.log_softmax(t, -1).gather(-1, tokens).squeeze(-1),
            "student_logp": torch.log_softmax(s, -1).gather(-1, tokens).squeeze(-1)}


@torch.no_grad()
def _logits(model, ids: Tensor, mask: Tensor) -> Tensor:
    """(B, L-1, V) on the model's device: row i predicts token i + 1."""
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]


def score_answers(teacher, student, prompts: list[list[int]], answers: list[list[int]], pad_id: int,
                  batch_size: int) -> dict[str, float]:
    """Sums of answer_terms over all answers, and the answer-token count ("tokens"). Rows go `batch_size`
    at a time: a row's logits are (L, V) per model, ~13 MB at V = 49k and L = 64."""
    vocab = shared_logit_size(teacher, student)
    sums = {"rkl": 0.0, "teacher_logp": 0.0, "student_logp": 0.0, "tokens": 0.0}
    for start in range(0, len(prompts), batch_size):
        ids, mask, targets = answer_batch(prompts[start:start + batch_size], answers[start:start + batch_size],
                                          pad_id)
        s, t = _logits(student, ids, mask), _logits(teacher, ids, mask)
        terms = answer_terms(s, t.to(s.device), targets.to(s.device), vocab)
        for name, values in terms.items():
            sums[name] += float(values.double().sum())
        sums["tokens"] += int((targets != IGNORE_INDEX).sum())
    return sums


def settings_for(tokenizer, vocab_limit: int, temperature: float, max_new_tokens: int) -> SamplingSettings:
    """Pad and end tokens as the on-policy strategy samples with; ids only below `vocab_limit`."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return SamplingSettings(temperature, 1.0, max_new_tokens, pad, (eos,), vocab_limit)


def vocab_limit(teacher, student, tokenizer) -> int:
    """Ids the student may write: logit rows both models have, and that the tokenizer can decode."""
    return min(shared_logit_size(teacher, student), len(tokenizer))


def fitted(teacher, student, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], int]:
    """Prompts and answer length cut so prompt + answer fits the positions both models have (a learned
    position table, as GPT-2's, fails past its end); a prompt keeps its last tokens, which the answer
    continues. Unchanged for the usual 32 + 32 tokens."""
    context = context_length(teacher, student)
    if context is None:
        return prompts, max_new_tokens
    max_new_tokens = min(max_new_tokens, context // 2)
    return [p[-(context - max_new_tokens):] for p in prompts], max_new_tokens


def on_policy_measure(teacher, student, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                      batch_size: int = 8, progress: Progress | None = None) -> dict[str, float]:
    """The module docstring's metrics for the student's answers to `prompts` (non-empty token-id lists);
    {} when there are no prompts."""
    if not prompts:
        return {}
    say = progress or (lambda _message, _fraction: None)
    prompts, max_new_tokens = fitted(teacher, student, prompts, max_new_tokens)
    limit = vocab_limit(teacher, student, tokenizer)
    out: dict[str, float] = {"onpolicy_prompts": float(len(prompts))}
    for i, (kind, temperature) in enumerate(KINDS.items()):
        say(f"on-policy measure: the student answers {len(prompts)} prompts ({kind})", i / len(KINDS))
        settings = settings_for(tokenizer, limit, temperature, max_new_tokens)
        answers = sample(student, prompts, settings, MEASURE_SEED)
        say(f"on-policy measure: the teacher scores the {kind} answers", (i + 0.5) / len(KINDS))
        sums = score_answers(teacher, student, prompts, answers, settings.pad_id, batch_size)
        n = max(sums["tokens"], 1.0)
        out.update({f"onpolicy_rkl_{kind}": sums["rkl"] / n, f"onpolicy_teacher_logp_{kind}": sums["teacher_logp"] / n,
                    f"onpolicy_student_logp_{kind}": sums["student_logp"] / n,
                    f"onpolicy_answer_tokens_{kind}": sums["tokens"]})
    return out


@dataclass
class SampledAnswer:
    """A student's answer to one prompt, as the inspector reads a text: both models' logits over
    prompt + answer, so its per-token statistics and top-k views apply unchanged."""
    analysis: TokenAnalysis     # token_ids = prompt + answer; `seconds` covers sampling and both forwards
    prompt_len: int

    def terms(self) -> dict[str, Tensor]:
        """answer_terms of this answer, one value per answer token (log-probabilities over the shared
        logit rows, which are all the analysis keeps)."""
        a = self.analysis
        targets = torch.tensor(a.token_ids[1:])
        targets[:self.prompt_len - 1] = IGNORE_INDEX
        return answer_terms(a.student_logits, a.teacher_logits, targets, a.teacher_logits.shape[-1])


def sample_answer(teacher, student, tokenizer, prompt: list[int], max_new_tokens: int, seed: int) -> SampledAnswer:
    """The student answers `prompt` at T = 1 (top-p 1, seeded), as the measure's sampled answers; then both
    models read prompt + answer (no gradients)."""
    if not prompt:
        raise ValueError("the prompt is empty")
    start = time.perf_counter()
    [prompt], max_new_tokens = fitted(teacher, student, [prompt], max_new_tokens)
    limit = vocab_limit(teacher, student, tokenizer)
    answer = sample(student, [prompt], settings_for(tokenizer, limit, KINDS["sampled"], max_new_tokens), seed)[0]
    return read_answer(teacher, student, tokenizer, prompt, answer, start)


def read_answer(teacher, student, tokenizer, prompt: list[int], answer: list[int],
                started: float | None = None) -> SampledAnswer:
    """Both models read prompt + answer (one forward each, no gradients), so the teacher's view of each answer
    token is there to read; `seconds` counts from `started` (perf_counter), or covers the two forwards."""
    start = time.perf_counter() if started is None else started
    ids = torch.tensor([prompt + answer])
    mask = torch.ones_like(ids)
    vocab = shared_logit_size(teacher, student)
    t, s = (_logits(model, ids, mask)[0, :, :vocab].float().cpu() for model in (teacher, student))
    token_ids = prompt + answer
    analysis = TokenAnalysis(token_ids, [tokenizer.decode([i]) for i in token_ids], t, s,
                             time.perf_counter() - start)
    return SampledAnswer(analysis, len(prompt))
