"""On-policy distillation (GKD, Agarwal et al. 2024, as TRL's GKDTrainer): the student learns from the
teacher's judgement of its own samples.

Each optimizer step is on-policy with probability on_policy.lmbda (decided from the run's seed and the
step, so every process and every resume agrees). On-policy: the student samples a completion for each
prompt of the step's micro-batches (workbench/models/sampling.py), and the batch becomes prompt + sample
with labels on the sampled tokens only. Off-policy: the rows' reference completions (corpus windows), or
with seq_kd completions the teacher samples. Either way the teacher then scores prompt + completion in one
forward inside the loss, and the loss is the soft-label one with on_policy's settings:

    reference completions:  α·CE + (1−α)·T²·JSD_β        (exactly soft_label's loss on the same rows)
    the student's samples:  (1−α)·T²·JSD_β               (no reference to take CE against)

both per completion token over the accumulated batch. β = 1 (the default) is reverse KL(student ‖ teacher).

Logged beside the loss terms: `sampled_rkl` (the teacher's mean per-token reverse KL, T = 1, on the
student's samples; only on on-policy steps), and per step the seconds spent sampling (`sample_s`), in the
teacher's scoring forward (`teacher_s`: up to its last hidden states under the fused loss, whose LM-head
chunks count in the update) and in the rest of the update (`update_s`), with `sampled_tokens_per_s` and
`on_policy_share` (the share of the period's steps that sampled). The last sampled step's first few
completions go to the run's samples.jsonl at each log (logged_samples).

Reproducibility: a micro-batch's sampling seed is a hash of (train.seed, step, micro-batch, process), so
the same weights at the same step sample the same tokens: a run resumed from its checkpoint continues
exactly as the killed one would have, and processes of one job sample different completions.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random

import torch

from workbench.config.schema import DistillConfig
from workbench.data.loading import IGNORE_INDEX
from workbench.engine.phase_clock import now
from workbench.engine.strategies.soft import SoftLabelStrategy
from workbench.models.sampling import SamplingSettings, sample

REFERENCE, STUDENT, TEACHER = 0, 1, 2  # where a batch's completions came from ("source" in the batch)
SAMPLE_CHARS = 4000  # of a prompt (its end) and a completion (its start) in samples.jsonl


def sampling_seed(seed: int, step: int, micro: int, rank: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{step}:{micro}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**63


def is_on_policy_step(seed: int, step: int, lmbda: float) -> bool:
    """The same answer on every process and on every resume: it depends on the seed and the step only."""
    if lmbda >= 1:
        return True
    return lmbda > 0 and random.Random(f"{seed}:{step}:on-policy").random() < lmbda


def completion_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                     device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded prompt + completion rows: labels only on the completion's tokens. (B, L) each."""
    rows = [p + c for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids[i, :len(rows[i])] = torch.as_tensor(rows[i])
        mask[i, :len(rows[i])] = 1
        if completion:
            labels[i, len(prompt):len(rows[i])] = torch.as_tensor(completion)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


class _Timer:
    """Seconds and counts since the last log, on phase_clock's clock (it waits for a GPU's queued kernels)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.seconds = {"sample": 0.0, "teacher": 0.0, "step": 0.0}
        self.steps = self.on_policy_steps = self.sampled_tokens = 0

    now = staticmethod(now)


class OnPolicyStrategy(SoftLabelStrategy):
    name = "on_policy"

    @classmethod
    def uses_teacher(cls, config) -> bool:
        return True  # the teacher scores every completion

    def __init__(self, config: DistillConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.spec = config.on_policy
        self.settings: SamplingSettings | None = None
        self.decode = None
        self.timer = _Timer()
        self._last_sampled: tuple[int, list, list] | None = None  # (step, prompts, completions) as ids
        self._micro = 0
        self._step_began = None
        self._on_policy = False

    def configure(self, tokenizer, vocab_limit: int | None) -> None:
        """What sampling needs from the tokenizer: pad and end tokens, and text for the samples log."""
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        o = self.spec
        self.settings = SamplingSettings(o.temperature, o.top_p, o.max_new_tokens, pad, (eos,), vocab_limit)
        self.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        self._micro = 0
        self._step_began = self.timer.now()
        self._on_policy = is_on_policy_step(self.config.train.seed, step, self.spec.lmbda)

    def end_step(self) -> None:
        if self._step_began is None:
            return
        self.timer.seconds["step"] += self.timer.now() - self._step_began
        self.timer.steps += 1
        self.timer.on_policy_steps += self._on_policy
        self._step_began = None

    def prepare_batch(self, model, batch):
        micro, self._micro = self._micro, self._micro + 1
        source = STUDENT if self._on_policy else TEACHER if self.spec.seq_kd else REFERENCE
        if source == REFERENCE:
            return {**batch, "source": torch.full_like(batch["prompt_len"], REFERENCE)}
        prompts = [row[:length].tolist() for row, length in zip(batch["input_ids"], batch["prompt_len"].tolist())]
        began = self.timer.now()
        writer = model if source == STUDENT else self.teacher
        seed = sampling_seed(self.config.train.seed, self.global_step, micro, self.rank)
        completions = sample(writer, prompts, self.settings, seed)
        self.timer.seconds["sample"] += self.timer.now() - began
        self.timer.sampled_tokens += sum(map(len, completions))
        if source == STUDENT and micro == 0 and not self.rank:
            # Kept as ids: only the last sampled step before a log is decoded and written.
            self._last_sampled = (self.global_step + 1, prompts[:self.spec.samples_logged],
                                  completions[:self.spec.samples_logged])
        prepared = completion_batch(prompts, completions, self.settings.pad_id, batch["input_ids"].device)
        return {**prepared, "prompt_len": batch["prompt_len"], "source": torch.full_like(batch["prompt_len"], source)}

    def logged_samples(self) -> list[dict]:
        if self._last_sampled is None:
            return []
        (step, prompts, completions), self._last_sampled = self._last_sampled, None
        # Text cut to SAMPLE_CHARS: a reader takes the file's tail, which one huge line would fill.
        return [{"step": step, "prompt": self.decode(p)[-SAMPLE_CHARS:], "completion": self.decode(c)[:SAMPLE_CHARS],
                 "tokens": len(c)} for p, c in zip(prompts, completions)]

    def teacher_signal(self, inputs, fused: bool, held_out: bool = False):
        if self.evaluating:
            return super().teacher_signal(inputs, fused, held_out)
        began = self.timer.now()
        signal = super().teacher_signal(inputs, fused, held_out)
        self.timer.seconds["teacher"] += self.timer.now() - began
        return signal

    def compute_loss(self, model, inputs, num_items_in_batch):
        # A prepared training batch holds "source"; on an on-policy step its completions are the student's
        # (the step's flag, not the tensor: reading a GPU tensor here would wait for the device).
        own = "source" in inputs and self._on_policy and not self.evaluating
        inputs = {k: v for k, v in inputs.items() if k not in ("source", "prompt_len")}
        if not own:
            return self.losses(model, inputs, num_items_in_batch, [self.loss_spec])[0]
        # The student's own samples: the divergence alone, at weight 1 − α (α·CE has no reference here).
        # Under the fused loss only "loss" carries a gradient, so the spec has α = 0 and the weight
        # comes after.
        alone = dataclasses.replace(self.loss_spec, alpha=0.0)
        specs = [alone]
        reverse_at_1 = self.loss_spec.beta == 1 and self.loss_spec.temperature == 1
        if not reverse_at_1:
            specs.append(dataclasses.replace(self.loss_spec, divergence="reverse_kl", alpha=0.0, temperature=1.0))
        terms = self.losses(model, inputs, num_items_in_batch, specs)
        kd = terms[0]["kd"]
        rkl = kd if reverse_at_1 else terms[1]["kd"]
        return {"loss": (1 - self.loss_spec.alpha) * terms[0]["loss"], "kd": kd, "sampled_rkl": rkl.detach()}

    def step_values(self, step: int) -> dict[str, float]:
        t, steps = self.timer, self.timer.steps
        if not steps:
            return {}
        seconds = {f"{k}_s": round(v / steps, 4) for k, v in t.seconds.items() if k != "step"}
        values = {**seconds, "update_s": round((t.seconds["step"] - t.seconds["sample"] - t.seconds["teacher"]) / steps,
                                               4),
                  "on_policy_share": round(t.on_policy_steps / steps, 4),
                  "sampled_tokens_per_s": round(t.sampled_tokens / t.seconds["sample"], 1) if t.seconds["sample"]
                  else 0.0}
        t.reset()
        return values
