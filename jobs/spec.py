"""JobSpec: what a job's worker needs, written to RUN_DIR/spec.json before any process starts.
The run directory layout itself is the contract in workbench/store/rundir.py.

A job trains a student (kind training), or with `cache_build` set builds a teacher cache for its config (kind
cache_build, written into spec.json as "kind" for the readers that do not load a JobSpec: ingest, the store)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from jobs.cache_spec import CacheBuild
from workbench.config.fields import ConfigError, show, whole_problem
from workbench.config.gate import Gate
from workbench.config.paths import path_problem
from workbench.config.schema import DistillConfig
from workbench.store.rundir import CACHE_BUILD, SPEC, TRAINING, RunDir, read_json, write_json_atomic

MAX_PROCESSES = 64


@dataclass
class JobSpec:
    config: DistillConfig
    run_dir: str
    resume: bool = False
    created: float = field(default_factory=time.time)
    # > 1: the worker runs under `accelerate launch` (DDP; FSDP/DeepSpeed through accelerate_config).
    num_processes: int = 1
    accelerate_config: str | None = None
    cache_dir: str | None = None  # where the offline defaults live (None: the standard cache)
    baseline_of: str | None = None  # this run is the CE-only baseline of that run (workbench/engine/baseline.py)
    cache_build: CacheBuild | None = None  # set: the job builds this teacher cache instead of training

    @property
    def kind(self) -> str:
        return CACHE_BUILD if self.cache_build is not None else TRAINING

    def queued_status(self) -> dict:
        """What status.json says from the moment the job is queued: its kind, and what its progress counts."""
        if self.cache_build is None:
            return {"kind": TRAINING, "total_steps": self.config.train.max_steps}
        return {"kind": CACHE_BUILD, "total_steps": 0, "cache_folder": self.cache_build.folder,
                "k": self.cache_build.k}

    def validate(self) -> "JobSpec":
        problems = []
        # A spec is also read back from a run folder, where it may hold any JSON: every field is checked.
        if problem := whole_problem(self.num_processes, 1, MAX_PROCESSES):
            problems.append(("num_processes", problem))
        for name, kind in (("resume", bool), ("run_dir", str), ("created", (int, float))):
            if not isinstance(getattr(self, name), kind):
                problems.append((name, f"is {show(getattr(self, name))}, not a {getattr(kind, '__name__', 'number')}"))
        for name in ("accelerate_config", "cache_dir", "baseline_of"):
            value = getattr(self, name)
            if value is None:
                continue
            problem = path_problem(value) if isinstance(value, str) else f"is {show(value)}"
            if problem:
                problems.append((name, problem))
        if isinstance(self.cache_build, CacheBuild):
            problems.extend(self.cache_build.problems(self.config))
            if self.num_processes != 1 or self.accelerate_config:
                problems.append(("num_processes", "a teacher cache is built by one process"))
        elif self.cache_build is not None:
            problems.append(("cache_build", f"is {show(self.cache_build)}, not a cache build"))
        if not problems and self.accelerate_config and not Path(self.accelerate_config).expanduser().is_file():
            problems.append(("accelerate_config", f"no such file: {self.accelerate_config}"))
        elif not problems and self.accelerate_config and self.config.strategy == "on_policy":
            problems.extend(_sharded_sampling(Path(self.accelerate_config).expanduser()))
        if problems:
            raise ConfigError(problems)
        self.config.validate()
        return self

    def check(self, gate: Gate | None) -> None:
        """ConfigError naming every field the app's gate refuses (nothing without a gate: the command line)."""
        if gate is None:
            return
        problems = gate.config_problems(self.config) + gate.launch_problems(self.num_processes, self.accelerate_config)
        if self.cache_build is not None:
            problems += self.cache_build.gate_problems(self.config, gate)
        if problems:
            raise ConfigError(problems)

    def write(self, into: str | Path | None = None) -> Path:
        """RUN_DIR/spec.json; `into` another folder, for a spec whose run_dir is read elsewhere (a cluster job's
        run_dir is relative to the job folder, where the worker starts: jobs/cluster.py)."""
        run = RunDir(into or self.run_dir).create()
        data = asdict(self)
        data["config"] = self.config.to_dict()
        data["kind"] = self.kind
        write_json_atomic(run.file(SPEC), data)
        return run.file(SPEC)

    @classmethod
    def read(cls, run_dir: str | Path) -> "JobSpec":
        """The spec a job was submitted with; ConfigError (field spec.json) if it is missing or damaged."""
        data, problem = read_json(RunDir(run_dir).file(SPEC))
        if data is None:
            raise ConfigError([("spec.json", problem or f"no job spec in {run_dir}")])
        if not isinstance(data.get("config"), dict):
            raise ConfigError([("spec.json", "holds no config")])
        data["config"] = DistillConfig.from_dict(data["config"])
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            if isinstance(known.get("cache_build"), dict):
                known["cache_build"] = CacheBuild(**known["cache_build"])
            return cls(**known).validate()
        except TypeError as err:
            raise ConfigError([("spec.json", f"is damaged: {err}")]) from None


def _sharded_sampling(path: Path) -> list[tuple[str, str]]:
    """On-policy runs sample with the whole student in each process (workbench/models/sampling.py): an
    accelerate config that shards it (FSDP, DeepSpeed) would sample from a shard, so it is refused."""
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return [("accelerate_config", f"cannot be read: {err}")]
    kind = str(settings.get("distributed_type", "")).upper() if isinstance(settings, dict) else ""
    if kind in ("FSDP", "DEEPSPEED"):
        return [("accelerate_config", f"distributes the student as {kind}, but on-policy sampling needs the whole "
                                      "student in every process; use plain multi-process (DDP) for on_policy")]
    return []
