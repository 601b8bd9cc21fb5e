"""A local teacher checkpoint writing completions: batched, left-padded sampling with the teacher's own
chat template (a plain "role: content" transcript for base models without one).

Batches are fixed slices of the full (prompt, sample) list, each sampled under its own seed, so the same
seed writes the same completions whether or not a run was interrupted: a resumed run regenerates a
partly written batch exactly and keeps only the rows that were missing.
"""
from __future__ import annotations

import torch
from transformers import GenerationConfig

from workbench.config.schema import DistillConfig
from workbench.data.loading import render_chat
from workbench.models.loading import load_model, load_tokenizer
from workbench.models.sampling import only_given_settings


def batch_seed(seed: int, batch: int) -> int:
    return (seed * 1_000_003 + batch) % 2**63


class LocalTeacherWriter:
    def __init__(self, config: DistillConfig):
        self.spec = config.generation
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model = load_model(config.teacher, "teacher", dtype).to(self.device).eval().requires_grad_(False)
        self.tokenizer = load_tokenizer(config.teacher, "teacher")
        self.tokenizer.padding_side = "left"  # generation continues at the right edge of every row
        eos = self.model.generation_config.eos_token_id
        self.eos = {eos} if isinstance(eos, int) else set(eos or []) or {self.tokenizer.eos_token_id}
        g = self.spec
        sample = g.temperature > 0
        # Only these settings: the checkpoint's own (top_k, repetition penalty, ...) are kept out while
        # generating (only_given_settings), or they would change what "temperature T, top_p P" means.
        self.generation_config = GenerationConfig(
            do_sample=sample, temperature=g.temperature if sample else None, top_p=g.top_p if sample else None,
            top_k=0 if sample else None, max_new_tokens=g.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos))

    def _prompt_ids(self, conversations) -> dict[str, torch.Tensor]:
        texts = [render_chat(self.tokenizer, messages, generation_prompt=True) for messages in conversations]
        # A chat template writes its own special tokens; a plain transcript gets the usual ones (bos).
        return self.tokenizer(texts, return_tensors="pt", padding=True,
                              add_special_tokens=not self.tokenizer.chat_template).to(self.device)

    def write(self, jobs, done: set[int], emit) -> list[str]:
        size = self.spec.batch_size
        for number, start in enumerate(range(0, len(jobs), size)):
            batch = jobs[start:start + size]
            if all(job.index in done for job in batch):
                continue
            seed = batch_seed(self.spec.seed, number)
            torch.manual_seed(seed)
            inputs = self._prompt_ids([job.messages for job in batch])
            with torch.no_grad(), only_given_settings(self.model):
                out = self.model.generate(**inputs, generation_config=self.generation_config)
            new = out[:, inputs["input_ids"].shape[1]:]  # (B, generated) after the left-padded prompts
            for job, ids in zip(batch, new.tolist()):
                if job.index in done:
                    continue
                end = next((i for i, t in enumerate(ids) if t in self.eos), None)
                kept = ids if end is None else ids[:end]
                emit(job, {"completion": self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
                           "finish_reason": "length" if end is None else "stop",
                           "completion_tokens": len(kept), "seed": seed})
        return []
