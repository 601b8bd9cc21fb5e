"""What keeping a teacher's signal costs on disk, per token and for a corpus: full next-token distributions
(fp32 or fp16 logits, one value per vocabulary entry), the teacher cache's top-k rows (the exact layout
teacher_cache.py writes: k fp16 log-probabilities, k uint16 or int32 ids, one fp16 tail log-mass), and hard
labels (one token id: what plain fine-tuning stores). Pure arithmetic, for the Learn tab's storage plot."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.config.fields import number_in
from workbench.engine.teacher_cache import bytes_per_token, ids_dtype

# The offline default's training chapters (World English Bible, Ruth, Ecclesiastes, Jonah, Mark and
# Philippians held out) through SmolLM2's tokenizer: measured by tokenizing corpus/train.jsonl once, which
# takes ~2 s, too long to repeat on each view.
DEFAULT_CORPUS_TOKENS = 926_372
SMOLLM2_VOCAB = 49_152
LLAMA3_VOCAB = 128_256
CACHE_K = 32  # the k the README's measurements and the cache command's examples use
MAX_VOCAB = 10_000_000
MAX_TOKENS = 10**16
FORMATS = ("full logits, fp32", "full logits, fp16", "top-k cache", "hard labels")


@dataclass(frozen=True)
class Scenario:
    name: str
    vocab: int
    tokens: int


PRESETS = (
    Scenario("this corpus (default, 49k vocab)", SMOLLM2_VOCAB, DEFAULT_CORPUS_TOKENS),
    Scenario("1B tokens, 49k vocab", SMOLLM2_VOCAB, 10**9),
    Scenario("1B tokens, 128k vocab", LLAMA3_VOCAB, 10**9),
    Scenario("1T tokens, 49k vocab", SMOLLM2_VOCAB, 10**12),
    Scenario("1T tokens, 128k vocab", LLAMA3_VOCAB, 10**12),
)


def check_scenario(vocab, tokens, k) -> tuple[Scenario, int]:
    """(the user's scenario, k), each field checked by name."""
    vocab = number_in(vocab, "vocabulary", 2, MAX_VOCAB, whole=True)
    tokens = number_in(tokens, "tokens", 1, MAX_TOKENS, whole=True)
    return Scenario("your numbers", vocab, tokens), number_in(k, "k", 1, vocab, whole=True)


def label_bytes(vocab: int) -> int:
    """A hard label is one token id, as narrow as the cache stores ids: 2 bytes up to 65,536 entries, else 4."""
    return int(np.dtype(ids_dtype(vocab)).itemsize)


def per_token(vocab: int, k: int) -> dict[str, int]:
    """Bytes per token of each format, in FORMATS order."""
    return dict(zip(FORMATS, (4 * vocab, 2 * vocab, bytes_per_token(k, vocab), label_bytes(vocab))))


@dataclass(frozen=True)
class Cost:
    scenario: str
    format: str
    bytes_per_token: int
    total: int


def costs(scenarios: list[Scenario], k: int) -> list[Cost]:
    """Every format for every scenario, at k for the top-k cache (clipped to a scenario's vocabulary)."""
    return [Cost(s.name, name, size, size * s.tokens) for s in scenarios
            for name, size in per_token(s.vocab, min(k, s.vocab)).items()]


UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB")


def human_bytes(count: float) -> str:
    """Decimal units (1 GB = 10⁹ bytes), as disks are sold: '1.23 TB'."""
    value, unit = float(count), 0
    while value >= 999.5 and unit < len(UNITS) - 1:  # 999.5 and up would print as 1e+03 at 3 digits
        value /= 1000
        unit += 1
    return f"{value:.0f} B" if unit == 0 else f"{value:.3g} {UNITS[unit]}"

