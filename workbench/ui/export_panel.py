"""Evaluate tab's Export area: the run's deployable folders with their numbers (int8 against full precision:
size, forward speed, perplexity), buttons that export the final student as int8 or GGUF, and an opt-in push
of one folder to the Hugging Face Hub. The handlers call workbench/eval/exports.py and
workbench/store/hub_push.py; every value they get may come from any visitor, so those check it."""
from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from workbench.config.escaping import plain
from workbench.eval.exports import FORMATS, export, exports_of
from workbench.eval.quantization import INT8_SUBDIR, REPORT
from workbench.store.hub_push import PUSHABLE, TOKEN_ENV, PushRefused, push, resolve_token
from workbench.store.rundir import RunDir, run_in
from workbench.ui.services import Services
from workbench.ui.tables import for_people

NO_EXPORTS = "No final student yet: exports are made from the student a finished run saves."


def int8_table(run: RunDir) -> pd.DataFrame | None:
    """Full precision against int8, as measured by the int8 export: disk MB, forward tokens/s, perplexity."""
    try:
        r = json.loads((run.path / INT8_SUBDIR / REPORT).read_text(encoding="utf-8"))
        rows = [{"model": label, "disk MB": (r[f"{key}_bytes"] or 0) / 1e6,
                 "forward tok/s": float(r[f"{key}_forward_tokens_per_s"]), "perplexity": float(r[f"{key}_perplexity"])}
                for label, key in (("full precision", "fp32"), ("int8", "int8"))]
    except (OSError, ValueError, KeyError, TypeError):  # not exported yet, or a damaged report
        return None
    return for_people(pd.DataFrame(rows))


def export_view(services: Services, run_id: str | None) -> tuple[str, pd.DataFrame | None]:
    """(the run's deployable folders, each with its line, as markdown; the int8 comparison table)."""
    if not run_id:
        return "", None
    try:
        run = run_in(services.runs_dir, run_id)
    except KeyError as err:
        return f"**{plain(err.args[0])}**", None
    found = exports_of(run)
    # The lines are read back from files in the run folder: shown as text.
    lines = [f"- `{plain(folder)}/`: {plain(line)}" for folder, line in found.items()]
    return "\n".join(lines) or NO_EXPORTS, int8_table(run)


def run_export(services: Services, run_id: str | None, fmt: str, session: str | None, progress) -> tuple:
    """Export the run's final student as `fmt`; (status, exports markdown, int8 table)."""
    if not run_id:
        return "Pick a run first.", gr.skip(), gr.skip()
    try:
        if fmt not in FORMATS:
            raise ValueError(f"export format must be one of {', '.join(FORMATS)}")
        services.check_owner(run_id, session, "export")
        report = export(run_in(services.runs_dir, run_id), fmt, progress=lambda done, what: progress(done, desc=what))
    except KeyError as err:
        return f"**{plain(err.args[0])}**", gr.skip(), gr.skip()
    except (PermissionError, ValueError) as err:  # NoFinalStudent, UnsupportedArchitecture are ValueErrors
        return f"**{plain(err)}**", gr.skip(), gr.skip()
    return f"**{plain(report['line'])}**", *export_view(services, run_id)


def push_folder(services: Services, run_id: str | None, folder, repo_id, token, private,
                session: str | None) -> str:
    """Push one of the run's folders to the hub; the status line (never the token)."""
    if not run_id:
        return "Pick a run first."
    try:
        services.check_owner(run_id, session, "push")
        run = run_in(services.runs_dir, run_id)
        # In a shared app the host's HF_TOKEN is never lent to a visitor.
        url = push(run, folder, repo_id, resolve_token(token, allow_env=not services.gate.public), bool(private))
    except KeyError as err:
        return f"**{plain(err.args[0])}**"
    except (PermissionError, PushRefused, RuntimeError) as err:  # RuntimeError: the hub's, token cut out
        return f"**{plain(err)}**"
    return f"Pushed `{plain(folder)}/` of {plain(run_id)}: {plain(url)}"


def create_export_panel(services: Services, run: gr.Dropdown) -> tuple[gr.Markdown, gr.Dataframe]:
    """The Export accordion under the Evaluate tab's run picker; returns the views a run change refreshes."""
    with gr.Accordion("Export the final student", open=False):
        listing = gr.Markdown(elem_id="export-list")
        table = gr.Dataframe(label="int8 against full precision (held-out text, this CPU)", interactive=False,
                             elem_id="export-int8-table")
        with gr.Row():
            int8 = gr.Button("Export int8 and measure it", elem_id="export-int8")
            gguf = gr.Button("Export GGUF (f16, llama.cpp / Ollama)", elem_id="export-gguf")
        status = gr.Markdown(elem_id="export-status")
        with gr.Row():
            folder = gr.Dropdown(list(PUSHABLE), value=PUSHABLE[0], label="Folder to push")
            repo = gr.Textbox(label="Hub repo id", placeholder="owner/name", elem_id="push-repo")
            token = gr.Textbox(label=f"Hub token (empty: {TOKEN_ENV} of the app, unless shared)", type="password",
                               elem_id="push-token")
            private = gr.Checkbox(True, label="private repo")
        push_button = gr.Button("Push to the Hugging Face Hub", elem_id="push-go")
        pushed = gr.Markdown(elem_id="push-status")

    def on_export(fmt):
        def handler(request: gr.Request, run_id, progress=gr.Progress()):
            return run_export(services, run_id, fmt, getattr(request, "session_hash", None), progress)
        return handler

    def on_push(request: gr.Request, run_id, chosen, repo_id, typed, is_private):
        return push_folder(services, run_id, chosen, repo_id, typed, is_private, getattr(request, "session_hash", None))

    int8.click(on_export("int8"), run, [status, listing, table], api_name="export_int8")
    gguf.click(on_export("gguf"), run, [status, listing, table], api_name="export_gguf")
    push_button.click(on_push, [run, folder, repo, token, private], pushed, api_name="push_to_hub")
    return listing, table
