"""Evaluations the app runs on demand: one at a time in a background thread (each loads a teacher and
a student), with progress the UI polls. A job evaluates its own final student when it ends
(config evaluation.at_end); this is for any checkpoint, later."""
from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path
from typing import Callable

from workbench.config.escaping import plain
from workbench.config.fields import ConfigError
from workbench.config.gate import Gate
from workbench.config.schema import DistillConfig
from workbench.eval.report import evaluate_run
from workbench.store.rundir import CONFIG, run_in

log = logging.getLogger(__name__)


class EvaluationQueue:
    def __init__(self, runs_dir: Path, on_done: Callable[[], None] = lambda: None, gate: Gate | None = None,
                 states_root: Path | None = None):
        self.runs_dir = Path(runs_dir)
        self.gate = gate  # the runs' configs pass it before any model of theirs loads
        self.states_root = states_root  # the teacher's kept states, for runs that keep its answers (report.py)
        self.on_done = on_done              # the app wakes its ingest thread, so the store sees the result
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, str, str | None]] = deque()
        self._current: tuple[str, str] | None = None
        self._progress = ("", 0.0)
        self._last: dict[tuple[str, str], str] = {}   # (run, student) -> "done" or the error
        self._working = False  # set and cleared under the lock, so a request never misses a stopping worker

    def request(self, run_id: str, student: str, baseline_id: str | None = None) -> str:
        """Queue an evaluation; KeyError for a run id that is not a run folder in runs_dir. A run whose config
        the gate refuses (a planted run directory asking for remote code or outside files) is not queued."""
        for name in (run_id, baseline_id) if baseline_id else (run_id,):
            run = run_in(self.runs_dir, name)
            if self.gate is not None:
                try:
                    self.gate.check(DistillConfig.load(run.file(CONFIG)))
                except ConfigError as err:
                    return f"**{plain(name)}** is not evaluated here: {plain(err)}"
        with self._lock:
            job = (run_id, student, baseline_id)
            if self._current == (run_id, student) or any(p[:2] == (run_id, student) for p in self._pending):
                return f"**{plain(run_id)}** {plain(student)}: already being evaluated"
            self._pending.append(job)
            if not self._working:
                self._working = True
                threading.Thread(target=self._work, name="evaluations", daemon=True).start()
            return f"**{plain(run_id)}** {plain(student)}: evaluation queued ({len(self._pending)} waiting)"

    def busy(self, run_id: str) -> bool:
        """Whether one of the run's students is being evaluated or waits to be."""
        with self._lock:
            current = self._current is not None and self._current[0] == run_id
            return current or any(job[0] == run_id for job in self._pending)

    def state(self, run_id: str, student: str) -> str:
        """One line for the UI: running (with progress), queued, finished or failed."""
        with self._lock:
            if self._current == (run_id, student):
                message, fraction = self._progress
                return f"evaluating: {fraction:.0%} {message}"
            if any(job[:2] == (run_id, student) for job in self._pending):
                return "queued"
            return self._last.get((run_id, student), "")

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._working = False
                    return
                run_id, student, baseline_id = self._pending.popleft()
                self._current, self._progress = (run_id, student), ("starting", 0.0)
            try:
                evaluate_run(run_in(self.runs_dir, run_id), student,
                             run_in(self.runs_dir, baseline_id) if baseline_id else None, progress=self._report,
                             states_root=self.states_root)
                outcome = "done"
            except Exception as err:  # noqa: BLE001 - shown in the UI; the next evaluation still runs
                outcome = f"failed: {type(err).__name__}: {plain(err)}"  # may quote a config's values
            with self._lock:
                self._last[(run_id, student)] = outcome
                self._current = None
            try:
                self.on_done()
            except Exception:  # noqa: BLE001 - a failing notification must not stop the queue
                log.exception("evaluation finished, but on_done failed")

    def _report(self, message: str, fraction: float) -> None:
        with self._lock:
            self._progress = (message, fraction)
