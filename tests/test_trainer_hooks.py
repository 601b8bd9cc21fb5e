"""DistillTrainer overrides hooks of transformers.Trainer, some of them private (requirements.txt pins the
transformers range they were tested with). One test per hook fails when Trainer stops calling it: a newer
Trainer that renamed one would otherwise skip our checks silently (the non-finite stop, per-part
clipping, part-by-part checkpoints). And the strategy's batch-preparation step: what it puts in a
training batch is what the loss sees and what the step's target tokens are counted from."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from workbench.config.schema import DistillConfig
from workbench.engine.callbacks import RunFilesCallback
from workbench.engine.runner import run_training
from workbench.engine.strategies.soft import SoftLabelStrategy
from workbench.engine.trainer import DistillTrainer
from workbench.store.rundir import RunDir

pytestmark = pytest.mark.slow

HOOKS = ["train", "get_batch_samples", "compute_loss", "evaluate", "log", "create_optimizer", "_clip_grad_norm",
         "_get_grad_norm", "_save_checkpoint", "_save", "_load_from_checkpoint", "save_model"]


def _config(teacher_dir, student_dir, corpus_files, runs, strategy, **train) -> DistillConfig:
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
        "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1]), "max_eval_examples": 4},
        "strategy": strategy, "evaluation": {"at_end": False},
        "train": {"max_steps": 4, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "logging_steps": 1, "save_steps": 2,
                  **train},
        "output": {"runs_dir": str(runs), "run_name": "run"}})


@pytest.fixture(scope="module")
def calls(tmp_path_factory, teacher_dir, student_dir, corpus_files) -> Counter:
    """How often each hook ran over a co-distillation run (two trained parts, their own parameter groups
    and checkpoint folders) that crashes after step 3 and resumes from its checkpoint at step 2."""
    counts: Counter = Counter()
    runs = tmp_path_factory.mktemp("hooks")
    config = _config(teacher_dir, student_dir, corpus_files, runs, "co_distillation")
    original_step_end = RunFilesCallback.on_step_end

    def crash_after_3(self, args, state, control, **kw):
        original_step_end(self, args, state, control, **kw)
        if state.global_step == 3:
            raise KeyboardInterrupt("simulated crash")

    with pytest.MonkeyPatch.context() as patch:
        for name in HOOKS:
            def spy(self, *args, _original=getattr(DistillTrainer, name), _name=name, **kwargs):
                counts[_name] += 1
                return _original(self, *args, **kwargs)
            patch.setattr(DistillTrainer, name, spy)
        patch.setattr(RunFilesCallback, "on_step_end", crash_after_3)
        with pytest.raises(KeyboardInterrupt):
            run_training(config, RunDir(runs / "run"))
        patch.setattr(RunFilesCallback, "on_step_end", original_step_end)
        run_training(config, RunDir(runs / "run"), resume=True)
    return counts


@pytest.mark.parametrize("hook", HOOKS)
def test_trainer_still_calls_the_overridden_hook(calls, hook):
    assert calls[hook] > 0, f"transformers.Trainer no longer calls {hook}: DistillTrainer's override is dead"


def test_prepared_batches_are_what_the_loss_sees_and_counts(tmp_path, teacher_dir, student_dir, corpus_files,
                                                          monkeypatch):
    """A strategy that replaces a training batch's tokens (as on-policy distillation will with the student's
    samples): the loss gets the replaced tokens, num_items_in_batch counts the replaced labels, and held-out
    batches keep the data's tokens."""
    seen = []

    def prepare(self, model, batch):
        ids = torch.full_like(batch["input_ids"], 7)
        labels = torch.full_like(ids, -100)
        labels[:, :5] = 7  # targets at positions 1..4 after the causal shift: 4 per row
        return {**batch, "input_ids": ids, "labels": labels}

    def record(self, model, inputs, num_items_in_batch):
        seen.append((model.training, inputs["input_ids"].clone(), num_items_in_batch, len(inputs["input_ids"])))
        return original(self, model, inputs, num_items_in_batch)

    original = SoftLabelStrategy.compute_loss
    monkeypatch.setattr(SoftLabelStrategy, "prepare_batch", prepare)
    monkeypatch.setattr(SoftLabelStrategy, "compute_loss", record)
    run_training(_config(teacher_dir, student_dir, corpus_files, tmp_path, "soft_label", max_steps=2, eval_steps=2))
    training = [s for s in seen if s[0]]
    held_out = [s for s in seen if not s[0]]
    assert len(training) == 2 and held_out
    for _, ids, count, rows in training:
        assert (ids == 7).all() and int(count) == 4 * rows
    assert all(not (ids == 7).all() for _, ids, _, _ in held_out)


def test_a_term_some_steps_lack_is_averaged_over_the_steps_that_have_it(tmp_path, teacher_dir, student_dir,
                                                                        corpus_files, monkeypatch):
    """On-policy logs sampled_rkl only on steps that sampled: a log period's value is the mean over those
    steps, not diluted by the others; the terms every step has keep their plain mean."""
    original = SoftLabelStrategy.compute_loss

    def odd_steps_only(self, model, inputs, num_items_in_batch):
        terms = original(self, model, inputs, num_items_in_batch)
        if model.training and self.global_step % 2:
            terms["sometimes"] = torch.tensor(float(self.global_step))  # steps 1 and 3 (0-based): 1.0, 3.0
        return terms

    monkeypatch.setattr(SoftLabelStrategy, "compute_loss", odd_steps_only)
    run_training(_config(teacher_dir, student_dir, corpus_files, tmp_path, "soft_label", logging_steps=4))
    [log] = [r for r in RunDir(tmp_path / "run").read_metrics() if "loss" in r]
    assert log["sometimes"] == pytest.approx(2.0)  # (1 + 3) / 2 steps, not (1 + 3) / 4
    assert "ce" in log and "kd" in log
