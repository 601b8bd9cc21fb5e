"""Where and how a cluster job runs (jobs/cluster.py writes it): nodes, GPUs per node, DDP or FSDP, and the Slurm
settings. Apart from the writer so that the command line's parser reads its limits without loading the job machinery."""
from __future__ import annotations

import re
from dataclasses import dataclass

from jobs.spec import MAX_PROCESSES
from workbench.config.fields import ConfigError, show, whole_problem

MODES = ("ddp", "fsdp")
MAX_NODES = 64
MAX_GPUS_PER_NODE = 16
# Slurm values end up in job.slurm: only what a partition or account name is made of, so nothing a shell or
# sbatch would read as syntax (spaces, quotes, $, ;, newlines) gets through.
SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SLURM_TIME = re.compile(r"(\d{1,3}-)?\d{1,2}:[0-5]\d:[0-5]\d")


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how the job runs. Every value is checked here, for the CLI and the app's endpoint alike."""
    nodes: int = 1
    gpus_per_node: int = 1
    mode: str = "ddp"
    partition: str = ""      # empty: the cluster's default partition
    time: str = "24:00:00"   # Slurm's time limit, [D-]HH:MM:SS
    account: str = ""        # empty: the user's default account

    @property
    def processes(self) -> int:
        return self.nodes * self.gpus_per_node

    def validate(self) -> "ClusterSpec":
        problems = []
        for name, top in (("nodes", MAX_NODES), ("gpus_per_node", MAX_GPUS_PER_NODE)):
            if problem := whole_problem(getattr(self, name), 1, top, limit=40):
                problems.append((name, problem))
        if not problems and self.processes > MAX_PROCESSES:
            problems.append(("gpus_per_node", f"nodes x GPUs per node is {self.processes}; a job may have at most "
                                              f"{MAX_PROCESSES} processes"))
        if self.mode not in MODES:
            problems.append(("mode", f"must be one of {', '.join(MODES)}, got {show(self.mode, 40)}"))
        for name in ("partition", "account"):
            value = getattr(self, name)
            if not isinstance(value, str) or (value and not SLURM_NAME.fullmatch(value)):
                problems.append((name, f"must be empty or 1-64 letters, digits, '_', '.' or '-' (it is written into "
                                       f"job.slurm), got {show(value, 40)}"))
        if not isinstance(self.time, str) or not SLURM_TIME.fullmatch(self.time):
            problems.append(("time", f"must be HH:MM:SS or D-HH:MM:SS (minutes and seconds 00-59), got "
                                     f"{show(self.time, 40)}"))
        if problems:
            raise ConfigError(problems)
        return self
