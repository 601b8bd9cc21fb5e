"""Trainer callbacks that turn training events into run-directory files and console progress.
Only the main process (rank 0) writes: the other ranks of a multi-process job stay silent."""
from __future__ import annotations

import time
from datetime import timedelta
from typing import Callable

from transformers import TrainerCallback

from workbench.store.rundir import RunDir

STATUS_INTERVAL_S = 1.0
# A progress line in worker.log at least this often while steps go on, so the log follows the worker
# between logging steps (a default-pair step takes seconds; logging_steps is 10).
LOG_INTERVAL_S = 5.0
HELD_OUT_PHASE = "held-out evaluation"
# Keys whose values Trainer computes for its own summary; they duplicate what we log per step.
_SKIP = {"total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
         "eval_model_preparation_time"}


def format_eta(seconds: float | None) -> str:
    return "?" if seconds is None else str(timedelta(seconds=int(seconds)))


class EtaClock:
    """ETA from the pace of this process's own steps, so a resumed run is not credited with old steps."""

    def __init__(self):
        self.start_time = None
        self.start_step = 0

    def start(self, step: int) -> None:
        self.start_time, self.start_step = time.perf_counter(), step

    def eta(self, step: int, total: int) -> float | None:
        done = step - self.start_step
        if self.start_time is None or done <= 0:
            return None
        return (time.perf_counter() - self.start_time) / done * max(total - step, 0)


class RunFilesCallback(TrainerCallback):
    """metrics.jsonl gets every log event; status.json the current step, total and ETA."""

    def __init__(self, run_dir: RunDir, echo: Callable[[str], None] | None = None,
                 samples: Callable[[], list[dict]] | None = None):
        self.run_dir = run_dir
        self.echo = echo
        self.samples = samples  # the strategy's sampled completions since the last log (on-policy), for samples.jsonl
        self.clock = EtaClock()
        self.last_status = 0.0
        self.last_line = 0.0
        self.held_out_batches = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.clock.start(state.global_step)
        # A resumed run replays the steps after its checkpoint: drop their old records first.
        self.run_dir.truncate_metrics_after(state.global_step)
        self.run_dir.write_status("running", step=state.global_step, total_steps=state.max_steps, eta_s=None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3),
                  **{k: v for k, v in logs.items() if k not in _SKIP}}
        # Samples first: a reader redraws them when a metrics line arrives, which must find them written.
        if self.samples is not None and "loss" in logs and (samples := self.samples()):
            self.run_dir.append_samples(samples)
        self.run_dir.append_metrics(record)
        if logs.get("nonfinite_skipped"):  # shown in the Runs tab while the run goes on
            self.run_dir.write_status("running", nonfinite_skipped=logs["nonfinite_skipped"])
        if self.echo and "loss" in logs:
            self.echo(self._progress_line(state, logs))
            self.last_line = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        # Throttled: status.json is fsynced, and tiny models take milliseconds per step.
        now = time.perf_counter()
        if now - self.last_status >= STATUS_INTERVAL_S or state.global_step >= state.max_steps:
            self.last_status = now
            eta = self.clock.eta(state.global_step, state.max_steps)
            self.run_dir.write_status("running", step=state.global_step, total_steps=state.max_steps,
                                      eta_s=None if eta is None else round(eta, 1))
        # Between logged steps only: a logged step gets on_log's fuller line right after this.
        logged = state.global_step % max(args.logging_steps, 1) == 0
        if self.echo and not logged and now - self.last_line >= LOG_INTERVAL_S:
            self.last_line = now
            self.echo(f"at step {state.global_step}/{state.max_steps}, "
                      f"eta {format_eta(self.clock.eta(state.global_step, state.max_steps))}")

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        """Held-out evaluations take a while (the step-0 one before any step): status.json says how far."""
        if not state.is_world_process_zero:
            return
        self.held_out_batches += 1
        now = time.perf_counter()
        if now - self.last_status >= STATUS_INTERVAL_S:
            self.last_status = now
            total = len(eval_dataloader) if eval_dataloader is not None else None
            self.run_dir.write_status("running", phase=HELD_OUT_PHASE, phase_done=self.held_out_batches,
                                      phase_total=total)

    def on_evaluate(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.held_out_batches = 0
        self.run_dir.write_status("running", phase=None, phase_done=None, phase_total=None)

    def _progress_line(self, state, logs: dict) -> str:
        terms = " ".join(f"{k}={logs[k]:.4g}" for k in ("loss", "ce", "kd", "sampled_rkl") if logs.get(k) is not None)
        speed = f" {logs['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in logs else ""
        pct = 100 * state.global_step / max(state.max_steps, 1)
        eta = format_eta(self.clock.eta(state.global_step, state.max_steps))
        return f"step {state.global_step}/{state.max_steps} ({pct:.0f}%) {terms}{speed} eta {eta}"
