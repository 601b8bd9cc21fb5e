"""Runs tab: every job with state, progress and ETA, polled by gr.Timer; cancel, resume, the log, and
live loss curves from the store."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from workbench.config.escaping import plain
from workbench.engine.callbacks import format_eta
from workbench.store.rundir import finite_number
from workbench.ui.plots import run_curves
from workbench.ui.services import Services

COLUMNS = ["run", "state", "progress", "step", "ETA", "processes", "error"]
POLL_S = 2.0


def jobs_table(services: Services) -> pd.DataFrame:
    rows = []
    for job in services.jobs.jobs():
        # A status file may hold anything (a damaged one reads as state unknown): numbers are checked.
        step, total = int(_number(job.get("step"))), int(_number(job.get("total_steps")))
        position = job.get("queue_position")
        state = f"queued (#{position})" if position else job["state"]
        progress = f"{100 * step / total:.0f}%" if total else ""
        if job.get("live") and job.get("phase") == "evaluating":
            state = "evaluating the student"
        if job.get("live") and job.get("phase") == "generating":
            done, rows_total = int(_number(job.get("phase_done"))), int(_number(job.get("phase_total")))
            state = f"teacher writing data ({done}/{rows_total})"
            progress = f"{100 * done / rows_total:.0f}% of the data" if rows_total else ""
        running = job["state"] in ("running", "starting")
        eta = _number(job.get("eta_s"), None)
        skipped = int(_number(job.get("nonfinite_skipped")))
        note = f"{skipped} non-finite steps skipped" if skipped else ""
        error = job.get("error") or (f"evaluation: {job['evaluation_error']}" if job.get("evaluation_error") else "")
        rows.append({"run": job["run_id"], "state": state, "progress": progress,
                     "step": f"{step}/{total}", "ETA": format_eta(eta) if running else "",
                     "processes": int(_number(job.get("processes"), 1)),
                     "error": "; ".join(str(part) for part in (error, note) if part)})
    return pd.DataFrame(rows, columns=COLUMNS)


def _number(value, default: float | None = 0.0) -> float | None:
    """A status field as a number fit to show, else `default`: no text, NaN, inf or 400-digit integer."""
    number = finite_number(value)
    return number if number is not None and abs(number) < 1e12 else default


def run_details(services: Services, run_id: str | None, shown: tuple = ()) -> tuple[object, str, tuple]:
    """(curves figure, end of worker.log, the figure's key) for one run. The figure is None when `shown`
    is already its key: nothing new to draw, so polling does not rebuild it."""
    if not run_id:
        return None, "", ()
    metrics, evals = services.store.metrics([run_id]), services.store.evals([run_id])
    evals = evals[evals.split != "evaluation"]  # the curves' points; a student evaluation is not one
    key = (run_id, len(metrics), len(evals))
    figure = run_curves(metrics, evals, title=run_id) if key != shown else None
    try:
        log = services.jobs.log(run_id)
    except KeyError:
        log = ""
    return figure, log, key


def act(services: Services, action: str, run_id: str | None, session: str | None = None) -> str:
    if not run_id:
        return "Pick a run first."
    try:
        if action == "cancel":
            state = services.jobs.cancel(run_id)
            return f"**{plain(run_id)}**: {state} (it saves a checkpoint at the next step, then stops)"
        services.resume(run_id, session)
        return f"**{plain(run_id)}**: queued to resume from its last checkpoint"
    except (KeyError, ValueError) as err:
        return f"**{plain(run_id)}:** {plain(err)}"


def create_runs_tab(services: Services) -> gr.Dropdown:
    with gr.Tab("Runs", id="runs") as tab:
        table = gr.Dataframe(jobs_table(services), label="Jobs", interactive=False, elem_id="jobs-table")
        with gr.Row():
            run = gr.Dropdown([], label="Run", allow_custom_value=False)
            cancel = gr.Button("Cancel")
            resume = gr.Button("Resume")
        message = gr.Markdown()
        curves = gr.Plot(label="Loss curves", elem_id="run-curves")
        log = gr.Textbox(label="Worker log (end)", lines=10, max_lines=20, autoscroll=True)
        # Inside the Tab: a Timer or State directly in gr.Tabs shifts the tabs' order in Gradio's front end,
        # and the tab bar then shows a tab twice (or loses one).
        timer = gr.Timer(POLL_S)
        shown = gr.State(())  # what the plot shows: redrawn only when it changes, so zoom survives polling

    def refresh(selected, key):
        frame = jobs_table(services)
        ids = list(frame.run)
        chosen = selected if selected in ids else (ids[0] if ids else None)
        figure, text, new_key = run_details(services, chosen, key)
        return frame, gr.Dropdown(choices=ids, value=chosen), gr.skip() if figure is None else figure, text, new_key

    timer.tick(refresh, [run, shown], [table, run, curves, log, shown])
    tab.select(refresh, [run, shown], [table, run, curves, log, shown], api_name="runs")  # a tab's timer starts when it is first opened
    run.input(lambda r: run_details(services, r), run, [curves, log, shown])
    cancel.click(lambda r: act(services, "cancel", r), run, message, api_name="cancel")
    def on_resume(request: gr.Request, run_id):
        return act(services, "resume", run_id, getattr(request, "session_hash", None))

    resume.click(on_resume, run, message, api_name="resume")
    return run
