"""The temperature preview: a teacher's next-token distribution at T = 1 and at a chosen T, so the
set-up form's α and T are not blind knobs. The teacher stays loaded between previews (one at a time), and
the Learn tab reads with the same loaded teacher (loaded_teacher), so the default is in memory once."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from workbench.config.schema import ModelSpec
from workbench.eval.token_stats import entropy
from workbench.models.loading import load_model, load_tokenizer

TOP_TOKENS = 12


@dataclass
class TemperaturePreview:
    context: str
    tokens: list[str]
    probs_t1: list[float]
    probs_t: list[float]
    entropy_t1: float
    entropy_t: float


def spec_key(spec: ModelSpec) -> tuple:
    """What identifies a loaded model: the fields ModelSpec takes first, in its order."""
    return spec.name_or_path, spec.revision, spec.dtype, spec.trust_remote_code, spec.gguf_file


@lru_cache(maxsize=1)
def loaded_teacher(key: tuple):
    """(tokenizer, fp32 model in eval mode) of the ModelSpec whose spec_key is `key`."""
    spec = ModelSpec(*key)
    return load_tokenizer(spec, "teacher"), load_model(spec, "teacher", torch.float32).eval()


def temperature_preview(spec: ModelSpec, text: str, temperature: float, top: int = TOP_TOKENS) -> TemperaturePreview:
    """The teacher's distribution for the token after `text`. The tokens shown are the top ones at the
    chosen T (at high T that is where the mass spreads to)."""
    if not text.strip():
        raise ValueError("preview text: write a few words for the teacher to continue")
    if temperature <= 0:
        raise ValueError(f"loss.temperature must be > 0, got {temperature}")
    tokenizer, model = loaded_teacher(spec_key(spec))
    ids = tokenizer(text, return_tensors="pt").input_ids[:, -512:]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float()  # (vocab,)
    p1, pt = torch.softmax(logits, -1), torch.softmax(logits / temperature, -1)
    order = pt.topk(min(top, pt.numel())).indices
    return TemperaturePreview(context=text, tokens=[tokenizer.decode([int(i)]) for i in order],
                              probs_t1=p1[order].tolist(), probs_t=pt[order].tolist(),
                              entropy_t1=float(entropy(p1)), entropy_t=float(entropy(pt)))
