"""The inspector as a service: a run's teacher and students loaded once, analyses cached per text, so
the UI's sliders (temperature, position, top-k, step) never wait for a model. Thread-safe: Gradio runs
handlers in worker threads."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from workbench.config.gate import Gate
from workbench.config.schema import DistillConfig
from workbench.data.loading import heldout_documents
from workbench.eval.pairing import token_comparable
from workbench.eval.token_stats import MAX_TOKENS, TokenAnalysis, Trajectory, analyse, trajectory
from workbench.models.loading import shared_logit_size
from workbench.models.students import (
    StudentPoint,
    load_student_at,
    load_teacher_fp32,
    reading_config,
    student_points,
    student_tokenizer,
)
from workbench.store.rundir import CONFIG, RunDir, is_run_dir, run_in


class _Lru(OrderedDict):
    """Least recently used entries go first once the summed weight (entries, or bytes) passes `limit`."""

    def __init__(self, limit: int, weigh=lambda value: 1):
        super().__init__()
        self.limit, self.weigh, self.total = limit, weigh, 0

    def put(self, key, value):
        if key in self:
            self.total -= self.weigh(self.pop(key))
        self[key] = value
        self.total += self.weigh(value)
        while self.total > self.limit and len(self) > 1:
            self.total -= self.weigh(self.popitem(last=False)[1])
        return value

    def hit(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None


def _analysis_bytes(found: TokenAnalysis) -> int:
    return found.student_logits.nbytes  # its teacher rows are shared, and weighed in the teacher cache


class Inspector:
    def __init__(self, runs_dir: str | Path, max_students: int = 4, max_bytes: int = 2**30, gate: Gate | None = None):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.gate = gate  # a run directory's config passes it before any of its models or data is read
        # _lock guards the caches and is never held while a model loads or runs, so a slider move served
        # from the cache never waits for another session's work; _work runs that work one at a time (it
        # competes for the same cores anyway) and lets a second request find what the first one made.
        self._lock = threading.Lock()
        self._work = threading.RLock()
        self._teachers = _Lru(1)          # one teacher at a time: the biggest model by far
        self._students = _Lru(max_students)
        # Full-vocabulary fp32 logits: ~100 MB per 256-token text at V = 49k, so the caches are capped
        # in bytes; one teacher pass serves every student of a run.
        self._teacher_rows = _Lru(max_bytes // 2, lambda rows: rows.nbytes)
        self._analyses = _Lru(max_bytes, _analysis_bytes)
        self._texts: dict[str, list[str]] = {}
        self._tokenizers: dict[tuple, object] = {}

    def run(self, run_id: str) -> tuple[RunDir, DistillConfig]:
        try:
            run = run_in(self.runs_dir, run_id)
        except KeyError:
            run = None
        if run is None or not is_run_dir(run.path) or not run.file(CONFIG).exists():
            raise ValueError(f"run {run_id!r}: no started run of that name in {self.runs_dir}")
        config = DistillConfig.load(run.file(CONFIG))
        if self.gate is not None:
            self.gate.check(config)
        return run, reading_config(run, config)

    def points(self, run_id: str) -> list[StudentPoint]:
        run, config = self.run(run_id)
        return student_points(run, config)

    def tokenizer(self, run_id: str):
        _, config = self.run(run_id)
        return self._tokenizer(config)

    def validation_texts(self, run_id: str) -> list[str]:
        with self._lock:
            if run_id in self._texts:
                return self._texts[run_id]
        _, config = self.run(run_id)
        texts = heldout_documents(config.data, self._tokenizer(config), config.train.seed)
        with self._lock:
            self._texts[run_id] = texts
        return texts

    def analysis(self, run_id: str, key: str, text: str, max_tokens: int = MAX_TOKENS) -> TokenAnalysis:
        run, config = self.run(run_id)
        for point in student_points(run, config):
            if point.key == key:
                return self._analysis(run_id, config, point, text, max_tokens)
        raise ValueError(f"run {run_id!r} has no student {key!r} (a checkpoint may have been rotated away)")

    def trajectory(self, run_id: str, text: str, position: int, temperature: float, k: int = 5,
                   max_tokens: int = MAX_TOKENS) -> Trajectory:
        """One position's student distribution at every saved point of the run, vs the teacher's."""
        run, config = self.run(run_id)
        rows = []
        for point in student_points(run, config):
            found = self._analysis(run_id, config, point, text, max_tokens)
            if not 0 <= position < len(found):
                raise ValueError(f"position must be in [0, {len(found) - 1}], got {position}")
            rows.append((point.step, found.student_logits[position]))
        return trajectory(found.teacher_logits[position], rows, self._tokenizer(config), temperature, k)

    def _cached(self, cache: _Lru, key, make):
        """cache[key], made by `make()` under _work if missing; a hit never waits for _work, and a
        second request for the same key finds what the first one made."""
        with self._lock:
            found = cache.hit(key)
        if found is not None:
            return found
        with self._work:
            with self._lock:
                found = cache.hit(key)
            if found is None:
                found = make()
                with self._lock:
                    cache.put(key, found)
            return found

    def _analysis(self, run_id: str, config: DistillConfig, point: StudentPoint, text: str,
                  max_tokens: int) -> TokenAnalysis:
        def make() -> TokenAnalysis:
            teacher = self._teacher(config)
            student = self._cached(self._students, (run_id, point.key, _stamp(point)),
                                   lambda: load_student_at(config, point, teacher=teacher))
            rows_key = (_teacher_key(config), text, max_tokens, shared_logit_size(teacher, student))
            with self._lock:
                rows = self._teacher_rows.hit(rows_key)
            found = analyse(teacher, student, self._tokenizer(config), text, max_tokens, rows)
            with self._lock:
                self._teacher_rows.put(rows_key, found.teacher_logits)
            return found

        return self._cached(self._analyses, (run_id, point.key, _stamp(point), text, max_tokens), make)

    def _teacher(self, config: DistillConfig):
        if not token_comparable(config):
            raise ValueError("the inspector compares teacher and student token by token, which needs one "
                             "tokenizer and a local teacher; this hard-label run's teacher has neither "
                             "(its completions are the data: see the run's generated dataset)")
        return self._cached(self._teachers, _teacher_key(config), lambda: load_teacher_fp32(config))

    def _tokenizer(self, config: DistillConfig):
        """The tokenizer training used (soft-label runs were checked for one vocabulary)."""
        spec = config.teacher if config.student.init_from_teacher_layers else config.student
        key = (spec.name_or_path, spec.revision, spec.gguf_file)
        with self._lock:
            found = self._tokenizers.get(key)
        if found is None:
            found = student_tokenizer(config)
            with self._lock:
                self._tokenizers[key] = found
        return found


def _teacher_key(config: DistillConfig) -> tuple:
    return config.teacher.name_or_path, config.teacher.revision, config.teacher.gguf_file


def _stamp(point: StudentPoint) -> int:
    """Changes when the student's files are rewritten (a resumed run saving a new final student)."""
    if point.path is None:
        return 0
    try:
        return max((p.stat().st_mtime_ns for p in point.path.iterdir()), default=0)
    except FileNotFoundError:
        return -1
