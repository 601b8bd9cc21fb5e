"""Plotly figures from DataFrames (the store's tables). No gradio here: the UI only places them."""
from __future__ import annotations

import html
import json
import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

LOSS_TERMS = (("loss", "total loss"), ("ce", "CE (labels)"), ("kd", "KD (teacher)"), ("teacher_ce", "teacher CE"),
              ("teacher_kd", "teacher KD (mutual)"), ("hidden", "hidden-state term"), ("attention", "attention term"))
COLORS = {"loss": "#636efa", "ce": "#ef553b", "kd": "#00cc96", "teacher_ce": "#ab63fa", "teacher_kd": "#ffa15a",
          "hidden": "#19d3f3", "attention": "#ff6692"}  # a term's held-out points share its colour


def with_terms(metrics: pd.DataFrame) -> pd.DataFrame:
    """The store keeps the core terms as columns and every logged value in `terms` (JSON): strategies'
    own terms (teacher CE, hidden, attention, α, on-policy timings) come from there. The JSON column goes,
    so a frame already expanded is not parsed again."""
    if "terms" not in metrics:
        return metrics
    parsed = pd.DataFrame([json.loads(t) if isinstance(t, str) else {} for t in metrics.terms], index=metrics.index)
    extra = [c for c in parsed if c not in metrics]
    return pd.concat([metrics.drop(columns="terms"), parsed[extra]], axis=1)


def token_labels(tokens: list[str]) -> list[str]:
    """Axis labels for tokens: escaped (they are model output, and plotly renders a subset of HTML in
    labels), whitespace shown as escapes, and unique (two ids can decode to the same text). Quotes stay as
    they are: no tag can open once < is escaped, and plotly shows &quot; as those six characters."""
    labels, seen = [], set()
    for token in tokens:
        label = html.escape(repr(token)[1:-1], quote=False) or "(empty)"
        while label in seen:
            label += "​"  # an invisible suffix keeps plotly from merging two categories
        seen.add(label)
        labels.append(label)
    return labels


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(xaxis_visible=False, yaxis_visible=False, height=320, margin=dict(l=20, r=20, t=30, b=20))
    return fig


def run_curves(metrics: pd.DataFrame, evals: pd.DataFrame | None = None, title: str = "",
               total_steps: float | None = None) -> go.Figure:
    """One run: loss, CE and KD as separate lines (held-out points as markers, joined only where they were
    measured close together) above learning rate and tokens/s, sharing the step axis."""
    if metrics.empty:
        return _empty("no training steps logged yet")
    metrics = with_terms(metrics)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.08,
                        specs=[[{}], [{"secondary_y": True}]])
    for column, name in LOSS_TERMS:
        if column in metrics and metrics[column].notna().any():
            fig.add_trace(go.Scatter(x=metrics.step, y=metrics[column], name=name, mode="lines",
                                     line=dict(color=COLORS[column])), row=1, col=1)
    if evals is not None and not evals.empty:
        gap = heldout_gap(metrics.step.max() if total_steps is None else total_steps)  # planned, else logged so far
        for metric, rows in evals[evals.split == "validation"].groupby("metric"):
            if metric in COLORS:
                xs, ys = gapped(rows.step, rows.value, gap)
                fig.add_trace(go.Scatter(x=xs, y=ys, name=f"held-out {metric}", mode="markers+lines",
                                         connectgaps=False, line=dict(dash="dot", color=COLORS[metric])),
                              row=1, col=1)
    if metrics.learning_rate.notna().any():
        fig.add_trace(go.Scatter(x=metrics.step, y=metrics.learning_rate, name="learning rate", mode="lines",
                                 line=dict(color="gray")), row=2, col=1)
    if "alpha" in metrics and metrics.alpha.notna().any():
        fig.add_trace(go.Scatter(x=metrics.step, y=metrics.alpha, name="α (CE weight)", mode="lines",
                                 line=dict(color="black", dash="dash")), row=1, col=1)  # 0..1, on the loss axis
    if metrics.tokens_per_s.notna().any():
        fig.add_trace(go.Scatter(x=metrics.step, y=metrics.tokens_per_s, name="tokens/s", mode="lines",
                                 line=dict(color="teal")), row=2, col=1, secondary_y=True)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="lr", row=2, col=1)
    fig.update_yaxes(title_text="tok/s", row=2, col=1, secondary_y=True)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(title=title, height=520, margin=dict(l=50, r=50, t=50, b=40), legend=dict(orientation="h"))
    return fig


# Where an on-policy step's time goes, bottom to top of each bar.
STEP_PARTS = (("sample_s", "sampling", "#ffa15a"), ("teacher_s", "teacher scoring", "#636efa"),
              ("update_s", "update", "#00cc96"))


def sampled_rkl(metrics: pd.DataFrame) -> go.Figure:
    """An on-policy run's sampled_rkl at each log whose steps sampled: how far the student's own
    completions are from what the teacher would write."""
    metrics = with_terms(metrics)
    if "sampled_rkl" not in metrics or metrics.sampled_rkl.isna().all():
        return _empty("no step has sampled yet")
    points = metrics[metrics.sampled_rkl.notna()]
    fig = go.Figure(go.Scatter(x=points.step, y=points.sampled_rkl, name="reverse KL", mode="lines+markers",
                               line=dict(color="#ab63fa")))
    fig.update_layout(title=dict(text="teacher's reverse KL on the student's own samples, per token",
                                 font=dict(size=13)),
                      xaxis_title="step", yaxis_title="nats per token", height=320, margin=dict(l=50, r=20, t=40, b=40))
    return fig


def step_seconds(metrics: pd.DataFrame) -> go.Figure:
    """Seconds per step at each log of an on-policy run, stacked: sampling, the teacher's scoring forward,
    and the rest of the update. Sampling is token by token, so it is often most of a step."""
    metrics = with_terms(metrics)
    parts = [part for part in STEP_PARTS if part[0] in metrics and metrics[part[0]].notna().any()]
    if not parts:
        return _empty("no step timings logged yet")
    fig = go.Figure([go.Bar(x=metrics.step, y=metrics[column], name=name, marker_color=color)
                     for column, name, color in parts])
    # The legend above the plot: below it, a horizontal legend covers the x axis title.
    fig.update_layout(barmode="stack", xaxis_title="step", yaxis_title="seconds per step", height=320,
                      margin=dict(l=50, r=20, t=60, b=40),
                      legend=dict(orientation="h", x=0, y=1.02, xanchor="left", yanchor="bottom",
                                  traceorder="normal"))
    return fig


# What each Compare curve is, said on the plot: one axis must hold one quantity.
CURVE_NOTES = {
    "heldout_ce": "held-out CE per token: the same measure for every run, whatever its α or strategy",
    "loss": "training loss = α·CE + (1−α)·KD (+ layer terms): runs with other α or strategies are other sums",
    "sampled_rkl": "the teacher's reverse KL per token on the student's own samples (on-policy runs' sampling steps)",
}


def gapped(steps: pd.Series, values: pd.Series, max_gap: float) -> tuple[list, list]:
    """Points in step order with a break (None) between two more than max_gap steps apart, so plotly
    never draws a line through steps where nothing was measured."""
    xs, ys, last = [], [], None
    for x, y in sorted(zip(steps.tolist(), values.tolist())):
        if last is not None and x - last > max_gap:
            xs.append(None)
            ys.append(None)
        xs.append(x)
        ys.append(y)
        last = x
    return xs, ys


def heldout_gap(total_steps) -> float:
    """Held-out points further apart than a quarter of the run are not joined: with one at step 0 and one
    at the end, a line between them would read as a trend that was never measured. No known length
    (None, NaN from a damaged run): no point is joined."""
    return planned(total_steps) / 4


def planned(total_steps) -> float:
    """A run's planned length as a number of steps; 0 for none known (None, NaN, text)."""
    try:
        steps = float(total_steps)
    except (TypeError, ValueError):
        return 0.0
    return steps if math.isfinite(steps) and steps > 0 else 0.0


def compare_curves(metrics: pd.DataFrame, term: str = "loss") -> go.Figure:
    """Several runs' training curves of one term, overlaid."""
    if metrics.empty or term not in metrics or metrics[term].isna().all():
        return _empty(f"no {term} values for the chosen runs")
    fig = go.Figure()
    for run_id, rows in metrics.groupby("run_id", sort=True):
        fig.add_trace(go.Scatter(x=rows.step, y=rows[term], name=run_id, mode="lines"))
    return _compare_layout(fig, term, term)


def compare_heldout(evals: pd.DataFrame, total_steps: dict[str, float], metric: str = "ce") -> go.Figure:
    """Several runs' held-out values of one metric, overlaid: markers at the evaluated steps, joined only
    where evaluations were close together (gapped)."""
    points = evals[(evals.split == "validation") & (evals.metric == metric)] if not evals.empty else evals
    if points.empty:
        return _empty("no held-out evaluations for the chosen runs yet")
    fig = go.Figure()
    for run_id, rows in points.groupby("run_id", sort=True):
        xs, ys = gapped(rows.step, rows.value, heldout_gap(total_steps.get(run_id)))
        fig.add_trace(go.Scatter(x=xs, y=ys, name=run_id, mode="markers+lines", connectgaps=False))
    return _compare_layout(fig, f"heldout_{metric}", f"held-out {metric}")


def _compare_layout(fig: go.Figure, term: str, axis: str) -> go.Figure:
    note = CURVE_NOTES.get(term, "")
    fig.update_layout(xaxis_title="step", yaxis_title=axis, height=420, margin=dict(l=50, r=20, t=40, b=40),
                      legend=dict(orientation="h"), title=dict(text=note, font=dict(size=13)))
    return fig


def temperature_preview(tokens: list[str], probs_t1: list[float], probs_t: list[float], temperature: float,
                        context: str) -> go.Figure:
    """The teacher's top next tokens at T=1 and at the chosen T: how much 'dark knowledge' T exposes."""
    fig = go.Figure()
    labels = token_labels(tokens)
    fig.add_trace(go.Bar(x=labels, y=probs_t1, name="T = 1", marker_color="lightgray"))
    fig.add_trace(go.Bar(x=labels, y=probs_t, name=f"T = {temperature:g}", marker_color="indianred"))
    fig.update_layout(barmode="group", height=320, yaxis_title="probability", margin=dict(l=50, r=20, t=40, b=80),
                      title=dict(text=f"next token after “…{html.escape(context[-40:])}”", font=dict(size=13)),
                      legend=dict(orientation="h"))
    return fig


def token_distributions(top, temperature: float, context: str) -> go.Figure:
    """Teacher vs student at one position (an inspect.TopK): bars per token, and the mass outside them."""
    labels = token_labels(top.tokens) + ["(all other tokens)"]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=top.teacher + [top.teacher_rest], name="teacher", marker_color="#636efa"))
    fig.add_trace(go.Bar(x=labels, y=top.student + [top.student_rest], name="student", marker_color="#ef553b"))
    title = (f"next token after “…{html.escape(context[-40:])}” (actually '{token_labels([top.actual])[0]}'), "
             f"T = {temperature:g}")
    fig.update_layout(barmode="group", height=360, yaxis_title="probability", yaxis_range=[0, 1],
                      margin=dict(l=50, r=20, t=50, b=90), title=dict(text=title, font=dict(size=13)),
                      legend=dict(orientation="h"))
    return fig


def token_profile(stats: dict, tokens: list[str], selected: int | None = None) -> go.Figure:
    """Entropy of each model and the KL between them along the text (row i predicts tokens[i + 1])."""
    labels = token_labels(tokens[1:])
    x = list(range(len(labels)))
    fig = go.Figure()
    for key, name, color in (("teacher_entropy", "teacher entropy", "#636efa"),
                             ("student_entropy", "student entropy", "#ef553b"),
                             ("forward_kl", "KL(teacher ‖ student)", "#00cc96")):
        fig.add_trace(go.Scatter(x=x, y=stats[key].tolist(), name=name, mode="lines", customdata=labels,
                                 hovertemplate="%{customdata}: %{y:.3f}<extra>" + name + "</extra>",
                                 line=dict(color=color)))
    if selected is not None:
        fig.add_vline(x=selected, line_dash="dot", line_color="gray")
    fig.update_layout(height=260, xaxis_title="position", yaxis_title="nats", margin=dict(l=50, r=20, t=20, b=40),
                      legend=dict(orientation="h"))
    return fig


def trajectory_figure(traj) -> go.Figure:
    """An inspect.Trajectory: the student's probability of the teacher's top tokens at each saved step
    (solid) against the teacher's (dotted), and KL(teacher ‖ student) below."""
    if not traj.steps:
        return _empty("no saved students in this run")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.08)
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880"]
    for i, label in enumerate(token_labels(traj.tokens)):
        color = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=traj.steps, y=[row[i] for row in traj.student], name=f"student {label}",
                                 mode="lines+markers", line=dict(color=color)), row=1, col=1)
        fig.add_trace(go.Scatter(x=[traj.steps[0], traj.steps[-1]], y=[traj.teacher[i]] * 2,
                                 name=f"teacher {label}", mode="lines", line=dict(color=color, dash="dot")),
                      row=1, col=1)
    fig.add_trace(go.Scatter(x=traj.steps, y=traj.forward_kl, name="KL(teacher ‖ student)", mode="lines+markers",
                             line=dict(color="gray")), row=2, col=1)
    fig.update_yaxes(title_text="probability", row=1, col=1)
    fig.update_yaxes(title_text="KL", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(height=480, margin=dict(l=50, r=20, t=30, b=40), legend=dict(orientation="h"))
    return fig


def reliability(bins: dict[str, list[dict]]) -> go.Figure:
    """Reliability diagram: accuracy against confidence per bin, one line per model; the diagonal is
    perfect calibration. Marker size follows the bin's token count."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], name="perfectly calibrated", mode="lines",
                             line=dict(color="lightgray", dash="dash")))
    for (name, rows), color in zip(bins.items(), ("#636efa", "#ef553b", "#00cc96")):
        if not rows:
            continue
        biggest = max(r["tokens"] for r in rows)
        fig.add_trace(go.Scatter(x=[r["confidence"] for r in rows], y=[r["accuracy"] for r in rows], name=name,
                                 mode="lines+markers", line=dict(color=color),
                                 marker=dict(size=[6 + 14 * r["tokens"] / biggest for r in rows]),
                                 customdata=[r["tokens"] for r in rows],
                                 hovertemplate="confidence %{x:.2f}, accuracy %{y:.2f}, %{customdata} tokens"))
    # The legend above the plot: below it, a horizontal legend covers the x axis title.
    fig.update_layout(height=380, xaxis_title="confidence (top probability)", yaxis_title="accuracy",
                      xaxis_range=[0, 1], yaxis_range=[0, 1], margin=dict(l=50, r=20, t=50, b=50),
                      legend=dict(orientation="h", x=0, y=1.02, xanchor="left", yanchor="bottom"))
    return fig


def completion_lengths(frame: pd.DataFrame) -> go.Figure:
    """Histogram of prompt and completion lengths (words) of a teacher-written dataset; completions cut
    at max_new_tokens show as their own bar colour, since a pile-up there means the limit was too low."""
    if frame.empty:
        return _empty("no completions yet")
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=frame["prompt"].astype(str).str.split().str.len(), name="prompt", opacity=0.6))
    ended = frame.get("finish_reason", pd.Series(["stop"] * len(frame), index=frame.index))
    words = frame["completion"].astype(str).str.split().str.len()
    for reason, label in (("stop", "completion (ended)"), ("length", "completion (cut at max_new_tokens)")):
        picked = words[ended == reason]
        if len(picked):
            fig.add_trace(go.Histogram(x=picked, name=label, opacity=0.6))
    fig.update_layout(barmode="overlay", height=320, xaxis_title="words", yaxis_title="rows",
                      margin=dict(l=40, r=20, t=30, b=40))
    return fig
