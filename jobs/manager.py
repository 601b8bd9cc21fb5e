"""The job manager: submit, queue, start, cancel, resume, and re-attach after an app restart.

Everything it knows is on disk, in the run directories: a job is spec.json + status.json (+ worker.json
while a process runs), so a restarted app finds queued jobs still queued and running jobs still running.
Who writes status.json: the manager while no worker runs (queued, and the final fix-up after a worker
ends without saying how), the worker while it runs. Never both at once.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from jobs.cache_spec import CacheBuild
from jobs.launcher import start_worker
from jobs.process import WorkerProcess
from jobs.spec import JobSpec
from workbench.config.fields import ConfigError
from workbench.config.gate import Gate
from workbench.config.schema import DistillConfig
from workbench.store.rundir import (
    CONFIG,
    FINAL_STATES,
    LOG,
    SPEC,
    WORKER,
    RunDir,
    finite_number,
    is_run_dir,
    run_in,
)

RESUMABLE = ("cancelled", "failed", "interrupted")
# Runs that may be deleted: ended, or with a status nobody can read (listed as unknown with the reason).
DELETABLE = (*FINAL_STATES, "unknown")
LOG_TAIL_LINES = 40


@dataclass
class _Live:
    run: RunDir
    process: WorkerProcess


def log_tail(run: RunDir, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(run.file(LOG), "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:  # no log yet, or something that is not a file in its place
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _has_live_process(run: RunDir, status: dict) -> bool:
    """Whether the run's recorded worker (worker.json) or its trainer (the pid status.json names, also for a
    run started from the command line) is still alive."""
    recorded = [WorkerProcess.read(run)]
    pid, started = finite_number(status.get("pid")), finite_number(status.get("pid_started"))
    if pid is not None and started is not None:
        recorded.append(WorkerProcess(int(pid), started))
    return any(process is not None and process.alive() for process in recorded)


class JobManager:
    def __init__(self, runs_dir: str | Path, max_concurrent: int = 1, grace_s: float = 60.0,
                 cache_dir: str | Path | None = None, gate: Gate | None = None):
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.max_concurrent = max_concurrent
        self.grace_s = grace_s
        self.cache_dir = str(cache_dir) if cache_dir else None
        # The app's gate (workbench/config/gate.py): every job passes it when submitted and again when its worker
        # starts, so a resumed job, or one found queued in the runs folder at start, is checked as well.
        self.gate = gate
        self._live: dict[str, _Live] = {}
        self._queue: list[str] = []
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._reattach()

    # -- public API -------------------------------------------------------------------------------
    def submit(self, config: DistillConfig, run_name: str | None = None, num_processes: int = 1,
               accelerate_config: str | None = None, baseline_of: str | None = None,
               cache_build: CacheBuild | None = None) -> str:
        """Validate, write spec.json and a queued status, then start it if a slot is free. Returns the run id.
        With `cache_build` the job builds that teacher cache for `config` instead of training."""
        with self._lock:
            run_id = self._new_run_id(run_name or config.output.run_name or
                                      f"{time.strftime('%Y%m%d-%H%M%S')}-{config.strategy}")
            run_dir = self.runs_dir / run_id
            config = config.replace(output=dataclasses.replace(config.output, runs_dir=str(self.runs_dir),
                                                               run_name=run_id))
            spec = JobSpec(config=config, run_dir=str(run_dir), num_processes=num_processes,
                           accelerate_config=accelerate_config, cache_dir=self.cache_dir,
                           baseline_of=baseline_of, cache_build=cache_build).validate()
            spec.check(self.gate)
            spec.write()
            self._enqueue(run_id, spec)
            self.poll()
            return run_id

    def cancel(self, run_id: str) -> str:
        """Queued: dropped from the queue. Running: SIGTERM (checkpoint, then exit), SIGKILL after the grace
        period. Returns the state right after the request."""
        with self._lock:
            run = self._run(run_id)
            if run_id in self._queue:
                self._queue.remove(run_id)
                run.write_status("cancelled", error=None, eta_s=None)
                return "cancelled"
            live = self._live.get(run_id)
            if live is None:
                return run.read_status().get("state", "unknown")
            if live.process.cancel_requested is None:
                live.process.cancel_requested = time.time()
                live.process.write(run)
                live.process.signal(signal.SIGTERM)
            return "cancelling"

    def resume(self, run_id: str) -> None:
        """Queue a cancelled, failed or interrupted job again; it continues from its last checkpoint."""
        with self._lock:
            run = self._run(run_id)
            state = run.read_status().get("state")
            if run_id in self._live or state not in RESUMABLE:
                raise ValueError(f"{run_id} is {state or 'unknown'}: only {', '.join(RESUMABLE)} jobs can resume")
            spec = JobSpec.read(run.path) if run.file(SPEC).exists() else JobSpec(
                config=DistillConfig.load(run.file(CONFIG)), run_dir=str(run.path), cache_dir=self.cache_dir)
            spec.check(self.gate)
            # Where the run is now: a run folder copied in from elsewhere (a cluster job's) names its old place.
            if spec.num_processes > 1 and Path(spec.run_dir).resolve() != run.path.resolve():
                raise ConfigError([("num_processes", f"{run_id} was written for {spec.num_processes} processes "
                                                     "elsewhere (a cluster job): resume it there, or clone it to "
                                                     "run here with this machine's processes")])
            dataclasses.replace(spec, resume=True, run_dir=str(run.path)).write()
            self._enqueue(run_id, spec)
            self.poll()

    def move(self, run_id: str, offset: int) -> int:
        """Move a queued job `offset` places (negative: sooner, clamped to the queue's ends); its new
        position, 1 being next. The order is kept in the jobs' queued_at, so a restarted app keeps it."""
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise ValueError(f"move by a whole number of places, not {str(offset)[:40]!r}")
        with self._lock:
            if run_id not in self._queue:
                raise ValueError(f"{run_id} is not waiting in the queue")
            old = self._queue.index(run_id)
            new = min(max(old + offset, 0), len(self._queue) - 1)
            self._queue.insert(new, self._queue.pop(old))
            self._stamp_queue()
            return new + 1

    def delete(self, run_id: str) -> None:
        """Remove an ended run's folder. It is first renamed to a hidden name (atomic: from then on nothing
        lists, ingests or starts it), then removed; KeyError for no such run, ValueError for one that is
        queued or running."""
        with self._lock:
            run = self._run(run_id)
            status = run.read_status()
            state = status.get("state")
            if run_id in self._live or run_id in self._queue or state not in DELETABLE:
                raise ValueError(f"{run_id} is {state or 'not started'}: only ended runs ({', '.join(FINAL_STATES)}) "
                                 "can be deleted; cancel it first")
            if _has_live_process(run, status):  # a worker this app does not follow: a CLI run, a damaged status
                raise ValueError(f"{run_id} still has a live process (it may be evaluating its student); "
                                 "wait for it to end")
            trash = self.runs_dir / f".deleting-{uuid.uuid4().hex}"
            run.path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        if trash.exists():
            raise OSError(f"{run_id} is deleted from the runs, but some of its files could not be removed: "
                          f"{trash.name} in the runs folder")

    def workers(self) -> dict[str, WorkerProcess]:
        """The live jobs' worker processes, by run id."""
        with self._lock:
            return {run_id: live.process for run_id, live in self._live.items()}

    def poll(self) -> None:
        """Reap ended workers, escalate overdue cancels to SIGKILL, start queued jobs in free slots."""
        with self._lock:
            now = time.time()
            for run_id, live in list(self._live.items()):
                if not live.process.alive():
                    self._finish(run_id, live)
                elif live.process.cancel_requested and now - live.process.cancel_requested > self.grace_s:
                    live.process.signal(signal.SIGKILL)
            while self._queue and len(self._live) < self.max_concurrent:
                self._spawn(self._queue.pop(0))

    def jobs(self) -> list[dict]:
        """Every run in the runs folder with its status, newest first; `live` marks a running worker."""
        with self._lock:
            rows = []
            for run in self._run_dirs():
                status = run.read_status()
                live = self._live.get(run.path.name)
                state = status.get("state", "unknown")
                if live is not None and state == "queued":
                    state = "starting"
                if live is not None and live.process.cancel_requested:
                    state = "cancelling"
                rows.append({**status, "run_id": run.path.name, "state": state, "live": live is not None,
                             "queue_position": self._queue.index(run.path.name) + 1
                             if run.path.name in self._queue else None})
            return sorted(rows, key=lambda r: finite_number(r.get("queued_at")) or finite_number(r.get("started")) or 0,
                          reverse=True)

    def log(self, run_id: str, lines: int = LOG_TAIL_LINES) -> str:
        """The end of a job's worker.log."""
        return log_tail(self._run(run_id), lines)

    def wait(self, run_id: str, timeout: float = 600, interval: float = 0.2) -> dict:
        """Block until the job is in a final state with its worker reaped (polling, unless the thread does)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._thread is None:
                self.poll()
            with self._lock:
                status = self._run(run_id).read_status()
                if status.get("state") in FINAL_STATES and run_id not in self._live:
                    return status
            time.sleep(interval)
        raise TimeoutError(f"{run_id} did not finish within {timeout} s")

    def start(self, interval: float = 0.5) -> "JobManager":
        """Poll on a daemon thread. Stopping the app does not stop jobs: a restart re-attaches to them."""
        def loop():
            while not self._stopping.wait(interval):
                self.poll()
        self._thread = threading.Thread(target=loop, name="job-manager", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- internals --------------------------------------------------------------------------------
    def _run(self, run_id: str) -> RunDir:
        return run_in(self.runs_dir, run_id)

    def _run_dirs(self) -> list[RunDir]:
        return [RunDir(p) for p in sorted(self.runs_dir.iterdir()) if is_run_dir(p)]

    def _new_run_id(self, wanted: str) -> str:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", wanted).strip(".-") or "run"
        run_id, n = base, 2
        while (self.runs_dir / run_id).exists():
            run_id, n = f"{base}-{n}", n + 1
        return run_id

    def _enqueue(self, run_id: str, spec: JobSpec) -> None:
        RunDir(self.runs_dir / run_id).write_status("queued", queued_at=time.time(), **spec.queued_status(),
                                                    error=None, traceback=None, log_tail=None, exit_code=None)
        self._queue.append(run_id)

    def _stamp_queue(self) -> None:
        """Give the queued jobs their queued_at times again, in queue order: the same times, so the first
        stays the oldest and a restart (_reattach sorts by queued_at) finds the order the user chose."""
        runs = [RunDir(self.runs_dir / run_id) for run_id in self._queue]
        stamps = sorted(finite_number(run.read_status().get("queued_at")) or time.time() for run in runs)
        for i in range(1, len(stamps)):  # strictly increasing: equal times would leave the order to chance
            stamps[i] = max(stamps[i], stamps[i - 1] + 1e-3)
        for run, stamp in zip(runs, stamps):
            if finite_number(run.read_status().get("queued_at")) != stamp:
                run.write_status("queued", queued_at=stamp)

    def _spawn(self, run_id: str) -> None:
        run = RunDir(self.runs_dir / run_id)
        try:
            spec = JobSpec.read(run.path)
            spec.check(self.gate)
            popen = start_worker(spec, self.grace_s)
        except ConfigError as err:  # refused by the gate, or a damaged spec: the job fails alone, not started
            run.write_status("failed", error=f"not started: {err}")
            return
        except Exception as err:  # noqa: BLE001 - a job that cannot start fails alone, the queue goes on
            run.write_status("failed", error=f"could not start the worker: {type(err).__name__}: {err}")
            return
        process = WorkerProcess.from_popen(popen)
        process.write(run)
        self._live[run_id] = _Live(run, process)

    def _finish(self, run_id: str, live: _Live) -> None:
        """The worker is gone. If it did not write a final state (killed, crashed), say what happened."""
        run, code = live.run, live.process.returncode
        state, fields = run.read_status().get("state"), {}
        if state not in FINAL_STATES:
            if live.process.cancel_requested:
                state, fields = "cancelled", {"error": None, "eta_s": None}
            elif code is None or code < 0:
                how = (f"killed by {signal.Signals(-code).name}" if code
                       else "no exit code: an earlier app session started it")
                state, fields = "interrupted", {"error": f"the worker stopped without finishing ({how})",
                                                "eta_s": None}
            else:
                state, fields = "failed", {"error": f"the worker exited with code {code} without a final status"}
        if state == "failed":
            fields["log_tail"] = log_tail(run)
        if fields:  # a worker that ended with its own final state, other than failed, is left as it said
            run.write_status(state, exit_code=code, **fields)
        run.file(WORKER).unlink(missing_ok=True)
        del self._live[run_id]

    def _reattach(self) -> None:
        """On start: live workers become live jobs again; dead ones are finished (interrupted); queued
        jobs are queued again, oldest first."""
        queued = []
        for run in self._run_dirs():
            status = run.read_status()
            state = status.get("state")
            if state == "unknown":
                continue  # a damaged status: listed with its reason, never signalled or restarted
            process = WorkerProcess.read(run)
            pid = finite_number(status.get("pid"))
            if process is None and state in ("starting", "running") and pid and 0 < pid < 2**31:
                # Started outside a job manager (the CLI): known by the pid its runner recorded.
                process = WorkerProcess(int(pid), finite_number(status.get("pid_started")) or 0.0)
            if process is not None and (process.alive() or state not in FINAL_STATES):
                self._live[run.path.name] = _Live(run, process)
            elif process is not None:
                run.file(WORKER).unlink(missing_ok=True)
            elif state == "queued":
                queued.append((finite_number(status.get("queued_at")) or 0, run.path.name))
        self._queue = [run_id for _, run_id in sorted(queued)]
        self.poll()
