"""Chat side by side: one prompt answered by a run's teacher, its student at a saved step and (when one
finished) its CE-only baseline, streamed as the tokens come; then the teacher rates each token a student
chose: KL(student ‖ teacher) at the position that chose it (the on-policy measure's term, the divergence
on-policy distillation minimises; 0 = the teacher would have written the token with the student's odds),
and both models' top-k there, for the click on a token.

Every setting also arrives from an HTTP endpoint (every Gradio handler is one), so each is checked here,
naming the field and its range; the prompt's length and the answers' are capped, since every token costs a
forward of every model on a shared machine."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Iterator

from workbench.config.fields import number_in
from workbench.eval.inspector import ChatModels, Inspector
from workbench.eval.on_policy_measure import read_answer, settings_for, vocab_limit
from workbench.eval.token_stats import TopK, top_k_rows
from workbench.models.loading import context_length, logit_size
from workbench.models.sampling import SamplingSettings, stream

MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 512        # after the chat template; each answer token then reads them all from the cache
MAX_NEW_TOKENS = 256
MAX_TEMPERATURE = 2.0          # beyond it a small model's answer is noise
MAX_SEED = 2**32 - 1
TOP_K = 10                     # tokens of each model shown for a clicked token
NO_BASELINE = "no CE-only baseline for this run (Evaluate → Add CE-only baseline trains one)"
NO_LOCAL_TEACHER = "this run's teacher is no checkpoint here (an API endpoint): it cannot answer here"
ONE_TOKENIZER = ("not coloured: rating each token needs one tokenizer, and this run's teacher reads other tokens "
                 "(the answers still stand side by side)")


@dataclass(frozen=True)
class ChatSettings:
    temperature: float   # 0 = greedy
    top_p: float
    max_new_tokens: int
    seed: int

    def describe(self) -> str:
        if self.temperature == 0:
            return f"greedy (T = 0: top-p and seed unused), up to {self.max_new_tokens} new tokens"
        return (f"T = {self.temperature:g}, top-p {self.top_p:g}, up to {self.max_new_tokens} new tokens, "
                f"seed {self.seed}")


def chat_settings(temperature, top_p, max_new_tokens, seed) -> ChatSettings:
    """The sampling settings, checked whatever a caller sent."""
    return ChatSettings(number_in(temperature, "temperature", 0, MAX_TEMPERATURE),
                        number_in(top_p, "top_p", 0, 1, open_low=True),
                        number_in(max_new_tokens, "max_new_tokens", 1, MAX_NEW_TOKENS, whole=True),
                        number_in(seed, "seed", 0, MAX_SEED, whole=True))


def chat_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt: write a prompt first")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt: at most {MAX_PROMPT_CHARS:,} characters, got {len(prompt):,}")
    return prompt


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as the model reads a user's turn: its chat template with the assistant's turn opened when
    the tokenizer has one (an instruct model), else the plain text for a base model to continue."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False).input_ids  # the template writes its own specials
    return tokenizer(prompt).input_ids


@dataclass(frozen=True)
class Column:
    """One model answering: its own tokenizer and template; `judge` the teacher that rates its tokens."""
    role: str                  # "teacher", "student" or "baseline"
    title: str                 # which model: shown above its answer
    model: object
    tokenizer: object
    prompt: list[int]
    sampling: SamplingSettings
    judge: object | None = None
    note: str = ""             # why the answer is not rated, when it is not


@dataclass(frozen=True)
class Rated:
    """A student's answer as the teacher sees it, per answer token (all at T = 1)."""
    tokens: list[str]          # each answer token decoded alone
    rkl: list[float]           # KL(student ‖ teacher) at the position that chose the token
    teacher_logp: list[float]  # the teacher's log-probability of the token
    student_logp: list[float]  # the student's own
    top: list[TopK]            # both models' top-k at that position
    context: str               # the prompt's end: what the first answer token follows
    seconds: float             # both models reading prompt + answer


@dataclass(frozen=True)
class Answer:
    role: str
    title: str
    ids: tuple[int, ...]
    text: str                  # the answer so far, special tokens left out
    done: bool
    seconds: float             # writing it, this model's forwards alone
    rated: Rated | None = None
    note: str = ""


@dataclass(frozen=True)
class Chat:
    columns: list[Column]
    missing: dict[str, str]    # role -> why that column has no answer (no baseline, an API teacher)


def _column(role: str, title: str, model, tokenizer, prompt: str, settings: ChatSettings, judge=None,
            note: str = "") -> Column:
    """A model's prompt and sampling settings, refused when they do not fit what the models read."""
    ids = prompt_ids(tokenizer, prompt)
    if len(ids) > MAX_PROMPT_TOKENS:
        raise ValueError(f"prompt: {len(ids):,} tokens for the {role} (with its chat template), at most "
                         f"{MAX_PROMPT_TOKENS}")
    context = context_length(model, judge)
    if context is not None and len(ids) + settings.max_new_tokens > context:
        raise ValueError(f"max_new_tokens: the {role} reads at most {context} positions and the prompt takes "
                         f"{len(ids)}: at most {max(context - len(ids), 0)} new tokens here")
    limit = vocab_limit(judge, model, tokenizer) if judge is not None else min(logit_size(model), len(tokenizer))
    sampling = dataclasses.replace(settings_for(tokenizer, limit, settings.temperature, settings.max_new_tokens),
                                   top_p=settings.top_p)
    return Column(role, title, model, tokenizer, ids, sampling, judge, note)


def open_chat(inspector: Inspector, run_id: str, key: str, baseline_id: str | None, prompt,
              settings: ChatSettings) -> Chat:
    """The columns for one prompt: the run's teacher (when it is a checkpoint here), its student at `key`
    rated by that teacher (when the teacher reads its tokens), and the CE-only baseline `baseline_id` at the
    same step (the same student, data, steps and seed trained on labels alone), rated by the same teacher."""
    prompt = chat_prompt(prompt)
    main = inspector.chat_models(run_id, key)
    judge = main.teacher if main.comparable else None
    note = "" if judge is not None else ONE_TOKENIZER if main.teacher is not None else NO_LOCAL_TEACHER
    columns, missing = [], {}
    if main.teacher is not None:
        columns.append(_column("teacher", "teacher", main.teacher, main.teacher_tokenizer, prompt, settings))
    else:
        missing["teacher"] = NO_LOCAL_TEACHER
    columns.append(_column("student", f"student: {main.point.label} (step {main.point.step})", main.student,
                           main.tokenizer, prompt, settings, judge, note))
    base = _baseline(inspector, baseline_id, main) if baseline_id else NO_BASELINE
    if isinstance(base, str):
        missing["baseline"] = base
    else:
        columns.append(_column("baseline", f"CE-only baseline {baseline_id}: {base.point.label} (step "
                                           f"{base.point.step})", base.student, base.tokenizer, prompt, settings,
                               judge, note))
    return Chat(columns, missing)


def _baseline(inspector: Inspector, baseline_id: str, main: ChatModels) -> ChatModels | str:
    """The baseline's student saved at the step of the student shown (a fair pair: as many steps), or why
    there is none. A baseline that cannot be read leaves the other columns standing."""
    try:
        same = [p for p in inspector.points(baseline_id) if p.step == main.point.step]
        if not same:
            return f"the CE-only baseline {baseline_id} has no student saved at step {main.point.step}"
        return inspector.chat_models(baseline_id, same[-1].key, with_teacher=False)
    except (ValueError, OSError) as err:
        return f"the CE-only baseline {baseline_id} cannot be read: {err}"


def chat_stream(chat: Chat, seed: int) -> Iterator[tuple[Answer, ...]]:
    """Every column's answer as it grows: one token of each unfinished model per round (so all three move
    at once), then each rated answer once its teacher has read it. Each model draws from a generator of its
    own seeded with `seed`: the same seed gives the same answers. The models run outside the inspector's
    work lock: a generator's steps may run on different threads, and eval-mode forwards without gradients
    only read the weights."""
    streams = [stream(c.model, c.prompt, c.sampling, seed) for c in chat.columns]
    answers = [Answer(c.role, c.title, (), "", False, 0.0, None, c.note) for c in chat.columns]
    while not all(answer.done for answer in answers):
        for i, (column, tokens) in enumerate(zip(chat.columns, streams)):
            if answers[i].done:
                continue
            start = time.perf_counter()
            token = next(tokens, None)
            ids = answers[i].ids if token is None else (*answers[i].ids, token)
            answers[i] = dataclasses.replace(answers[i], ids=ids, done=token is None,
                                             text=column.tokenizer.decode(list(ids), skip_special_tokens=True),
                                             seconds=answers[i].seconds + time.perf_counter() - start)
        yield tuple(answers)
    for i, column in enumerate(chat.columns):
        if column.judge is not None and answers[i].ids:
            rated = rate(column.judge, column.model, column.tokenizer, column.prompt, list(answers[i].ids))
            answers[i] = dataclasses.replace(answers[i], rated=rated)
            yield tuple(answers)


def rate(teacher, student, tokenizer, prompt: list[int], answer: list[int], k: int = TOP_K) -> Rated:
    """The teacher's view of each token of the student's answer (both models read prompt + answer once);
    the rows kept are the top-k only, so a session holds a few KB per answer, not its logits."""
    found = read_answer(teacher, student, tokenizer, prompt, answer)
    terms = found.terms()
    rows = list(range(found.prompt_len - 1, len(found.analysis)))  # row i chose token i + 1
    return Rated(found.analysis.tokens[found.prompt_len:], terms["rkl"].tolist(), terms["teacher_logp"].tolist(),
                 terms["student_logp"].tolist(), top_k_rows(found.analysis, tokenizer, rows, 1.0, k),
                 tokenizer.decode(prompt[-16:]), found.analysis.seconds)
