"""Evaluate tab: a run's evaluations (the run card, held-out metrics per model, a reliability diagram,
generations side by side), evaluating any saved student on demand, the CE-only baseline, and exporting the
final student (workbench/ui/export_panel.py)."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from workbench.config.escaping import plain
from workbench.ui.export_panel import create_export_panel, export_view
from workbench.ui.plots import reliability
from workbench.ui.pickers import run_picker
from workbench.ui.services import Services
from workbench.ui.tables import for_people

MODELS = ("teacher", "student", "untrained", "baseline")
GENERATION_COLUMNS = ["prompt", "model", "text"]
POLL_S = 2.0


def metrics_table(report: dict) -> pd.DataFrame:
    """One row per model evaluated: perplexity, CE, calibration, and speed where measured."""
    m, rows = report["metrics"], []
    for name in MODELS:
        if f"{name}_ce" not in m and f"{name}_params" not in m:
            continue  # a teacher with other tokens has speed and size but no held-out numbers
        rows.append({"model": name, "perplexity": m.get(f"{name}_perplexity"), "CE": m.get(f"{name}_ce"),
                     "ECE": m.get(f"{name}_ece"), "params": m.get(f"{name}_params"),
                     "disk MB": m.get(f"{name}_disk_mb"), "forward tok/s": m.get(f"{name}_forward_tokens_per_s"),
                     "generation ms/token": m.get(f"{name}_generation_ms_per_token")})
    return for_people(pd.DataFrame(rows))


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
    generations = generations_table(report.get("generations") or [])
    # The card is ours, but the file is read back from a run folder: its text is shown as text.
    return (head + plain(report.get("card", "")), metrics_table(report), reliability(report.get("reliability") or {}),
            generations)


def generations_table(rows: list) -> pd.DataFrame:
    """Long format, one row per model's answer under its prompt, so three long texts never sit side by
    side in one row: prompt | model | text."""
    stacked = []
    for row in rows:
        if not isinstance(row, dict):
            continue  # a report is read back from a run folder: a damaged one shows what it can
        for model in ("teacher", "student", "baseline"):
            if model in row:
                stacked.append({"prompt": row.get("prompt", "") if model == "teacher" else "",
                                "model": model, "text": row[model]})
    return pd.DataFrame(stacked, columns=GENERATION_COLUMNS)


def _seen(reports: list[dict]) -> tuple:
    return tuple((r.get("step"), r.get("created")) for r in reports)


def choose(services: Services, run_id: str | None) -> tuple:
    """A run picked: its evaluations, its saved students, the newest report, and what is shown."""
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


def request_evaluation(services: Services, run_id: str | None, key: str | None) -> str:
    if not run_id or not key:
        return "Pick a run and a saved student first."
    try:
        return services.evaluations.request(run_id, key, services.baseline_of(run_id))
    except KeyError as err:
        return f"**{plain(err.args[0])}**"


def add_baseline(services: Services, run_id: str | None, session: str | None) -> str:
    if not run_id:
        return "Pick a run first."
    try:
        new = services.add_baseline(run_id, session)
    except (KeyError, ValueError, FileNotFoundError) as err:
        return f"**{plain(err)}**"
    return (f"**Queued {plain(new)}**: the same student, data, steps and seed with α = 1 (CE only). Follow it "
            "in Runs; Compare gives the verdict once both runs have finished.")


def poll(services: Services, run_id: str | None, key: str | None, seen: tuple) -> tuple:
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


def create_evaluate_tab(services: Services) -> None:
    with gr.Tab("Evaluate", id="evaluate") as tab:
        with gr.Row():
            # As in Runs: a stale run id (deleted, or a poll racing a switch) is the handlers' to refuse, not
            # Gradio's (an error toast).
            run = gr.Dropdown([], label="Run", allow_custom_value=True, elem_id="evaluate-run")
            shown = gr.Dropdown([], label="Evaluation (step)")
        card = gr.Markdown(elem_id="evaluate-card")
        table = gr.Dataframe(label="Held-out metrics and speed per model", interactive=False,
                             elem_id="evaluate-table")
        diagram = gr.Plot(label="Calibration: reliability diagram")
        generations = gr.Dataframe(label="Greedy generations: each prompt, then each model's continuation",
                                   interactive=False, wrap=True, column_widths=["25%", "10%", "65%"],
                                   elem_id="evaluate-generations")
        with gr.Row():
            student = gr.Dropdown([], label="Saved student to evaluate")
            evaluate = gr.Button("Evaluate it", variant="primary", elem_id="evaluate-go")
            baseline = gr.Button("Add CE-only baseline", elem_id="evaluate-baseline")
        status = gr.Markdown(elem_id="evaluate-status")
        # Its own place: the poll rewrites the evaluation status above every few seconds.
        baseline_message = gr.Markdown(elem_id="evaluate-baseline-message")
        exports = create_export_panel(services, run)
        # Inside the Tab: a Timer or State directly in gr.Tabs shifts the tabs' order in Gradio's front end,
        # and the tab bar then shows a tab twice (or loses one).
        timer = gr.Timer(POLL_S)
        seen = gr.State(())  # (step, created) of the reports shown, to notice new ones

    def on_baseline(request: gr.Request, run_id):
        return add_baseline(services, run_id, getattr(request, "session_hash", None))

    views = [card, table, diagram, generations]
    tab.select(lambda chosen: run_picker(services.store.runs().run_id.tolist(), chosen), run, run,
               api_name="evaluate_runs")
    run.input(lambda r: choose(services, r), run, [shown, student, *views, seen], api_name="choose")
    # change, not input: the tab's picker sets the run too.
    run.change(lambda r: export_view(services, r), run, list(exports), api_name="exports")
    shown.input(lambda r, s: report_view(services, r, s), [run, shown], views)
    evaluate.click(lambda r, k: request_evaluation(services, r, k), [run, student], status, api_name="evaluate")
    baseline.click(on_baseline, run, baseline_message, api_name="add_baseline")
    timer.tick(lambda r, k, s: poll(services, r, k, s), [run, student, seen], [status, shown, *views, seen])
