"""The Runs tab's actions as plain functions (no gradio): which buttons a run's state allows, what each
button does through the services, and a run's launch seen two ways (its config as YAML, the Set-up form
cloned from it). Every handler is also an HTTP endpoint: the services refuse what a button would not
offer (an active run's deletion, another visitor's run in public mode), whatever a caller sends."""
from __future__ import annotations

from jobs.manager import DELETABLE, RESUMABLE
from workbench.config.escaping import plain
from workbench.ui.form import SetupForm
from workbench.ui.services import Services

ACTIONS = ("cancel", "resume", "delete", "up", "down")
CANCELLABLE = ("queued", "starting", "running")


def allowed_actions(job: dict | None, queued: int) -> dict[str, bool]:
    """Which buttons a job row (JobManager.jobs) allows; `queued`: how many jobs wait in the queue. Cancel
    a job that waits or trains (or a live worker still evaluating its student), resume a stopped one, delete
    an ended one, move a queued one within the queue."""
    if job is None:
        return dict.fromkeys(ACTIONS, False)
    state, live, position = job.get("state"), bool(job.get("live")), job.get("queue_position")
    return {"cancel": state in CANCELLABLE or (live and state != "cancelling"),
            "resume": state in RESUMABLE and not live,
            "delete": state in DELETABLE and not live and not position,
            "up": bool(position) and position > 1,
            "down": bool(position) and position < queued}


def act(services: Services, action: str, run_id: str | None, session: str | None = None,
        confirmed: bool = False) -> str:
    """Do one of ACTIONS; the message to show (errors included: a refusal is an answer, not a crash)."""
    if not run_id or not isinstance(run_id, str):
        return "Pick a run first."
    try:
        if action == "cancel":
            return _cancel(services, run_id, session)
        if action == "resume":
            services.resume(run_id, session)
            return f"**{plain(run_id)}**: queued to resume from its last checkpoint"
        if action == "delete":
            services.delete(run_id, session, confirmed)
            return f"**{plain(run_id)}**: deleted, its folder and its rows in the store"
        if action in ("up", "down"):
            position = services.move(run_id, -1 if action == "up" else 1, session)
            return f"**{plain(run_id)}**: now #{position} in the queue"
        return f"No action {plain(str(action)[:40])}: choose one of {', '.join(ACTIONS)}."
    except (KeyError, ValueError, PermissionError, OSError) as err:  # ConfigError is a ValueError
        return f"**{plain(run_id)}:** {reason(err)}"


def _text(err: Exception) -> str:
    """An error's message; a KeyError's without the quotes str() puts around it."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def reason(err: Exception) -> str:
    """An error's message as Markdown text: it may quote a run id or a config value."""
    return plain(_text(err))


def _cancel(services: Services, run_id: str, session: str | None) -> str:
    waiting = any(job["run_id"] == run_id and job.get("queue_position") for job in services.jobs.jobs())
    state = services.cancel(run_id, session)
    if waiting:
        return f"**{plain(run_id)}**: removed from the queue (cancelled: Resume queues it again)"
    if state == "cancelling":
        return f"**{plain(run_id)}**: cancelling (it saves a checkpoint at the next step, then stops)"
    return f"**{plain(run_id)}**: {plain(state)}, nothing to cancel"


def annotate(services: Services, run_id: str | None, session: str | None, name, tags, notes) -> str:
    if not run_id or not isinstance(run_id, str):
        return "Pick a run first."
    try:
        saved = services.annotate(run_id, session, name, tags, notes)
    except (KeyError, ValueError, PermissionError, OSError) as err:
        return f"**{plain(run_id)}:** not saved: {reason(err)}"
    tags = ", ".join(saved["tags"]) or "none"
    return f"**{plain(run_id)}**: saved as “{plain(saved['name'] or run_id)}”, tags: {plain(tags)}"


def clone(services: Services, run_id: str | None) -> tuple[list | None, str]:
    """(the Set-up form's values for `run_id`, in setup_fields' order, or None; the message to show)."""
    if not run_id or not isinstance(run_id, str):
        return None, "Pick a run first."
    try:
        form = clone_form(services, run_id)
    except (KeyError, ValueError, OSError) as err:  # no run, a damaged spec, or the gate's refusal
        return None, f"**{plain(run_id)}** cannot be cloned: {reason(err)}"
    return form.as_list(), (f"**{plain(run_id)}**'s config is in **Set up**: change what you like, then launch "
                            "(a new run; this one stays as it is)")


def clone_form(services: Services, run_id: str) -> SetupForm:
    """The Set-up form holding `run_id`'s config as it was launched (processes and accelerate config too).
    The config passes the gate first, as when Inspect reads a run: a planted run folder cannot put a path
    the app refuses into a visitor's form. KeyError, ConfigError (a ValueError) or OSError if it cannot."""
    config, processes, accelerate = services.launch_of(run_id)
    services.gate.check(config, processes, accelerate)
    return SetupForm.from_config(config).replace({"num_processes": processes, "accelerate_config": accelerate or ""})
