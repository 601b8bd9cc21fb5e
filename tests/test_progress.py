"""What a run says while it works: worker.log follows the steps between logging steps, status.json says
how far a held-out evaluation is, and periodic evaluations reuse the teacher's held-out answers."""
from __future__ import annotations

import pytest

from workbench.config.schema import DistillConfig
from workbench.engine import callbacks
from workbench.engine.runner import run_training
from workbench.engine.strategies.soft import SoftLabelStrategy
from workbench.store.rundir import RunDir

pytestmark = pytest.mark.slow  # trains a tiny student


def test_the_log_follows_each_step_and_status_shows_held_out_progress(tmp_path, teacher_dir, student_dir,
                                                                      corpus_files, monkeypatch):
    monkeypatch.setattr(callbacks, "LOG_INTERVAL_S", 0.0)
    monkeypatch.setattr(callbacks, "STATUS_INTERVAL_S", 0.0)
    statuses = []
    original = RunDir.write_status

    def spy(self, state, **fields):
        statuses.append(fields)
        return original(self, state, **fields)

    monkeypatch.setattr(RunDir, "write_status", spy)
    teacher_runs = []
    live_signal = SoftLabelStrategy._live_signal
    monkeypatch.setattr(SoftLabelStrategy, "_live_signal",
                        lambda self, *a, **k: teacher_runs.append(self.evaluating) or live_signal(self, *a, **k))
    config = DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
        "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1]), "max_eval_examples": 8},
        "evaluation": {"at_end": False},
        "train": {"max_steps": 4, "batch_size": 2, "seq_len": 32, "logging_steps": 100, "eval_steps": 2},
        "output": {"runs_dir": str(tmp_path), "run_name": "run"}})
    lines = []
    run_training(config, echo=lines.append)
    # logging_steps 100 gives no logged step: the log still shows every step.
    text = "\n".join(lines)
    assert [f"at step {n}/4," in text for n in (1, 2, 3, 4)] == [True] * 4
    phases = [s for s in statuses if s.get("phase") == callbacks.HELD_OUT_PHASE]
    # 8 held-out blocks of batch 2: 4 batches, at step 0, 2 and 4 (the final evaluation reuses step 4's).
    assert [s["phase_done"] for s in phases] == [1, 2, 3, 4] * 3 and {s["phase_total"] for s in phases} == {4}
    assert RunDir(tmp_path / "run").read_status().get("phase") is None
    # The teacher ran on each of the 4 training batches, and on the 4 held-out batches only at step 0: the
    # evaluations at steps 2 and 4 reused its answers (8 runs instead of 16).
    assert teacher_runs.count(False) == 4 and teacher_runs.count(True) == 4
