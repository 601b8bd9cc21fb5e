"""The machine monitor beside the jobs: one Markdown text from a jobs.monitor.Usage sample."""
from __future__ import annotations

from jobs.monitor import Usage
from workbench.config.escaping import plain

GIB = 2**30


def size(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.0f} MiB"


def usage_markdown(usage: Usage) -> str:
    """The machine's CPU, RAM and GPU memory, then each live job's worker processes."""
    lines = [f"**This machine**: CPU {usage.cpu_percent:.0f}% of {usage.cores} cores · "
             f"RAM {size(usage.ram_used)} of {size(usage.ram_total)}"]
    lines += [f"GPU {gpu.index} ({plain(gpu.name)}): {size(gpu.used_mib * 2**20)} of {size(gpu.total_mib * 2**20)}"
              for gpu in usage.gpus]
    if not usage.jobs:
        return "  \n".join(lines + ["No job is running."])
    jobs = []
    for job in usage.jobs:
        gpu = f", GPU {size(job.gpu_mib * 2**20)}" if job.gpu_mib is not None else ""
        jobs.append(f"- {plain(job.run_id)}: CPU {job.cpu_cores:.1f} cores, RAM {size(job.rss_bytes)} in "
                    f"{job.processes} process{'es' if job.processes != 1 else ''}{gpu}")
    return "  \n".join(lines) + "\n\n**Running jobs** (their worker processes):\n\n" + "\n".join(jobs)
