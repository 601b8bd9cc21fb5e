"""A frozen teacher's last hidden states over evaluation text, kept across runs (with loss.reuse_teacher): the
held-out blocks every evaluation of a run meets, and the held-out and out-of-domain blocks of the end report,
are the same for every run of one teacher and data, and the teacher's 30-layer forward over them was a third
of a repeated default run's evaluation time. The states are what the LM head reads, so the logits, and every
number computed from them, are the teacher's own; only the head's product is paid again.

    ROOT/<key>/<block>.npy   (L-1, H) float32: one block's states at positions 0..L-2

The key hashes the teacher's identity (loading.model_identity: its name and commit, or its weight files and
config) and the dtype and device kind it runs in; a block's file is named by a hash of its tokens and attention
mask. A file is written aside and renamed into place, so a process killed mid-write leaves no block file (its
scratch file is removed by a later open), and two runs writing one block write the same values. Up to
LIMIT_BYTES per key are kept; blocks beyond it are computed each time.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from workbench.models.heads import fusable, last_hidden

STATES_FOLDER = "teacher-states"  # under the app's cache folder (~/.cache/distill-workbench)
LIMIT_BYTES = 512 * 2**20  # the default pair's 64 evaluation blocks take 37 MiB
SCRATCH = ".tmp"  # a block being written; one older than STALE_S was left by a killed process
STALE_S = 600


class KeptStates:
    """Last hidden states by block for one frozen model, read from ROOT/<key>/ or computed and kept there."""

    def __init__(self, folder: Path, dtype: torch.dtype, limit_bytes: int = LIMIT_BYTES):
        self.folder, self.dtype, self.limit_bytes = folder, dtype, limit_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self._bytes = 0
        for entry in os.scandir(folder):
            try:
                if entry.name.endswith(SCRATCH) and time.time() - entry.stat().st_mtime > STALE_S:
                    os.unlink(entry.path)  # left by a process killed mid-write
                elif entry.name.endswith(".npy"):
                    self._bytes += entry.stat().st_size
            except FileNotFoundError:  # another process renamed or removed it meanwhile
                continue

    @classmethod
    def open(cls, root: str | Path, identity: str, model) -> "KeptStates | None":
        """The states of `model` (named by `identity`) under root; None when its head is more than a linear map
        of its last hidden states (heads.fusable), so its logits cannot be made from them."""
        if not fusable(model):
            return None
        weight = next(model.parameters())  # the device too: a GPU's float32 products may round otherwise (TF32)
        key = hashlib.sha256(f"{identity}\n{weight.dtype}\n{weight.device.type}".encode()).hexdigest()[:20]
        return cls(Path(root) / key, weight.dtype)

    def hidden(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L-1, H) the model's last hidden states for the batch: kept blocks read, the others computed in
        one forward and kept."""
        names = [_block_name(ids, mask) for ids, mask in zip(input_ids, attention_mask)]
        rows: list[torch.Tensor | None] = [self._read(name) for name in names]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            at = torch.tensor(missing, device=input_ids.device)
            with torch.no_grad():
                computed = last_hidden(model, input_ids[at], attention_mask[at])
            for i, row in zip(missing, computed):
                rows[i] = row
                self._write(names[i], row)
        return torch.stack([row.to(input_ids.device, self.dtype) for row in rows])

    def _read(self, name: str) -> torch.Tensor | None:
        try:
            return torch.from_numpy(np.load(self.folder / f"{name}.npy"))
        except (OSError, ValueError, EOFError):  # not kept yet, or a damaged file: computed (and written) again
            return None

    def _write(self, name: str, row: torch.Tensor) -> None:
        array = row.detach().float().cpu().numpy()
        if self._bytes + array.nbytes > self.limit_bytes:
            return
        scratch = None
        try:
            handle, scratch = tempfile.mkstemp(prefix=".state-", suffix=SCRATCH, dir=self.folder)
            with os.fdopen(handle, "wb") as out:
                np.save(out, array)
            os.replace(scratch, self.folder / f"{name}.npy")
            self._bytes += array.nbytes
        except OSError:  # a full disk or a removed folder costs the next run the forward, not this run
            pass
        finally:
            if scratch is not None:
                Path(scratch).unlink(missing_ok=True)  # renamed already, or what a failed write left


def _block_name(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> str:
    digest = hashlib.blake2b(str(tuple(input_ids.shape)).encode(), digest_size=16)
    for tensor in (input_ids, attention_mask):
        digest.update(tensor.detach().cpu().numpy().astype(np.int64).tobytes())
    return digest.hexdigest()
