"""The KD loss's cost, plain (full logits) against fused and chunked (workbench/losses/fused.py): extra peak
memory of loss + backward, and time, at the default pair's vocabulary and at 128k, in fresh processes.

    python benchmarks/kd_loss.py [--positions 1024] [--hidden 576] [--chunks 128,256,1024] [--json out.json]

Each measurement runs in its own process: peak RSS after the loss's forward and backward minus peak RSS
before it (inputs and head weights already allocated) is the loss's extra memory. Ratios are taken
within one run of this script.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCABS = (49152, 128256)


def measure(mode: str, vocab: int, positions: int, hidden: int, chunk: int) -> dict:
    """In this process: one loss forward + backward; peak RSS growth (MiB) and seconds (best of 2)."""
    import torch

    from workbench.config.schema import LossSpec
    from workbench.losses.distill import distill_loss
    from workbench.losses.fused import fused_distill_loss
    from workbench.losses.signal import LiveHead, LiveLogits
    torch.manual_seed(0)
    spec = LossSpec(alpha=0.5, temperature=2.0)
    hs = torch.randn(positions, hidden, requires_grad=True)
    ws = (torch.randn(vocab, hidden) * 0.05).requires_grad_(True)
    ht, wt = torch.randn(positions, hidden), torch.randn(vocab, hidden) * 0.05
    labels = torch.randint(0, vocab, (positions,))

    def step():
        if mode == "plain":
            with torch.no_grad():
                teacher_logits = ht @ wt.T
            loss = distill_loss(hs @ ws.T, LiveLogits(teacher_logits), labels, spec)["loss"]
        else:
            loss = fused_distill_loss(hs, ws, labels, spec, LiveHead(ht, wt), chunk=chunk)["loss"]
        loss.backward()
        hs.grad = ws.grad = None

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(2):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "vocab": vocab, "chunk": chunk, "extra_mib": round((after - before) / 1024, 1),
            "seconds": round(min(times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=1024, help="positions per batch (default 4 x 256)")
    parser.add_argument("--hidden", type=int, default=576, help="hidden size (SmolLM2-135M: 576)")
    parser.add_argument("--chunks", default="128,256,1024")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=3, metavar=("MODE", "VOCAB", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.positions, args.hidden, int(args.one[2]))))
        return
    rows = []
    for vocab in VOCABS:
        for mode, chunk in [("plain", 0)] + [("fused", int(c)) for c in args.chunks.split(",")]:
            out = subprocess.run([sys.executable, __file__, "--positions", str(args.positions), "--hidden",
                                  str(args.hidden), "--one", mode, str(vocab), str(chunk)],
                                 capture_output=True, text=True, check=True,
                                 # every large block mmapped and returned on free, so the RSS peak is the
                                 # tensors alive at once, not what glibc's arenas happened to keep
                                 env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            plain = next(r for r in rows if r["vocab"] == vocab and r["mode"] == "plain")
            r = rows[-1]
            print(f"vocab {vocab:>6}  {mode:5} chunk {chunk:>5}: extra {r['extra_mib']:7.1f} MiB "
                  f"({r['extra_mib'] / plain['extra_mib']:.2f}x plain)  {r['seconds']:.3f} s "
                  f"({r['seconds'] / plain['seconds']:.2f}x plain)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
