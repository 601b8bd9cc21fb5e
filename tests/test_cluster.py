"""Cluster jobs (jobs/cluster.py, `python -m workbench cluster`, Set up's Cluster panel): the files written parse (YAML,
accelerate's own config class, bash -n), bad values name their field and range, a study is one job array, and the
written launch.sh trains on this machine with 2 CPU processes into a run folder that ingest lists."""
import dataclasses
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

from jobs.cluster import runs_of_config, runs_of_study, write_job
from jobs.cluster_spec import ClusterSpec
from jobs.launcher import free_port
from jobs.manager import JobManager
from jobs.spec import JobSpec
from jobs.study_plan import plan_study
from workbench.cli import main
from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.config.study import load_study
from workbench.store.database import Store
from workbench.store.ingest import rebuild
from workbench.store.rundir import EXIT_CONFIG, RunDir
from workbench.store.studies import read_study
from workbench.ui.cluster_panel import write_cluster_job

ROOT = Path(__file__).resolve().parents[1]


def bash_syntax(folder: Path) -> None:
    for name in ("launch.sh", "job.slurm"):
        checked = subprocess.run(["bash", "-n", str(folder / name)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


def named(config: DistillConfig, name: str) -> DistillConfig:
    return config.replace(output=dataclasses.replace(config.output, run_name=name))


def test_a_run_as_a_two_node_ddp_job(distilled_config, tmp_path, monkeypatch):
    job = write_job(runs_of_config(named(distilled_config, "kd")), ClusterSpec(nodes=2, gpus_per_node=4,
                                                                               partition="gpu", account="proj-1"),
                    tmp_path / "job")
    out = job.folder
    assert job.runs == ["kd"] and job.command == f"cd {out} && sbatch job.slurm"
    bash_syntax(out)
    accelerate = load_config_from_file(str(out / "accelerate_config.yaml"))
    assert isinstance(accelerate, ClusterConfig)
    assert (accelerate.distributed_type.value, accelerate.num_machines, accelerate.num_processes) == ("MULTI_GPU", 2, 8)
    assert accelerate.mixed_precision == "no"  # train.bf16 auto: each run's Trainer decides, not accelerate
    slurm = (out / "job.slurm").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=32", "#SBATCH --time=24:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj-1", "srun --kill-on-bad-exit=1 bash launch.sh"):
        assert line in slurm
    assert "--array" not in slurm and "prepare-defaults" not in slurm  # one run; no defaults: names
    launch = (out / "launch.sh").read_text()
    assert "-m accelerate.commands.launch --config_file accelerate_config.yaml" in launch
    assert "$SLURM_JOB_NODELIST" in launch and '--machine_rank "$NODE_RANK"' in launch and "-m jobs.worker" in launch
    # The worker reads the spec from the job folder, where launch.sh starts it: its run folder is runs/kd there.
    monkeypatch.chdir(out)
    spec = JobSpec.read("runs/kd")
    assert (spec.run_dir, spec.num_processes, spec.resume, spec.accelerate_config) == ("runs/kd", 8, True, None)
    assert spec.config == DistillConfig.load(out / "configs" / "kd.yaml")
    assert (spec.config.output.runs_dir, spec.config.output.run_name) == ("runs", "kd")
    readme = (out / "README.txt").read_text()
    assert "sbatch job.slurm" in readme and "python -m workbench ingest" in readme
    assert f"teacher.name_or_path: {distilled_config.teacher.name_or_path} is a path on this machine" in readme
    assert any(note.startswith("data.source: ") for note in job.notes)


def test_a_copied_back_run_resumes_in_its_new_folder(distilled_config, tmp_path, monkeypatch):
    """Its spec names runs/RUN relative to the job folder; resuming it in the app rewrites the spec where it is now."""
    job = write_job(runs_of_config(named(distilled_config, "kd")), ClusterSpec(), tmp_path / "job")
    shutil.copytree(job.folder / "runs", tmp_path / "app-runs")
    RunDir(tmp_path / "app-runs" / "kd").write_status("cancelled", step=10)
    monkeypatch.setattr(JobManager, "poll", lambda self: None)  # queued, not started
    monkeypatch.chdir(tmp_path)  # where runs/kd, relative, would land if the spec kept it
    JobManager(tmp_path / "app-runs").resume("kd")
    assert JobSpec.read(tmp_path / "app-runs" / "kd").run_dir == str((tmp_path / "app-runs" / "kd").resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app-runs", "job"]
    # One written for 4 GPUs is not resumed here as 4 local processes without its accelerate config.
    wide = write_job(runs_of_config(named(distilled_config, "wide")), ClusterSpec(nodes=2, gpus_per_node=2),
                     tmp_path / "wide-job")
    shutil.copytree(wide.folder / "runs" / "wide", tmp_path / "app-runs" / "wide")
    RunDir(tmp_path / "app-runs" / "wide").write_status("cancelled", step=10)
    with pytest.raises(ConfigError, match="written for 4 processes"):
        JobManager(tmp_path / "app-runs").resume("wide")


def test_fsdp_shards_the_student_and_uses_the_plain_loss(distilled_config, tmp_path):
    job = write_job(runs_of_config(named(distilled_config, "fsdp")), ClusterSpec(gpus_per_node=2, mode="fsdp"),
                    tmp_path / "job")
    accelerate = load_config_from_file(str(job.folder / "accelerate_config.yaml"))
    assert accelerate.distributed_type.value == "FSDP" and accelerate.num_processes == 2
    assert accelerate.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert DistillConfig.load(job.folder / "configs" / "fsdp.yaml").loss.chunk_size == 0
    assert any("loss.chunk_size" in note for note in job.notes)
    bash_syntax(job.folder)


def test_on_policy_refuses_fsdp_naming_the_mode(distilled_config, tmp_path):
    on_policy = named(distilled_config, "op").replace(strategy="on_policy")
    with pytest.raises(ConfigError) as err:
        write_job(runs_of_config(on_policy), ClusterSpec(mode="fsdp"), tmp_path / "job")
    assert err.value.field == "mode" and "DDP" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no staging folder left


@pytest.mark.parametrize("values, field, allowed", [
    (dict(nodes=0), "nodes", "from 1 to 64"), (dict(nodes=2.0), "nodes", "whole number"),
    (dict(nodes=True), "nodes", "from 1 to 64"), (dict(gpus_per_node=17), "gpus_per_node", "from 1 to 16"),
    (dict(nodes=8, gpus_per_node=16), "gpus_per_node", "at most 64 processes"),
    (dict(mode="deepspeed"), "mode", "ddp, fsdp"), (dict(partition="gpu; rm -rf ~"), "partition", "letters, digits"),
    (dict(account="$(id)"), "account", "letters, digits"), (dict(partition="a\nb"), "partition", "letters, digits"),
    (dict(time="25h"), "time", "HH:MM:SS"), (dict(time="10:61:00"), "time", "00-59"),
    (dict(time=None), "time", "HH:MM")])
def test_bad_values_name_the_field_and_the_allowed_range(values, field, allowed):
    with pytest.raises(ConfigError) as err:
        ClusterSpec(**values).validate()
    assert err.value.field == field and allowed in str(err.value)


def test_a_job_folder_is_written_whole_into_a_new_folder(distilled_config, tmp_path):
    taken = tmp_path / "job"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        write_job(runs_of_config(distilled_config), ClusterSpec(), taken)
    assert err.value.field == "out_dir" and (taken / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]


def test_run_names_reach_the_scripts_quoted(distilled_config, tmp_path):
    name = "it's a \"run\" $(touch pwned) `x`"
    job = write_job(runs_of_config(named(distilled_config, name)), ClusterSpec(), tmp_path / "job")
    bash_syntax(job.folder)
    listed = subprocess.run(["bash", "-c", 'eval "$(grep "^RUNS=" job.slurm)"; printf "%s\\n" "${RUNS[@]}"'],
                            cwd=job.folder, capture_output=True, text=True)
    assert listed.stdout == name + "\n" and not (job.folder / "pwned").exists()
    assert "#SBATCH --job-name=dw-it-s-a--run----touch-pwned---x-\n" in (job.folder / "job.slurm").read_text()


def test_defaults_names_are_prepared_on_the_cluster(tmp_path):
    job = write_job(runs_of_config(DistillConfig.load(ROOT / "assets" / "configs" / "default.yaml")), ClusterSpec(),
                    tmp_path / "job")
    assert '"$PYTHON" -m workbench prepare-defaults\n' in (job.folder / "job.slurm").read_text()
    assert job.notes == []  # defaults: names are no paths of this machine
    assert DistillConfig.load(next((job.folder / "configs").iterdir())).teacher.name_or_path == "defaults:teacher"
    assert "prepare-defaults" in (job.folder / "README.txt").read_text()
    # bf16: native, so each run's Trainer decides on its GPU; accelerate's setting would force it on every run
    assert yaml.safe_load((job.folder / "accelerate_config.yaml").read_text())["mixed_precision"] == "no"
    forced = write_job(runs_of_config(DistillConfig.load(ROOT / "assets" / "configs" / "default.yaml",
                                                         ["train.bf16=on"])), ClusterSpec(), tmp_path / "forced")
    assert yaml.safe_load((forced.folder / "accelerate_config.yaml").read_text())["mixed_precision"] == "bf16"


def test_a_study_is_one_job_array_with_its_record(distilled_config, tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(distilled_config.to_dict()))
    (tmp_path / "study.yaml").write_text("name: alphas\nbase: base.yaml\ngrid:\n  loss.alpha: [0.2, 0.5]\n"
                                         "baselines: true\n")
    runs, record = runs_of_study(plan_study(*load_study(tmp_path / "study.yaml")))
    job = write_job(runs, ClusterSpec(gpus_per_node=2), tmp_path / "job", record)
    assert job.runs == ["alphas-01", "alphas-02", "alphas-ce01"]  # one CE-only baseline serves both α
    slurm = (job.folder / "job.slurm").read_text()
    assert "#SBATCH --array=0-2\n" in slurm and "RUNS=(alphas-01 alphas-02 alphas-ce01)" in slurm
    assert 'RUN="${RUNS[${SLURM_ARRAY_TASK_ID:-0}]}"' in slurm
    bash_syntax(job.folder)
    assert [r["run_id"] for r in read_study(job.folder / "runs", "alphas")["runs"]] == job.runs
    baseline = JobSpec.read(job.folder / "runs" / "alphas-ce01")
    assert baseline.baseline_of == "alphas-01" and baseline.config.output.study == "alphas"


def test_the_command_line_writes_a_job_and_names_bad_values(distilled_config, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(named(distilled_config, "cli").to_dict()))
    assert main(["cluster", str(config), str(tmp_path / "job"), "--nodes", "2", "--gpus-per-node", "8", "--fsdp",
                 "--partition", "a100", "--time", "2-00:00:00", "--set", "train.max_steps=500"]) == 0
    assert "cd " in capsys.readouterr().out
    assert DistillConfig.load(tmp_path / "job" / "configs" / "cli.yaml").train.max_steps == 500
    assert "#SBATCH --time=2-00:00:00" in (tmp_path / "job" / "job.slurm").read_text()
    bad = ["cluster", str(config), str(tmp_path / "bad"), "--gpus-per-node", "0", "--time", "soon"]
    assert main(bad) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "gpus_per_node: must be a whole number from 1 to 16" in err and "time: must be HH:MM:SS" in err
    assert not (tmp_path / "bad").exists()


def test_the_panel_offers_a_zip_and_refuses_bad_values(services, tiny_form):
    archive, text = write_cluster_job(services, tiny_form, 1, 2, "ddp", "", "01:00:00")
    assert archive and "Cluster job written" in text and "sbatch job.slurm" in text
    assert Path(archive).parent == services.exports_dir / "cluster"
    with zipfile.ZipFile(archive) as zipped:
        names = {Path(n).name for n in zipped.namelist()}
    assert {"job.slurm", "launch.sh", "accelerate_config.yaml", "README.txt", "spec.json"} <= names
    archive, text = write_cluster_job(services, tiny_form, "2; rm", 1, "ddp", "gpu`id`", "1:00:00")
    assert archive is None and "**nodes**" in text and "**partition**" in text


@pytest.mark.slow
def test_the_written_launch_trains_with_two_cpu_processes_and_ingest_lists_the_run(distilled_config, tmp_path):
    """launch.sh as written (no Slurm: one node at 127.0.0.1); accelerate's MULTI_GPU launcher starts 2 CPU processes
    on this machine, which join over gloo. The run folder, copied back to another runs folder, is ingested."""
    config = named(distilled_config, "two").replace(
        train=dataclasses.replace(distilled_config.train, max_steps=2, batch_size=2, logging_steps=1, save_steps=2,
                                  eval_steps=0),
        evaluation=dataclasses.replace(distilled_config.evaluation, at_end=False),
        data=dataclasses.replace(distilled_config.data, max_eval_examples=8))
    job = write_job(runs_of_config(config), ClusterSpec(gpus_per_node=2), tmp_path / "job")
    env = {**os.environ, "PYTHON": sys.executable, "WORKBENCH_DIR": str(ROOT), "MAIN_PORT": str(free_port())}
    out = subprocess.run(["bash", str(job.folder / "launch.sh"), "two"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=400)
    log = (job.folder / "runs" / "two" / "worker.log").read_text()
    assert out.returncode == 0, (out.stderr + log)[-8000:]
    assert log.count("step 2/2 (100%)") == 1  # only rank 0 reports, into the run's worker.log
    status = RunDir(job.folder / "runs" / "two").read_status()
    assert status["state"] == "succeeded" and status["processes"] == 2
    back = tmp_path / "back"
    shutil.copytree(job.folder / "runs", back)
    path, _ = rebuild(back)
    store = Store(path)
    try:
        runs = store.runs()
    finally:
        store.close()
    assert runs.run_id.tolist() == ["two"] and runs.status.tolist() == ["succeeded"]
