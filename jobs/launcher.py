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
from workbench.config.gate import is_hub_id, references
from workbench.store.rundir import LOG

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


# What a worker inherits from the app's environment: the system's basics, caches and offline switches,
# the accelerator's and the distributed launcher's settings. Nothing else: no tokens, no cloud credentials.
_KEEP = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "TERM", "SHELL",
         "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "XDG_CACHE_HOME", "SSL_CERT_FILE",
         "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
         "http_proxy", "https_proxy", "no_proxy", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM",
         "GRADIO_ANALYTICS_ENABLED", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE",
         "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE", "HF_HUB_DISABLE_TELEMETRY",
         "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_ETAG_TIMEOUT",
         "HF_HUB_DOWNLOAD_TIMEOUT", "SPACE_ID"}
_KEEP_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "TORCH_", "PYTORCH_", "ACCELERATE_", "OMPI_", "GLOO_")
HUB_TOKENS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def uses_hub(config) -> bool:
    """Whether a run names anything on the Hugging Face hub (a model, a dataset, a prompt set): only then
    does its worker get the app's hub token. The references and the rule are the gate's."""
    return any(is_hub_id(value, suffixes, defaults_ok) for _, value, suffixes, defaults_ok in references(config))


def worker_env(spec: JobSpec, grace_s: float, base: dict | None = None) -> dict[str, str]:
    """The worker's environment: only what it needs (_KEEP), plus the one variable its config reads an API
    key from, and the hub token only when the run uses the hub."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k in _KEEP or k.startswith(_KEEP_PREFIXES)}
    g = spec.config.generation
    if spec.config.strategy == "hard_label" and g.backend == "openai" and not g.dataset and g.api_key_env in source:
        env[g.api_key_env] = source[g.api_key_env]
    if uses_hub(spec.config):
        env.update({k: source[k] for k in HUB_TOKENS if k in source})
    else:  # nor the token a `hf auth login` left in the hub's folder
        env["HF_TOKEN_PATH"] = os.devnull
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
        # The app's own folder: a relative path in the config means what the gate took it to mean.
        return subprocess.Popen(worker_argv(spec), cwd=os.getcwd(), env=worker_env(spec, grace_s),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
