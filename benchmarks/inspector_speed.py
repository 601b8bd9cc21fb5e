"""How long the inspector takes on the offline default pair: both models over 256 tokens of held-out
text, then what a slider move costs (re-softening the kept logits at another T, a position's top-k).

    python benchmarks/inspector_speed.py [--tokens 256] [--cache-dir DIR] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from workbench.config.schema import DistillConfig  # noqa: E402
from workbench.data.defaults import resolve_defaults  # noqa: E402
from workbench.data.loading import heldout_documents  # noqa: E402
from workbench.eval.token_stats import analyse, token_stats, top_k  # noqa: E402
from workbench.models.loading import load_tokenizer  # noqa: E402
from workbench.models.students import initial_student, load_teacher_fp32  # noqa: E402

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "assets" / "configs" / "default.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    config = resolve_defaults(DistillConfig.load(DEFAULT_YAML), args.cache_dir)
    start = time.perf_counter()
    teacher, (student, _) = load_teacher_fp32(config), initial_student(config)
    tokenizer = load_tokenizer(config.teacher, "teacher")
    load_s = time.perf_counter() - start
    text = " ".join(heldout_documents(config.data, tokenizer, config.train.seed, limit=5))
    analyse(teacher, student, tokenizer, "warm up", args.tokens)
    start = time.perf_counter()
    found = analyse(teacher, student, tokenizer, text, args.tokens)
    stats = token_stats(found, 1.0)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    token_stats(found, 2.0)
    top_k(found, tokenizer, len(found) // 2, 2.0, 10)
    slider_s = time.perf_counter() - start
    result = {"tokens": len(found) + 1, "vocab": found.teacher_logits.shape[-1], "threads": torch.get_num_threads(),
              "load_models_s": round(load_s, 2), "both_models_s": round(found.seconds, 3),
              "first_view_s": round(first_s, 3), "slider_move_s": round(slider_s, 3),
              "mean_forward_kl": round(float(stats["forward_kl"].mean()), 3)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
