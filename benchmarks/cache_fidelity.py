"""Fidelity of teacher caches: train the same student on the default pair from the live teacher and from
caches of a few layouts, for each seed, and compare their held-out KL(teacher || student) (the evaluation
every run ends with, against the real teacher).

    python benchmarks/cache_fidelity.py [--steps 100] [--seeds 0,1] [--caches 32,32s8] [--json out.json]
    python benchmarks/cache_fidelity.py --combine seed0.json seed1.json     (seeds run as separate processes)

A cache is named KsS: k slots per position, S of them drawn from the tail beyond the top k - S
(workbench/losses/sampled_tail.py); "32" is the plain top 32. Both cost the same bytes per token. Each
seed changes the student's data order and the tail draws; the gap is taken per seed (same seed, same
data, live vs cache) and reported as its mean and spread (min, max) over the seeds.
Short runs on a slice of the corpus (--examples chapters): a fidelity check, not a result about KD.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from workbench.config.schema import DistillConfig  # noqa: E402
from workbench.data.defaults import resolve_defaults  # noqa: E402
from workbench.data.loading import tokenize_datasets  # noqa: E402
from workbench.engine.cache_fidelity import short_run  # noqa: E402
from workbench.engine.teacher_cache import build_cache, bytes_per_token  # noqa: E402
from workbench.models.students import load_teacher_fp32, student_tokenizer  # noqa: E402
from workbench.store.rundir import write_json_atomic  # noqa: E402

VOCAB = 49152  # the default pair's: bytes_per_token only asks whether ids fit uint16


def layout(name: str) -> tuple[int, int]:
    """'32' -> (32, 0); '32s8' -> (32, 8)."""
    found = re.fullmatch(r"(\d+)(?:s(\d+))?", name)
    if not found:
        raise SystemExit(f"--caches: {name!r} is not K or KsS (e.g. 32 or 32s8)")
    return int(found[1]), int(found[2] or 0)


def one_seed(seed: int, caches: list[str], args, work: Path) -> dict:
    overrides = [f"data.max_examples={args.examples}", f"data.max_eval_examples={args.eval_examples}",
                 f"train.seed={seed}", f"train.seq_len={args.seq_len}", "evaluation.ood_source=null", *args.overrides]
    config = resolve_defaults(DistillConfig.load(ROOT / "assets" / "configs" / "default.yaml", overrides),
                              args.cache_dir)
    tokenizer = student_tokenizer(config)
    train, _ = tokenize_datasets(config.data, tokenizer, config.train.seq_len, config.train.seed)
    teacher = load_teacher_fp32(config)
    folders = {}
    for name in caches:
        k, sampled = layout(name)
        start = time.perf_counter()
        build_cache(teacher, tokenizer, train, work / f"seed{seed}-{name}", k, teacher_name=config.teacher.name_or_path,
                    batch_size=config.train.batch_size, tail_samples=sampled, seed=seed)
        print(f"seed {seed} cache {name}: {len(train)} blocks in {time.perf_counter() - start:.0f} s", flush=True)
        folders[name] = str(work / f"seed{seed}-{name}")
    del teacher
    row = {}
    for name, cache in {"live": None, **folders}.items():
        metrics, seconds = short_run(config, work, f"seed{seed}-{name}-run", cache, args.steps)
        row[name] = {"heldout_kl": metrics["forward_kl"], "student_ce": metrics["student_ce"],
                     "seconds": round(seconds, 1)}
        if name != "live":
            row[name]["gap_percent"] = 100 * (metrics["forward_kl"] / row["live"]["heldout_kl"] - 1)
        print(f"seed {seed} {name:>6}: held-out KL {metrics['forward_kl']:.4f}"
              + (f" ({row[name]['gap_percent']:+.2f}% vs live)" if name != "live" else "")
              + f", {seconds:.0f} s", flush=True)
    return row


def summary(steps: int, seeds: dict, caches: list[str]) -> dict:
    """The fidelity table: per cache layout, bytes per token and the KL gap's mean and spread over seeds."""
    table = []
    for name in caches:
        gaps = [seeds[seed][name]["gap_percent"] for seed in seeds]
        k, sampled = layout(name)
        table.append({"cache": name, "k": k, "tail_samples": sampled, "bytes_per_token": bytes_per_token(k, VOCAB),
                      "gap_mean_percent": round(statistics.mean(gaps), 2), "gap_min_percent": round(min(gaps), 2),
                      "gap_max_percent": round(max(gaps), 2)})
    print(f"\n{steps} steps, seeds {', '.join(map(str, seeds))}")
    print(f"{'cache':>7} {'bytes/token':>11}   KL gap vs live: mean (min..max over seeds)")
    for row in table:
        print(f"{row['cache']:>7} {row['bytes_per_token']:>11}   {row['gap_mean_percent']:+.2f}% "
              f"({row['gap_min_percent']:+.2f}..{row['gap_max_percent']:+.2f})")
    return {"steps": steps, "table": table, "seeds": seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--caches", default="32,32s8", help="comma-separated K or KsS layouts")
    parser.add_argument("--examples", type=int, default=40, help="training chapters used")
    parser.add_argument("--seq-len", type=int, default=256, help="block length (the default config's: 256)")
    parser.add_argument("--eval-examples", type=int, default=16, help="held-out blocks the KL is measured on")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="more config overrides, e.g. train.bf16=off on a CPU that emulates bf16")
    parser.add_argument("--work", type=Path, help="folder for the caches and runs (default: a new temporary one); "
                                                  "caches already built there are reused")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", type=Path, help="written after each seed")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                        help="print the table of earlier runs' JSON files (seeds run as separate processes)")
    args = parser.parse_args()
    if args.combine:
        found = [json.loads(path.read_text()) for path in args.combine]
        if len({(part["steps"], tuple(row["cache"] for row in part["table"])) for part in found}) > 1:
            raise SystemExit("--combine: the files differ in steps or cache layouts")
        seeds = {seed: row for part in found for seed, row in part["seeds"].items()}
        caches = [row["cache"] for row in found[0]["table"]]
        result = summary(found[0]["steps"], seeds, caches)
    else:
        caches = args.caches.split(",")
        work = args.work or Path(tempfile.mkdtemp(prefix="dw-fidelity-"))
        # Seeds already in --json (an interrupted run) are kept, not run again.
        seeds = json.loads(args.json.read_text())["seeds"] if args.json and args.json.is_file() else {}
        for seed in (seed for seed in args.seeds.split(",") if seed not in seeds):
            seeds[seed] = one_seed(int(seed), caches, args, work)
            result = summary(args.steps, seeds, caches)
            if args.json:
                write_json_atomic(args.json, result)  # a kill mid-write keeps the seeds before
    if args.json and args.combine:
        write_json_atomic(args.json, result)


if __name__ == "__main__":
    main()
