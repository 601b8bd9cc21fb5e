"""How much KD quality a teacher cache gives up: the same short run (same student, data, steps, seed)
from the live teacher and from the cache, compared by the held-out KL(teacher || student) that each
run's evaluation measures against the real teacher. The result is kept beside the cache
(CACHE/fidelity.json) for the cache manager to show.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from workbench.config.schema import DistillConfig
from workbench.engine.runner import run_training
from workbench.engine.teacher_cache import FIDELITY
from workbench.store.rundir import RunDir, write_json_atomic


def short_run(config: DistillConfig, work: Path, name: str, teacher_cache: str | None, steps: int,
              cache_dir: Path | None = None, fetch_missing: bool = True) -> tuple[dict, float]:
    """(evaluation metrics, seconds) of `steps` steps of `config` in WORK/NAME, from the live teacher
    (teacher_cache None) or from a cache; the evaluation measures against the real teacher either way.
    cache_dir, fetch_missing: as run_training's (an app job fetches nothing)."""
    run_config = config.replace(
        # "live" must run the teacher: kept rows (loss.reuse_teacher) are a cache of their own
        loss=dataclasses.replace(config.loss, teacher_cache=teacher_cache, reuse_teacher=False),
        train=dataclasses.replace(config.train, max_steps=steps, save_steps=steps, eval_steps=0),
        evaluation=dataclasses.replace(config.evaluation, at_end=True, speed=False, max_new_tokens=0),
        output=dataclasses.replace(config.output, runs_dir=str(work), run_name=name))
    start = time.perf_counter()
    run_training(run_config, cache_dir=cache_dir, fetch_missing=fetch_missing)
    run = RunDir(Path(work) / name)
    evaluations = run.read_evaluations()
    if not evaluations:
        raise RuntimeError(f"the {name} run was not evaluated: {run.read_status().get('evaluation_error')}")
    return evaluations[-1]["metrics"], time.perf_counter() - start


def measure_fidelity(config: DistillConfig, cache: Path, steps: int = 20,
                     echo: Callable[[str], None] | None = None, cache_dir: Path | None = None,
                     fetch_missing: bool = True) -> dict:
    """Two runs of `steps` steps of `config` (its data must be the cache's: the cached run refuses
    otherwise); returns and writes {"steps", "live_kl", "cached_kl", "relative", "live_s", "cached_s", ...}."""
    say = echo or (lambda _message: None)
    work = Path(tempfile.mkdtemp(prefix="dw-fidelity-"))
    try:
        results = {}
        for name, teacher_cache in (("live", None), ("cached", str(cache))):
            say(f"fidelity: {steps} steps from the {name} teacher")
            metrics, seconds = short_run(config, work, name, teacher_cache, steps, cache_dir, fetch_missing)
            results[name] = (metrics["forward_kl"], seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (live_kl, live_s), (cached_kl, cached_s) = results["live"], results["cached"]
    report = {"steps": steps, "live_kl": live_kl, "cached_kl": cached_kl, "relative": cached_kl / live_kl - 1,
              "live_s": round(live_s, 1), "cached_s": round(cached_s, 1), "measured": time.time()}
    write_json_atomic(Path(cache) / FIDELITY, report)
    say(f"fidelity: held-out KL {cached_kl:.4f} from the cache vs {live_kl:.4f} live "
        f"({100 * report['relative']:+.2f}%), {cached_s:.0f} s vs {live_s:.0f} s")
    return report

