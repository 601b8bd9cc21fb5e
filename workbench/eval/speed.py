"""Speed and size of a model on this machine, and greedy generations to read side by side.

Teacher and student are measured the same way in one process (same threads, same input), so their
ratio is meaningful even where the absolute numbers depend on the machine."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from workbench.models.loading import count_parameters

WEIGHT_SUFFIXES = (".safetensors", ".gguf")


def weights_bytes(folder: Path | None) -> int | None:
    """Bytes of the weight files in a checkpoint folder (safetensors, GGUF, or pytorch_model*.bin), not
    counting optimizer state a training checkpoint also holds. None when there is no folder."""
    if folder is None or not Path(folder).is_dir():
        return None
    # Only the model's own weights: a strategy's extra module saved beside it (hidden_projection) is not
    # part of the student that is deployed.
    files = [p for p in Path(folder).iterdir() if p.is_file() and (
        (p.suffix in WEIGHT_SUFFIXES and (p.suffix != ".safetensors" or p.name.startswith("model")))
        or (p.name.startswith("pytorch_model") and p.suffix == ".bin"))]
    return sum(p.stat().st_size for p in files) or None


def _sync(device: torch.device) -> None:
    """GPU work is asynchronous: wait for it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_tokens_per_s(model, input_ids: torch.Tensor, repeats: int = 3) -> float:
    """Tokens per second of a full forward pass over input_ids (1, L), after one warm-up pass."""
    input_ids = input_ids.to(model.device)
    with torch.no_grad():
        model(input_ids=input_ids)
        _sync(model.device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=input_ids)
        _sync(model.device)
    return repeats * input_ids.numel() / (time.perf_counter() - start)


def generation_ms_per_token(model, prompt_ids: torch.Tensor, new_tokens: int = 32) -> float:
    """Milliseconds per generated token, greedy with the KV cache, exactly `new_tokens` tokens."""
    # pad_token_id only silences generate's warning: one sequence, nothing is padded.
    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    prompt_ids = prompt_ids.to(model.device)
    with torch.no_grad():
        model.generate(prompt_ids, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
        _sync(model.device)
        start = time.perf_counter()
        model.generate(prompt_ids, **kwargs)
        _sync(model.device)
    return 1000 * (time.perf_counter() - start) / new_tokens


def speed_and_size(model, folder: Path | None, sample_ids: torch.Tensor, prompt_ids: torch.Tensor) -> dict:
    """{"params", "disk_mb", "forward_tokens_per_s", "generation_ms_per_token"} for one model."""
    params, _ = count_parameters(model)
    size = weights_bytes(folder)
    return {"params": float(params), "disk_mb": None if size is None else size / 2**20,
            "forward_tokens_per_s": forward_tokens_per_s(model, sample_ids),
            "generation_ms_per_token": generation_ms_per_token(model, prompt_ids)}


def generate(model, tokenizer, prompt: str, max_new_tokens: int, add_special_tokens: bool = True) -> str:
    """The greedy continuation of `prompt` (the new text only); add_special_tokens=False for a prompt
    already rendered by a chat template, which writes its own."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens).input_ids.to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
