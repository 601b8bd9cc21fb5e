"""Inspect tab: a text as tokens coloured by teacher-student divergence; click a token for both
next-token distributions; temperature, top-k and the colouring re-read cached logits; a step slider
walks the run's saved students and a plot follows one position across training."""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from workbench.config.escaping import plain
from workbench.eval.token_stats import STATS, token_stats, top_k
from workbench.models.students import StudentPoint
from workbench.ui.heatmap import CLICK_JS, CSS, token_heatmap
from workbench.ui.plots import token_distributions, token_profile, trajectory_figure
from workbench.ui.pickers import run_picker
from workbench.ui.services import Services

STAT_CHOICES = [(label, key) for key, label in STATS.items()]


@dataclass
class View:
    summary: str
    heatmap: str
    distributions: object
    profile: object
    positions: int          # rows the text has: the position slider's range is [0, positions - 1]
    position: int
    point: StudentPoint


def nearest_point(points: list[StudentPoint], step: float | None) -> StudentPoint:
    """The saved student closest to `step` (the slider moves over steps; only some are saved)."""
    if step is None:
        return points[-1]
    return min(points, key=lambda p: (abs(p.step - step), -p.step))


def inspect_view(services: Services, run_id: str, step: float | None, text: str, temperature: float, k: int,
                 stat: str, position: int | None) -> View:
    inspector = services.inspector
    point = nearest_point(inspector.points(run_id), step)
    analysis = inspector.analysis(run_id, point.key, text)
    stats = token_stats(analysis, temperature)
    rows = len(analysis)
    position = rows - 1 if position is None else min(max(int(position), 0), rows - 1)
    tokenizer = inspector.tokenizer(run_id)
    top = top_k(analysis, tokenizer, position, temperature, int(k))
    context = tokenizer.decode(analysis.token_ids[:position + 1])
    summary = (f"**{point.label}** (step {point.step}) vs the teacher, {rows + 1} tokens, both models run in "
               f"{analysis.seconds:.2f} s (cached: sliders re-read the logits). At T = {temperature:g}: mean "
               f"KL(teacher ‖ student) {float(stats['forward_kl'].mean()):.3f} nats, top-1 agreement "
               f"{100 * float(stats['agree'].mean()):.0f}%, teacher mass outside its top token "
               f"{100 * float(stats['dark_mass'].mean()):.0f}% on average.\n\n"
               f"**Position {position}** (predicting {html.escape(repr(top.actual))}): "
               + ", ".join(f"{STATS[key]} {float(stats[key][position]):.3f}" for key in STATS))
    return View(summary, token_heatmap(analysis.tokens, stats[stat].tolist(), STATS[stat], position),
                token_distributions(top, temperature, context), token_profile(stats, analysis.tokens, position),
                rows, position, point)


def _runs(services: Services) -> list[str]:
    runs = services.store.runs()
    return runs[runs.status.isin(["succeeded", "running", "cancelled", "failed", "interrupted"])].run_id.tolist()


def create_inspect_tab(services: Services) -> None:
    with gr.Tab("Inspect", id="inspect") as tab:
        gr.Markdown("Per token: how the student's next-token distribution differs from the teacher's. Colour "
                    "shows the chosen statistic; **click a token** to see both distributions that predicted it.")
        with gr.Row():
            run = gr.Dropdown(_runs(services), label="Run", elem_id="inspect-run")
            step = gr.Slider(0, 1, value=1, step=1, label="Training step (nearest saved student)",
                             elem_id="inspect-step")
        with gr.Row():
            text = gr.Textbox(label="Text (up to 256 tokens)", lines=3, scale=3, elem_id="inspect-text",
                              value="In the beginning God created the heaven and the earth.")
            sample = gr.Dropdown([], label="…or a held-out text", scale=2)
        with gr.Row():
            temperature = gr.Slider(0.25, 8, value=1, step=0.25, label="Temperature T", elem_id="inspect-temperature")
            k = gr.Slider(3, 30, value=10, step=1, label="Top-k tokens")
            stat = gr.Dropdown(STAT_CHOICES, value="forward_kl", label="Colour by")
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

    controls = [run, step, text, temperature, k, stat, position]
    outputs = [summary, heatmap, distributions, profile, position, message]

    def render(run_id, step_value, body, t, top, colour, pos):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), "Pick a run first."
        try:
            view = inspect_view(services, run_id, step_value, body, t, top, colour, pos)
        except (ValueError, OSError, RuntimeError) as err:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**{plain(err)}**"
        return (view.summary, view.heatmap, view.distributions, view.profile,
                gr.Slider(0, max(view.positions - 1, 1), value=view.position, step=1), "")

    def choose_run(run_id):
        if not run_id:
            return gr.skip(), gr.skip()
        try:
            points = services.inspector.points(run_id)
            texts = services.inspector.validation_texts(run_id)
        except (ValueError, OSError) as err:
            return gr.skip(), gr.Dropdown(choices=[], info=plain(err))  # info renders Markdown
        last = points[-1].step
        return (gr.Slider(0, max(last, 1), value=last, step=1),
                gr.Dropdown(choices=[(t[:80].replace("\n", " "), t) for t in texts], value=None))

    def click(evt: gr.EventData):
        return evt.pos

    def follow_position(run_id, body, t, pos):
        if not run_id:
            return gr.skip(), "Pick a run first."
        try:
            return trajectory_figure(services.inspector.trajectory(run_id, body, int(pos), t)), ""
        except (ValueError, OSError, RuntimeError) as err:
            return gr.skip(), f"**{plain(err)}**"

    tab.select(lambda chosen: run_picker(_runs(services), chosen), run, run, api_name="inspect_runs")
    run.input(choose_run, run, [step, sample], api_name="inspect_run").then(render, controls, outputs)
    sample.input(lambda chosen: chosen or gr.skip(), sample, text)
    inspect_button.click(render, controls, outputs, api_name="inspect")
    for control in (step, temperature, k, position):
        control.release(render, controls, outputs)
    stat.input(render, controls, outputs)
    heatmap.click(click, None, position).then(render, controls, outputs)
    follow.click(follow_position, [run, text, temperature, position], [trajectory, message])
