"""JobSpec -> a running worker process: argv, environment, thread budget, process group, log file.

Thread policy: a worker uses (usable cores - 1) / num_processes threads, at least 1, so the app and
its browser stay responsive while a job trains on a small machine (on 2 cores: 1 thread per worker).
OMP_NUM_THREADS set in the app's own environment wins: whoever sets it knows their machine.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from jobs.spec import JobSpec
from workbench.rundir import LOG

ROOT = Path(__file__).resolve().parents[1]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_budget(num_processes: int, cores: int | None = None) -> int:
    cores = usable_cores() if cores is None else cores
    return max(1, (cores - 1) // max(num_processes, 1))


def free_port() -> int:
    """Each multi-process job needs its own rendezvous port: two jobs on accelerate's default collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_argv(spec: JobSpec) -> list[str]:
    worker = ["-m", "jobs.worker", str(Path(spec.run_dir).resolve())]
    if spec.num_processes == 1 and not spec.accelerate_config:
        return [sys.executable, *worker]
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(spec.num_processes),
            "--num_machines", "1", "--main_process_port", str(free_port())]
    if spec.accelerate_config:
        argv += ["--config_file", str(Path(spec.accelerate_config).expanduser())]
    else:
        # accelerate's --cpu means one process (or mpirun); --multi_gpu is its torchrun path, which on a
        # machine without GPUs gives CPU processes that Trainer (use_cpu) joins over gloo.
        argv += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return argv + worker


def worker_env(spec: JobSpec, grace_s: float, base: dict | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # torchrun forwards SIGTERM to the ranks, then SIGKILLs them after this many seconds: give them our grace.
    env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(int(grace_s))
    if "OMP_NUM_THREADS" not in env:
        threads = str(thread_budget(spec.num_processes))
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    return env


def start_worker(spec: JobSpec, grace_s: float) -> subprocess.Popen:
    """No shell; its own session (so its own process group, which cancel signals as a whole); stdout and
    stderr appended to RUN_DIR/worker.log, so a resumed job's log continues the first attempt's."""
    log_path = Path(spec.run_dir) / LOG
    with open(log_path, "ab") as log:
        return subprocess.Popen(worker_argv(spec), cwd=ROOT, env=worker_env(spec, grace_s), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
