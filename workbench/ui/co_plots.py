"""A co-distillation run in Runs: the teacher's and the student's CE with the scheduled α on one plot, the
early phase (α's warm-up, while the live teacher is still noisy) shaded, the step from which the teacher
knows more than the student marked, and a caption saying so in words. No gradio here, as in plots.py."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from workbench.store.rundir import finite_number
from workbench.ui.plots import COLORS, _empty, gapped, heldout_gap, planned, with_terms

# The two learners: the teacher's CE and the student's, training and held-out (the evaluation during
# training keeps every term compute_loss returns, teacher_ce included).
CO_LEARNERS = (("teacher_ce", "teacher CE"), ("ce", "student CE"))
CO_INTRO = ("**Teacher and student learn together.** The solid lines are each model's cross-entropy on the "
            "training labels at each logged step (lower is better): the teacher's in purple, the student's in "
            "red; the dotted points are the same measured on held-out text. The dashed line, on the right axis, "
            "is α: the weight of the student's own CE, while 1 − α goes to what the teacher predicts.")


@dataclass(frozen=True)
class Schedule:
    """α's schedule as the run's config set it; start and end are None when the config does not say."""
    start: float | None
    end: float | None
    warmup: int


def schedule_of(config: dict) -> Schedule:
    """The co_distillation section of a run's config (a dict read from its files: any value is checked)."""
    section = config.get("co_distillation") if isinstance(config, dict) else None
    section = section if isinstance(section, dict) else {}
    start, end = (finite_number(section.get(key)) for key in ("alpha_start", "alpha_end"))
    warmup = finite_number(section.get("alpha_warmup_steps"))
    return Schedule(start, end, int(min(max(warmup, 0), 1e9)) if warmup is not None else 0)


def teacher_ahead_from(metrics: pd.DataFrame) -> float | None:
    """The first logged step at which the teacher's training CE is below the student's: from there the
    teacher knows more than the student. None when it never is, or no teacher CE was logged."""
    metrics = with_terms(metrics)
    if metrics.empty or "teacher_ce" not in metrics or "ce" not in metrics:
        return None
    ahead = metrics[metrics.teacher_ce.notna() & metrics.ce.notna() & (metrics.teacher_ce < metrics.ce)]
    return None if ahead.empty else float(ahead.step.min())


def co_distillation_curves(metrics: pd.DataFrame, evals: pd.DataFrame | None = None, warmup: int = 0,
                           total_steps: float | None = None) -> go.Figure:
    """The teacher's and the student's CE per logged step (held-out points dotted) on the left axis, α on
    the right (0-1), the early phase (steps 0..warmup, cut at the run's planned end) shaded, and the step
    from which the teacher is ahead marked."""
    metrics = with_terms(metrics)
    if metrics.empty:
        return _empty("no training steps logged yet")
    fig = go.Figure()
    for column, name in CO_LEARNERS:
        if column in metrics and metrics[column].notna().any():
            fig.add_trace(go.Scatter(x=metrics.step, y=metrics[column], name=name, mode="lines",
                                     line=dict(color=COLORS[column])))
    if evals is not None and not evals.empty:
        gap = heldout_gap(metrics.step.max() if total_steps is None else total_steps)
        for column, name in CO_LEARNERS:
            rows = evals[(evals.split == "validation") & (evals.metric == column)]
            if not rows.empty:
                xs, ys = gapped(rows.step, rows.value, gap)
                fig.add_trace(go.Scatter(x=xs, y=ys, name=f"held-out {name}", mode="markers+lines",
                                         connectgaps=False, line=dict(dash="dot", color=COLORS[column])))
    if "alpha" in metrics and metrics.alpha.notna().any():
        fig.add_trace(go.Scatter(x=metrics.step, y=metrics.alpha, name="α (student's CE weight)", mode="lines",
                                 yaxis="y2", line=dict(color="black", dash="dash")))
    end = min(warmup, planned(total_steps) or warmup)  # a warm-up longer than the run ends with the run
    if end > 0:
        fig.add_vrect(x0=0, x1=end, fillcolor="gray", opacity=0.15, line_width=0, layer="below",
                      annotation_text="early phase: the teacher is still noisy", annotation_position="top left")
    ahead = teacher_ahead_from(metrics)
    if ahead is not None:
        fig.add_vline(x=ahead, line_dash="dot", line_color=COLORS["teacher_ce"],
                      annotation_text="teacher ahead from here", annotation_position="bottom right")
    # The legend above the plot: below it, a horizontal legend covers the x axis title.
    fig.update_layout(xaxis_title="step", yaxis=dict(title="CE (nats per token)"),
                      yaxis2=dict(title="α", overlaying="y", side="right", range=[0, 1.05], showgrid=False,
                                  tickmode="array", tickvals=[0, 0.25, 0.5, 0.75, 1]),
                      height=400, margin=dict(l=50, r=50, t=60, b=40),
                      legend=dict(orientation="h", x=0, y=1.02, xanchor="left", yanchor="bottom"))
    return fig


def co_caption(metrics: pd.DataFrame, schedule: Schedule, total_steps: float | None = None) -> str:
    """What the plot shows, in words, from numbers only: nothing read from the run's files as text reaches
    this Markdown. `total_steps`: the run's planned length, if known."""
    metrics = with_terms(metrics)
    return f"{CO_INTRO}\n\n{_phase_text(schedule, planned(total_steps))} {_ahead_text(metrics, schedule)}"


def _alpha(value: float | None) -> str:
    return "" if value is None else f" ({value:g})"


def _phase_text(schedule: Schedule, total: float) -> str:
    if schedule.warmup <= 0:
        return ("This run has no early phase: `alpha_warmup_steps` is 0, so α is at its end value"
                f"{_alpha(schedule.end)} from the first step and the student listens to the teacher at once, "
                "noisy or not.")
    band = (f"steps 0 to {schedule.warmup}" if not total or schedule.warmup < total else
            f"the whole run: its α warm-up of {schedule.warmup} steps is longer than the run's {total:.0f}")
    return (f"The shaded band ({band}) is the early phase. The teacher trains alongside the "
            "student, so at first what it predicts is close to noise: α starts high"
            f"{_alpha(schedule.start)} and the student leans on the labels. Over those steps α moves to its end "
            f"value{_alpha(schedule.end)}, handing weight to the teacher as it learns.")


def _ahead_text(metrics: pd.DataFrame, schedule: Schedule) -> str:
    if metrics.empty:
        return "No training steps are logged yet."
    if "teacher_ce" not in metrics or metrics.teacher_ce.isna().all():
        return ("This run logged no teacher CE (it was trained before that term was logged), so only the "
                "student's CE and α are drawn.")
    ahead = teacher_ahead_from(metrics)
    if ahead is None:
        return ("The teacher's CE has **not yet** dropped below the student's: so far the student learns from a "
                "teacher that knows no more than itself.")
    both = metrics[metrics.teacher_ce.notna() & metrics.ce.notna()]
    if ahead <= both.step.min():
        return (f"The teacher's CE was below the student's from the first logged step ({ahead:.0f}): this teacher "
                "began ahead (a trained checkpoint), so the early phase is a precaution here rather than a need.")
    text = (f"The teacher's CE first dropped below the student's at step {ahead:.0f} (the vertical dotted line): from "
            "there the teacher knows more than the student, and its predictions are worth learning from.")
    if schedule.warmup <= 0:
        return text
    if ahead > schedule.warmup:
        return (f"{text} That is after the early phase ended: in between, the student gave weight 1 − α to a "
                "teacher that still knew less than itself; a longer `alpha_warmup_steps` would have waited for it.")
    return f"{text} That is within the early phase, so the teacher was ahead before α reached its end value."
