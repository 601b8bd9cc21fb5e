"""The Learn tab's reading of a sentence: a teacher and a student (the offline default pair) run over it once,
and both models' logits are kept by text, so moving α, T or the position re-reads them without running a
model. The models stay loaded between sentences; the teacher is the temperature preview's (loaded once).

Thread-safe: Gradio runs handlers in worker threads. `_lock` guards the kept texts and is never held while a
model runs, so a slider move never waits for another session's sentence; `_work` runs models one at a time.
Every torch call runs on the tab's own two single-threaded workers (on_torch_thread; why in
workbench/eval/torch_threads.py)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, TypeVar

import torch

from workbench.config.fields import ConfigError, show
from workbench.config.paths import DEFAULTS_PREFIX
from workbench.config.schema import ModelSpec
from workbench.data.defaults import prepared_root, resolve_default
from workbench.eval.lesson import (
    GradientCurve,
    LossTerms,
    PositionView,
    gradient_size,
    gradient_sizes,
    loss_terms,
    position_view,
    teaching_position,
)
from workbench.eval.preview import loaded_teacher, spec_key
from workbench.eval.token_stats import TokenAnalysis, analyse
from workbench.eval.torch_threads import TorchPool
from workbench.models.loading import load_model

DEFAULT_TEACHER, DEFAULT_STUDENT = "defaults:teacher", "defaults:student"
MAX_TEXT_CHARS = 1_000
MAX_TOKENS = 128      # a sentence or two; the rest of a longer text is left unread, and the view says so
# Each kept text holds two (tokens, V) fp32 tensors: at most 50 MB at V = 49,152 and 128 tokens.
KEPT_TEXTS = 6
Result = TypeVar("Result")


class LessonUnavailable(RuntimeError):
    """The models cannot be read yet (the offline default is still being prepared)."""


@dataclass(frozen=True)
class Reading:
    analysis: TokenAnalysis   # row i: both models' logits for token i + 1
    tokenizer: object
    cut: bool                 # the text was longer than MAX_TOKENS tokens
    first: int                # the position shown first (lesson.teaching_position)
    _curves: dict[int, GradientCurve] = field(default_factory=dict, repr=False, compare=False)

    def gradient_curve(self, position: int) -> GradientCurve:
        """KL's gradient size against T at a position, computed once: moving T or α only moves the marker."""
        if position not in self._curves:
            self._curves[position] = gradient_sizes(self.analysis.teacher_logits[position],
                                                    self.analysis.student_logits[position])
        return self._curves[position]


_TORCH = TorchPool("learn-torch")


def on_torch_thread(fn: Callable[..., Result], *args) -> Result:
    return _TORCH.run(fn, *args)


@dataclass(frozen=True)
class Lesson:
    """Everything the tab shows at one position, α and T."""
    view: PositionView
    terms: LossTerms
    curve: GradientCurve
    at_t: float               # ‖d KL / d student logits‖ at the chosen T, without T²


def lesson_at(reading: Reading, alpha: float, temperature: float, position: int) -> Lesson:
    """From the kept logits: softmaxes only, no model."""
    return on_torch_thread(_lesson_at, reading, alpha, temperature, position)


def _lesson_at(reading: Reading, alpha: float, temperature: float, position: int) -> Lesson:
    teacher, student = reading.analysis.teacher_logits[position], reading.analysis.student_logits[position]
    view = position_view(reading.analysis, reading.tokenizer, position, temperature)
    return Lesson(view, loss_terms(teacher, student, view.actual_id, alpha, temperature),
                  reading.gradient_curve(position), gradient_size(teacher, student, temperature))


def check_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError([("text", f"write or pick a sentence first, got {show(text)}")])
    if len(text) > MAX_TEXT_CHARS:
        raise ConfigError([("text", f"at most {MAX_TEXT_CHARS:,} characters, got {len(text):,}")])
    return text


@lru_cache(maxsize=1)
def _loaded_student(key: tuple):
    return load_model(ModelSpec(*key), "student", torch.float32).eval()


class LessonReader:
    def __init__(self, teacher: str = DEFAULT_TEACHER, student: str = DEFAULT_STUDENT,
                 cache_dir: Path | None = None, kept: int = KEPT_TEXTS):
        self.teacher, self.student, self.cache_dir, self.kept = teacher, student, cache_dir, kept
        self._lock, self._work = threading.Lock(), threading.Lock()
        self._readings: OrderedDict[str, Reading] = OrderedDict()

    def unavailable(self) -> str | None:
        """Why no sentence can be read now, or None. Never prepares the default: the app does that at its first
        start (the banner above the tabs), and a request must not start a 40 s download."""
        uses_defaults = any(ref.startswith(DEFAULTS_PREFIX) for ref in (self.teacher, self.student))
        if uses_defaults and prepared_root(self.cache_dir) is None:
            return ("The offline default teacher and student are not prepared yet: the app prepares them at its "
                    "first start (the banner above shows how far; ~40 s), or run `python -m workbench "
                    "prepare-defaults`. Read a sentence again once it is ready.")
        return None

    def kept_reading(self, text: str) -> Reading | None:
        with self._lock:
            if text in self._readings:
                self._readings.move_to_end(text)
                return self._readings[text]
        return None

    def read(self, text) -> Reading:
        """Both models' logits over `text` (at most MAX_TOKENS tokens): from memory when it was read before."""
        text = check_text(text)
        found = self.kept_reading(text)
        if found is not None:
            return found
        with self._work:
            found = self.kept_reading(text)  # another request may have read it while this one waited
            return found if found is not None else self._keep(text, self._run(text))

    def warm(self) -> bool:
        """Load both models before the first sentence (the page asks as it opens), so that sentence waits only
        for its forward. False while the offline default is still being prepared, True once nothing is left to
        wait for: loaded, or failed to load (a Read then shows why)."""
        if self.unavailable():
            return False
        with self._work:
            try:
                self._models()
            except Exception:  # noqa: BLE001 - reported by the Read that needs the models, with the field named
                pass
        return True

    def _models(self) -> tuple:
        """(tokenizer, teacher, student), loaded once per app (on a torch thread: loading converts every weight
        to fp32, parallel work like any other)."""
        tokenizer, teacher = on_torch_thread(loaded_teacher, spec_key(self._spec(self.teacher, "teacher")))
        return tokenizer, teacher, on_torch_thread(_loaded_student, spec_key(self._spec(self.student, "student")))

    def _run(self, text: str) -> Reading:
        problem = self.unavailable()
        if problem:
            raise LessonUnavailable(problem)
        tokenizer, teacher, student = self._models()
        length = len(tokenizer(text).input_ids)
        if length < 2:
            raise ConfigError([("text", "needs at least two tokens: one to read, one to predict")])
        analysis = on_torch_thread(analyse, teacher, student, tokenizer, text, MAX_TOKENS)
        return Reading(analysis, tokenizer, length > MAX_TOKENS, on_torch_thread(teaching_position, analysis))

    def _spec(self, reference: str, role: str) -> ModelSpec:
        return ModelSpec(name_or_path=resolve_default(reference, f"{role}.name_or_path", self.cache_dir))

    def _keep(self, text: str, reading: Reading) -> Reading:
        with self._lock:
            self._readings[text] = reading
            while len(self._readings) > self.kept:
                self._readings.popitem(last=False)
        return reading
