"""Sampling completions from a model that is training: batched, left-padded, with the KV cache, in eval
mode and without autograd, under a seed of its own.

This is the seam where a faster engine (vLLM, SGLang) could be plugged in on a GPU: everything a caller
needs is `sample(model, prompts, settings, seed) -> completions`, token ids in and out, or `stream(model,
prompt, settings, seed)` for one prompt's tokens as they come (the Chat tab). The HF path is what runs here.

Reproducibility: the global RNG is forked and seeded with `seed` for the call and restored after it, so a
caller that derives the seed from (run seed, step, rank) gets the same samples whenever it meets the
same step with the same weights: a run resumed from a checkpoint samples what the killed one would have.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float       # 0 = greedy
    top_p: float
    max_new_tokens: int
    pad_id: int
    eos_ids: tuple[int, ...]
    vocab_limit: int | None = None  # sample only ids below this (the ids both models have logits for)


class _VocabLimit(LogitsProcessor):
    """A model's logits can have padding rows past its tokenizer (or past its teacher's vocabulary): an id
    sampled there would mean nothing to the teacher, so they get no mass."""

    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.limit:] = float("-inf")
        return scores


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (.module) and torch.compile (._orig_mod) wrappers: generate() lives there."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = model.module if hasattr(model, "module") else model._orig_mod
    return model


def left_padded(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids and mask with each prompt flush right, so generation continues every row at the edge."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


@contextmanager
def only_given_settings(model: torch.nn.Module):
    """generate() fills every setting a GenerationConfig leaves unset from the checkpoint's own
    generation_config (repetition_penalty, top_k, min_p, no_repeat_ngram_size, ...), which would change
    what "temperature T, top-p P" means: the checkpoint's is swapped for a blank one meanwhile."""
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def end_ids(model: torch.nn.Module, eos_ids: tuple[int, ...]) -> tuple[int, ...]:
    """The tokenizer's end token and the checkpoint's own (a chat model's end of turn, e.g. <|eot_id|>)."""
    own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    own = [own] if isinstance(own, int) else list(own or [])
    return tuple(sorted(set(eos_ids) | set(own)))


def cut_at_eos(ids: list[int], eos_ids: tuple[int, ...]) -> list[int]:
    """A completion up to and including its first end token (the student learns to stop), or all of it."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[:i + 1]
    return ids


@torch.no_grad()
def sample(model: torch.nn.Module, prompts: list[list[int]], settings: SamplingSettings, seed: int
           ) -> list[list[int]]:
    """One completion per prompt (token ids, ended by eos when the model ended it). Every prompt must be
    non-empty."""
    inner = unwrap(model)
    device = next(inner.parameters()).device
    ids, mask = left_padded(prompts, settings.pad_id, device)
    greedy = settings.temperature == 0
    eos = end_ids(inner, settings.eos_ids)
    config = GenerationConfig(do_sample=not greedy, temperature=None if greedy else settings.temperature,
                              top_p=None if greedy else settings.top_p, top_k=None if greedy else 0,
                              max_new_tokens=settings.max_new_tokens, pad_token_id=settings.pad_id,
                              eos_token_id=list(eos), use_cache=True)
    processors = LogitsProcessorList([_VocabLimit(settings.vocab_limit)] if settings.vocab_limit else [])
    was_training = inner.training
    inner.eval()  # no dropout while sampling; the caller's mode comes back below
    try:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), only_given_settings(inner):
            torch.manual_seed(seed)
            out = inner.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                 logits_processor=processors)
    finally:
        inner.train(was_training)
    new = out[:, ids.shape[1]:].tolist()  # (B, generated) after the left-padded prompts
    return [cut_at_eos(row, eos) for row in new]


@torch.no_grad()
def stream(model: torch.nn.Module, prompt: list[int], settings: SamplingSettings, seed: int) -> Iterator[int]:
    """One completion of one non-empty prompt, token by token as it is chosen (the last one is an end token
    when the model ended it). Greedy, it is sample()'s completion; sampled, it follows the same settings but
    draws from a generator of its own instead of the global RNG, so streams of several models can be
    interleaved (or stepped from any thread) and each still gives one answer per seed. The model must be in
    eval mode: a stream runs across many calls of its consumer, which may stop it at any token, so it cannot
    switch the model's mode back afterwards."""
    inner = unwrap(model)
    device = next(inner.parameters()).device
    eos = end_ids(inner, settings.eos_ids)
    generator = torch.Generator().manual_seed(seed)  # on the CPU: one row of probabilities is drawn from there
    ids, cache = torch.tensor([prompt], dtype=torch.long, device=device), None
    for _ in range(settings.max_new_tokens):
        # Only the last position's logits: the prompt's first forward would otherwise make (P, V) of them.
        out = inner(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache  # the next step reads only its new token
        token = _choose(out.logits[0, -1].float().cpu(), settings, generator)
        yield token
        if token in eos:
            return
        ids = torch.tensor([[token]], dtype=torch.long, device=device)


def _choose(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator) -> int:
    """The next token from one row of logits (V,): greedy at T = 0, else drawn at T from the smallest set of
    most likely tokens whose mass reaches top-p (as generate()'s top-p), ids from vocab_limit on excluded."""
    if settings.vocab_limit:
        logits = logits[:settings.vocab_limit]
    if settings.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / settings.temperature, -1)
    if settings.top_p < 1:
        ranked, order = probs.sort(descending=True)
        kept = ranked.cumsum(0) - ranked < settings.top_p  # the most likely token is always kept
        probs = torch.zeros_like(probs).scatter(0, order[kept], ranked[kept])
    return int(torch.multinomial(probs, 1, generator=generator))
