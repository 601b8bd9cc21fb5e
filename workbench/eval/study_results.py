"""A study's numbers: one row per run (its setting, final held-out and out-of-domain perplexity, quality kept,
minutes, student size), and one row per setting with mean and spread over seeds and the KD gain over the
matching CE-only baseline, with a verdict that says "within noise" when the spread covers the gain.

Perplexities are the final evaluation's (RUN/evaluations/, the whole held-out set) where there is one, else
exp of the last held-out CE logged during training. Spread is the sample standard deviation over seeds."""
from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import pandas as pd

from workbench.config.schema import ModelSpec
from workbench.models.loading import ModelLoadError
from workbench.models.sizing import arch_info
from workbench.store.database import Store

SEED = "train.seed"
# The per-setting table's columns after the setting's own: the in-domain answer first, then out of domain.
TABLE_ORDER = ["seeds", "ppl", "ppl_sd", "ce_ppl", "ce_ppl_sd", "gain_pct", "gain_pct_sd", "verdict", "ood_ppl",
               "ood_ppl_sd", "ce_ood_ppl", "ood_gain_pct", "ood_gain_pct_sd", "ood_verdict", "quality_kept",
               "quality_kept_sd", "ood_quality_kept", "ood_quality_kept_sd", "minutes", "minutes_sd", "ce_minutes"]
NUMBERS = ("ppl", "quality_kept", "ood_ppl", "ood_quality_kept", "teacher_ppl", "untrained_ppl",
           "ood_teacher_ppl", "ood_untrained_ppl", "minutes", "params")


def _unix(value) -> float | None:
    if value is None or pd.isna(value):
        return None
    return pd.Timestamp(value).to_pydatetime().timestamp() if not isinstance(value, datetime) else value.timestamp()


def _exp(ce) -> float:
    return math.exp(ce) if ce is not None and not pd.isna(ce) and ce < 700 else float("nan")


def student_params(run_path: str | None) -> float:
    """Parameters of a run's final student, counted without reading its weights (models/sizing.arch_info)."""
    folder = Path(run_path or "") / "student"
    if not (folder / "config.json").is_file():
        return float("nan")
    try:
        return float(arch_info(ModelSpec(name_or_path=str(folder)), "student").params)
    except ModelLoadError:
        return float("nan")


def run_frame(store: Store, record: dict) -> pd.DataFrame:
    """One row per planned run: run_id, role, baseline, each varied field, status and the NUMBERS."""
    planned = pd.DataFrame([{"run_id": r["run_id"], "role": r["role"], "baseline": r["baseline"],
                             **{f: json.dumps(r["setting"].get(f)) for f in record["fields"]}}
                            for r in record["runs"]])
    ids = planned.run_id.tolist()
    runs = store.study_runs(ids).set_index("run_id")
    final = store.final_evaluations(ids).pivot_table(index="run_id", columns="metric", values="value")
    rows = []
    for _, plan in planned.iterrows():
        run = runs.loc[plan.run_id] if plan.run_id in runs.index else None
        ev = final.loc[plan.run_id] if plan.run_id in final.index else pd.Series(dtype=float)
        started, last = (_unix(run.started), run.last_log) if run is not None else (None, None)
        # status.started is the last (re)start: a resumed run logged before it, and its minutes since then
        # would be a part of its training only, so it has none
        resumed = run is not None and started is not None and not pd.isna(run.first_log) and run.first_log < started
        rows.append({**plan.to_dict(), "status": run.status if run is not None else "not queued",
                     "seed": run.seed if run is not None else None,
                     "ppl": _exp(ev.get("student_ce", run.heldout_ce if run is not None else None)),
                     "quality_kept": 100 * ev.get("quality_retained", float("nan")),
                     "ood_ppl": _exp(ev.get("ood_student_ce")),
                     "ood_quality_kept": 100 * ev.get("ood_quality_retained", float("nan")),
                     # the baseline as this run's own evaluation measured it (evaluate --baseline): same text
                     "paired_ce_ppl": _exp(ev.get("baseline_ce")), "paired_ce_ood_ppl": _exp(ev.get("ood_baseline_ce")),
                     "teacher_ppl": _exp(ev.get("teacher_ce")), "untrained_ppl": _exp(ev.get("untrained_ce")),
                     "ood_teacher_ppl": _exp(ev.get("ood_teacher_ce")),
                     "ood_untrained_ppl": _exp(ev.get("ood_untrained_ce")),
                     "started": started,
                     "minutes": (last - started) / 60 if started and last and not pd.isna(last) and not resumed
                     else float("nan"),
                     "params": student_params(run.path) if run is not None and run.status == "succeeded"
                     else float("nan")})
    return pd.DataFrame(rows)


def setting_columns(record: dict) -> list[str]:
    """The varied fields a setting is made of: all but the seed, over which a setting's runs are averaged."""
    return [f for f in record["fields"] if f != SEED]


def _spread(values: pd.Series) -> tuple[float, float, int]:
    values = values.dropna()
    n = len(values)
    return (float(values.mean()) if n else float("nan"), float(values.std(ddof=1)) if n > 1 else float("nan"), n)


def verdict(gains: pd.Series) -> str:
    """KD's gain over CE-only in % (positive: KD's perplexity lower), over seeds."""
    mean, sd, n = _spread(gains)
    if n == 0:
        return "waiting for finished pairs"
    word = "lower" if mean > 0 else "higher"
    if n == 1:
        return f"KD {abs(mean):.1f}% {word} (one seed: no spread to judge noise)"
    if abs(mean) <= sd:
        return f"within noise: {mean:+.1f}% ± {sd:.1f} over {n} seeds"
    return f"KD {abs(mean):.1f}% {word} ± {sd:.1f} over {n} seeds"


def _baseline_number(run, ce, column: str) -> float:
    """The baseline's perplexity: as the run's own evaluation measured it beside the run (on the same text),
    else from the baseline's evaluation."""
    paired = run.get(f"paired_ce_{column}")
    if paired is not None and not pd.isna(paired):
        return paired
    return ce[column] if ce is not None and ce.status == "succeeded" else float("nan")


def _gains(frame: pd.DataFrame, column: str) -> pd.Series:
    by_id = frame.set_index("run_id")
    kd = frame[(frame.role == "distilled") & frame.baseline.notna() & (frame.status == "succeeded")]
    gains = []
    for _, run in kd.iterrows():
        ce = _baseline_number(run, by_id.loc[run.baseline] if run.baseline in by_id.index else None, column)
        gains.append(100 * (ce - run[column]) / ce if ce > 0 else float("nan"))
    return pd.Series(gains, index=kd.index, dtype=float)


def setting_table(frame: pd.DataFrame, record: dict) -> pd.DataFrame:
    """One row per setting of the distilled runs: seeds finished, mean and spread of each number, the CE-only
    baselines' perplexity, and the KD gain over them with its verdict (in domain and out of domain)."""
    columns = setting_columns(record)
    frame = frame.assign(gain=_gains(frame, "ppl"), ood_gain=_gains(frame, "ood_ppl"))
    kd = frame[(frame.role == "distilled") & (frame.status == "succeeded")]
    by_id = frame.set_index("run_id")
    rows = []
    for key, group in (kd.groupby(columns, sort=False, dropna=False) if columns else [((), kd)]):
        key = key if isinstance(key, tuple) else (key,)
        row = {c: json.loads(v) for c, v in zip(columns, key)}
        row["seeds"] = len(group)
        for number in ("ppl", "ood_ppl", "quality_kept", "ood_quality_kept", "minutes"):
            row[number], row[f"{number}_sd"], _ = _spread(group[number])
        baselines = by_id.loc[[b for b in group.baseline.dropna() if b in by_id.index]]
        done = baselines[baselines.status == "succeeded"] if len(baselines) else baselines
        row["ce_ppl"], row["ce_ppl_sd"], _ = _spread(done.ppl) if len(done) else (float("nan"),) * 3
        paired = group.get("paired_ce_ood_ppl", pd.Series(dtype=float)).dropna()
        row["ce_ood_ppl"], _, _ = _spread(paired if len(paired) else done.ood_ppl if len(done) else paired)
        row["ce_minutes"], _, _ = _spread(done.minutes) if len(done) else (float("nan"),) * 3
        row["gain_pct"], row["gain_pct_sd"], _ = _spread(group.gain)
        row["ood_gain_pct"], row["ood_gain_pct_sd"], _ = _spread(group.ood_gain)
        row["verdict"] = verdict(group.gain) if group.baseline.notna().any() else "no baseline planned"
        row["ood_verdict"] = verdict(group.ood_gain) if group.ood_gain.notna().any() else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=None if not rows else [c for c in columns + TABLE_ORDER if c in rows[0]])


def _ppl_by(curve: pd.DataFrame, start: float, minutes: float) -> float | None:
    """The perplexity of the last held-out point a run had reached `minutes` after it started."""
    times = [0.0 if step == 0 else (t - start) / 60 for step, t in zip(curve.step, curve.time)]
    reached = [ce for m, ce in zip(times, curve.ce) if not pd.isna(m) and 0 <= m <= minutes]
    return _exp(reached[-1]) if reached else None


def _took(minutes: float) -> str:
    return f"{minutes * 60:.0f} s" if minutes < 1 else f"{minutes:.1f} min"


def equal_compute(runs: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    """For each finished KD run and its finished baseline: where CE-only stood after the KD run's minutes."""
    by_id, lines = runs.set_index("run_id"), []
    for _, kd in runs[(runs.role == "distilled") & (runs.status == "succeeded")].iterrows():
        ce = by_id.loc[kd.baseline] if kd.baseline in by_id.index else None
        if ce is None or ce.status != "succeeded" or pd.isna(kd.minutes) or pd.isna(ce.minutes) or not ce.started:
            continue
        if ce.minutes < kd.minutes:
            lines.append(f"{kd.run_id}: KD reached {kd.ppl:.1f} in {_took(kd.minutes)}; its CE-only baseline "
                         f"finished sooner, {ce.ppl:.1f} in {_took(ce.minutes)}: given KD's time, CE-only would "
                         f"have trained {kd.minutes / ce.minutes:.1f}× as many steps (queue that to compare at "
                         "equal compute).")
        else:
            by_then = _ppl_by(curves[curves.run_id == kd.baseline], ce.started, kd.minutes)
            if by_then is not None:
                lines.append(f"{kd.run_id}: KD reached {kd.ppl:.1f} in {_took(kd.minutes)}; CE-only had reached "
                             f"{by_then:.1f} by then ({ce.ppl:.1f} at its end, {_took(ce.minutes)}).")
    return lines


def study_table(store: Store, record: dict) -> pd.DataFrame:
    return setting_table(run_frame(store, record), record)
