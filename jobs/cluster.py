"""A run, or a study's runs, written as a job folder to submit to a Slurm cluster of M nodes x N GPUs:

    OUT/README.txt              how to submit, where the output goes, how to copy the runs back
    OUT/accelerate_config.yaml  M machines, M*N processes, DDP (MULTI_GPU) or FSDP
    OUT/launch.sh RUN           one node's share of a run: accelerate launch ... -m jobs.worker runs/RUN
    OUT/job.slurm               `sbatch job.slurm`; a job array over a study's runs
    OUT/configs/RUN.yaml        each run's config, as `python -m workbench train` reads it
    OUT/runs/RUN/spec.json      what the worker reads: the app's own job spec (jobs/spec.py)
    OUT/runs/.studies/ID.json   a study's record, so the Studies tab shows it once runs/ is copied back

The runs are ordinary run folders (workbench/store/rundir.py) under OUT/runs, trained by the same worker
entry the app starts, so `python -m workbench ingest OUT/runs` or the app's runs folder picks them up as
they are. Nothing is written unless every run and every setting is valid (the folder appears whole)."""
from __future__ import annotations

import dataclasses
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from jobs import cluster_scripts
from jobs.cluster_spec import ClusterSpec
from jobs.spec import JobSpec
from jobs.study import _named, _record  # the one place a study's run ids and record are made
from jobs.study_plan import Plan
from workbench.config.fields import ConfigError
from workbench.config.gate import is_hub_id, references
from workbench.config.paths import DEFAULTS_PREFIX
from workbench.config.schema import DistillConfig
from workbench.data import second_family
from workbench.store.studies import write_study

RUNS = "runs"
ACCELERATE_CONFIG = "accelerate_config.yaml"
# FSDP as the Trainer runs it (version 1). Full state dicts: rank 0 saves whole checkpoints and a whole student/,
# the plain folders the app reads. No CPU-RAM-efficient loading: it fills the weights of every model loaded on
# ranks > 0 from rank 0, and the teacher, which FSDP does not wrap, would keep empty weights there.
FSDP_SETTINGS = {"fsdp_version": 1, "fsdp_sharding_strategy": "FULL_SHARD",
                 "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_backward_prefetch": "BACKWARD_PRE",
                 "fsdp_forward_prefetch": False, "fsdp_state_dict_type": "FULL_STATE_DICT",
                 "fsdp_offload_params": False, "fsdp_sync_module_states": True,
                 "fsdp_cpu_ram_efficient_loading": False, "fsdp_use_orig_params": True,
                 "fsdp_activation_checkpointing": False}


@dataclass(frozen=True)
class ClusterRun:
    name: str
    config: DistillConfig
    baseline_of: str | None = None   # a study's CE-only baseline names its distilled run (Compare's verdict)


@dataclass(frozen=True)
class ClusterJob:
    folder: Path
    runs: list[str]
    command: str        # how to submit it
    notes: list[str]    # what the user must see to: local paths, settings changed for FSDP


def runs_of_config(config: DistillConfig) -> list[ClusterRun]:
    """One run, named as the app names a run (output.run_name, else a time stamp and the strategy)."""
    return [ClusterRun(config.output.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{config.strategy}", config)]


def runs_of_study(plan: Plan) -> tuple[list[ClusterRun], dict]:
    """A study's runs named as the app names them (jobs/study.py), each tagged with its study; and its record."""
    study_id = plan.spec.name
    record = _record(plan, study_id)
    distilled, baselines = _named(plan, study_id)
    baseline_of = {run["baseline"]: run["run_id"] for run in reversed(record["runs"]) if run["baseline"]}
    runs = [ClusterRun(name, planned.config.replace(output=dataclasses.replace(planned.config.output, study=study_id)),
                       baseline_of.get(name))
            for name, planned in zip(distilled + baselines, plan.runs + plan.baselines)]
    return runs, record


def write_job(runs: list[ClusterRun], spec: ClusterSpec, out: str | Path, study: dict | None = None) -> ClusterJob:
    """Write the job folder OUT (it must not exist yet, or be empty); ConfigError naming the field otherwise."""
    spec.validate()
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError([("out_dir", f"{out} already exists and is not an empty folder; a job folder is written "
                                       "whole, into a new one")])
    notes: list[str] = []
    runs = [_for_cluster(run, spec, notes) for run in runs]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        accelerate = staging / ACCELERATE_CONFIG
        accelerate.write_text(yaml.safe_dump(accelerate_settings(spec, [r.config for r in runs]), sort_keys=False))
        for run in runs:
            _write_run(staging, run, spec, accelerate)
        if study is not None:
            write_study(staging / RUNS, {**study, "num_processes": spec.processes})  # as the app records it
        names = [run.name for run in runs]
        defaults = _defaults_flags([run.config for run in runs])
        notes += _local_paths([run.config for run in runs])
        cluster_scripts.write_scripts(staging, study["study_id"] if study else names[0], names, spec, defaults,
                                      notes)
        if out.exists():
            out.rmdir()
        staging.chmod(0o755)  # mkdtemp's folder is private; a job folder is an ordinary one
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ClusterJob(out, names, f"cd {shlex.quote(str(out))} && sbatch job.slurm", notes)


def accelerate_settings(spec: ClusterSpec, configs: list[DistillConfig]) -> dict:
    """accelerate's config for M machines x N GPUs. The machine rank and the main process's address and port
    are Slurm's to know: launch.sh passes them at launch. bf16 where every run asks for it (train.bf16 on); else
    "no", and each run's Trainer decides (auto: bf16 where the GPU supports it): accelerate's bf16 would reach a
    Trainer told off or auto through the environment and force bf16 there (on a GPU without it, or on CPU)."""
    settings = {"compute_environment": "LOCAL_MACHINE",
                "distributed_type": "FSDP" if spec.mode == "fsdp" else "MULTI_GPU",
                "num_machines": spec.nodes, "num_processes": spec.processes, "machine_rank": 0,
                "main_process_ip": None, "main_process_port": None, "rdzv_backend": "static", "same_network": True,
                "gpu_ids": "all", "use_cpu": False, "downcast_bf16": "no",
                "mixed_precision": "bf16" if all(c.train.bf16 == "on" for c in configs) else "no"}
    if spec.mode == "fsdp":
        settings["fsdp_config"] = dict(FSDP_SETTINGS)
    return settings


def _for_cluster(run: ClusterRun, spec: ClusterSpec, notes: list[str]) -> ClusterRun:
    """The run's config as it trains on the cluster: its folder under runs/, and for FSDP the plain loss."""
    config = run.config.replace(output=dataclasses.replace(run.config.output, runs_dir=RUNS, run_name=run.name))
    if spec.mode == "fsdp" and config.loss.chunk_size:
        # The fused loss reads the LM head's weight outside the model's forward, where FSDP has sharded it again.
        config = config.replace(loss=dataclasses.replace(config.loss, chunk_size=0))
        note = "loss.chunk_size set to 0 for FSDP (the fused loss reads the LM head outside the model's forward)"
        if note not in notes:
            notes.append(note)
    return dataclasses.replace(run, config=config.validate())


def _write_run(folder: Path, run: ClusterRun, spec: ClusterSpec, accelerate: Path) -> None:
    (folder / "configs").mkdir(exist_ok=True)
    (folder / "configs" / f"{run.name}.yaml").write_text(yaml.safe_dump(run.config.to_dict(), sort_keys=False),
                                                         encoding="utf-8")
    # Checked with the accelerate config as the app checks a job (on-policy refuses FSDP), then written with
    # none: the launch command holds it, and a path in spec.json would point out of a copied-back run folder.
    # resume: a first start finds no checkpoint and starts at step 0; a resubmitted job continues.
    job = JobSpec(run.config, f"{RUNS}/{run.name}", resume=True, num_processes=spec.processes,
                  accelerate_config=str(accelerate), baseline_of=run.baseline_of)
    try:
        job.validate()
    except ConfigError as err:
        raise ConfigError([("mode" if name == "accelerate_config" else name, message)
                           for name, message in err.problems]) from None
    dataclasses.replace(job, accelerate_config=None).write(into=folder / RUNS / run.name)


def _defaults_flags(configs: list[DistillConfig]) -> list[str] | None:
    """prepare-defaults' flags when a run names a `defaults:` file (None: no run does)."""
    named = [value for config in configs for _, value, _, defaults_ok in references(config)
             if defaults_ok and value and value.startswith(DEFAULTS_PREFIX)]
    if not named:
        return None
    return ["--gemma"] if DEFAULTS_PREFIX + second_family.NAME in named else []


def _local_paths(configs: list[DistillConfig]) -> list[str]:
    """A line for each path on this machine that a run reads: the cluster must have it at the same path."""
    found = {}
    for config in configs:
        paths = [(name, value) for name, value, suffixes, defaults_ok in references(config)
                 if value and not (defaults_ok and value.startswith(DEFAULTS_PREFIX))
                 and not is_hub_id(value, suffixes, defaults_ok)]
        paths += [(name, value) for name, value in (("generation.dataset", config.generation.dataset),
                                                    ("loss.teacher_cache", config.loss.teacher_cache)) if value]
        found.update({(name, value): None for name, value in paths})
    return [f"{name}: {value} is a path on this machine; the cluster must have it at the same path (a relative "
            "path is read from the job folder)" for name, value in found]
