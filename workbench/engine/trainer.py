"""DistillTrainer: transformers.Trainer with the loss delegated to a strategy and every term logged.

Checkpointing, resume, gradient accumulation, mixed precision and multi-process (accelerate) all
come from Trainer. This subclass only (1) asks the strategy for the loss, (2) keeps per-term sums
on the device between log steps and adds them to Trainer's logs, (3) reports tokens per second,
(4) checks every step before the optimizer takes it: a NaN or inf loss, term or gradient stops the run
or skips the step (train.on_nonfinite), and weights that are not finite are never saved.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.engine.nonfinite import NonFiniteError, bad_values, describe, weights_finite
from workbench.engine.strategies.base import Strategy
from workbench.engine.strategies.together import TrainedTogether
from workbench.store.rundir import json_safe, read_json, write_json_atomic

log = logging.getLogger(__name__)
SKIPPED_FILE = "nonfinite.json"  # in each checkpoint-N/: steps skipped as non-finite up to N


def use_bf16(config: DistillConfig) -> bool:
    """auto = bf16 where the GPU supports it, float32 on CPU (bf16's coarser numerics are opt-in there).
    native = also on a CPU with bf16 instructions (1.4-1.7x faster than float32 on ours), never on one
    that would emulate them (~100x slower): what the offline default config asks for."""
    if config.train.bf16 in ("auto", "native") and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if config.train.bf16 == "native":
        return native_cpu_bf16()
    return config.train.bf16 == "on"


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Without, torch emulates it: a bf16
    matrix product measured 0.8 GFLOP/s against 85 in fp32 on an AVX2-only CPU, so bf16 training there is
    many times slower, not faster. Unknown (an older torch): assumed native."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check) or not any(checks)


def training_arguments(config: DistillConfig, checkpoints_dir: Path, has_eval: bool) -> TrainingArguments:
    t = config.train
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        bf16=use_bf16(config),
        # Trainer refuses bf16 without a GPU unless told the CPU is meant (CPU autocast then does bf16).
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=t.gradient_checkpointing,
        torch_compile=t.torch_compile,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_eval and t.eval_interval() else "no",
        eval_steps=t.eval_interval() or None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        report_to=[],
        disable_tqdm=True,
        # Strategies read input_ids/attention_mask/labels themselves; nothing is passed to forward blindly.
        remove_unused_columns=False,
        # Trainer guesses label names from the model's forward signature, which a TrainedTogether hides.
        label_names=["labels"],
        prediction_loss_only=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


class DistillTrainer(Trainer):
    # The strategy's loss is normalised by num_items_in_batch (tokens of the whole accumulated batch),
    # so Trainer must not divide it by the accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, strategy: Strategy, **kwargs):
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # prints raw log dicts; RunFilesCallback prints progress
        if self.is_deepspeed_enabled and strategy.config.train.on_nonfinite == "skip":
            # DeepSpeed takes its optimizer step inside backward, before any hook here sees the gradient.
            raise ConfigError([("train.on_nonfinite", "skip needs the step checked before the update, which "
                                                      "DeepSpeed does not allow; use stop (checkpoints stay "
                                                      "finite either way)")])
        self.strategy = strategy.to(self.args.device)
        self.strategy.rank = self.args.process_index  # e.g. for samples that differ per process
        self.add_callback(_StepClock(self.strategy))
        # Make Trainer count target tokens over the accumulated batch for every model, and count them
        # on labels[:, 1:] because every strategy shifts labels for next-token prediction.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self._term_sums: dict[str, dict[str, torch.Tensor]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._step_sums: dict[str, torch.Tensor] = defaultdict(float)  # the step being accumulated
        # Steps of the log period that had each term: a strategy may return a term only on some steps
        # (on-policy's sampled-token terms), whose mean is then over those steps, not over all.
        self._term_steps: Counter = Counter()
        self._skipped: int | None = None  # steps skipped as non-finite (train.on_nonfinite: skip), run-wide
        self._resumed_from: str | None = None
        self._other_norms: list = []  # gradient norms of the parts clipped apart from the student
        self._eval_items = 0.0
        self._tokens = 0.0
        self._last_log: float | None = None  # time of the previous train log
        self._train_start = time.perf_counter()
        self._clip_groups: list[list] | None = None  # parameters clipped together, when the strategy groups them

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # The strategy may replace a training batch's tokens before Trainer counts the step's target
        # tokens (num_items_in_batch), so the count is that of the batches the loss sees. Trainer calls
        # this once per optimizer step, with the step about to be taken in state.global_step.
        self.strategy.begin_step(self.state.global_step)
        prepared = (self.strategy.prepare_batch(self.model, batch) for batch in epoch_iterator)
        with self.strategy.clock.phase("data"):
            return super().get_batch_samples(prepared, num_batches, device)

    def evaluate(self, *args, **kwargs):
        # Trainer calls this for the step-0, periodic and final held-out evaluations alike.
        self.strategy.evaluating = True
        try:
            with self.strategy.clock.phase("evaluation"):
                return super().evaluate(*args, **kwargs)
        finally:
            self.strategy.evaluating = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.strategy.global_step = self.state.global_step  # schedules (co-distillation's α) follow the step
        terms = self.strategy.compute_loss(model, inputs, num_items_in_batch)
        loss = terms["loss"]
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch was summed over processes and DDP averages gradients over them:
            # scale back so each process contributes its share of the global per-token mean.
            loss = loss * self.accelerator.num_processes
        if model.training:
            for name, value in terms.items():  # joins the log period's sums once the step is known finite
                self._step_sums[name] = self._step_sums[name] + value.detach()
            self._tokens = self._tokens + inputs["attention_mask"].sum()
        else:
            # Held-out terms are token-weighted over the whole eval set (so exp(eval_ce) is the exact
            # perplexity). Each term is local_sum / count with count = num_items_in_batch (all processes'
            # targets in this batch), so term * count recovers this process's sum.
            local_items = inputs["labels"][:, 1:].ne(-100).sum()
            self._accumulate("eval", terms, num_items_in_batch if num_items_in_batch is not None else local_items)
            self._eval_items = self._eval_items + local_items
        return (loss, {"loss": loss}) if return_outputs else loss

    def _accumulate(self, mode: str, terms: dict[str, torch.Tensor], weight) -> None:
        sums = self._term_sums[mode]
        for name, value in terms.items():
            sums[name] = sums[name] + value.detach() * weight  # stays on device: no sync per micro-batch

    def _drain(self, mode: str, divisors: float | dict[str, float]) -> dict[str, float]:
        """Per-term means since the last drain, summed over processes (each holds local/global parts):
        each term over `divisors` (one for all, or one per term)."""
        sums = self._term_sums[mode]
        self._term_sums[mode] = defaultdict(float)
        names = sorted(sums)
        if not isinstance(divisors, dict):
            divisors = dict.fromkeys(names, divisors)
        if not names:
            return {}
        stacked = torch.stack([torch.as_tensor(sums[n], device=self.args.device, dtype=torch.float32) for n in names])
        stacked = self.accelerator.reduce(stacked, reduction="sum") if self.accelerator.num_processes > 1 else stacked
        return {n: v / divisors[n] for n, v in zip(names, stacked.tolist()) if divisors.get(n, 0) > 0}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs:
            items = torch.as_tensor(self._eval_items, device=self.args.device)
            if self.accelerator.num_processes > 1:
                items = self.accelerator.reduce(items, "sum")
            items = float(items)
            # Replaces Trainer's batch-weighted eval_loss with the token-weighted one.
            logs.update({f"eval_{k}": v for k, v in self._drain("eval", items).items()})
            self._eval_items = 0.0
        elif "loss" in logs:
            now = time.perf_counter()
            last_time = self._last_log or self._train_start  # the first log of a train() call: from its start
            # Every term, the total too, is the mean over the period's steps that were taken (and had the
            # term): Trainer's own loss would count a skipped step's NaN as the period's average.
            drained = self._drain("train", dict(self._term_steps))
            self._term_steps = Counter()
            logs.update({"loss": None, **drained})
            if self._skipped:
                logs["nonfinite_skipped"] = self._skipped
            tokens = float(self._tokens) * self.accelerator.num_processes
            logs["tokens_per_s"] = round(tokens / max(now - last_time, 1e-9), 1)
            logs.update(self.strategy.step_values(self.state.global_step))
            self._tokens, self._last_log = 0.0, now
        # NaN and inf as null: Trainer keeps these logs in every checkpoint's trainer_state.json, which
        # is then strict JSON like every other file of the run.
        super().log(json_safe(logs), start_time)

    def create_optimizer(self, *args, **kwargs):
        """Trainer's optimizer, unless the strategy trains parts at their own learning rates (a co-distilled
        teacher): then one parameter group per part; the schedule scales every group alike."""
        groups = self.strategy.parameter_groups(self.accelerator.unwrap_model(self.model))
        if groups is None or self.optimizer is not None:
            return super().create_optimizer(*args, **kwargs)
        decay = set(self.get_decay_parameter_names(self.accelerator.unwrap_model(self.model)))
        split = []
        for group in groups:  # Trainer's rule in each part: no weight decay on biases and norms
            settings = {k: v for k, v in group.items() if k != "params"}
            trainable = [(n, p) for n, p in group["params"] if p.requires_grad]
            split += [{**settings, "params": [p for n, p in trainable if n in decay], "weight_decay": self.args.weight_decay},
                      {**settings, "params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0}]
        self._clip_groups = [[p for n, p in g["params"] if p.requires_grad] for g in groups]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        self.optimizer = optimizer_cls(split, **optimizer_kwargs)
        return self.optimizer

    def _clip_grad_norm(self, model):
        """Each part on its own (a teacher's large CE gradients must not shrink the student's step); the
        student's norm is the one logged, the others are checked for NaN and inf with it."""
        if not self._clip_groups:
            return super()._clip_grad_norm(model)
        norms = [self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm) for params in self._clip_groups]
        self._other_norms = norms[1:]
        return norms[0]

    def _get_grad_norm(self, model, grad_norm=None):
        """The last call before the optimizer step: the step is checked here. Gradients are already
        reduced over processes, so every rank sees the same norm and takes the same decision. (Under
        DeepSpeed the engine has already stepped inside backward: stop then comes after the update, and
        check_weights is what keeps checkpoints finite.)"""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        others, self._other_norms = self._other_norms, []
        step_sums, self._step_sums = self._step_sums, defaultdict(float)
        gradient = torch.stack([torch.as_tensor(n, dtype=torch.float32).reshape(()).to(self.args.device)
                                for n in (grad_norm, *others)]).sum() if grad_norm is not None else None
        if self._skipped is None:  # a resumed run goes on counting from its checkpoint
            self._skipped = _skipped_in(self._resumed_from)
        bad = bad_values({**step_sums, "gradient": gradient})
        if not bad:
            for name, value in step_sums.items():
                self._term_sums["train"][name] = self._term_sums["train"][name] + value
            self._term_steps.update(step_sums.keys())
            return grad_norm
        what = describe(bad, self.state.global_step + 1)
        if self.strategy.config.train.on_nonfinite == "stop":
            raise NonFiniteError(f"{what}; the run stopped before the update, so the weights and every checkpoint "
                                 "are finite: resume continues from the last checkpoint, and "
                                 "train.on_nonfinite: skip would skip such steps instead")
        self._skipped += 1
        limit = self.strategy.config.train.max_skipped_steps
        if self._skipped > limit:
            raise NonFiniteError(f"{what}: {self._skipped} steps skipped, more than train.max_skipped_steps="
                                 f"{limit}; the weights and every checkpoint are finite")
        log.warning("skipped the step: %s (%d skipped so far)", what, self._skipped)
        for parameter in model.parameters():
            parameter.grad = None  # the optimizer leaves parameters without a gradient as they are
        return None

    def _save_checkpoint(self, model, trial) -> None:
        check_weights(self.model, self.state.global_step, "checkpoint")
        with self.strategy.clock.phase("io"):
            super()._save_checkpoint(model, trial)
        if self.args.should_save and self._skipped:  # a resumed run must go on counting from here
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            write_json_atomic(folder / SKIPPED_FILE, {"nonfinite_skipped": self._skipped})

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        together = self.accelerator.unwrap_model(self.model)
        if not isinstance(together, TrainedTogether):
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            # Each part as its own folder or file (strategies/together.py): a checkpoint's student stays
            # loadable on its own, and shared (tied) weights are saved the way save_pretrained does.
            together.save(Path(output_dir or self.args.output_dir), self.processing_class)
            torch.save(self.args, Path(output_dir or self.args.output_dir) / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        together = self.accelerator.unwrap_model(model or self.model)
        if not isinstance(together, TrainedTogether):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        together.load(Path(resume_from_checkpoint))

    @property
    def skipped_steps(self) -> int:
        """Steps skipped as non-finite so far (train.on_nonfinite: skip), counting earlier attempts."""
        return self._skipped or 0

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not _internal_call:  # a checkpoint's weights were checked by _save_checkpoint
            check_weights(self.model, self.state.global_step, "student")
        return super().save_model(output_dir, _internal_call)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # Throughput counts from here, not from construction (model loading is not training time).
        self._last_log, self._train_start = None, time.perf_counter()
        self._resumed_from = resume_from_checkpoint
        with self.strategy.clock.phase("student"):  # what no other phase inside takes: forward, backward, update
            return super().train(resume_from_checkpoint, *args, **kwargs)


class _StepClock(TrainerCallback):
    """Tells the strategy when a step's update is done (after the optimizer, before logging, evaluating
    and saving), so it can time the parts of its steps."""

    def __init__(self, strategy: Strategy):
        self.strategy = strategy

    def on_step_end(self, args, state, control, **kwargs):
        self.strategy.end_step()


def _skipped_in(checkpoint: str | None) -> int:
    """Steps skipped as non-finite before `checkpoint` (0 for a fresh start)."""
    if not checkpoint:
        return 0
    found, _ = read_json(Path(checkpoint) / SKIPPED_FILE)
    count = (found or {}).get("nonfinite_skipped", 0)
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else 0


def check_weights(model: torch.nn.Module, step: int, what: str) -> None:
    """Refuse to write a checkpoint or a student whose weights are not finite (an update that overflowed);
    the last finite checkpoint then stays the newest one, so rotation never removes it."""
    if not weights_finite(model):
        raise NonFiniteError(f"the weights became non-finite at step {step}; the {what} was not written, and the "
                             "last finite checkpoint is kept")
