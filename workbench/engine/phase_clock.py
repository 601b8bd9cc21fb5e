"""Where a run's wall time goes: seconds per phase, measured around the calls that do each part, written to
the run's profile.json and printed when the run ends.

Phases: setup (loading models and data), data (batches), teacher (its forward, or reading its cached rows),
loss (the loss function: with the fused loss that includes the LM heads and their gradients), student (the
rest of the training loop: the student's forward and backward, the update), evaluation (held-out
evaluations during training), io (checkpoints and the saved student), report (the evaluation of the saved
student at the end). A phase entered inside another counts as its own and is taken out of the outer one's
time, except inside evaluation and io, which keep everything they call (an evaluation's teacher forward is
evaluation time, not teacher time). On a GPU the clock waits for queued kernels at each boundary, or it
would time their launch.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

PHASES = ("setup", "data", "teacher", "student", "loss", "evaluation", "io", "report")
WHOLE = {"evaluation", "io"}  # phases that keep the time of what they call


def now() -> float:
    """perf_counter, after the GPU's queued kernels (else a GPU phase would time their launch)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class PhaseClock:
    def __init__(self):
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._stack: list[list] = []  # [name, start of its current stretch]

    @contextmanager
    def phase(self, name: str):
        if name not in self.seconds:
            raise ValueError(f"unknown phase {name!r}; phases: {', '.join(PHASES)}")
        if any(outer in WHOLE for outer, _ in self._stack):
            yield  # inside an evaluation or a save: its time, not this phase's
            return
        at = now()
        if self._stack:  # the outer phase stops counting while this one runs
            outer = self._stack[-1]
            self.seconds[outer[0]] += at - outer[1]
        self._stack.append([name, at])
        try:
            yield
        finally:
            name, start = self._stack.pop()
            at = now()
            self.seconds[name] += at - start
            if self._stack:
                self._stack[-1][1] = at

    def split(self) -> dict:
        """{"seconds": per phase, "share": of their total, "total_s"}, rounded for a file."""
        total = sum(self.seconds.values())
        return {"seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "share": {k: round(v / total, 4) if total else 0.0 for k, v in self.seconds.items()},
                "total_s": round(total, 2)}


def describe(split: dict) -> str:
    """One line: 'time 612 s: teacher 38%, student 31%, ...', largest first, phases under 0.5% left out."""
    parts = sorted(((v, k) for k, v in split["share"].items() if v >= 0.005), reverse=True)
    return f"time {split['total_s']:.0f} s: " + ", ".join(f"{k} {100 * v:.0f}%" for v, k in parts)
