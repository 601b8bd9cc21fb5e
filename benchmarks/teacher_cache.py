"""What a top-k teacher cache keeps on the default pair: bytes per token and the teacher's probability
mass inside the top k, for several k, over held-out blocks of the default corpus (one teacher pass).

    python benchmarks/teacher_cache.py [--blocks 32] [--ks 8,32,64] [--cache-dir DIR] [--json out.json]
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
from workbench.data.loading import heldout_dataset  # noqa: E402
from workbench.engine.teacher_cache import Manifest, top_k_logprobs  # noqa: E402
from workbench.models.students import load_teacher_fp32, student_tokenizer  # noqa: E402

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "assets" / "configs" / "default.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--ks", default="8,32,64")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = resolve_defaults(DistillConfig.load(DEFAULT_YAML), args.cache_dir)
    tokenizer, teacher = student_tokenizer(config), load_teacher_fp32(config)
    held = heldout_dataset(config.data, tokenizer, config.train.seq_len, config.train.seed)
    ids = torch.tensor(held[:args.blocks]["input_ids"])
    start = time.perf_counter()
    with torch.no_grad():
        logits = torch.cat([teacher(input_ids=ids[i:i + 4]).logits[:, :-1] for i in range(0, len(ids), 4)])
    seconds = time.perf_counter() - start
    vocab = logits.shape[-1]
    rows = []
    for k in (int(k) for k in args.ks.split(",")):
        values, _, rest = top_k_logprobs(logits, k)
        manifest = Manifest(teacher="", tokenizer_hash="", data_hash="", k=k, vocab=vocab, seq_len=ids.shape[1],
                            blocks=len(ids))
        rows.append({"k": k, "bytes_per_token": manifest.bytes_per_token,
                     "full_logits_bytes_per_token_fp16": vocab * 2,
                     "mass_retained_mean": round(float(values.exp().sum(-1).mean()), 4),
                     "mass_retained_p10": round(float(values.exp().sum(-1).flatten().quantile(0.1)), 4)})
        print(f"k={k:>3}: {rows[-1]['bytes_per_token']} bytes/token (full fp16 logits: {vocab * 2}), teacher mass "
              f"kept {rows[-1]['mass_retained_mean']:.3f} on average, {rows[-1]['mass_retained_p10']:.3f} at the "
              f"10th percentile", flush=True)
    print(f"teacher pass: {ids.numel()} tokens in {seconds:.1f} s ({ids.numel() / seconds:.0f} tokens/s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
