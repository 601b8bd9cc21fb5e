"""Stop a run on request (SIGTERM from the job manager, Ctrl-C in a terminal) without losing work.

Before training starts there is nothing to save, so the signal cancels at once. Once the training
loop runs, the signal only sets a flag; StopCallback turns it into "save a checkpoint and stop" at the
next step boundary, so the run can resume from exactly there. After the last step the flag is ignored:
the student is being saved, and half a student is worse than a run that ends a few seconds later. In a multi-process job every rank gets
the signal at a slightly different moment; the flag is max-reduced across ranks at each step end so
all ranks stop after the same step (a rank that stopped alone would leave the others waiting forever
in their next all-reduce).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import torch
import torch.distributed as dist
from transformers import TrainerCallback


class Cancelled(Exception):
    """The run stopped on request. `step` is the last completed step (a checkpoint exists there if > 0)."""

    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(f"stopped on request at step {step}")
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    def __init__(self):
        self.requested = False
        self.in_loop = False

    def _handle(self, signum, _frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.requested = True
        if not self.in_loop:
            raise Cancelled(0, None)

    @contextmanager
    def installed(self):
        """SIGTERM and SIGINT handlers for the duration of a run (main thread only: Python allows
        signal handlers nowhere else, and a run started from a thread is stopped by its caller)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class StopCallback(TrainerCallback):
    def __init__(self, request: StopRequest):
        self.request = request

    def on_train_begin(self, args, state, control, **kwargs):
        self.request.in_loop = True

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args.device):
            control.should_save = True
            control.should_training_stop = True

    def _agreed(self, device) -> bool:
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.request.requested
        flag = torch.tensor([1.0 if self.request.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
