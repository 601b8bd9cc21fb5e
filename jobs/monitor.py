"""What the machine and each live job use: CPU and memory from psutil, GPU memory from nvidia-smi.

Cheap enough for every poll of the Runs tab: CPU percentages use psutil's non-blocking form (interval=None:
the use since the previous reading, primed when the monitor starts and kept per process object), and one
sample serves every caller for `min_interval_s`, so many open browsers cost one reading. GPU memory comes
from nvidia-smi, not torch: asking torch in the app process would create a CUDA context there (hundreds of
MiB of GPU memory) and it sees only its own process; no nvidia-smi means no GPU to show.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil

from jobs.process import WorkerProcess

NVIDIA_SMI_TIMEOUT_S = 2.0
GPU_RETRY_S = 60.0  # after nvidia-smi failed, how long the monitor goes without asking it again


@dataclass(frozen=True)
class GpuUsage:
    index: int
    name: str
    used_mib: float
    total_mib: float


@dataclass(frozen=True)
class JobUsage:
    run_id: str
    cpu_cores: float        # cores kept busy since the last sample: 1.0 = one core all the time
    rss_bytes: int          # summed over the worker's processes (shared pages counted in each)
    processes: int
    gpu_mib: float | None   # None: no GPU, or nvidia-smi lists none of the job's processes


@dataclass(frozen=True)
class Usage:
    cpu_percent: float      # of all cores
    cores: int
    ram_used: int           # total minus what is available: page cache counts as free
    ram_total: int
    gpus: tuple[GpuUsage, ...]
    jobs: tuple[JobUsage, ...]


class ResourceMonitor:
    def __init__(self, min_interval_s: float = 1.0, gpu_tool: str = "nvidia-smi"):
        self.min_interval_s = min_interval_s
        self._gpu_tool = shutil.which(gpu_tool)
        self._gpu_retry_at = 0.0
        self._lock = threading.Lock()
        self._procs: dict[tuple[int, float], psutil.Process] = {}  # kept: each holds its last CPU reading
        self._last: tuple[float, Usage] | None = None
        psutil.cpu_percent(interval=None)  # primes the machine's reading: the first sample has a baseline

    def sample(self, workers: dict[str, WorkerProcess]) -> Usage:
        """The machine's use and each worker tree's, at most one new reading per min_interval_s."""
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.min_interval_s:
                return self._last[1]
            memory = psutil.virtual_memory()
            gpus, gpu_pids = self._gpus()
            usage = Usage(psutil.cpu_percent(interval=None), psutil.cpu_count() or 1,
                          memory.total - memory.available, memory.total, gpus, self._jobs(workers, gpu_pids))
            self._last = (now, usage)
            return usage

    def _jobs(self, workers: dict[str, WorkerProcess], gpu_pids: dict[int, float]) -> tuple[JobUsage, ...]:
        seen: dict[tuple[int, float], psutil.Process] = {}
        found = []
        for run_id, worker in sorted(workers.items()):
            cpu, rss, count, gpu = 0.0, 0, 0, None
            for proc in worker.tree():
                try:
                    key = (proc.pid, proc.create_time())
                    kept = seen[key] = self._procs.get(key, proc)
                    # A process seen for the first time reads 0.0 (its baseline); from the next sample on, its use.
                    cpu += kept.cpu_percent(interval=None) / 100
                    rss += kept.memory_info().rss
                except psutil.Error:  # ended while being read
                    continue
                count += 1
                if proc.pid in gpu_pids:
                    gpu = (gpu or 0.0) + gpu_pids[proc.pid]
            found.append(JobUsage(run_id, cpu, rss, count, gpu))
        self._procs = seen  # forget ended processes
        return tuple(found)

    def _gpus(self) -> tuple[tuple[GpuUsage, ...], dict[int, float]]:
        """(each GPU's memory, MiB used by each process on a GPU); nothing without a working nvidia-smi."""
        if self._gpu_tool is None or time.monotonic() < self._gpu_retry_at:
            return (), {}
        try:
            boards = self._query("--query-gpu=index,memory.used,memory.total,name")
            apps = self._query("--query-compute-apps=pid,used_memory")
        except (OSError, subprocess.SubprocessError):
            self._gpu_retry_at = time.monotonic() + GPU_RETRY_S
            return (), {}
        gpus = [GpuUsage(int(float(row[0])), ",".join(row[3:]), float(row[1]), float(row[2]))
                for row in boards if _numbers(row[:3])]
        used: dict[int, float] = {}
        for row in apps:
            if _numbers(row[:2]):  # "[N/A]" where the driver does not say (MIG, some containers)
                pid = int(float(row[0]))
                used[pid] = used.get(pid, 0.0) + float(row[1])
        return tuple(gpus), used

    def _query(self, query: str) -> list[list[str]]:
        done = subprocess.run([self._gpu_tool, query, "--format=csv,noheader,nounits"], capture_output=True,
                              text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True)
        return [[cell.strip() for cell in line.split(",")] for line in done.stdout.splitlines() if line.strip()]


def _numbers(cells: list[str]) -> bool:
    try:
        return len(cells) >= 2 and all(float(cell) >= 0 for cell in cells)
    except ValueError:
        return False
