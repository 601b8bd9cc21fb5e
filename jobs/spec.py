"""JobSpec: what a job's worker needs, written to RUN_DIR/spec.json before any process starts.
The run directory layout itself is the contract in workbench/rundir.py."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench.config import DistillConfig
from workbench.rundir import SPEC, RunDir, write_json_atomic


@dataclass
class JobSpec:
    config: DistillConfig
    run_dir: str
    resume: bool = False
    created: float = field(default_factory=time.time)

    def write(self) -> Path:
        run = RunDir(self.run_dir).create()
        data = asdict(self)
        data["config"] = self.config.to_dict()
        write_json_atomic(run.file(SPEC), data)
        return run.file(SPEC)

    @classmethod
    def read(cls, run_dir: str | Path) -> "JobSpec":
        data = json.loads(RunDir(run_dir).file(SPEC).read_text(encoding="utf-8"))
        return cls(config=DistillConfig.from_dict(data["config"]), run_dir=data["run_dir"],
                   resume=data.get("resume", False), created=data.get("created", time.time()))
