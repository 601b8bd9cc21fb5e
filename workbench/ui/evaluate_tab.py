"""Evaluate tab: a run's evaluations (the run card, held-out metrics per model, a reliability diagram,
generations side by side), evaluating any saved student on demand, and the CE-only baseline."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from workbench.config.escaping import plain
from workbench.ui.plots import reliability
from workbench.ui.services import Services

MODELS = ("teacher", "student", "untrained", "baseline")
POLL_S = 2.0


def metrics_table(report: dict) -> pd.DataFrame:
    """One row per model evaluated: perplexity, CE, calibration, and speed where measured."""
    m, rows = report["metrics"], []
    for name in MODELS:
        if f"{name}_ce" not in m and f"{name}_params" not in m:
            continue  # a teacher with other tokens has speed and size but no held-out numbers
        rows.append({"model": name, "perplexity": _round(m.get(f"{name}_perplexity"), 3),
                     "CE": _round(m.get(f"{name}_ce"), 4), "ECE": _round(m.get(f"{name}_ece"), 4),
                     "params": m.get(f"{name}_params"),
                     "disk MB": _round(m.get(f"{name}_disk_mb"), 1),
                     "forward tok/s": _round(m.get(f"{name}_forward_tokens_per_s"), 0),
                     "generation ms/token": _round(m.get(f"{name}_generation_ms_per_token"), 2)})
    return pd.DataFrame(rows)


def _round(value, digits):
    return None if value is None else round(value, digits)


def report_view(services: Services, run_id: str | None, step: int | None) -> tuple[str, object, object, object]:
    """(run card markdown, metrics table, reliability figure, generations table) of one evaluation."""
    try:
        reports = services.evaluation_reports(run_id) if run_id else []
    except KeyError as err:
        return f"**{plain(err.args[0])}**", None, None, None
    chosen = [r for r in reports if r.get("step") == step] or reports[-1:]
    if not chosen:
        return "No evaluation of this run yet: evaluate a saved student below.", None, None, None
    report = chosen[0]
    head = f"#### {plain(report.get('run_id', run_id))}: {plain(report.get('student'))} (step {plain(report.get('step'))})\n\n"
    generations = pd.DataFrame(report.get("generations") or [], columns=["prompt", "teacher", "student"])
    # The card is ours, but the file is read back from a run folder: its text is shown as text.
    return (head + plain(report.get("card", "")), metrics_table(report), reliability(report.get("reliability") or {}),
            generations)


def _seen(reports: list[dict]) -> tuple:
    return tuple((r.get("step"), r.get("created")) for r in reports)


def create_evaluate_tab(services: Services) -> None:
    with gr.Tab("Evaluate", id="evaluate") as tab:
        with gr.Row():
            run = gr.Dropdown([], label="Run", elem_id="evaluate-run")
            shown = gr.Dropdown([], label="Evaluation (step)")
        card = gr.Markdown(elem_id="evaluate-card")
        table = gr.Dataframe(label="Held-out metrics and speed per model", interactive=False,
                             elem_id="evaluate-table")
        with gr.Row():
            diagram = gr.Plot(label="Calibration: reliability diagram")
            generations = gr.Dataframe(label="Greedy generations, side by side", interactive=False, wrap=True,
                                       elem_id="evaluate-generations")
        with gr.Row():
            student = gr.Dropdown([], label="Saved student to evaluate")
            evaluate = gr.Button("Evaluate it", variant="primary", elem_id="evaluate-go")
            baseline = gr.Button("Add CE-only baseline", elem_id="evaluate-baseline")
        status = gr.Markdown(elem_id="evaluate-status")
        # Inside the Tab: a Timer or State directly in gr.Tabs shifts the tabs' order in Gradio's front end,
        # and the tab bar then shows a tab twice (or loses one).
        timer = gr.Timer(POLL_S)
        seen = gr.State(())  # (step, created) of the reports shown, to notice new ones

    def choose(run_id):
        if not run_id:
            return gr.skip(), gr.skip(), "", None, None, None, ()
        try:
            reports = services.evaluation_reports(run_id)
            keys = [p.key for p in services.inspector.points(run_id)]
        except (KeyError, ValueError):  # deleted meanwhile, or not started yet
            reports, keys = [], []
        steps = [r["step"] for r in reports]
        return (gr.Dropdown(choices=steps, value=steps[-1] if steps else None),
                gr.Dropdown(choices=keys, value=keys[-1] if keys else None), *report_view(services, run_id, None),
                _seen(reports))

    def request(run_id, key):
        if not run_id or not key:
            return "Pick a run and a saved student first."
        try:
            return services.evaluations.request(run_id, key, services.baseline_of(run_id))
        except KeyError as err:
            return f"**{plain(err.args[0])}**"

    def add_baseline(request: gr.Request, run_id):
        if not run_id:
            return "Pick a run first."
        try:
            new = services.add_baseline(run_id, getattr(request, "session_hash", None))
        except (KeyError, ValueError, FileNotFoundError) as err:
            return f"**{plain(err)}**"
        return f"Queued `{new}`: the same run with α = 1. Compare shows both once it has finished."

    def poll(run_id, key, seen):
        """Progress of the chosen student's evaluation; a report that is new or rewritten is shown."""
        if not run_id:
            return (gr.skip(),) * 7
        line = services.evaluations.state(run_id, key) if key else ""
        try:
            reports = services.evaluation_reports(run_id)
        except KeyError:
            return line, *(gr.skip(),) * 6
        if _seen(reports) == seen:
            return line, *(gr.skip(),) * 6
        newest = max(reports, key=lambda r: r.get("created", 0))["step"]
        return (line, gr.Dropdown(choices=[r["step"] for r in reports], value=newest),
                *report_view(services, run_id, newest), _seen(reports))

    tab.select(lambda chosen: gr.Dropdown(choices=services.store.runs().run_id.tolist(), value=chosen), run, run, api_name="evaluate_runs")
    run.input(choose, run, [shown, student, card, table, diagram, generations, seen])
    shown.input(lambda r, s: report_view(services, r, s), [run, shown], [card, table, diagram, generations])
    evaluate.click(request, [run, student], status, api_name="evaluate")
    baseline.click(add_baseline, run, status, api_name="add_baseline")
    timer.tick(poll, [run, student, seen], [status, shown, card, table, diagram, generations, seen])
