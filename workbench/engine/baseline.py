"""The CE-only baseline: the same student, data, steps and seed trained on the labels alone (α = 1), so
"did distillation beat plain fine-tuning?" has a direct answer with the numbers."""
from __future__ import annotations

import dataclasses

import pandas as pd

from workbench.config.escaping import plain
from workbench.config.schema import DistillConfig, LossSpec
from workbench.store.rundir import finite_number


def ce_baseline_config(config: DistillConfig) -> DistillConfig:
    """Everything as in `config` except α = 1: the student learns from the labels alone, and the
    teacher is not even loaded (the evaluation still compares the result with it)."""
    if config.strategy == "hard_label":
        raise ValueError("strategy: a hard-label run is already plain fine-tuning (on the teacher's text); "
                         "compare it with a soft-label run of the same student instead")
    if config.loss.alpha == 1.0 and config.strategy == "soft_label":
        raise ValueError("loss.alpha is already 1: this run is CE-only, it is its own baseline")
    # soft_label at α = 1 whatever the run's strategy: a co-distillation schedule or a layer term would
    # keep the teacher in the loss. The KD knobs (T, divergence, cache) take their defaults: they change
    # nothing at α = 1, and runs that differ only in them (a grid over α and T) then share one baseline.
    loss = LossSpec(alpha=1.0, chunk_size=config.loss.chunk_size)
    return config.replace(strategy="soft_label", loss=loss,
                          output=dataclasses.replace(config.output, run_name=None))


def _progress(row) -> str:
    """Where a run stands, for a verdict that must wait for it: 'still training (step 120/200)'."""
    if row.status == "succeeded":
        return "finished"
    step, steps = row.get("step"), row.get("steps")
    if row.status in ("running", "starting", "cancelling") and finite_number(step) and finite_number(steps):
        return f"still training (step {int(step)}/{int(steps)})"
    return {"queued": "still queued", "running": "still training", "starting": "still starting"}.get(
        row.status, f"{row.status}: no final numbers")


def baseline_verdict(table: pd.DataFrame) -> str:
    """Markdown answering the question for each run in a compare table (Store.compare, with each run's
    status, step and planned steps) whose baseline is in the table too; empty when there is no such pair.
    Only finished runs' final held-out numbers are compared: a run still training has no verdict yet."""
    if table.empty or "baseline_of" not in table:
        return ""
    by_id = table.set_index("run_id")
    lines = []
    for _, base in table[table.baseline_of.notna()].iterrows():
        if base.baseline_of not in by_id.index:
            continue
        kd = by_id.loc[base.baseline_of]
        pair = f"{plain(base.baseline_of)} vs its CE-only baseline {plain(base.run_id)}"
        waiting = [f"{who} {_progress(row)}" for who, row in (("the distilled run", kd), ("the baseline", base))
                   if row.status != "succeeded"]
        ppl_kd, ppl_ce = kd.heldout_perplexity, base.heldout_perplexity
        if waiting:
            lines.append(f"- {pair}: no verdict yet: {'; '.join(waiting)}. Only finished runs' final held-out "
                         "numbers are compared.")
            continue
        if finite_number(ppl_kd) is None or finite_number(ppl_ce) is None:
            lines.append(f"- {pair}: no verdict: both finished, but not both reported held-out perplexity.")
            continue
        change = 100 * (ppl_ce - ppl_kd) / ppl_ce
        answer = "**Yes.**" if ppl_kd < ppl_ce else "**No.**"
        lines.append(f"- {answer} {plain(base.baseline_of)} (α = {kd.alpha:g}, T = {kd.temperature:g}) reaches "
                     f"held-out perplexity {ppl_kd:.2f}; plain fine-tuning ({plain(base.run_id)}, α = 1) reaches "
                     f"{ppl_ce:.2f}: "
                     f"distillation is {abs(change):.1f}% {'lower' if change > 0 else 'higher'} "
                     f"(same student, data, steps and seed; final held-out numbers of both finished runs).")
    return "### Did distillation beat plain fine-tuning?\n" + "\n".join(lines) if lines else ""
