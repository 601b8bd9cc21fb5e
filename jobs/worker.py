"""A job's process: `python -m jobs.worker RUN_DIR` reads spec.json and runs it: trains a student (under
`accelerate launch` for multi-process jobs: every rank runs this same entry point), or builds a teacher cache.
Exit codes: 0 succeeded, 1 failed (the error and traceback are in status.json), 3 stopped on request (status
cancelled; a training run has a checkpoint, a cache build keeps its finished shards).
The output goes to worker.log, where the job manager points stdout and stderr."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# worker.log is a file: progress bars would fill it with carriage-return redraws. Our own progress
# lines (step, loss, tok/s, ETA) say the same thing once per logging step.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m jobs.worker RUN_DIR", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    from jobs.spec import JobSpec
    from workbench.engine.cache_job import run_cache_job
    from workbench.engine.runner import run_training
    from workbench.engine.stopping import Cancelled
    from workbench.store.rundir import EXIT_CANCELLED, EXIT_FAILED, RunDir
    hf_logging.disable_progress_bar()
    spec = JobSpec.read(argv[0])
    try:
        # A job the app started never fetches a model the app's owner has not (a visitor's resume would).
        if spec.cache_build is not None:  # a resumed build needs no flag: it continues at its first missing shard
            build = spec.cache_build
            run_cache_job(spec.config, RunDir(spec.run_dir), build.folder, build.k, build.fidelity_steps, echo=_say,
                          cache_dir=spec.cache_dir, fetch_missing=False, tail_samples=build.tail_samples)
        else:
            run_training(spec.config, RunDir(spec.run_dir), resume=spec.resume, echo=_say, cache_dir=spec.cache_dir,
                         fetch_missing=False)
    except Cancelled as stopped:
        print(f"cancelled: {stopped}", flush=True)
        return EXIT_CANCELLED
    except Exception as err:  # noqa: BLE001 - recorded in status.json by run_training; exit code says failed
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return 0


def _say(message: str) -> None:
    print(message, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
