"""Fidelity of a teacher cache: train the same student on the default pair for a few steps from the live
teacher and from caches at several k, then compare their held-out KL(teacher || student) and CE (the
evaluation every run ends with, against the real teacher).

    python benchmarks/cache_fidelity.py [--steps 20] [--ks 8,32,64] [--examples 40] [--json out.json]

Short runs on a slice of the corpus (--examples chapters): a fidelity check, not a result about KD.
"""
from __future__ import annotations

import argparse
import json
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
from workbench.data.loading import tokenize_datasets  # noqa: E402
from workbench.engine.cache_fidelity import short_run  # noqa: E402
from workbench.engine.teacher_cache import build_cache  # noqa: E402
from workbench.models.students import load_teacher_fp32, student_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ks", default="8,32,64")
    parser.add_argument("--examples", type=int, default=40, help="training chapters used")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dw-fidelity-"))
    overrides = [f"data.max_examples={args.examples}", "data.max_eval_examples=8"]
    config = resolve_defaults(DistillConfig.load(ROOT / "assets" / "configs" / "default.yaml", overrides),
                              args.cache_dir)
    tokenizer = student_tokenizer(config)
    train, _ = tokenize_datasets(config.data, tokenizer, config.train.seq_len, config.train.seed)
    teacher = load_teacher_fp32(config)
    settings = {"live": None}
    for k in (int(k) for k in args.ks.split(",")):
        start = time.perf_counter()
        build_cache(teacher, tokenizer, train, work / f"cache-k{k}", k, teacher_name=config.teacher.name_or_path,
                    batch_size=config.train.batch_size)
        print(f"cache k={k}: {len(train)} blocks in {time.perf_counter() - start:.0f} s", flush=True)
        settings[f"k{k}"] = str(work / f"cache-k{k}")
    del teacher
    rows = []
    for name, cache in settings.items():
        metrics, seconds = short_run(config, work, name, cache, args.steps)
        rows.append({"teacher": name, "heldout_kl": metrics["forward_kl"], "student_ce": metrics["student_ce"],
                     "seconds": round(seconds, 1)})
        live = rows[0]
        print(f"{name:>5}: held-out KL(teacher || student) {rows[-1]['heldout_kl']:.4f} "
              f"({100 * (rows[-1]['heldout_kl'] / live['heldout_kl'] - 1):+.2f}% vs live), student CE "
              f"{rows[-1]['student_ce']:.4f}, {rows[-1]['seconds']:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
