"""Inspect tab: a text as tokens coloured by teacher-student divergence; click a token for both
next-token distributions; temperature, top-k and the colouring re-read cached logits; a step slider
walks the run's saved students and a plot follows one position across training. "Sample" shows the
student's own text instead: its answer to a held-out prompt, coloured by how strongly the teacher
disagrees with each token it chose (the on-policy measure's view, token by token). A cross-tokenizer run's
teacher reads other tokens: its student tokens are coloured by ULD where both models have read the same
text, and each model's own top-k is shown (Sample needs one tokenizer)."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import gradio as gr
import plotly.graph_objects as go

from workbench.config.escaping import plain
from workbench.eval.aligned_tokens import (
    ALIGNED_STATS,
    AS_ALIGNED,
    UNALIGNED,
    AlignedAnalysis,
    AlignedTopK,
    aligned_stats,
    aligned_top_k,
)
from workbench.eval.on_policy_measure import SampledAnswer
from workbench.eval.token_stats import STATS, token_stats, top_k
from workbench.models.students import StudentPoint
from workbench.ui.heatmap import CLICK_JS, CSS, token_heatmap
from workbench.ui.plots import token_distributions, token_labels, token_profile, trajectory_figure
from workbench.ui.pickers import run_picker
from workbench.ui.services import Services

STAT_CHOICES = [(label, key) for key, label in STATS.items()]
ALIGNED_CHOICES = [(label, key) for key, label in ALIGNED_STATS.items()]
_KL = "KL(teacher ‖ student)"  # the divergence trace's name in plots.token_profile and plots.trajectory_figure


@dataclass
class View:
    summary: str
    heatmap: str
    distributions: object
    profile: object
    positions: int          # rows the text has: the position slider's range is [first, positions - 1]
    position: int
    point: StudentPoint
    first: int = 0          # the first row shown coloured: a sampled answer's prompt is context only


def nearest_point(points: list[StudentPoint], step: float | None) -> StudentPoint:
    """The saved student closest to `step` (the slider moves over steps; only some are saved)."""
    if step is None:
        return points[-1]
    return min(points, key=lambda p: (abs(p.step - step), -p.step))


def inspect_view(services: Services, run_id: str, step: float | None, text: str, temperature: float, k: int,
                 stat: str, position: int | None, sampled: tuple[int, int] | None = None) -> View:
    """The view of `text`, or with `sampled` = (held-out prompt index, seed) of the student's own answer to
    that prompt: the prompt is context, the answer coloured, and the position shown first is the answer
    token the chosen statistic rates highest. Made on the inspector's single-threaded workers."""
    return services.inspector.on_torch(_inspect_view, services, run_id, step, text, temperature, k, stat, position,
                                       sampled)


def _inspect_view(services: Services, run_id: str, step: float | None, text: str, temperature: float, k: int,
                  stat: str, position: int | None, sampled: tuple[int, int] | None) -> View:
    inspector = services.inspector
    point = nearest_point(inspector.points(run_id), step)
    found = inspector.sampled(run_id, point.key, *sampled) if sampled is not None else None
    analysis = found.analysis if found else inspector.analysis(run_id, point.key, text)
    if isinstance(analysis, AlignedAnalysis):
        return aligned_view(analysis, point, temperature, k, stat, position)
    if stat not in STATS:
        raise ValueError(f"colour by: {stat!r} is not measured here; choose one of {', '.join(STATS)}")
    first = found.prompt_len - 1 if found else 0
    stats = token_stats(analysis, temperature)
    rows = len(analysis)
    if position is None:
        position = first + int(stats[stat][first:].argmax()) if found else rows - 1
    position = min(max(int(position), first), rows - 1)
    tokenizer = inspector.tokenizer(run_id)
    top = top_k(analysis, tokenizer, position, temperature, int(k))
    context = tokenizer.decode(analysis.token_ids[:position + 1])
    head = _answer_summary(found, sampled, point, stats, temperature) if found else (
        f"**{point.label}** (step {point.step}) vs the teacher, {rows + 1} tokens, both models run in "
        f"{analysis.seconds:.2f} s (cached: sliders re-read the logits). At T = {temperature:g}: mean "
        f"KL(teacher ‖ student) {float(stats['forward_kl'].mean()):.3f} nats, top-1 agreement "
        f"{100 * float(stats['agree'].mean()):.0f}%, teacher mass outside its top token "
        f"{100 * float(stats['dark_mass'].mean()):.0f}% on average.")
    summary = (f"{head}\n\n**Position {position}** (predicting {plain(repr(top.actual))}): "
               + ", ".join(f"{STATS[key]} {float(stats[key][position]):.3f}" for key in STATS))
    return View(summary, token_heatmap(analysis.tokens, stats[stat].tolist(), STATS[stat], position, first + 1),
                token_distributions(top, temperature, context), token_profile(stats, analysis.tokens, position),
                rows, position, point, first)


def aligned_view(analysis: AlignedAnalysis, point: StudentPoint, temperature: float, k: int, stat: str,
                 position: int | None) -> View:
    """The view of a text for a cross-tokenizer run: student tokens coloured where a teacher position has
    read the same text (KL and JSD need one vocabulary: they are read as ULD), the others greyed."""
    stat = AS_ALIGNED.get(stat, stat)
    if stat not in ALIGNED_STATS:
        raise ValueError(f"colour by: {stat!r} is not measured across two tokenizers")
    stats = aligned_stats(analysis, temperature)
    rows = len(analysis)
    position = rows - 1 if position is None else min(max(int(position), 0), rows - 1)
    top = aligned_top_k(analysis, position, temperature, int(k))
    aligned = int(analysis.aligned.sum())
    head = (f"**{point.label}** (step {point.step}) vs a teacher that reads other tokens: the student's {rows + 1} "
            f"tokens, the teacher's {len(analysis.teacher_ids)} of the same text, both models run in "
            f"{analysis.seconds:.2f} s (cached). A student position is compared with the teacher position that has "
            f"read exactly the same text: {aligned} of {rows} ({100 * analysis.share:.0f}%) here; grey tokens have "
            f"none (no teacher position ends there). At T = {temperature:g}, over aligned positions: mean ULD "
            f"{_mean(stats['uld']):.3f} (sorted probabilities, 0 to 2), the same most likely next text "
            f"{100 * _mean(stats['agree']):.0f}% of the time.")
    values = (", ".join(f"{ALIGNED_STATS[key]} {float(stats[key][position]):.3f}" for key in ALIGNED_STATS)
              if analysis.aligned[position] else f"{UNALIGNED}; student entropy "
              f"{float(stats['student_entropy'][position]):.3f}, surprise {float(stats['student_nll'][position]):.3f}")
    same = ", ".join(plain(repr(text)) for text in top.shared) or "none"
    summary = (f"{head}\n\n**Position {position}** (predicting {plain(repr(top.actual))}): {values}. Each model's "
               f"own top-{int(k)} is below, ranked by its own probability; ULD compares the two sorted probability "
               f"vectors rank by rank, not token by token. Same text in both top-{int(k)}: {same}.")
    profile = token_profile({"teacher_entropy": stats["teacher_entropy"], "student_entropy": stats["student_entropy"],
                             "forward_kl": stats["uld"]}, analysis.tokens, position)
    relabel(profile, "entropy (nats); ULD (0 to 2)")
    gaps = (~analysis.aligned).tolist()
    return View(summary, token_heatmap(analysis.tokens, stats[stat].tolist(), ALIGNED_STATS[stat], position,
                                       gaps=gaps, gap_title=UNALIGNED),
                aligned_distributions(top, temperature, "".join(analysis.tokens[:position + 1])), profile,
                rows, position, point)


def _mean(values) -> float:
    """The mean over aligned positions (NaN elsewhere); NaN where none is aligned."""
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


def relabel(fig: go.Figure, y_title: str, **axis) -> go.Figure:
    """A figure from workbench/ui/plots.py whose KL trace holds ULD across tokenizers, named for it; `axis`
    picks the y axis to retitle (row=, col= in a figure of subplots)."""
    fig.for_each_trace(lambda trace: trace.update(name="ULD", hovertemplate=(trace.hovertemplate or "").replace(
        _KL, "ULD") or None), selector=dict(name=_KL))
    fig.update_yaxes(title_text=y_title, **axis)
    return fig


def aligned_distributions(top: AlignedTopK, temperature: float, context: str) -> go.Figure:
    """Each model's own top-k by rank, its token texts on its bars (≡: the same text is in both lists)."""
    fig = go.Figure()
    for name, tokens, probs, colour in (("teacher", top.teacher_tokens, top.teacher, "#636efa"),
                                        ("student", top.student_tokens, top.student, "#ef553b")):
        if not tokens:
            continue
        labels = [("≡ " if text in top.shared else "") + label for text, label in zip(tokens, token_labels(tokens))]
        fig.add_trace(go.Bar(x=list(range(1, len(probs) + 1)), y=probs, name=name, marker_color=colour, text=labels,
                             textposition="outside", textangle=-60, cliponaxis=False, hovertext=labels,
                             hovertemplate="%{hovertext}: %{y:.3f}<extra>" + name + "</extra>"))
    highest = min(1.0, 1.3 * max(top.teacher + top.student))  # room above the bars for their texts
    compared = (f"ULD {top.uld:.3f} (rank by rank)" if top.teacher_tokens
                else "no teacher position ends here: the student's alone")
    title = (f"each model's own next tokens after “…{html.escape(context[-40:])}” (actually "
             f"'{token_labels([top.actual])[0]}'), T = {temperature:g}: {compared}")
    fig.update_layout(barmode="group", height=380, xaxis_title="rank (each model's own tokens)",
                      yaxis_title="probability", yaxis_range=[0, highest], margin=dict(l=50, r=20, t=50, b=50),
                      title=dict(text=title, font=dict(size=13)), legend=dict(orientation="h"), xaxis_dtick=1)
    return fig


def _answer_summary(found: SampledAnswer, sampled: tuple[int, int], point: StudentPoint, stats: dict,
                    temperature: float) -> str:
    """The on-policy measure's numbers for this one answer (T = 1), and agreement at the chosen T."""
    terms = found.terms()
    answer = found.analysis.token_ids[found.prompt_len:]
    agree = stats["agree"][found.prompt_len - 1:]
    return (f"**{point.label}** (step {point.step}) answered held-out prompt {int(sampled[0]) + 1} (shown faded) "
            f"with {len(answer)} tokens of its own, sampled at T = 1 with seed {int(sampled[1])}; sampling and both "
            f"models took {found.analysis.seconds:.2f} s (cached). Per answer token at T = 1: KL(student ‖ teacher) "
            f"{float(terms['rkl'].mean()):.3f} nats, the teacher's log-probability of the student's token "
            f"{float(terms['teacher_logp'].mean()):.2f} (the student's own {float(terms['student_logp'].mean()):.2f}). "
            f"At T = {temperature:g}: top-1 agreement {100 * float(agree.mean()):.0f}% on the answer.")


def _runs(services: Services) -> list[str]:
    runs = services.store.runs()
    return runs[runs.status.isin(["succeeded", "running", "cancelled", "failed", "interrupted"])].run_id.tolist()


def create_inspect_tab(services: Services) -> None:
    with gr.Tab("Inspect", id="inspect") as tab:
        gr.Markdown("Per token: how the student's next-token distribution differs from the teacher's. Colour "
                    "shows the chosen statistic; **click a token** to see both distributions that predicted it. "
                    "**Sample** shows the student's own text instead: its answer to a held-out prompt, coloured "
                    "by how strongly the teacher disagrees with each token it chose.")
        with gr.Row():
            run = gr.Dropdown(_runs(services), label="Run", elem_id="inspect-run")
            step = gr.Slider(0, 1, value=1, step=1, label="Training step (nearest saved student)",
                             elem_id="inspect-step")
        with gr.Row():
            text = gr.Textbox(label="Text (up to 256 tokens)", lines=3, scale=3, elem_id="inspect-text",
                              value="In the beginning God created the heaven and the earth.")
            sample = gr.Dropdown([], label="…or a held-out text", scale=2)
        with gr.Row():
            prompt = gr.Dropdown([], label="…or a held-out prompt the student answers itself", scale=3,
                                 elem_id="inspect-prompt")
            seed = gr.Number(0, precision=0, minimum=0, label="Seed", scale=1, elem_id="inspect-seed")
            sample_button = gr.Button("Sample", scale=1, elem_id="inspect-sample")
        with gr.Row():
            temperature = gr.Slider(0.25, 8, value=1, step=0.25, label="Temperature T", elem_id="inspect-temperature")
            k = gr.Slider(3, 30, value=10, step=1, label="Top-k tokens")
            # Its choices change with the run (two tokenizers: ULD); the view checks the value itself, so
            # Gradio's own check, which may compare with the other run's choices, is off.
            stat = gr.Dropdown(STAT_CHOICES, value="forward_kl", label="Colour by", allow_custom_value=True)
        inspect_button = gr.Button("Inspect", variant="primary", elem_id="inspect-go")
        summary = gr.Markdown(elem_id="inspect-summary")
        heatmap = gr.HTML("", css_template=CSS, js_on_load=CLICK_JS, elem_id="inspect-heatmap")
        position = gr.Slider(0, 1, value=0, step=1, label="Position (or click a token)", elem_id="inspect-position")
        distributions = gr.Plot(label="Teacher vs student at the position", elem_id="inspect-distributions")
        profile = gr.Plot(label="Entropy and KL along the text")
        with gr.Accordion("Across training: this position at every saved student", open=False):
            follow = gr.Button("Follow this position across training", elem_id="inspect-follow")
            trajectory = gr.Plot(elem_id="inspect-trajectory")
        message = gr.Markdown()
        # What is shown: None = the text, (prompt index, seed) = the student's answer to that prompt. Kept
        # on the server; a value lands here only after the inspector accepted it.
        shown = gr.State(None)

    controls = [run, step, text, temperature, k, stat, position]
    outputs = [summary, heatmap, distributions, profile, position, message]

    def render(run_id, step_value, body, t, top, colour, pos, sampled=None):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), "Pick a run first."
        try:
            view = inspect_view(services, run_id, step_value, body, t, top, colour, pos, sampled)
        except (ValueError, OSError, RuntimeError, OverflowError) as err:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**{plain(err)}**"
        return (view.summary, view.heatmap, view.distributions, view.profile,
                gr.Slider(view.first, max(view.positions - 1, view.first + 1), value=view.position, step=1), "")

    def inspect_text(run_id, step_value, body, t, top, colour, pos):
        rendered = render(run_id, step_value, body, t, top, colour, pos)
        return *rendered, (gr.skip() if rendered[-1] else None)

    def sample_answer(run_id, step_value, chosen, seed_value, t, top):
        if chosen is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), "Pick a held-out prompt first.", \
                gr.skip(), gr.skip()
        sampled = (chosen, seed_value)
        rendered = render(run_id, step_value, "", t, top, "reverse_kl", None, sampled)
        if rendered[-1]:  # refused or failed: the view shown stays, and so does what it shows
            return *rendered, gr.skip(), gr.skip()
        return *rendered, "reverse_kl", sampled

    def choose_run(run_id, colour):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            points = services.inspector.points(run_id)
            texts = services.inspector.validation_texts(run_id)
            cross = services.inspector.cross_tokenizer(run_id)
        except (ValueError, OSError) as err:
            refused = gr.Dropdown(choices=[], info=plain(err))  # info renders Markdown
            return gr.skip(), refused, refused, gr.skip(), gr.skip()
        # What a token's colour can show: across two tokenizers, ULD and the statistics each model has alone.
        colours = (gr.Dropdown(ALIGNED_CHOICES, value=colour if colour in ALIGNED_STATS else "uld") if cross
                   else gr.Dropdown(STAT_CHOICES, value=colour if colour in STATS else "forward_kl"))
        try:  # apart: a run whose held-out data has no blocks still has texts to inspect
            if cross:
                prompts = gr.Dropdown(choices=[], value=None, info="Sample needs one tokenizer: this run's "
                                                                   "teacher reads other tokens")
            else:
                labels = [_label(p) for p in services.inspector.prompt_texts(run_id)]
                prompts = gr.Dropdown(choices=[(label, i) for i, label in enumerate(labels)], value=None, info=None)
        except (ValueError, OSError) as err:
            prompts = gr.Dropdown(choices=[], value=None, info=plain(err))
        last = points[-1].step
        return (gr.Slider(0, max(last, 1), value=last, step=1),
                gr.Dropdown(choices=[(t[:80].replace("\n", " "), t) for t in texts], value=None), prompts, None,
                colours)

    def click(evt: gr.EventData):
        return evt.pos

    def follow_position(run_id, body, t, pos, sampled):
        if not run_id:
            return gr.skip(), "Pick a run first."
        if sampled is not None:
            return gr.skip(), "A sampled answer is one student's own text: follow a position of a text (Inspect)."
        try:
            figure = trajectory_figure(services.inspector.on_torch(services.inspector.trajectory, run_id, body,
                                                                   int(pos), t))
            if services.inspector.cross_tokenizer(run_id):  # its distance is ULD, its bars the same texts
                relabel(figure, "ULD", row=2, col=1)
            return figure, ""
        except (ValueError, OSError, RuntimeError, OverflowError) as err:
            return gr.skip(), f"**{plain(err)}**"

    current = controls + [shown]
    tab.select(lambda chosen: run_picker(_runs(services), chosen), run, run, api_name="inspect_runs")
    run.input(choose_run, [run, stat], [step, sample, prompt, shown, stat], api_name="inspect_run").then(
        render, current, outputs)
    sample.input(lambda chosen: chosen or gr.skip(), sample, text)
    inspect_button.click(inspect_text, controls, outputs + [shown], api_name="inspect")
    sample_button.click(sample_answer, [run, step, prompt, seed, temperature, k], outputs + [stat, shown],
                        api_name="inspect_sample")
    for control in (step, temperature, k, position):
        control.release(render, current, outputs)
    stat.input(render, current, outputs)
    heatmap.click(click, None, position).then(render, current, outputs)
    follow.click(follow_position, [run, text, temperature, position, shown], [trajectory, message])


def _label(prompt: str) -> str:
    """A prompt as one line of at most 100 characters (a dropdown shows labels as plain text)."""
    line = " ".join(prompt.split())
    return line if len(line) <= 100 else "…" + line[-99:]
