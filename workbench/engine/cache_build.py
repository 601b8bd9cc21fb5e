"""Building a run config's teacher cache, once: the one path that the CLI's `cache` command, the app's
cache-build job and a run with loss.build_teacher_cache share (teacher_cache.build_cache does the work).

Two builders of one folder (two runs asking to build the same missing cache, a run beside a cache-build job,
the CLI beside the app) must not both write it. Each holds an exclusive flock on CACHE/.build.lock while it
builds; a second one waits for it, then finds the cache complete, or further along (build_cache resumes at the
first shard the manifest does not name). A lock in the folder rather than an order in the job manager, because
builders also come from the command line and from other app instances sharing the folder; and the kernel
releases a flock when its holder dies, so a killed build leaves no stale lock behind.
"""
from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.data.loading import tokenize_datasets
from workbench.engine.callbacks import format_eta
from workbench.engine.teacher_cache import MANIFEST, CacheError, Manifest, TeacherCache, build_cache, data_hash
from workbench.models.loading import check_vocab, load_tokenizer, logit_size, tokenizer_hash
from workbench.models.students import load_teacher_fp32, student_tokenizer
from workbench.store.rundir import RunDir, read_json

DEFAULT_K = 32  # tokens kept per position: the CLI's and the panel's default, and what build-if-missing uses
LOCK = ".build.lock"
LOCK_POLL_S = 1.0
PHASE = "teacher cache"  # status.json's phase while a job or a run builds (the Runs tab shows it)


class KTooLarge(CacheError):
    """k above the teacher's vocabulary: known only once the teacher is loaded, so the job reports it then."""


@dataclass
class BuildReport:
    """Where a build's progress goes: status.json (at most once a second: the Runs tab's progress and ETA) of
    the job or run doing it, if any, and a log line every tenth."""
    run: RunDir | None = None
    echo: Callable[[str], None] | None = None
    _written: float = field(default=0.0, repr=False)
    _tenth: int = field(default=-1, repr=False)

    def waiting(self, folder: Path) -> None:
        if self.run is not None:
            self.run.write_status("running", phase=f"waiting for another build of {folder.name}", phase_done=None,
                                  phase_total=None, eta_s=None)
        if self.echo:
            self.echo(f"{folder} is being built by another process: waiting for it")

    def blocks(self, done: int, total: int, eta_s: float | None) -> None:
        now = time.monotonic()
        if self.run is not None and (now - self._written >= 1.0 or done == total):
            self._written = now
            self.run.write_status("running", phase=PHASE, phase_done=done, phase_total=total,
                                  eta_s=None if eta_s is None else round(eta_s, 1))
        tenth = 10 * done // max(total, 1)
        if self.echo and tenth > self._tenth:
            self._tenth = tenth
            self.echo(f"teacher cache: {done}/{total} blocks ({format_eta(eta_s)} left)")


def folder_problem(folder: Path) -> str | None:
    """Why a cache may not be written in `folder`: a file there, or a folder holding other things (a model,
    a run, someone's data) and no cache. A new or empty folder, or one holding a cache, is fine."""
    try:
        if not folder.exists():
            return None
        if not folder.is_dir():
            return f"{folder} is a file, not a folder"
        names = {p.name for p in folder.iterdir()} - {LOCK}
    except OSError as err:
        return f"{folder} cannot be read: {err}"
    if names and MANIFEST not in names:
        return f"{folder} already holds other files and no teacher cache: choose a new or empty folder"
    return None


@contextmanager
def build_lock(folder: Path, report: BuildReport):
    """Hold FOLDER/.build.lock (see the module docstring), waiting for another holder; CacheError for a folder
    no cache may be written in."""
    if problem := folder_problem(folder):
        raise CacheError(problem)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a") as lock:
        told = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    report.waiting(folder)
                    told = True
                time.sleep(LOCK_POLL_S)  # a cancel (SIGTERM) interrupts the wait like any other
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_for_config(config: DistillConfig, folder: Path, k: int, report: BuildReport,
                     tail_samples: int = 0) -> Manifest:
    """Build (or finish) the cache of `config`'s teacher over its training blocks, with the tokenizer its runs
    train with, in `folder`. CacheError for a folder holding another cache or other files."""
    tokenizer = student_tokenizer(config)
    train, _ = tokenize_datasets(config.data, tokenizer, config.train.seq_len, config.train.seed)
    with build_lock(folder, report):
        return _build(config, tokenizer, train, folder, k, report, tail_samples)


def ensure_cache(config: DistillConfig, tokenizer, train_ds, report: BuildReport) -> bool:
    """loss.build_teacher_cache: build the run's cache unless loss.teacher_cache holds a complete one for this
    tokenizer and these blocks (then reused: whether it was built now). A cache there for another tokenizer or
    other data is a ConfigError naming loss.teacher_cache, never overwritten."""
    folder = Path(config.loss.teacher_cache).expanduser()
    try:
        with build_lock(folder, report):
            found = _manifest(folder)
            if found is not None and found.complete:
                # Reused if it is this run's; CacheError (another tokenizer, other data) if not.
                TeacherCache.open(folder, tokenizer_hash(tokenizer), data_hash(train_ds))
                return False
            # A cache begun at another k (a cancelled build from the panel) is finished at its own k; build_cache
            # refuses one begun for other data.
            _build(config, tokenizer, train_ds, folder, found.k if found else DEFAULT_K, report,
                   found.tail_samples if found else 0)
            return True
    except CacheError as err:
        raise ConfigError([("loss.teacher_cache", str(err))]) from err


def _manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, or None for none or a damaged one (build_cache then names the damage)."""
    data, _ = read_json(folder / MANIFEST)
    try:
        return Manifest(**data) if data is not None else None
    except TypeError:
        return None


def _build(config: DistillConfig, tokenizer, train, folder: Path, k: int, report: BuildReport,
           tail_samples: int = 0) -> Manifest:
    """build_cache with the run's teacher; progress counted in blocks of the whole cache, shards built by an
    earlier attempt included."""
    teacher = load_teacher_fp32(config)
    if torch.cuda.is_available():  # a teacher pass over the whole training set: on the GPU where there is one
        teacher.to("cuda")
    if not config.student.init_from_teacher_layers:
        # The cache stores teacher ids read with the student's tokenizer: they must name the same tokens.
        check_vocab(load_tokenizer(config.teacher, "teacher"), tokenizer, logit_size(teacher), logit_size(teacher))
    if k > logit_size(teacher):
        raise KTooLarge(f"must be from 1 to {logit_size(teacher)} (the teacher's vocabulary), got {k}")
    total, before = len(train), _blocks_done(_manifest(folder), len(train))
    start = time.monotonic()

    def progress(_message: str, fraction: float) -> None:
        elapsed = time.monotonic() - start
        report.blocks(before + round(fraction * (total - before)), total,
                      elapsed / fraction * (1 - fraction) if fraction > 0 else None)
    return build_cache(teacher=teacher, tokenizer=tokenizer, dataset=train, folder=folder, k=k,
                       teacher_name=config.teacher.name_or_path, batch_size=config.train.batch_size,
                       progress=progress, tail_samples=tail_samples, seed=config.train.seed)


def _blocks_done(manifest: Manifest | None, total: int) -> int:
    if manifest is None or manifest.blocks != total:
        return 0
    per = manifest.shard_blocks
    return sum(min(per, total - shard * per) for shard in manifest.shards_done)
