"""A worker process known by pid + start time, whether this app started it or a previous one did.

The start time is what makes re-attaching safe: after a reboot or a long time, the pid in worker.json
may belong to an unrelated process, which must be neither shown as our job nor sent signals.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

import psutil

from workbench.store.rundir import WORKER, RunDir, read_json, write_json_atomic

# psutil's create_time is rounded to clock ticks; two readings of the same process agree to this.
_START_TOLERANCE_S = 0.05


@dataclass
class WorkerProcess:
    pid: int
    started: float
    argv: list = field(default_factory=list)
    cancel_requested: float | None = None  # recorded so a restarted app still knows the stop was asked for
    popen: subprocess.Popen | None = None  # only when this process is our child: then we get its exit code

    @classmethod
    def from_popen(cls, popen: subprocess.Popen) -> "WorkerProcess":
        try:
            started = psutil.Process(popen.pid).create_time()
        except psutil.NoSuchProcess:
            started = time.time()
        return cls(popen.pid, started, [str(a) for a in popen.args], popen=popen)

    @classmethod
    def read(cls, run: RunDir) -> "WorkerProcess | None":
        data, _ = read_json(run.file(WORKER))
        try:
            cancel = data.get("cancel_requested")
            return cls(int(data["pid"]), float(data["started"]), list(data.get("argv") or []),
                       None if cancel is None else float(cancel))
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
            return None  # no record, or a damaged one: no process is known

    def write(self, run: RunDir) -> None:
        write_json_atomic(run.file(WORKER), {"pid": self.pid, "started": self.started, "argv": self.argv,
                                             "cancel_requested": self.cancel_requested})

    def _process(self) -> psutil.Process | None:
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started) > _START_TOLERANCE_S:
                return None  # the pid was reused
            return proc
        except (psutil.Error, ValueError, OverflowError):  # gone, or a pid no process can have (damaged file)
            return None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        proc = self._process()
        try:
            return proc is not None and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def tree(self) -> list[psutil.Process]:
        """The worker and every process under it (the ranks of a multi-process job); [] once it is gone."""
        proc = self._process()
        if proc is None:
            return []
        try:
            return [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return [proc]

    @property
    def returncode(self) -> int | None:
        """Exit code (negative: killed by that signal); None while running or when not our child."""
        return self.popen.poll() if self.popen is not None else None

    def signal(self, sig: signal.Signals) -> None:
        """Signal the worker's process group and every descendant: ranks started by torchrun live in
        sessions of their own, outside the group."""
        proc = self._process()
        if proc is None:
            return
        try:
            children = proc.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            _send(proc, sig)  # not a group leader (a run started from a shell): the process alone
        for child in children:
            _send(child, sig)


def _send(proc: psutil.Process, sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass
