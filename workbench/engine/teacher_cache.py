"""A teacher's top-k next-token log-probabilities over a tokenized dataset, computed once and kept on disk,
so students train from them without running the teacher.

    CACHE_DIR/
      manifest.json          teacher, tokenizer and data hashes, k, shapes, the shards finished so far
      logp-00000.npy         (blocks, seq_len - 1, k) float16: top-k log-probabilities at T = 1
      ids-00000.npy          (blocks, seq_len - 1, k) uint16 when the vocabulary fits, else int32
      tail-00000.npy         (blocks, seq_len - 1) float16: log of the mass outside the top k
      ...

With tail_samples = s > 0 the last s of the k slots are not the next most likely tokens but draws (with
replacement, seeded per shard so a resumed build draws the same) from the teacher's distribution outside
the k - s head tokens, and `tail` is the log of that outside mass: the student then learns how the tail
is spread, not only how much it holds (workbench/losses/sampled_tail.py), at the same bytes per token.

Row i of a block is the distribution of token i + 1 (the causal shift the losses use). A shard's three
files are written, then the manifest names the shard: a build that stops (crash, cancel) resumes at the
first shard the manifest does not name. At k = 32 a position costs 32·2 + 32·2 + 2 = 130 bytes.

Temperature policy: log-probabilities are stored at T = 1. At another T the losses re-soften the k + 1
buckets (top k and the tail as one bucket): exact within the top k, the tail's share approximated.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from workbench.models.loading import tokenizer_hash
from workbench.store.rundir import write_json_atomic

MANIFEST = "manifest.json"
FIDELITY = "fidelity.json"  # written by cache_fidelity.measure_fidelity
FORMAT_VERSION = 1
SHARD_BLOCKS = 256


class CacheError(ValueError):
    pass


def ids_dtype(vocab: int):
    """The narrowest integer type the stored token ids fit: uint16 holds ids 0..65535."""
    return np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32


def bytes_per_token(k: int, vocab: int) -> int:
    """What one position costs on disk: k fp16 log-probabilities, k ids, one fp16 tail log-mass."""
    return k * 2 + k * np.dtype(ids_dtype(vocab)).itemsize + 2


def data_hash(dataset) -> str:
    """The tokenized blocks, in order: a cache row belongs to exactly one block of one dataset."""
    digest = hashlib.sha256()
    for start in range(0, len(dataset), 1024):
        for ids in dataset[start:start + 1024]["input_ids"]:
            digest.update(np.asarray(ids, dtype=np.int32).tobytes())
            digest.update(b"|")
    return digest.hexdigest()[:16]


@dataclass
class Manifest:
    teacher: str
    tokenizer_hash: str
    data_hash: str
    k: int
    vocab: int
    seq_len: int
    blocks: int
    shard_blocks: int = SHARD_BLOCKS
    shards_done: list[int] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    temperature_policy: str = "log-probabilities at T=1; other T re-soften the top-k and tail buckets"
    created: float = field(default_factory=time.time)
    mass_sum: float = 0.0       # the teacher's probability on the head tokens, summed over stored positions
    positions: int = 0          # positions stored so far
    tail_samples: int = 0       # the last tail_samples of the k slots are draws from the tail
    seed: int = 0               # seeds the tail draws

    @property
    def mass_retained(self) -> float | None:
        """Mean share of the teacher's probability the head tokens hold (1 = nothing lost)."""
        return self.mass_sum / self.positions if self.positions else None

    @property
    def shards(self) -> int:
        return -(-self.blocks // self.shard_blocks)

    @property
    def complete(self) -> bool:
        return len(self.shards_done) == self.shards

    @property
    def ids_dtype(self):
        return ids_dtype(self.vocab)

    @property
    def bytes_per_token(self) -> int:
        return bytes_per_token(self.k, self.vocab)


def _read_manifest(folder: Path) -> Manifest | None:
    try:
        return Manifest(**json.loads((folder / MANIFEST).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, RecursionError) as err:  # not UTF-8, not JSON, not a manifest
        raise CacheError(f"{folder / MANIFEST} is not a teacher-cache manifest: {err}") from err


def _check(found: Manifest, wanted_tokenizer: str, wanted_data: str, folder: Path) -> None:
    if found.tokenizer_hash != wanted_tokenizer:
        raise CacheError(f"teacher cache {folder} was built with another tokenizer (hash {found.tokenizer_hash}, "
                         f"this run's is {wanted_tokenizer}): its token ids mean other tokens here; build a "
                         "cache for this tokenizer")
    if found.data_hash != wanted_data:
        raise CacheError(f"teacher cache {folder} was built over other data (hash {found.data_hash}, this run's "
                         f"is {wanted_data}): data source, seq_len, seed and max_examples must match the build")


def top_k_logprobs(logits: torch.Tensor, k: int, tail_samples: int = 0,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, V) logits -> k log-probs (B, L, k), their ids, and the log of the mass outside the head (B, L).
    The head is the top k - tail_samples tokens; the other slots hold tokens drawn from the rest."""
    logits = logits.float()
    lse = torch.logsumexp(logits, -1, keepdim=True)
    top, ids = logits.topk(k - tail_samples, -1)
    values = top - lse
    # The teacher's probabilities outside the head, (..., V), in one buffer: summed for the tail's mass and
    # drawn from as they are (multinomial normalises), instead of a log-softmax, a masked copy and a logsumexp.
    outside = (logits - lse).exp_().scatter_(-1, ids, 0.0)
    rest = outside.sum(-1).log()  # -inf when the head is the whole vocabulary (or the tail underflows)
    if tail_samples:
        # A row with no tail has nothing to draw from: draw anything and store it with no mass (-inf), so
        # no loss counts it (it may be a head token).
        empty = torch.isneginf(rest)[..., None]
        if empty.any():
            outside = torch.where(empty, 1.0, outside)
        drawn = torch.multinomial(outside.reshape(-1, outside.shape[-1]), tail_samples, replacement=True,
                                  generator=generator).view(*ids.shape[:-1], tail_samples)
        drawn_logp = (logits.gather(-1, drawn) - lse).masked_fill(empty, float("-inf"))
        values, ids = torch.cat([values, drawn_logp], -1), torch.cat([ids, drawn], -1)
    return values, ids, rest


def block_length(dataset, what: str) -> int:
    """The one length of the dataset's blocks (of its first 64), which stored rows need; CacheError else."""
    lengths = {len(ids) for ids in dataset[:min(len(dataset), 64)]["input_ids"]}
    if len(lengths) != 1:
        raise CacheError(f"{what} needs blocks of one length (data.packing: true)")
    return lengths.pop()


def as_tensors(logp: np.ndarray, ids: np.ndarray, tail: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stored rows as the losses read them: log-probs and tail float32, ids int64."""
    return (torch.from_numpy(logp.astype(np.float32)), torch.from_numpy(ids.astype(np.int64)),
            torch.from_numpy(tail.astype(np.float32)))


def build_cache(teacher, tokenizer, dataset, folder: str | Path, k: int, teacher_name: str = "",
                batch_size: int = 8, shard_blocks: int = SHARD_BLOCKS,
                progress: Callable[[str, float], None] | None = None, tail_samples: int = 0,
                seed: int = 0) -> Manifest:
    """Run the teacher over `dataset` (blocks of input_ids of one length) and store k tokens per position
    (the top k, or the top k - tail_samples and tail_samples draws from the rest). Resumes a build of the
    same teacher, tokenizer, data, k and tail samples; refuses one of anything else."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    if not 1 <= k <= vocab:
        raise CacheError(f"k must be in [1, {vocab}] (the teacher's vocabulary), got {k}")
    if not 0 <= tail_samples <= k:
        raise CacheError(f"tail_samples must be in [0, {k}] (some of the k slots), got {tail_samples}")
    seq_len = block_length(dataset, "the teacher cache")
    wanted = Manifest(teacher=teacher_name, tokenizer_hash=tokenizer_hash(tokenizer), data_hash=data_hash(dataset),
                      k=k, vocab=vocab, seq_len=seq_len, blocks=len(dataset), shard_blocks=shard_blocks,
                      tail_samples=tail_samples, seed=seed)
    found = _read_manifest(folder)
    if found is not None:
        _check(found, wanted.tokenizer_hash, wanted.data_hash, folder)
        # The seed matters only to the tail draws: a plain top-k cache resumes whatever seed it was begun with.
        if (found.k, found.teacher, found.shard_blocks, found.tail_samples) != (k, teacher_name, shard_blocks,
                                                                                 tail_samples) \
                or (tail_samples and found.seed != seed):
            raise CacheError(f"{folder} holds a cache of {found.teacher!r} at k={found.k} with "
                             f"{found.tail_samples} tail samples (seed {found.seed}); build this one elsewhere")
        wanted = found
    write_json_atomic(folder / MANIFEST, asdict(wanted))
    device = next(teacher.parameters()).device
    todo = [s for s in range(wanted.shards) if s not in wanted.shards_done]
    start_time, done_blocks = time.perf_counter(), 0
    total_blocks = sum(min(shard_blocks, wanted.blocks - s * shard_blocks) for s in todo)
    for shard in todo:
        first, last = shard * shard_blocks, min((shard + 1) * shard_blocks, wanted.blocks)
        parts = []
        generator = torch.Generator(device=device).manual_seed(seed * 100_003 + shard)  # a resumed shard draws the same
        for start in range(first, last, batch_size):
            ids = torch.as_tensor(dataset[start:min(start + batch_size, last)]["input_ids"], device=device)
            with torch.no_grad():
                logits = teacher(input_ids=ids).logits[:, :-1]
                parts.append([t.cpu() for t in top_k_logprobs(logits, k, tail_samples, generator)])
            done_blocks += ids.shape[0]
            if progress:
                elapsed = time.perf_counter() - start_time
                eta = elapsed / done_blocks * (total_blocks - done_blocks)
                progress(f"teacher cache: {done_blocks}/{total_blocks} blocks, ETA {eta:.0f} s",
                         done_blocks / max(total_blocks, 1))
        values, ids, rest = (torch.cat(column) for column in zip(*parts))
        for name, array in (("logp", values.half().numpy()), ("ids", ids.numpy().astype(wanted.ids_dtype)),
                            ("tail", rest.half().numpy())):
            tmp = folder / f".{name}-{shard:05d}.npy"
            np.save(tmp, array)
            tmp.replace(folder / f"{name}-{shard:05d}.npy")
        wanted.shards_done = sorted({*wanted.shards_done, shard})
        wanted.mass_sum += float(values[..., :k - tail_samples].exp().sum(-1).sum())
        wanted.positions += values.shape[0] * values.shape[1]
        write_json_atomic(folder / MANIFEST, asdict(wanted))
    return wanted


class TeacherCache:
    """A complete cache, checked against the run's tokenizer and data; rows read by block index."""

    def __init__(self, folder: Path, manifest: Manifest):
        self.folder, self.manifest = folder, manifest
        self._shards: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @classmethod
    def open(cls, folder: str | Path, tokenizer_hash_: str, data_hash_: str) -> "TeacherCache":
        folder = Path(folder)
        found = _read_manifest(folder)
        if found is None:
            raise CacheError(f"no teacher cache in {folder} (no {MANIFEST}); build one with "
                             "`python -m workbench cache CONFIG OUT_DIR`")
        _check(found, tokenizer_hash_, data_hash_, folder)
        if not found.complete:
            raise CacheError(f"teacher cache {folder} is incomplete ({len(found.shards_done)}/{found.shards} "
                             "shards): run the same build again to finish it")
        return cls(folder, found)

    def _shard(self, shard: int):
        if shard not in self._shards:
            self._shards[shard] = tuple(np.load(self.folder / f"{name}-{shard:05d}.npy", mmap_mode="r")
                                        for name in ("logp", "ids", "tail"))
        return self._shards[shard]

    def rows(self, blocks: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs (B, L-1, k) float32, ids (B, L-1, k) int64, tail log-mass (B, L-1) float32)."""
        per = self.manifest.shard_blocks
        found = [tuple(a[b % per] for a in self._shard(b // per)) for b in blocks]
        return as_tensors(*(np.stack(column) for column in zip(*found)))


def read_fidelity(cache: Path) -> dict | None:
    """CACHE/fidelity.json: how a short run from this cache compared with the same run live, if measured."""
    try:
        return json.loads((Path(cache) / FIDELITY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fidelity_text(folder: Path) -> str | None:
    """'+1.80% KL (20 steps)': the held-out KL of a short run from this cache against the same run live."""
    found = read_fidelity(folder)
    return f"{100 * found['relative']:+.2f}% KL ({found['steps']} steps)" if found else None


def list_caches(root: str | Path) -> list[dict]:
    """Every cache directly under `root` (newest first) with what picking one needs to know."""
    rows = []
    for folder in sorted(Path(root).glob("*/")) if Path(root).is_dir() else []:
        try:
            rows.append(_cache_row(folder))
        except Exception:  # noqa: BLE001 - a damaged cache is left out; the others are listed
            continue
    return sorted((r for r in rows if r is not None), key=lambda r: -r["created"])


def _cache_row(folder: Path) -> dict | None:
    manifest = _read_manifest(folder)
    if manifest is None:
        return None
    size = sum(p.stat().st_size for p in folder.glob("*.npy"))
    return {"name": folder.name, "path": str(folder), "teacher": str(manifest.teacher), "k": int(manifest.k),
            "tail samples": int(manifest.tail_samples), "blocks": int(manifest.blocks),
            "MB": round(size / 2**20, 3), "bytes/token": manifest.bytes_per_token,
            "mass kept": None if manifest.mass_retained is None else round(float(manifest.mass_retained), 3),
            "complete": manifest.complete, "KD vs live": _fidelity_text(folder), "created": float(manifest.created)}
