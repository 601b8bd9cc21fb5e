"""A cache-build job, start to finish, in its job folder (workbench/store/rundir.py, kind cache_build): the
config's teacher over its training blocks into the cache folder, then optionally the fidelity run
(cache_fidelity.py). The worker calls this instead of run_training; the status it writes has the same states
and fields as a training run's, so the job manager, cancel and resume treat both alike.

Cancel: SIGTERM stops the build at once (StopRequest raises Cancelled: nothing runs in a training loop here).
Every shard written so far is named in the manifest, so resuming the job, or any later build of the same folder,
continues at the first missing shard.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Callable

import psutil

from workbench.config.schema import DistillConfig
from workbench.data.defaults import progress_line, resolve_defaults
from workbench.config.fields import ConfigError
from workbench.engine.cache_build import BuildReport, KTooLarge, build_for_config
from workbench.engine.cache_fidelity import measure_fidelity
from workbench.engine.stopping import Cancelled, StopRequest
from workbench.engine.teacher_cache import CacheError, Manifest
from workbench.store.rundir import RunDir

FIDELITY_PHASE = "measuring fidelity"


def run_cache_job(config: DistillConfig, run: RunDir, folder: Path, k: int, fidelity_steps: int = 0,
                  echo: Callable[[str], None] | None = None, cache_dir: Path | None = None,
                  fetch_missing: bool = True, tail_samples: int = 0) -> Manifest:
    """Build (or finish) the cache in `folder`; then `fidelity_steps` > 0 measures it against the live teacher.
    status.json ends succeeded, cancelled (Cancelled raised) or failed (the error raised)."""
    me = psutil.Process()
    # pid + start time let a restarted app tell this live process from a dead one (as run_training's do).
    run.write_status("starting", started=time.time(), pid=me.pid, pid_started=me.create_time(), processes=1,
                     error=None, traceback=None, phase=None, eta_s=None)
    try:
        with StopRequest().installed():
            progress = (lambda message, fraction: echo(progress_line(message, fraction))) if echo else None
            config = resolve_defaults(config, cache_dir, progress, fetch_missing)
            try:
                manifest = build_for_config(config, Path(folder), k, BuildReport(run, echo), tail_samples)
            except CacheError as err:  # the job's own fields, as the panel named them (jobs/cache_spec.py)
                raise ConfigError([("cache.k" if isinstance(err, KTooLarge) else "cache.folder", str(err))]) from err
            if echo:
                echo(f"{folder}: {manifest.blocks} blocks x {manifest.seq_len - 1} positions, k={manifest.k}, "
                     f"{manifest.tail_samples} of them tail samples, {manifest.bytes_per_token} bytes/token")
            if fidelity_steps:
                run.write_status("running", phase=FIDELITY_PHASE, phase_done=None, phase_total=None, eta_s=None)
                measure_fidelity(config, Path(folder), fidelity_steps, echo=echo, cache_dir=cache_dir,
                                 fetch_missing=fetch_missing)
    except Cancelled:
        run.write_status("cancelled", eta_s=None, error=None)
        raise
    except BaseException as err:
        run.write_status("failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    run.write_status("succeeded", phase=None, phase_done=manifest.blocks, phase_total=manifest.blocks, eta_s=0)
    return manifest
