"""The teacher's rows kept as training reads them (loss.reuse_teacher): the first run that reads a training block
runs the teacher on it and stores its top-k rows, the rows a teacher cache holds (engine/teacher_cache.py);
every later run of the same teacher, tokenizer and data reads them instead of running the teacher: a rerun, a
study's runs, a sweep over alpha or T. Unlike a teacher cache, built over all the data before training (python
-m workbench cache), nothing runs ahead: the first run pays for the blocks it reads, as a live run does.

    ROOT/<key>/
      manifest.json                 what the rows are of (teacher_cache.Manifest): hashes, k, tail samples, shapes
      logp.npy, ids.npy, tail.npy   (blocks, seq_len - 1, k) and (blocks, seq_len - 1) as a cache's shards,
                                    allocated whole, sparse on disk until written
      filled.npy                    (blocks,) uint8: 1 once a block's rows are written

The key hashes the teacher (models.loading.model_identity: its name and hub commit, or a local folder's weight files), the tokenizer,
the blocks, k, the tail samples and their seed: another teacher or other data gets a folder of its own. A
block's tail draws are seeded by its index, not by the batch it came in, so any run that reads it stores the
same rows, and a run trains on the stored rows whether it wrote them or found them: a first run and its repeat
are alike. A block is marked filled after its rows are written; a process killed between the two leaves it
unmarked, and it is written again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from workbench.engine.teacher_cache import MANIFEST, Manifest, as_tensors, block_length, data_hash, top_k_logprobs
from workbench.models.loading import tokenizer_hash
from workbench.store.rundir import write_json_atomic

K, TAIL_SAMPLES, SEED = 32, 8, 0  # 130 bytes per token: +0.92% held-out KL against the live teacher (README)
ROWS_FOLDER = "teacher-rows"  # under the app's cache folder (~/.cache/distill-workbench)
ARRAYS = ("logp", "ids", "tail", "filled")

Compute = Callable[[list[int]], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


class TeacherRows:
    """Rows by block index, written on first read: the same rows(blocks) and manifest as a TeacherCache."""

    def __init__(self, folder: Path, manifest: Manifest):
        self.folder, self.manifest = folder, manifest
        self._arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r+") for name in ARRAYS}

    @classmethod
    def open(cls, root: str | Path, teacher: str, tokenizer, dataset, vocab: int, k: int = K,
             tail_samples: int = TAIL_SAMPLES, seed: int = SEED) -> "TeacherRows":
        """The rows of this teacher (loading.model_identity) over these blocks, created empty the first time."""
        seq_len = block_length(dataset, "keeping the teacher's rows")
        manifest = Manifest(teacher=teacher, tokenizer_hash=tokenizer_hash(tokenizer),
                            data_hash=data_hash(dataset), k=min(k, vocab), vocab=vocab, seq_len=seq_len,
                            blocks=len(dataset), tail_samples=min(tail_samples, k - 1), seed=seed)
        identity = {key: value for key, value in asdict(manifest).items() if key not in ("created", "shards_done")}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
        folder = Path(root) / key
        if not (folder / MANIFEST).is_file():
            _create(folder, manifest)
        return cls(folder, manifest)

    def fill(self, blocks: list[int], compute: Compute) -> int:
        """Write the rows of the blocks not stored yet: compute(those blocks) gives (logp, ids, tail) per block,
        (L-1, k), (L-1, k), (L-1,). Returns how many were computed."""
        filled = self._arrays["filled"]
        missing = sorted({b for b in blocks if not filled[b]})
        if not missing:
            return 0
        for block, (logp, ids, tail) in zip(missing, compute(missing)):
            self._arrays["logp"][block] = logp.half().numpy()
            self._arrays["ids"][block] = ids.numpy().astype(self.manifest.ids_dtype)
            self._arrays["tail"][block] = tail.half().numpy()
        for name in ("logp", "ids", "tail"):
            self._arrays[name].flush()
        filled[missing] = 1  # only once the rows are on their way to disk
        filled.flush()
        return len(missing)

    def filled_count(self) -> int:
        return int(self._arrays["filled"].sum())

    def rows(self, blocks: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs (B, L-1, k) float32, ids (B, L-1, k) int64, tail log-mass (B, L-1) float32)."""
        return as_tensors(*(self._arrays[name][blocks] for name in ("logp", "ids", "tail")))

    def block_rows(self, logits: torch.Tensor, block: int):
        """One block's rows from the teacher's logits (L-1, V): its top k - s tokens and s draws from the
        tail, seeded by the block."""
        generator = torch.Generator(device=logits.device).manual_seed(self.manifest.seed * 100_003 + block)
        return tuple(t.cpu() for t in top_k_logprobs(logits, self.manifest.k, self.manifest.tail_samples, generator))


def _create(folder: Path, manifest: Manifest) -> None:
    """The folder with empty arrays, made aside and moved into place: a reader never sees half of it, and of
    two processes creating it at once one wins and the other uses its folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".rows-", dir=folder.parent))
    rows = (manifest.blocks, manifest.seq_len - 1)
    try:
        for name, dtype, shape in (("logp", np.float16, (*rows, manifest.k)),
                                   ("ids", manifest.ids_dtype, (*rows, manifest.k)),
                                   ("tail", np.float16, rows), ("filled", np.uint8, (manifest.blocks,))):
            np.lib.format.open_memmap(scratch / f"{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()
        write_json_atomic(scratch / MANIFEST, asdict(manifest))
        os.rename(scratch, folder)
    except OSError:
        if not (folder / MANIFEST).is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
