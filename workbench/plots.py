"""Plotly figures from DataFrames (the store's tables). No gradio here: the UI only places them."""
from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

LOSS_TERMS = (("loss", "total loss"), ("ce", "CE (labels)"), ("kd", "KD (teacher)"))
COLORS = {"loss": "#636efa", "ce": "#ef553b", "kd": "#00cc96"}  # a term's held-out points share its colour


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(xaxis_visible=False, yaxis_visible=False, height=320, margin=dict(l=20, r=20, t=30, b=20))
    return fig


def run_curves(metrics: pd.DataFrame, evals: pd.DataFrame | None = None, title: str = "") -> go.Figure:
    """One run: loss, CE and KD as separate lines (held-out points as markers) above learning rate and
    tokens/s, sharing the step axis."""
    if metrics.empty:
        return _empty("no training steps logged yet")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.08,
                        specs=[[{}], [{"secondary_y": True}]])
    for column, name in LOSS_TERMS:
        if column in metrics and metrics[column].notna().any():
            fig.add_trace(go.Scatter(x=metrics.step, y=metrics[column], name=name, mode="lines",
                                     line=dict(color=COLORS[column])), row=1, col=1)
    if evals is not None and not evals.empty:
        for metric, rows in evals[evals.split == "validation"].groupby("metric"):
            if metric in ("loss", "ce", "kd"):
                fig.add_trace(go.Scatter(x=rows.step, y=rows.value, name=f"held-out {metric}",
                                         mode="markers+lines", line=dict(dash="dot", color=COLORS[metric])),
                              row=1, col=1)
    if metrics.learning_rate.notna().any():
        fig.add_trace(go.Scatter(x=metrics.step, y=metrics.learning_rate, name="learning rate", mode="lines",
                                 line=dict(color="gray")), row=2, col=1)
    if metrics.tokens_per_s.notna().any():
        fig.add_trace(go.Scatter(x=metrics.step, y=metrics.tokens_per_s, name="tokens/s", mode="lines",
                                 line=dict(color="teal")), row=2, col=1, secondary_y=True)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="lr", row=2, col=1)
    fig.update_yaxes(title_text="tok/s", row=2, col=1, secondary_y=True)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(title=title, height=520, margin=dict(l=50, r=50, t=50, b=40), legend=dict(orientation="h"))
    return fig


def compare_curves(metrics: pd.DataFrame, term: str = "loss") -> go.Figure:
    """Several runs' training curves of one term, overlaid."""
    if metrics.empty or term not in metrics or metrics[term].isna().all():
        return _empty(f"no {term} values for the chosen runs")
    fig = go.Figure()
    for run_id, rows in metrics.groupby("run_id", sort=True):
        fig.add_trace(go.Scatter(x=rows.step, y=rows[term], name=run_id, mode="lines"))
    fig.update_layout(xaxis_title="step", yaxis_title=term, height=420, margin=dict(l=50, r=20, t=30, b=40),
                      legend=dict(orientation="h"))
    return fig


def temperature_preview(tokens: list[str], probs_t1: list[float], probs_t: list[float], temperature: float,
                        context: str) -> go.Figure:
    """The teacher's top next tokens at T=1 and at the chosen T: how much 'dark knowledge' T exposes."""
    fig = go.Figure()
    # Tokens are model output: escaped, since plotly renders a subset of HTML in labels.
    labels = [html.escape(repr(t)[1:-1]) or "(empty)" for t in tokens]
    fig.add_trace(go.Bar(x=labels, y=probs_t1, name="T = 1", marker_color="lightgray"))
    fig.add_trace(go.Bar(x=labels, y=probs_t, name=f"T = {temperature:g}", marker_color="indianred"))
    fig.update_layout(barmode="group", height=320, yaxis_title="probability", margin=dict(l=50, r=20, t=40, b=80),
                      title=dict(text=f"next token after “…{html.escape(context[-40:])}”", font=dict(size=13)),
                      legend=dict(orientation="h"))
    return fig
