"""A job's process: `python -m jobs.worker RUN_DIR` reads spec.json and runs it. Exit code 0 on success,
1 on failure (the error and traceback are in status.json; the output goes to worker.log)."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m jobs.worker RUN_DIR", file=sys.stderr)
        return 2
    from jobs.spec import JobSpec
    from workbench.rundir import RunDir
    from workbench.runner import run_training
    spec = JobSpec.read(argv[0])
    try:
        run_training(spec.config, RunDir(spec.run_dir), resume=spec.resume, echo=lambda m: print(m, flush=True))
    except Exception as err:  # noqa: BLE001 - recorded in status.json by run_training; exit code says failed
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
