"""A run whose loss turns NaN fails loudly and keeps its last good student: it stops before the update,
naming the step and the term, every checkpoint it leaves is finite and resumable, its files are strict
JSON; or, with train.on_nonfinite: skip, the bad steps make no update and are counted."""
import json
import math

import pytest
import tiny
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from workbench.config.schema import DistillConfig
from workbench.engine.nonfinite import NonFiniteError, bad_values, describe
from workbench.engine.runner import run_training
from workbench.engine.strategies.soft import SoftLabelStrategy
from workbench.store.rundir import CONFIG, METRICS, STATUS, RunDir

POISON = "<|im_start|>"  # a special token of the tiny tokenizer that the toy grammar never produces


def strict_json(text: str):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def make_config(teacher, student, train_file, runs, name, **train):
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher)}, "student": {"name_or_path": str(student)},
        "data": {"source": str(train_file), "validation_fraction": 0.1},
        "loss": {"alpha": 0.5}, "evaluation": {"at_end": False},
        "train": {"max_steps": 30, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "logging_steps": 5,
                  "save_steps": 5, "save_total_limit": 2, **train},
        "output": {"runs_dir": str(runs), "run_name": name}})


def all_finite(folder) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(next(folder.glob("*.safetensors")))).values())


@pytest.fixture(scope="module")
def nan_teacher(tmp_path_factory, teacher_dir, tokenizer):
    """The trained tiny teacher with a NaN embedding row for one token."""
    folder = tmp_path_factory.mktemp("nan-teacher")
    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(POISON)] = float("nan")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def poisoned_text(tmp_path_factory):
    """400 sentences, 8 of them opening with the poisoned token: some batches meet it, most do not."""
    lines = tiny.corpus(400, seed=2)
    for i in range(0, 400, 50):
        lines[i] = f"{POISON} {lines[i]}"
    path = tmp_path_factory.mktemp("poisoned") / "train.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bad_values_are_named_and_described():
    found = bad_values({"ce": torch.tensor(1.0), "kd": torch.tensor(math.nan), "loss": torch.tensor(math.inf),
                        "gradient": None})
    assert found == {"kd": "NaN", "loss": "inf"}
    assert describe(found, 103) == "kd became NaN at step 103"
    assert describe({"gradient": "inf"}, 7) == "the gradient norm became inf at step 7"
    assert describe({"gradient": "NaN", "loss": "inf"}, 8) == "loss became inf at step 8"


@pytest.mark.slow
def test_a_diverging_run_stops_before_the_update_and_resumes_from_its_last_finite_checkpoint(
        tmp_path, teacher_dir, student_dir, corpus_files, monkeypatch):
    """From step 13 on the teacher's embeddings are NaN (as if it had been loaded broken mid-run): the run
    fails naming step 13 and kd, keeps checkpoints 5 and 10 (finite; rotation never reached them), writes
    no student, and resumes once the teacher is sound again."""
    original = SoftLabelStrategy.compute_loss
    trained = []

    def poisoned(self, model, inputs, num_items_in_batch):
        trained[:] = [model]
        if model.training and self.global_step == 12:
            with torch.no_grad():
                self.teacher.get_input_embeddings().weight.fill_(float("nan"))
        return original(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(SoftLabelStrategy, "compute_loss", poisoned)
    config = make_config(teacher_dir, student_dir, corpus_files[0], tmp_path, "diverged")
    run = RunDir(tmp_path / "diverged")
    with pytest.raises(NonFiniteError, match="kd became NaN at step 13"):
        run_training(config, run)
    # Stopped before the update: the NaN gradients of step 13 never reached the weights in memory.
    assert all(torch.isfinite(p).all() for p in trained[0].parameters())
    status = strict_json(run.file(STATUS).read_text())
    assert status["state"] == "failed" and "kd became NaN at step 13" in status["error"]
    for line in run.file(METRICS).read_text().splitlines():
        strict_json(line)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-10", "checkpoint-5"]
    assert all(all_finite(p) for p in run.checkpoints.iterdir())
    assert not run.student.exists()

    monkeypatch.setattr(SoftLabelStrategy, "compute_loss", original)
    run_training(DistillConfig.load(run.file(CONFIG)), run, resume=True)
    assert run.read_status()["state"] == "succeeded" and all_finite(run.student)
    steps = [r["step"] for r in run.read_metrics() if "loss" in r]
    assert steps == [5, 10, 15, 20, 25, 30]


@pytest.mark.slow
def test_a_teacher_with_a_nan_token_stops_the_run_naming_the_term(
        tmp_path, nan_teacher, student_dir, poisoned_text):
    config = make_config(nan_teacher, student_dir, poisoned_text, tmp_path, "stop")
    with pytest.raises(NonFiniteError, match=r"kd became NaN at step \d+"):
        run_training(config)
    run = RunDir(tmp_path / "stop")
    assert run.read_status()["state"] == "failed"
    assert all(all_finite(p) for p in run.checkpoints.iterdir())


@pytest.mark.slow
def test_skip_mode_skips_and_counts_the_bad_steps(tmp_path, nan_teacher, student_dir, poisoned_text):
    config = make_config(nan_teacher, student_dir, poisoned_text, tmp_path, "skip", on_nonfinite="skip",
                         max_skipped_steps=30)
    final = run_training(config)
    run = RunDir(tmp_path / "skip")
    status = strict_json(run.file(STATUS).read_text())
    skipped = status["nonfinite_skipped"]
    assert status["state"] == "succeeded" and 0 < skipped < 30
    logged = [strict_json(line) for line in run.file(METRICS).read_text().splitlines()]
    assert max(r.get("nonfinite_skipped", 0) for r in logged) == skipped
    train_logs = [r for r in logged if "loss" in r]
    # The logged loss and terms average only the steps that were taken.
    assert all(r["loss"] is None or math.isfinite(r["loss"]) for r in train_logs)
    assert any(r["loss"] is not None for r in train_logs)
    assert all_finite(run.student) and math.isfinite(final["eval_ce"])

    strict = make_config(nan_teacher, student_dir, poisoned_text, tmp_path, "limit", on_nonfinite="skip",
                         max_skipped_steps=0)
    with pytest.raises(NonFiniteError, match="more than train.max_skipped_steps=0"):
        run_training(strict)


@pytest.mark.slow
def test_weights_that_became_non_finite_are_never_saved(tmp_path, teacher_dir, student_dir, corpus_files,
                                                        monkeypatch):
    """An update that overflowed (weights inf after a finite step) is caught when the checkpoint would be
    written: the checkpoint is not written and the earlier one stays."""
    from workbench.engine.callbacks import RunFilesCallback
    original = RunFilesCallback.on_step_end

    def overflow(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        if state.global_step == 10:
            with torch.no_grad():
                next(kwargs["model"].parameters()).fill_(float("inf"))

    monkeypatch.setattr(RunFilesCallback, "on_step_end", overflow)
    config = make_config(teacher_dir, student_dir, corpus_files[0], tmp_path, "overflow")
    with pytest.raises(NonFiniteError, match="weights became non-finite at step 10"):
        run_training(config)
    run = RunDir(tmp_path / "overflow")
    assert [p.name for p in run.checkpoints.iterdir()] == ["checkpoint-5"] and all_finite(run.checkpoints / "checkpoint-5")


@pytest.mark.slow
def test_the_skipped_count_survives_a_resume(tmp_path, nan_teacher, student_dir, poisoned_text, crash_at_step):
    """Steps skipped after the last log but before the checkpoint still count once the run resumes from
    it (logging every 7 steps, saving every 5): the total equals an uninterrupted run's."""
    whole = make_config(nan_teacher, student_dir, poisoned_text, tmp_path, "whole", on_nonfinite="skip",
                        max_skipped_steps=30, logging_steps=7)
    run_training(whole)
    expected = RunDir(tmp_path / "whole").read_status()["nonfinite_skipped"]
    config = make_config(nan_teacher, student_dir, poisoned_text, tmp_path, "resumed", on_nonfinite="skip",
                         max_skipped_steps=30, logging_steps=7)
    arm, disarm = crash_at_step
    arm(23)
    with pytest.raises(KeyboardInterrupt):
        run_training(config)
    disarm()
    run = RunDir(tmp_path / "resumed")
    assert run.last_checkpoint().name == "checkpoint-20"
    run_training(config, run, resume=True)
    assert run.read_status()["nonfinite_skipped"] == expected > 0
