"""A study's figures from eval/study_results.py's frames: the capacity-gap curve (perplexity and quality kept
against student size, teacher and untrained student marked), a heatmap over two varied fields, and held-out
perplexity against wall-clock minutes (equal compute: is KD still ahead when CE gets the same minutes?)."""
from __future__ import annotations

import html
import json
import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.eval.study_results import setting_columns

KD, CE = "#636efa", "#ef553b"
OFF_SCALE = 20  # untrained perplexity beyond this many times the trained students' is written, not drawn


def _empty(message: str) -> go.Figure:
    """A figure holding only `message` (our own text, with <br> where it should wrap)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(xaxis_visible=False, yaxis_visible=False, height=260)
    return fig


def _label(value) -> str:
    return html.escape(value if isinstance(value, str) else json.dumps(value))


def _by_size(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    done = runs[(runs.status == "succeeded") & runs.params.notna()]
    return done.groupby("params")[column].agg(["mean", "std", "count"]).reset_index().sort_values("params")


def capacity_gap(runs: pd.DataFrame) -> go.Figure:
    """Held-out perplexity (log axis) and quality kept against the student's parameters, KD and CE-only with
    their spread over seeds; out-of-domain perplexity dotted; the teacher a line, the untrained student crosses."""
    done = runs[runs.status == "succeeded"]
    if done.params.nunique() < 2:
        return _empty("The capacity-gap curve needs finished students of two sizes or more<br>"
                      "(vary student.init_from_teacher_layers, or the student)")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("held-out perplexity", "quality kept (% of the gap closed)"))
    for role, name, color in (("distilled", "KD", KD), ("baseline", "CE-only", CE)):
        part = runs[runs.role == role]
        for column, col, dash, suffix in (("ppl", 1, "solid", ""), ("ood_ppl", 1, "dot", " out of domain"),
                                          ("quality_kept", 2, "solid", ""),
                                          ("ood_quality_kept", 2, "dot", " out of domain")):
            stats = _by_size(part, column).dropna(subset=["mean"])
            if stats.empty:
                continue
            fig.add_trace(go.Scatter(x=stats.params / 1e6, y=stats["mean"], mode="lines+markers",
                                     name=name + suffix, legendgroup=name + suffix, showlegend=col == 1,
                                     line={"color": color, "dash": dash},
                                     error_y={"type": "data", "array": stats["std"].fillna(0)}), row=1, col=col)
    untrained = _by_size(done, "untrained_ppl").dropna(subset=["mean"])
    trained = done[["ppl", "ood_ppl"]].max().max()
    if not untrained.empty and untrained["mean"].max() <= OFF_SCALE * trained:
        fig.add_trace(go.Scatter(x=untrained.params / 1e6, y=untrained["mean"], mode="markers", name="untrained student",
                                 marker={"symbol": "x", "size": 10, "color": "#555"}), row=1, col=1)
    elif not untrained.empty:  # a pruned student starts in the millions: on the axis it would flatten the curves
        far = ", ".join(f"{p / 1e6:.0f}M: {v:,.0f}" for p, v in zip(untrained.params, untrained["mean"]))
        fig.add_annotation(text=f"untrained students (off this scale): {far}", xref="x domain", yref="y domain",
                           x=0, y=1.0, showarrow=False, xanchor="left", font={"size": 10}, row=1, col=1)
    teacher = done.teacher_ppl.dropna()
    if not teacher.empty:
        fig.add_hline(y=float(teacher.mean()), line_dash="dash", line_color="#00cc96", row=1, col=1,
                      annotation_text=f"teacher {teacher.mean():.1f}")
    fig.add_hline(y=100, line_dash="dash", line_color="#00cc96", row=1, col=2, annotation_text="teacher")
    drawn = [v for t in fig.data if t.yaxis in (None, "y") for v in t.y if v and v > 0]
    if teacher.size:
        drawn.append(float(teacher.mean()))
    # an explicit range: plotly's log autorange also counts annotations and error bars far off the data
    fig.update_yaxes(type="log", row=1, col=1,
                     range=[math.log10(min(drawn) / 1.3), math.log10(max(drawn) * 1.3)] if drawn else None)
    fig.update_xaxes(title_text="student parameters (millions)")
    fig.update_layout(height=380, margin={"t": 40})
    return fig


def heatmap(table: pd.DataFrame, record: dict, value: str = "ppl") -> go.Figure:
    """Mean `value` over the first two varied fields (seeds and any further fields averaged)."""
    fields = setting_columns(record)
    if len(fields) < 2 or table.empty:
        return _empty("A heatmap needs a study that varies two fields besides the seed<br>"
                      "(e.g. loss.alpha and loss.temperature)")
    x, y = fields[:2]
    cells = table.assign(**{x: table[x].map(_label), y: table[y].map(_label)}).pivot_table(
        index=y, columns=x, values=value, aggfunc="mean")
    text = [[f"{v:.1f}" if not math.isnan(v) else "" for v in row] for row in cells.values]
    fig = go.Figure(go.Heatmap(z=cells.values, x=list(cells.columns), y=list(cells.index), text=text,
                               texttemplate="%{text}", colorscale="Viridis_r", colorbar={"title": value}))
    fig.update_layout(xaxis_title=html.escape(x), yaxis_title=html.escape(y), height=360,
                      title=f"{'held-out perplexity' if value == 'ppl' else value} (mean over seeds)")
    return fig


def wall_clock(runs: pd.DataFrame, curves: pd.DataFrame) -> go.Figure:
    """Every run's held-out perplexity against minutes since it started: KD solid, CE-only dashed."""
    if curves.empty:
        return _empty("No held-out evaluations yet.")
    fig = go.Figure()
    started = runs.set_index("run_id").started
    for run_id, points in curves.groupby("run_id", sort=True):
        role = runs.set_index("run_id").role.get(run_id)
        start = started.get(run_id)
        minutes = [0.0 if step == 0 else (t - start) / 60 if start and not pd.isna(t) else None
                   for step, t in zip(points.step, points.time)]
        # points before a resume lie before the last start (negative minutes): the minutes axis is one segment
        keep = [(m, math.exp(ce)) for m, ce in zip(minutes, points.ce) if m is not None and m >= 0 and ce < 700]
        if not keep:
            continue
        fig.add_trace(go.Scatter(x=[m for m, _ in keep], y=[p for _, p in keep], mode="lines+markers",
                                 name=html.escape(run_id),
                                 line={"color": KD if role == "distilled" else CE,
                                       "dash": "solid" if role == "distilled" else "dash"}))
    fig.update_layout(xaxis_title="minutes since the run started", yaxis_title="held-out perplexity",
                      yaxis_type="log", height=380, title="Equal compute: KD (solid) and CE-only (dashed) by minutes")
    return fig
