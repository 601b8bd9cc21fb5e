"""`python -m workbench cluster`: a run, or a study's runs, written as a job folder for a Slurm cluster
(jobs/cluster.py). Nothing is trained here: the folder is copied to the cluster and submitted with sbatch.
An entry point like cli.py: its parser is built for every command, so the job machinery is imported only
when this command runs."""
from __future__ import annotations

import argparse

from jobs.cluster_spec import MAX_GPUS_PER_NODE, MAX_NODES, ClusterSpec
from workbench.config.fields import ConfigError


def add_parser(sub) -> None:
    cmd = sub.add_parser("cluster", help="write a run (or --study: a study's runs) as a job folder for a Slurm "
                                         "cluster: accelerate config, launch.sh, job.slurm, README.txt")
    cmd.add_argument("config", nargs="?", help="a run config (.yaml or .json); or give --study")
    cmd.add_argument("out_dir", help="the job folder to write (new, or empty)")
    cmd.add_argument("--study", help="a study file: every planned run, baselines included, as one job array")
    cmd.add_argument("--nodes", type=int, default=1, help=f"machines (1 to {MAX_NODES}; default 1)")
    cmd.add_argument("--gpus-per-node", type=int, default=1, help=f"GPUs per machine (1 to {MAX_GPUS_PER_NODE}; "
                                                                  "default 1)")
    cmd.add_argument("--fsdp", action="store_true", help="shard the student with FSDP (default: DDP)")
    cmd.add_argument("--partition", default="", help="Slurm partition (default: the cluster's)")
    cmd.add_argument("--account", default="", help="Slurm account (default: yours)")
    cmd.add_argument("--time", default=ClusterSpec.time, help=f"time limit, [D-]HH:MM:SS (default {ClusterSpec.time})")
    cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a field (of the study's base with --study), e.g. --set train.max_steps=2000")


def run_cluster(args: argparse.Namespace) -> int:
    from jobs.cluster import runs_of_config, runs_of_study, write_job
    from jobs.study_plan import plan_study
    from workbench.config.schema import DistillConfig
    from workbench.config.study import load_study
    if bool(args.config) == bool(args.study):
        raise ConfigError([("config", "give a run config, or --study STUDY.yaml (not both)")])
    spec = ClusterSpec(nodes=args.nodes, gpus_per_node=args.gpus_per_node, mode="fsdp" if args.fsdp else "ddp",
                       partition=args.partition, time=args.time, account=args.account)
    if args.study:
        runs, record = runs_of_study(plan_study(*load_study(args.study, args.overrides)))
    else:
        runs, record = runs_of_config(DistillConfig.load(args.config, args.overrides)), None
    job = write_job(runs, spec, args.out_dir, record)
    print(f"{job.folder}: {len(job.runs)} run(s) on {spec.nodes} node(s) x {spec.gpus_per_node} GPU(s), "
          f"{spec.mode.upper()}: {', '.join(job.runs)}")
    for note in job.notes:
        print(f"note: {note}")
    print(f"copy it to the cluster, then: {job.command} (README.txt there says the rest)")
    return 0
