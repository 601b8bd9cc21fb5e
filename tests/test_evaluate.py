"""Evaluation: agreement and KL of a model with itself, calibration error against synthetic predictors,
the run's held-out CE equal to the trainer's, the run card, evaluations in DuckDB, and the CE-only
baseline's config and verdict."""
import dataclasses
import json
import math

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench.config.schema import DistillConfig
from workbench.data.loading import PadCollator, heldout_dataset
from workbench.engine.baseline import baseline_verdict, ce_baseline_config
from workbench.engine.runner import run_training
from workbench.eval.metrics import (
    HeldoutMetrics,
    calibration_bins,
    ece_from_bins,
    heldout_metrics,
    quality_retained,
)
from workbench.eval.report import evaluate_run
from workbench.models.students import is_adapter_only
from workbench.store.database import Store
from workbench.store.ingest import Ingestor
from workbench.store.rundir import PROFILE, RunDir


@pytest.mark.slow
def test_a_model_against_itself_agrees_fully(teacher_dir, tokenizer, distilled_run):
    _, config, _ = distilled_run
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    held = heldout_dataset(config.data, tokenizer, config.train.seq_len, config.train.seed)
    result = heldout_metrics({"teacher": teacher, "student": teacher}, held, PadCollator(tokenizer), 8,
                             len(tokenizer)).result()
    assert result["top1_agreement"] == 1.0 and result["top5_agreement"] == 1.0
    assert abs(result["forward_kl"]) < 1e-6 and result["teacher_ce"] == pytest.approx(result["student_ce"])


@pytest.mark.slow
def test_held_out_metrics_in_chunks_equal_those_of_whole_batches(teacher_dir, student_dir, tokenizer, distilled_run):
    """heldout_metrics makes logits CHUNK positions at a time from the last hidden states: the same numbers as
    HeldoutMetrics over each batch's full logits (8 x 31 positions a batch: two chunks)."""
    _, config, _ = distilled_run
    models = {name: AutoModelForCausalLM.from_pretrained(folder).eval()
              for name, folder in (("teacher", teacher_dir), ("student", student_dir))}
    held = heldout_dataset(config.data, tokenizer, config.train.seq_len, config.train.seed)
    collator = PadCollator(tokenizer)
    chunked = heldout_metrics(models, held, collator, 8, len(tokenizer)).result()
    whole = HeldoutMetrics()
    for start in range(0, len(held), 8):
        batch = collator([held[i] for i in range(start, min(start + 8, len(held)))])
        with torch.no_grad():
            whole.add({name: model(input_ids=batch["input_ids"]).logits[:, :-1] for name, model in models.items()},
                      batch["labels"][:, 1:], len(tokenizer))
    expected = whole.result()
    assert expected.keys() == chunked.keys() and expected["heldout_tokens"] > 8 * 31
    for key, value in expected.items():
        assert chunked[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def expected_calibration_error(confidence, correct) -> float:
    """As HeldoutMetrics computes *_ece: per-batch bins, summed, then the ECE of the sum."""
    half = len(confidence) // 2
    return ece_from_bins(calibration_bins(confidence[:half], correct[:half])
                         + calibration_bins(confidence[half:], correct[half:]))


def test_ece_of_a_calibrated_predictor_is_near_zero_and_of_an_overconfident_one_is_not():
    gen = torch.Generator().manual_seed(0)
    confidence = torch.rand(200_000, generator=gen)
    calibrated = (torch.rand(200_000, generator=gen) < confidence).float()  # right with probability = confidence
    assert expected_calibration_error(confidence, calibrated) < 0.01
    overconfident = torch.full((10_000,), 0.9)
    half_right = (torch.arange(10_000) % 2).float()
    assert expected_calibration_error(overconfident, half_right) == pytest.approx(0.4, abs=1e-6)
    # against a direct computation over the 15 equal-width bins
    conf, right = torch.tensor([0.05, 0.5, 0.51, 0.99, 1.0]), torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    direct = (abs(0 - 0.05) + abs(0.5 - 0.505) * 2 + abs(1 - 0.995) * 2) / 5
    assert expected_calibration_error(conf, right) == pytest.approx(direct)


def test_quality_retained():
    assert quality_retained(untrained_ce=5.0, student_ce=3.0, teacher_ce=1.0) == pytest.approx(0.5)
    assert quality_retained(5.0, 1.0, 1.0) == pytest.approx(1.0)
    assert quality_retained(1.0, 0.9, 2.0) is None  # nothing to recover


@pytest.mark.slow
def test_the_end_of_run_evaluation_matches_training_and_lands_in_duckdb(distilled_run, tmp_path):
    run, config, final = distilled_run
    report = run.read_evaluations()[-1]
    m = report["metrics"]
    assert report["step"] == 30 and report["student"] == "final"
    # the same held-out blocks, token-weighted like the trainer's held-out CE
    assert m["student_ce"] == pytest.approx(final["eval_ce"], rel=1e-4)
    assert m["student_perplexity"] == pytest.approx(math.exp(final["eval_ce"]), rel=1e-4)
    assert m["teacher_ce"] < m["student_ce"] < m["untrained_ce"] and 0 < m["quality_retained"] < 1
    assert 0 < m["top1_agreement"] <= m["top5_agreement"] <= 1 and m["forward_kl"] > 0
    assert m["size_ratio"] == pytest.approx(m["teacher_params"] / m["student_params"]) and m["size_ratio"] > 4
    assert m["student_forward_tokens_per_s"] > 0 and m["teacher_disk_mb"] > m["student_disk_mb"] > 0
    assert f"{m['size_ratio']:.1f}× smaller" in report["card"] and "of the teacher's quality" in report["card"]
    assert [g["prompt"] for g in report["generations"]] == ["the cat", "a dog"]
    assert "## Evaluation" in (run.student / "README.md").read_text()
    # where the run's time went: every part that ran has its seconds, and they add up
    profile = json.loads(run.file(PROFILE).read_text())
    assert all(profile["seconds"][phase] > 0 for phase in ("setup", "teacher", "student", "loss", "evaluation",
                                                           "io", "report", "data"))
    assert sum(profile["seconds"].values()) == pytest.approx(profile["total_s"], abs=0.1)
    assert sum(profile["share"].values()) == pytest.approx(1, abs=1e-3)

    store = Store(tmp_path / "db.duckdb")
    Ingestor(store, run.path.parent).ingest_all()
    evals = store.evals(["distilled"])
    # The evaluation of step 30 (other tests evaluate other steps, each in its own copy of the run).
    judged = evals[(evals.split == "evaluation") & (evals.step == 30)].set_index("metric").value
    assert judged["top1_agreement"] == pytest.approx(m["top1_agreement"])
    row = store.compare(["distilled"]).iloc[0]
    assert row.quality_retained == pytest.approx(m["quality_retained"]) and row.times_smaller > 4
    store.close()


@pytest.mark.slow
def test_any_checkpoint_can_be_evaluated_later(distilled_run):
    run, _, _ = distilled_run
    report = evaluate_run(run, "checkpoint-10")
    assert report["step"] == 10 and run.evaluation_file(10).exists()
    final = [r for r in run.read_evaluations() if r["step"] == 30][0]
    assert report["metrics"]["forward_kl"] > final["metrics"]["forward_kl"]  # earlier = further from the teacher
    with pytest.raises(ValueError, match="no saved student 'checkpoint-7'"):
        evaluate_run(run, "checkpoint-7")


def test_ce_baseline_config_changes_only_the_loss(distilled_config):
    config = distilled_config.replace(loss=dataclasses.replace(distilled_config.loss, temperature=2.0, chunk_size=7))
    base = ce_baseline_config(config)
    assert base.loss.alpha == 1.0 and base.output.run_name is None
    # the KD knobs change nothing at α = 1: defaults, so runs differing only in them share a baseline
    assert (base.loss.temperature, base.loss.chunk_size) == (1.0, 7)
    assert (base.student, base.data, base.train, base.teacher) == (config.student, config.data, config.train,
                                                                    config.teacher)
    with pytest.raises(ValueError, match="already 1"):
        ce_baseline_config(base)


def test_baseline_verdict_answers_with_the_numbers():
    table = pd.DataFrame([
        {"run_id": "kd", "status": "succeeded", "heldout_perplexity": 102.4, "alpha": 0.5, "temperature": 1.0,
         "baseline_of": None},
        {"run_id": "kd-ce-baseline", "status": "succeeded", "heldout_perplexity": 114.9, "alpha": 1.0,
         "temperature": 1.0, "baseline_of": "kd"}])
    text = baseline_verdict(table)
    assert "**Yes.**" in text and "102.40" in text and "114.90" in text and "10.9% lower" in text
    assert baseline_verdict(table.iloc[:1]) == ""


def test_no_verdict_before_both_runs_finished():
    """A baseline at step 20 of 200 has only its untrained step-0 number: comparing with it would call
    distillation '100% lower'. The verdict waits and says where each run stands."""
    table = pd.DataFrame([
        {"run_id": "kd", "status": "succeeded", "step": 200, "steps": 200, "heldout_perplexity": 102.4,
         "alpha": 0.5, "temperature": 1.0, "baseline_of": None},
        {"run_id": "kd-ce-baseline", "status": "running", "step": 20, "steps": 200,
         "heldout_perplexity": 4652282.01, "alpha": 1.0, "temperature": 1.0, "baseline_of": "kd"}])
    text = baseline_verdict(table)
    assert "baseline still training (step 20/200)" in text and "Yes" not in text and "lower" not in text
    queued = table.assign(status=["running", "queued"], step=[50, 0])
    text = baseline_verdict(queued)
    assert "distilled run still training (step 50/200)" in text and "baseline still queued" in text
    failed = table.assign(status=["succeeded", "failed"])
    assert "failed: no final numbers" in baseline_verdict(failed) and "Yes" not in baseline_verdict(failed)
    done = table.assign(status="succeeded", heldout_perplexity=[102.4, 115.1])
    assert "**Yes.**" in baseline_verdict(done)


@pytest.mark.slow
def test_a_pruned_student_and_a_lora_checkpoint_are_evaluated(teacher_dir, corpus_files, tmp_path):
    """The default config's kind of student (layers kept from the teacher) and a LoRA run, whose
    checkpoints hold only adapters: both are rebuilt from the config and evaluated."""
    config = DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)},
        "student": {"init_from_teacher_layers": 2, "lora": {"enabled": True, "r": 4}},
        "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1])},
        "evaluation": {"prompts": ["the cat"], "max_new_tokens": 4},
        "train": {"max_steps": 6, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "save_steps": 3, "logging_steps": 3},
        "output": {"runs_dir": str(tmp_path), "run_name": "pruned-lora"}})
    run_training(config)
    run = RunDir(tmp_path / "pruned-lora")
    final = run.read_evaluations()[-1]["metrics"]
    assert final["teacher_params"] > final["student_params"] and "untrained_ce" in final
    assert is_adapter_only(run.checkpoints / "checkpoint-3")
    early = evaluate_run(run, "checkpoint-3")["metrics"]
    assert early["student_ce"] != final["student_ce"] and early["untrained_ce"] == pytest.approx(final["untrained_ce"])
    assert "student_disk_mb" not in early  # an adapter's size is not the student's
