"""The inspector as a service: a run's teacher and students loaded once, analyses cached per text, so
the UI's sliders (temperature, position, top-k, step) never wait for a model. Thread-safe: Gradio runs
handlers in worker threads."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from workbench.config import DistillConfig
from workbench.data import heldout_documents
from workbench.inspect import MAX_TOKENS, TokenAnalysis, Trajectory, analyse, trajectory
from workbench.models import load_tokenizer
from workbench.rundir import CONFIG, RunDir, is_run_dir
from workbench.run_models import StudentPoint, load_student_at, load_teacher_fp32, student_points


class _Lru(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value

    def hit(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None


class Inspector:
    def __init__(self, runs_dir: str | Path, max_students: int = 4, max_analyses: int = 32):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self._lock = threading.RLock()
        self._teachers = _Lru(1)          # one teacher at a time: the biggest model by far
        self._students = _Lru(max_students)
        self._analyses = _Lru(max_analyses)
        self._texts: dict[str, list[str]] = {}

    def run(self, run_id: str) -> tuple[RunDir, DistillConfig]:
        path = (self.runs_dir / run_id).resolve()
        if path.parent != self.runs_dir or not is_run_dir(path) or not (path / CONFIG).exists():
            raise ValueError(f"run {run_id!r}: no started run of that name in {self.runs_dir}")
        return RunDir(path), DistillConfig.load(path / CONFIG)

    def points(self, run_id: str) -> list[StudentPoint]:
        run, config = self.run(run_id)
        return student_points(run, config)

    def point(self, run_id: str, key: str) -> StudentPoint:
        for point in self.points(run_id):
            if point.key == key:
                return point
        raise ValueError(f"run {run_id!r} has no student {key!r} (a checkpoint may have been rotated away)")

    def tokenizer(self, run_id: str):
        _, config = self.run(run_id)
        return self._teacher(config)[1]

    def validation_texts(self, run_id: str) -> list[str]:
        with self._lock:
            if run_id not in self._texts:
                _, config = self.run(run_id)
                self._texts[run_id] = heldout_documents(config.data, self._teacher(config)[1], config.train.seed)
            return self._texts[run_id]

    def analysis(self, run_id: str, key: str, text: str, max_tokens: int = MAX_TOKENS) -> TokenAnalysis:
        _, config = self.run(run_id)
        point = self.point(run_id, key)
        cache_key = (run_id, key, _stamp(point), text, max_tokens)
        with self._lock:
            found = self._analyses.hit(cache_key)
            if found is not None:
                return found
            teacher, tokenizer = self._teacher(config)
            student = self._student(run_id, config, point)
            return self._analyses.put(cache_key, analyse(teacher, student, tokenizer, text, max_tokens))

    def trajectory(self, run_id: str, text: str, position: int, temperature: float, k: int = 5,
                   max_tokens: int = MAX_TOKENS) -> Trajectory:
        """One position's student distribution at every saved point of the run, vs the teacher's."""
        rows = []
        for point in self.points(run_id):
            found = self.analysis(run_id, point.key, text, max_tokens)
            if not 0 <= position < len(found):
                raise ValueError(f"position must be in [0, {len(found) - 1}], got {position}")
            rows.append((point.step, found.student_logits[position]))
        return trajectory(found.teacher_logits[position], rows, self.tokenizer(run_id), temperature, k)

    def _teacher(self, config: DistillConfig):
        key = (config.teacher.name_or_path, config.teacher.revision, config.teacher.gguf_file)
        with self._lock:
            found = self._teachers.hit(key)
            if found is None:
                # The student's tokenizer is the teacher's: soft-label runs were checked for one vocabulary.
                found = self._teachers.put(key, (load_teacher_fp32(config), load_tokenizer(config.teacher, "teacher")))
            return found

    def _student(self, run_id: str, config: DistillConfig, point: StudentPoint):
        key = (run_id, point.key, _stamp(point))
        with self._lock:
            found = self._students.hit(key)
            return found if found is not None else self._students.put(key, load_student_at(config, point))


def _stamp(point: StudentPoint) -> float:
    """Changes when the folder is rewritten (a resumed run saving a new final student)."""
    try:
        return point.path.stat().st_mtime if point.path is not None else 0.0
    except FileNotFoundError:
        return -1.0
