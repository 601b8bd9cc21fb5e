"""The CLI and the job worker end to end, as subprocesses, on a temp YAML."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from jobs.launcher import free_port
from jobs.spec import JobSpec
from workbench.config.schema import DistillConfig
from workbench.store.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def write_config(path: Path, teacher_dir, student_dir, corpus_files, runs: Path, eval_examples=256, **train) -> Path:
    train_set, val_set = corpus_files
    data = {"teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
            "data": {"source": str(train_set), "validation_source": str(val_set), "max_eval_examples": eval_examples},
            "loss": {"alpha": 0.5, "temperature": 2.0, "divergence": "jsd", "beta": 0.5},
            "train": {"max_steps": 6, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "logging_steps": 2,
                      "save_steps": 3, **train},
            "output": {"runs_dir": str(runs), "run_name": "cli"}}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_train_from_yaml_with_overrides(tmp_path, teacher_dir, student_dir, corpus_files):
    cfg = write_config(tmp_path / "run.yaml", teacher_dir, student_dir, corpus_files, tmp_path / "runs")
    out = cli("workbench", "train", str(cfg), "--set", "train.max_steps=4", "--set", "loss.alpha=0.25")
    assert out.returncode == 0, out.stderr
    assert "step 4/4 (100%)" in out.stdout and "eta" in out.stdout and "final held-out metrics" in out.stdout
    run = RunDir(tmp_path / "runs" / "cli")
    saved = DistillConfig.load(run.file("config.json"))
    assert saved.train.max_steps == 4 and saved.loss.alpha == 0.25 and saved.loss.divergence == "jsd"
    assert run.read_status()["state"] == "succeeded"
    assert AutoModelForCausalLM.from_pretrained(run.student).config.num_hidden_layers == 2

    again = cli("workbench", "train", str(cfg))
    assert again.returncode == 2 and "already holds a run" in again.stderr  # nothing overwritten
    resumed = cli("workbench", "resume", str(run.path))
    assert resumed.returncode == 0 and "nothing to resume" in resumed.stdout


@pytest.mark.slow
def test_resume_continues_a_failed_run_from_its_checkpoint(tmp_path, teacher_dir, student_dir, corpus_files):
    cfg = write_config(tmp_path / "run.yaml", teacher_dir, student_dir, corpus_files, tmp_path / "runs")
    assert cli("workbench", "train", str(cfg)).returncode == 0
    run = RunDir(tmp_path / "runs" / "cli")
    # As if the process had died between step 3's checkpoint and the end.
    run.write_status("failed", error="simulated")
    shutil.rmtree(run.checkpoints / "checkpoint-6")
    out = cli("workbench", "resume", str(run.path))
    assert out.returncode == 0, out.stderr
    progress = [line for line in out.stdout.splitlines() if line.startswith("step ")]
    # Resumed after step 3, logging every 2 steps: only steps 4 and 6 are trained and logged again.
    assert [line.split()[1] for line in progress] == ["4/6", "6/6"]
    assert [r["step"] for r in run.read_metrics() if "loss" in r] == [2, 4, 6]
    assert run.read_status()["state"] == "succeeded" and run.last_checkpoint().name == "checkpoint-6"


def test_invalid_config_exits_2_naming_the_field(tmp_path, teacher_dir, student_dir, corpus_files):
    cfg = write_config(tmp_path / "run.yaml", teacher_dir, student_dir, corpus_files, tmp_path / "runs")
    out = cli("workbench", "train", str(cfg), "--set", "loss.alpha=1.5")
    assert out.returncode == 2
    assert "loss.alpha" in out.stderr and "1.5" in out.stderr and "[0, 1]" in out.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    typo = cli("workbench", "validate", str(cfg), "--set", "loss.temprature=2")
    assert typo.returncode == 2 and "did you mean 'loss.temperature'" in typo.stderr


@pytest.mark.slow
def test_runtime_failure_exits_1_with_the_error(tmp_path, teacher_dir, corpus_files):
    cfg = write_config(tmp_path / "run.yaml", teacher_dir, tmp_path / "no-student", corpus_files, tmp_path / "runs")
    out = cli("workbench", "train", str(cfg))
    assert out.returncode == 1 and "no-student" in out.stderr and "does not exist" in out.stderr
    assert RunDir(tmp_path / "runs" / "cli").read_status()["state"] == "failed"


def test_validate_prints_the_resolved_config(tmp_path, teacher_dir, student_dir, corpus_files):
    cfg = write_config(tmp_path / "run.yaml", teacher_dir, student_dir, corpus_files, tmp_path / "runs")
    out = cli("workbench", "validate", str(cfg))
    assert out.returncode == 0
    resolved = yaml.safe_load(out.stdout)
    assert resolved["loss"]["skew_lambda"] == 0.1 and resolved["train"]["max_steps"] == 6


@pytest.mark.slow
def test_job_worker_runs_a_spec(tmp_path, teacher_dir, student_dir, corpus_files):
    cfg = DistillConfig.load(write_config(tmp_path / "run.yaml", teacher_dir, student_dir, corpus_files,
                                          tmp_path / "runs", max_steps=2))
    spec_path = JobSpec(config=cfg, run_dir=str(tmp_path / "job")).write()
    assert JobSpec.read(tmp_path / "job").config == cfg
    out = cli("jobs.worker", str(tmp_path / "job"))
    assert out.returncode == 0, out.stderr
    run = RunDir(tmp_path / "job")
    assert spec_path.is_file() and run.read_status()["state"] == "succeeded" and (run.student / "README.md").is_file()


@pytest.mark.slow
def test_two_processes_under_accelerate_match_one(tmp_path, teacher_dir, student_dir, corpus_files):
    """DDP on CPU (gloo): the same global batch as one process; held-out terms, reduced across processes,
    equal the single-process ones for the same (untrained) student. 36 held-out sequences split evenly
    over 2 processes x batch 2; with a remainder, accelerate repeats sequences to even out the batches."""
    single = write_config(tmp_path / "one.yaml", teacher_dir, student_dir, corpus_files, tmp_path / "one",
                          max_steps=2, batch_size=4, eval_examples=36)
    double = write_config(tmp_path / "two.yaml", teacher_dir, student_dir, corpus_files, tmp_path / "two",
                          max_steps=2, batch_size=2, eval_examples=36)
    assert cli("workbench", "train", str(single)).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--main_process_port", str(free_port()),
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "workbench", "train", str(double)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # The ranks' own errors come before torchrun's summary: show enough of stderr to hold both.
    assert out.returncode == 0, out.stderr[-8000:]
    assert out.stdout.count("step 2/2 (100%)") == 1  # only rank 0 reports
    first = [RunDir(tmp_path / name / "cli").read_metrics()[0] for name in ("one", "two")]
    for key in ("eval_ce", "eval_kd", "eval_loss"):
        assert first[1][key] == pytest.approx(first[0][key], rel=1e-5)
    status = RunDir(tmp_path / "two" / "cli").read_status()
    assert status["state"] == "succeeded" and status["processes"] == 2
