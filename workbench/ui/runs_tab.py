"""Runs tab: every job with its name, tags, state, progress, ETA, last loss and speed, polled by gr.Timer,
with the machine monitor beside it; buttons enabled by the chosen run's state (cancel, resume, move in the
queue, delete after a confirmation), a Refresh button, the end of the worker log, live loss curves (for a
co-distillation run also its teacher's and student's CE against α: co_plots.py; for an on-policy run its samples
and their curves: on_policy_panel.py), the run's name, tags and notes, its config and "Clone into Set up".
What the buttons do: runs_actions.py.

The table is Gradio's Dataframe. Gradio 6 draws it as a header table with a hidden sizing row
(<tbody class="sizing-body" aria-hidden="true">, CSS visibility: collapse) whose cells are each column's
longest value, taken from different rows, so the browser fits the columns once; the visible rows follow
as div.virtual-row[role=row] under .virtual-body, and only those in view exist (it is virtualised). A
script reading the table takes the [role=row] rows there, never the sizing row, or calls /runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

import gradio as gr
import pandas as pd

from workbench.engine.callbacks import format_eta
from workbench.store.rundir import CACHE_BUILD, finite_number
from workbench.ui.co_plots import co_caption, co_distillation_curves, schedule_of
from workbench.ui.monitor import usage_markdown
from workbench.ui.on_policy_panel import OnPolicyView, create_on_policy_view, on_policy_outputs
from workbench.ui.plots import run_curves, with_terms
from workbench.ui.runs_actions import ACTIONS, act, allowed_actions, annotate, clone
from workbench.ui.services import Services
from workbench.ui.tables import rounded

# Gradio 6's Textbox autoscroll follows a value only once (its scroll effect does not depend on the value), so
# the log box scrolls itself to its end after each change, unless the reader scrolled up to read. Only the
# reader's own gestures decide that: replacing the text fires scroll events of its own.
FOLLOW_LOG_JS = """() => {
  const box = document.querySelector('#worker-log textarea');
  if (!box) return;
  if (!box.dataset.follow) {
    box.dataset.follow = 'yes';
    const decide = () => {
      box.dataset.follow = box.scrollTop + box.clientHeight >= box.scrollHeight - 40 ? 'yes' : 'no';
    };
    for (const gesture of ['wheel', 'touchend', 'keyup', 'mouseup']) {
      box.addEventListener(gesture, () => setTimeout(decide, 50));
    }
  }
  if (box.dataset.follow === 'yes') box.scrollTop = box.scrollHeight;
}"""
COLUMNS = ["run", "name", "tags", "state", "progress", "step", "loss", "tok/s", "ETA", "processes", "error"]
POLL_S = 2.0
LOG_LINES = 200


def jobs_table(services: Services, jobs: list[dict] | None = None) -> pd.DataFrame:
    """One row per job (`jobs`: JobManager.jobs(), read now when not given), numbers rounded for people."""
    jobs = services.jobs.jobs() if jobs is None else jobs
    # From the store (one query per poll): names and tags reach it within a second of being saved.
    overview = services.store.run_overview().set_index("run_id")
    rows = []
    for job in jobs:
        known = overview.loc[job["run_id"]] if job["run_id"] in overview.index else {}
        loss, speed = (_number(known.get(key), None) for key in ("loss", "tokens_per_s"))
        rows.append({**_progress(job), "run": job["run_id"], "name": _text(known.get("name")) or _cache_label(job),
                     "tags": _text(known.get("tags")), "loss": None if loss is None else rounded(loss),
                     "tok/s": None if speed is None else round(speed)})
    return pd.DataFrame(rows, columns=COLUMNS)


def _cache_label(job: dict) -> str:
    """A cache build's name in the table (it is no training run, and the store does not index it): what it builds."""
    if job.get("kind") != CACHE_BUILD:
        return ""
    return f"teacher cache → {PurePath(str(job.get('cache_folder', ''))[:300]).name} (k={_text(str(job.get('k')))})"


def _text(value) -> str:
    """A store cell as text: NULL (a run not ingested yet, no name) is empty."""
    return value if isinstance(value, str) else ""


def _progress(job: dict) -> dict:
    """A job's state, progress, step, ETA, processes and error as the table shows them."""
    # A status file may hold anything (a damaged one reads as state unknown): numbers are checked.
    step, total = int(_number(job.get("step"))), int(_number(job.get("total_steps")))
    position = job.get("queue_position")
    state = f"queued (#{position})" if position else job["state"]
    progress = f"{100 * step / total:.0f}%" if total else ""
    counted = f"{step}/{total}"
    if job.get("kind") == CACHE_BUILD:  # it counts the teacher's blocks, not training steps
        done, total = int(_number(job.get("phase_done"))), int(_number(job.get("phase_total")))
        progress, counted = (f"{100 * done / total:.0f}%", f"{done}/{total} blocks") if total else ("", "")
    if job.get("live") and job.get("phase"):
        state, progress = _phase(job, progress)
    running = job["state"] in ("running", "starting")
    eta = _number(job.get("eta_s"), None)
    skipped = int(_number(job.get("nonfinite_skipped")))
    note = f"{skipped} non-finite steps skipped" if skipped else ""
    error = job.get("error") or (f"evaluation: {job['evaluation_error']}" if job.get("evaluation_error") else "")
    return {"state": state, "progress": progress, "step": counted,
            "ETA": format_eta(eta) if running else "", "processes": int(_number(job.get("processes"), 1)),
            "error": "; ".join(str(part) for part in (error, note) if part)}


def _phase(job: dict, progress: str) -> tuple[str, str]:
    """(state, progress) of a live job in a phase other than training steps, as its status names it."""
    phase = str(job["phase"])[:60]
    done, total = int(_number(job.get("phase_done"))), int(_number(job.get("phase_total")))
    if phase == "evaluating":
        return "evaluating the student", progress
    if phase == "generating":
        return f"teacher writing data ({done}/{total})", f"{100 * done / total:.0f}% of the data" if total else ""
    return (f"{phase} ({done}/{total})" if total else phase), progress  # e.g. the held-out evaluation


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
    figure = run_curves(metrics, evals, title=run_id, total_steps=services.store.planned_steps(run_id)) \
        if key != shown else None
    try:
        log = services.jobs.log(run_id, LOG_LINES)
    except KeyError:
        log = ""
    return figure, log, key


def buttons(jobs: list[dict], run_id: str | None, mine: bool) -> list:
    """The action buttons (in ACTIONS' order), each interactive only when the run's state allows it and the
    run is `mine` to change (public mode: launched by this browser session)."""
    job = next((j for j in jobs if j["run_id"] == run_id), None) if mine else None
    allowed = allowed_actions(job, sum(1 for j in jobs if j.get("queue_position")))
    return [gr.Button(interactive=allowed[action]) for action in ACTIONS]


def run_views(services: Services, run_id: str | None) -> list:
    """What belongs to the chosen run alone: its config, name, tags, notes, and an unticked delete box."""
    notes = services.notes(run_id)
    return [services.config_text(run_id), notes["name"], ", ".join(notes["tags"]), notes["notes"], False]


@dataclass
class CoView:
    """A co-distillation run's own plot (both learners' CE against α) and its caption, in one box shown only
    for such a run."""
    box: gr.Column
    plot: gr.Plot
    caption: gr.Markdown

    @property
    def outputs(self) -> list:
        return [self.box, self.plot, self.caption]


def create_co_view() -> CoView:
    with gr.Column(visible=False, elem_id="run-co-distillation") as box:
        plot = gr.Plot(label="Teacher and student CE, and α", elem_id="co-curves")
        caption = gr.Markdown(elem_id="co-caption")
    return CoView(box, plot, caption)


def co_outputs(services: Services, run_id: str | None, changed: bool) -> list:
    """CoView.outputs for a run, as on_policy_outputs: shown for a co-distillation run, hidden for any other,
    nothing sent when its logged points have not changed."""
    if run_id and not changed:
        return [gr.skip()] * 3
    if not run_id or services.strategy(run_id) != "co_distillation":
        return [gr.update(visible=False), gr.skip(), gr.skip()]
    metrics, evals = with_terms(services.store.metrics([run_id])), services.store.evals([run_id])
    schedule = schedule_of(services.stored_config(run_id))
    total = services.store.planned_steps(run_id)
    return [gr.update(visible=True), co_distillation_curves(metrics, evals, schedule.warmup, total),
            co_caption(metrics, schedule, total)]


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


def poll(services: Services, session: str | None, selected: str | None, key: tuple) -> tuple:
    """Every poll's outputs (RunsView.polled): the table, the run picker, curves, log, buttons, monitor, the
    chosen run's own views when the choice changed (first load, or the chosen run was deleted), and its
    co-distillation and on-policy views when its logged points changed."""
    jobs = services.jobs.jobs()
    frame = jobs_table(services, jobs)
    labels = [(f"{name} ({run_id})" if name else run_id, run_id) for run_id, name in zip(frame.run, frame.name)]
    chosen = selected if selected in list(frame.run) else (labels[0][1] if labels else None)
    # The value only when it changes: a poll answered after the user picked another run must not undo it.
    picker = gr.Dropdown(choices=labels, value=chosen) if chosen != selected else gr.Dropdown(choices=labels)
    figure, text, new_key = run_details(services, chosen, key)
    machine = usage_markdown(services.monitor.sample(services.jobs.workers()))
    # A poll must not overwrite notes being typed: the run's own views change with the choice only.
    own = run_views(services, chosen) if chosen != selected else [gr.skip()] * len(RunsView.VIEWS)
    return (frame, picker, gr.skip() if figure is None else figure, text, new_key,
            *buttons(jobs, chosen, services.owns(chosen, session)), machine, *own,
            *co_outputs(services, chosen, figure is not None), *on_policy_outputs(services, chosen, figure is not None))


def pick(services: Services, session: str | None, run_id: str | None) -> tuple:
    """A run chosen in the picker: its curves, log, buttons, own views, co-distillation and on-policy views
    (RunsView.picked)."""
    figure, text, key = run_details(services, run_id)
    mine = services.owns(run_id, session)
    return (figure, text, key, *buttons(services.jobs.jobs(), run_id, mine), *run_views(services, run_id),
            *co_outputs(services, run_id, True), *on_policy_outputs(services, run_id, True))


@dataclass
class RunsView:
    """The tab's components."""
    VIEWS = ("config", "name", "tags", "notes", "confirm")  # the chosen run's own, in run_views' order
    tab: gr.Tab
    table: gr.Dataframe
    machine: gr.Markdown
    run: gr.Dropdown
    refresh: gr.Button
    action: dict            # ACTIONS -> button
    confirm: gr.Checkbox
    message: gr.Markdown
    curves: gr.Plot
    log: gr.Textbox
    name: gr.Textbox
    tags: gr.Textbox
    notes: gr.Textbox
    save: gr.Button
    config: gr.Code
    clone: gr.Button
    timer: gr.Timer
    shown: gr.State         # what the plot shows: redrawn only when it changes, so zoom survives polling
    co: CoView
    on_policy: OnPolicyView

    @property
    def views(self) -> list:
        return [getattr(self, name) for name in self.VIEWS]

    @property
    def buttons(self) -> list:
        return [self.action[name] for name in ACTIONS]

    @property
    def polled(self) -> list:
        return [self.table, self.run, self.curves, self.log, self.shown, *self.buttons, self.machine, *self.views,
                *self.co.outputs, *self.on_policy.outputs]

    @property
    def picked(self) -> list:
        return [self.curves, self.log, self.shown, *self.buttons, *self.views, *self.co.outputs,
                *self.on_policy.outputs]


def _layout(services: Services) -> RunsView:
    with gr.Tab("Runs", id="runs") as tab:
        with gr.Row():
            table = gr.Dataframe(jobs_table(services), label="Jobs", interactive=False, elem_id="jobs-table", scale=3)
            machine = gr.Markdown(elem_id="machine-monitor")
        with gr.Row():
            # Custom values allowed: a poll can take a deleted run out of the choices while an event still
            # carries it, and Gradio would answer that with an error toast. Every handler checks the id itself.
            run = gr.Dropdown([], label="Run", allow_custom_value=True, scale=4, elem_id="runs-run")
            refresh = gr.Button("Refresh", scale=1, elem_id="runs-refresh")
        with gr.Row():
            action = {"cancel": gr.Button("Cancel", elem_id="runs-cancel"),
                      "resume": gr.Button("Resume", elem_id="runs-resume"),
                      "up": gr.Button("Move up the queue", elem_id="runs-up"),
                      "down": gr.Button("Move down the queue", elem_id="runs-down")}
        with gr.Row():
            confirm = gr.Checkbox(False, label="Yes, delete this run: its folder and its results, for good",
                                  elem_id="runs-confirm")
            action["delete"] = gr.Button("Delete", variant="stop", elem_id="runs-delete")
        message = gr.Markdown(elem_id="runs-message")
        curves = gr.Plot(label="Loss curves", elem_id="run-curves")
        co = create_co_view()
        on_policy = create_on_policy_view()
        log = gr.Textbox(label="Worker log (newest last)", lines=12, max_lines=12, elem_id="worker-log")
        with gr.Accordion("Name, tags and notes", open=False):
            name = gr.Textbox(label="Name (shown in the table; the run id stays)")
            tags = gr.Textbox(label="Tags (comma-separated)")
            notes = gr.Textbox(label="Notes", lines=3)
            save = gr.Button("Save name, tags and notes")
        with gr.Accordion("Config", open=False, elem_id="runs-config"):
            config = gr.Code(language="yaml", interactive=False, label="config.json")
            clone_button = gr.Button("Clone into Set up", elem_id="runs-clone")
        # Inside the Tab: a Timer or State directly in gr.Tabs shifts the tabs' order in Gradio's front end,
        # and the tab bar then shows a tab twice (or loses one).
        timer, shown = gr.Timer(POLL_S), gr.State(())
    return RunsView(tab, table, machine, run, refresh, action, confirm, message, curves, log, name, tags, notes, save,
                    config, clone_button, timer, shown, co, on_policy)


def create_runs_tab(services: Services, setup_inputs: dict, tabs: gr.Tabs) -> None:
    """The tab; "Clone into Set up" fills `setup_inputs` (create_setup_tab's key -> component) and selects
    the Set-up tab of `tabs`."""
    ui = _layout(services)

    def refresh(request: gr.Request, selected, key):
        return poll(services, _session(request), selected, key)

    def pick_run(request: gr.Request, run_id):
        return pick(services, _session(request), run_id)

    def save_notes(request: gr.Request, run_id, name, tags, notes):
        return annotate(services, run_id, _session(request), name, tags, notes)

    def clone_run(run_id):
        values, text = clone(services, run_id)
        if values is None:
            return (*[gr.skip()] * len(setup_inputs), gr.skip(), text)
        return (*values, gr.Tabs(selected="setup"), text)

    # The same poll from the timer, the tab, the button and after each action: /runs is its one endpoint.
    again = dict(fn=refresh, inputs=[ui.run, ui.shown], outputs=ui.polled, api_visibility="private")
    ui.timer.tick(**again)
    ui.tab.select(refresh, [ui.run, ui.shown], ui.polled, api_name="runs")  # a tab's timer starts when opened
    ui.refresh.click(**again)
    ui.run.input(pick_run, ui.run, ui.picked, api_name="pick_run")
    for event in _wire_actions(services, ui):
        event.then(**again)
    ui.save.click(save_notes, [ui.run, ui.name, ui.tags, ui.notes], ui.message, api_name="annotate").then(**again)
    ui.log.change(None, js=FOLLOW_LOG_JS)
    ui.clone.click(clone_run, ui.run, [*setup_inputs.values(), tabs, ui.message], api_name="clone")


def _wire_actions(services: Services, ui: RunsView) -> list:
    """One endpoint per action: cancel, resume, move_up, move_down, delete (which takes the confirmation
    box's value and unticks it). Returns their events, for the refresh that follows each."""
    def handler(name: str):
        def handle(request: gr.Request, run_id):
            return act(services, name, run_id, _session(request))
        return handle

    def delete_run(request: gr.Request, run_id, confirmed):
        return act(services, "delete", run_id, _session(request), confirmed), False

    events = [ui.action[name].click(handler(name), ui.run, ui.message, api_name=api)
              for name, api in (("cancel", "cancel"), ("resume", "resume"), ("up", "move_up"), ("down", "move_down"))]
    return events + [ui.action["delete"].click(delete_run, [ui.run, ui.confirm], [ui.message, ui.confirm],
                                               api_name="delete")]
