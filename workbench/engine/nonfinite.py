"""Guarding a run against NaN and inf: which term went bad, and whether weights are safe to save.

The trainer checks every optimizer step before it is taken (workbench/engine/trainer.py): a step whose loss,
any logged term or the gradient norm is not finite either stops the run (train.on_nonfinite: stop) or
is skipped, no update made (skip). Weights are checked again before any checkpoint or student is
written, so a run that diverges keeps its last finite checkpoint and can resume from it.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


class NonFiniteError(RuntimeError):
    """A training step (or the weights) went NaN or inf; the message names the step and the term."""


def _any_rank(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise max over the processes of a multi-process job, so every rank takes the same decision
    (a rank that stopped alone would leave the others waiting in their next collective)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flags = flags.clone()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def bad_values(values: dict[str, torch.Tensor | float | None]) -> dict[str, str]:
    """{name: 'NaN' | 'inf' | '-inf'} for the values that are not finite on any process. One device sync
    for all of them; every process must pass the same names."""
    names = sorted(name for name, value in values.items() if value is not None)
    if not names:
        return {}
    tensors = [torch.as_tensor(values[n], dtype=torch.float32).detach().reshape(()) for n in names]
    # On the accelerator when there is one: NCCL reduces only device tensors.
    device = next((t.device for t in tensors if t.device.type != "cpu"), torch.device("cpu"))
    stacked = torch.stack([t.to(device) for t in tensors])
    # (names, 3): is NaN, is +inf, is -inf; max over ranks so a NaN on any rank is seen by all.
    flags = torch.stack([stacked.isnan(), stacked == math.inf, stacked == -math.inf], -1).float()
    flags = _any_rank(flags).cpu()
    found = {}
    for name, (nan, pos, neg) in zip(names, flags.tolist()):
        if nan or pos or neg:
            found[name] = "NaN" if nan else ("inf" if pos else "-inf")
    return found


def describe(bad: dict[str, str], step: int) -> str:
    """'kd became NaN at step 103': the first term named, before the total and the gradient."""
    order = sorted(bad, key=lambda name: (name in ("loss", "gradient"), name == "gradient", name))
    first = order[0]
    subject = "the gradient norm" if first == "gradient" else first
    others = [name for name in order[1:] if name not in ("loss", "gradient")]
    also = f" (also {', '.join(others)})" if others else ""
    return f"{subject} became {bad[first]} at step {step}{also}"


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter is finite, on every process. One sync."""
    checks = [torch.isfinite(p.detach()).all() for p in model.parameters()]
    if not checks:
        return True
    bad = (~torch.stack(checks).all()).float().reshape(1)
    return not bool(_any_rank(bad).item())
