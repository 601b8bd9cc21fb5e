"""The default run's wall time and where it goes (the run's profile.json: setup, data, teacher, student, loss,
evaluation, io, report), live and with the teacher's rows kept (loss.reuse_teacher): the default config run
as the command line runs it, once with the live teacher, then twice with kept rows starting from none (the
first run writes the rows of the blocks it reads, the repeat reads them). Prints each run's wall time,
split and held-out perplexity, and each one's time and perplexity against the first variant's.

    python benchmarks/default_run.py [--variants live,first,repeat] [--set train.max_steps=50] [--work DIR]
        [--json out.json] [--cache-dir DIR]

Run it alone: on a shared machine every number moves with the load (the load average is printed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from workbench.config.schema import DistillConfig  # noqa: E402
from workbench.data.defaults import resolve_defaults  # noqa: E402
from workbench.engine.runner import run_training  # noqa: E402
from workbench.store.rundir import PROFILE, RunDir  # noqa: E402

REUSE = {"live": False, "first": True, "repeat": True}


def run_one(config: DistillConfig, name: str, work: Path) -> dict:
    config = config.replace(loss=dataclasses.replace(config.loss, reuse_teacher=REUSE[name]))
    run = RunDir(work / "runs" / name)
    start = time.perf_counter()
    # The kept rows live under work/cache, which starts empty: "first" writes them, "repeat" reads them.
    final = run_training(config, run, echo=lambda m: print(f"[{name}] {m}", flush=True), cache_dir=work / "cache")
    wall = time.perf_counter() - start
    profile = json.loads(run.file(PROFILE).read_text())
    report = run.read_evaluations()[-1]["metrics"] if config.evaluation.at_end else {}
    return {"wall_s": round(wall, 1), "perplexity": round(math.exp(final["eval_ce"]), 3),
            "eval_kd": round(final.get("eval_kd", math.nan), 4), "ood_perplexity": report.get("ood_student_perplexity"),
            "seconds": profile["seconds"], "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="live,first,repeat")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, help="where the runs and kept rows go (default: a temporary folder)")
    parser.add_argument("--cache-dir", type=Path, help="where the offline defaults live")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in REUSE]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(REUSE)}")
    config = DistillConfig.load(ROOT / "assets" / "configs" / "default.yaml", args.set)
    config = resolve_defaults(config, args.cache_dir)
    work = args.work or Path(tempfile.mkdtemp(prefix="dw-default-run-"))
    results = {}
    for name in variants:
        results[name] = run_one(config, name, work)
        print(json.dumps({name: results[name]}), flush=True)
    base = results[variants[0]]
    for name, result in results.items():
        result["time_ratio"] = round(result["wall_s"] / base["wall_s"], 3)
        result["perplexity_change"] = round(result["perplexity"] / base["perplexity"] - 1, 4)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
