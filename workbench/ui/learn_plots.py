"""The Learn tab's plotly figures: soft vs hard labels at one position, the loss split into its two terms,
KL's gradient size against T, and the storage cost of a teacher's signal. No gradio here; token text is
model output and goes through plots.token_labels (escaped) before it reaches a figure."""
from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from workbench.engine.storage_cost import FORMATS, Cost, human_bytes
from workbench.eval.lesson import GradientCurve, LossTerms, PositionView
from workbench.ui.plots import token_labels

HARD, TEACHER_T1, TEACHER_T, STUDENT = "#374151", "#c7d2fe", "#636efa", "#ef553b"
CE_COLOR, KD_COLOR, LEFT_OUT = "#ef553b", "#00cc96", "#e5e7eb"
FORMAT_COLORS = dict(zip(FORMATS, ("#636efa", "#19d3f3", "#00cc96", "#374151")))


def labels_figure(view: PositionView, temperature: float) -> go.Figure:
    """The hard label (one-hot on the actual token) beside the teacher's soft label at T = 1 and at T, and the
    untrained student's distribution at T, over the teacher's top tokens and everything else as one bar."""
    labels = token_labels(view.tokens) + ["(all other tokens)"]
    rest_t1 = max(0.0, 1 - sum(view.teacher_t1))
    rest_student = max(0.0, 1 - sum(view.student_t))
    fig = go.Figure([
        go.Bar(x=labels, y=view.hard + [0.0], name="hard label (the text)", marker_color=HARD),
        go.Bar(x=labels, y=view.teacher_t1 + [rest_t1], name="teacher, T = 1", marker_color=TEACHER_T1),
        go.Bar(x=labels, y=view.teacher_t + [view.teacher_rest_t], name=f"teacher, T = {temperature:g}",
               marker_color=TEACHER_T),
        go.Bar(x=labels, y=view.student_t + [rest_student], name=f"untrained student, T = {temperature:g}",
               marker_color=STUDENT),
    ])
    actual, argmax = token_labels([view.token(view.actual_id), view.token(view.argmax_id)])
    title = (f"next token after “…{html.escape(view.context[-40:], quote=False)}”: actually '{actual}', "
             f"teacher's top choice '{argmax}'")
    fig.update_layout(barmode="group", height=380, yaxis_title="probability", yaxis_range=[0, 1],
                      margin=dict(l=50, r=20, t=50, b=90), title=dict(text=title, font=dict(size=13)),
                      legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"))
    return fig


def loss_figure(terms: LossTerms) -> go.Figure:
    """Each term's full bar is its value alone; the coloured part is what enters the loss at this α, and
    the right-hand bar stacks the two coloured parts: the loss itself."""
    ce_bar, kd_bar, total = "hard label: CE", "soft label: T²·KL", "loss"
    fig = go.Figure([
        go.Bar(x=[ce_bar, total], y=[terms.weighted_ce] * 2, name=f"α·CE = {terms.weighted_ce:.3f}",
               marker_color=CE_COLOR),
        go.Bar(x=[kd_bar, total], y=[terms.weighted_kd] * 2, name=f"(1−α)·T²·KL = {terms.weighted_kd:.3f}",
               marker_color=KD_COLOR),
        go.Bar(x=[ce_bar, kd_bar], y=[terms.ce - terms.weighted_ce, terms.kd - terms.weighted_kd],
               name="left out by the weight", marker_color=LEFT_OUT),
    ])
    fig.update_layout(barmode="stack", height=340, yaxis_title="nats", margin=dict(l=50, r=20, t=50, b=40),
                      title=dict(text=f"α = {terms.alpha:g}, T = {terms.temperature:g}: loss {terms.total:.3f} "
                                      f"(CE {terms.ce:.3f}, KL {terms.kl:.4f}, T²·KL {terms.kd:.3f})",
                                 font=dict(size=13)),
                      legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"))
    return fig


def gradient_figure(curve: GradientCurve, temperature: float, at_t: float) -> go.Figure:
    """‖d KL / d student logits‖ against T, without and with the T² factor, on log axes; `at_t` the size
    without T² at the chosen T, marked on both curves."""
    fig = go.Figure([
        go.Scatter(x=curve.temperatures, y=curve.plain, name="KL alone: ‖(q_T − p_T)/T‖", mode="lines",
                   line=dict(color="#9ca3af", dash="dash")),
        go.Scatter(x=curve.temperatures, y=curve.scaled, name="T²·KL (training): ‖T·(q_T − p_T)‖",
                   mode="lines", line=dict(color=KD_COLOR)),
        go.Scatter(x=[temperature] * 2, y=[at_t, at_t * temperature ** 2], name=f"T = {temperature:g}",
                   mode="markers", marker=dict(color="black", size=9)),
    ])
    fig.update_xaxes(type="log", title_text="temperature T")
    fig.update_yaxes(type="log", title_text="gradient norm")
    fig.update_layout(height=340, margin=dict(l=60, r=20, t=50, b=40),
                      title=dict(text="size of the teacher term's pull on the student's logits, this position",
                                 font=dict(size=13)),
                      legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"))
    return fig


def _byte_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """Powers of 1000 between low and high, labelled in human units (a log axis of raw exponents reads badly)."""
    first, last = math.floor(math.log10(max(low, 1)) / 3), math.ceil(math.log10(max(high, 1)) / 3)
    values = [1000.0 ** p for p in range(first, last + 1)]
    return values, [human_bytes(v) for v in values]


def storage_figure(costs: list[Cost], k: int) -> go.Figure:
    """Bytes to keep each format for each scenario, grouped by scenario, on a log axis in human units."""
    fig = go.Figure()
    for name in FORMATS:
        rows = [c for c in costs if c.format == name]
        label = f"top-{k} cache" if name == "top-k cache" else name
        # Sizes written upright above their bars: four groups of four side by side leave no room across.
        fig.add_trace(go.Bar(x=[html.escape(c.scenario, quote=False) for c in rows], y=[c.total for c in rows],
                             name=label, marker_color=FORMAT_COLORS[name], text=[human_bytes(c.total) for c in rows],
                             textposition="outside", textangle=-90, textfont=dict(size=10), cliponaxis=False,
                             customdata=[c.bytes_per_token for c in rows],
                             hovertemplate="%{text} (%{customdata:,} bytes per token)<extra>" + label + "</extra>"))
    low, high = min(c.total for c in costs), max(c.total for c in costs)
    values, texts = _byte_ticks(low, high)
    # Headroom above the tallest bar for its label: 1.5 decades on the log axis.
    fig.update_yaxes(type="log", tickvals=values, ticktext=texts, title_text="storage",
                     range=[math.log10(max(low, 1)) - 0.3, math.log10(max(high, 1)) + 1.5])
    fig.update_layout(barmode="group", height=440, margin=dict(l=60, r=20, t=50, b=60),
                      title=dict(text="what keeping the teacher's signal costs (decimal units: 1 GB = 10⁹ bytes)",
                                 font=dict(size=13)),
                      legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"))
    return fig
