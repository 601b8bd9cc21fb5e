"""Studies tab: where a study stands (cancel or resume it whole), its table with one row per setting (mean and
spread over seeds, KD's gain over CE-only and whether it is within noise), and its plots: the capacity-gap
curve, a heatmap over two fields, and perplexity against wall-clock minutes (equal compute)."""
from __future__ import annotations

import gradio as gr

from workbench.config.escaping import plain
from workbench.eval.study_results import equal_compute
from workbench.ui.study_plots import capacity_gap, heatmap, wall_clock
from workbench.ui.study_service import StudyService, StudyView
from workbench.ui.tables import for_people

HOW = ("A study is a group of runs from one config and a grid over its fields: launch one from **Set up → Study**, "
       "or `python -m workbench study STUDY.yaml` (assets/configs/study_capacity.yaml).")


def progress_text(view: StudyView) -> str:
    p = view.progress
    states = ", ".join(f"{n} {plain(state)}" for state, n in sorted(p["states"].items()))
    eta = f"; about {p['eta_s'] / 60:.0f} min left" if p["eta_s"] else ""
    stopped = " **Cancelled**: resume to continue it." if p["cancelled"] else ""
    return (f"**{plain(p['study_id'])}**: {p['runs']} runs ({states}); {p['steps_done']:,}/{p['steps_planned']:,} "
            f"steps{eta}.{stopped}")


def verdict_text(view: StudyView) -> str:
    """The verdicts per setting, then the equal-compute lines."""
    lines = []
    fields = [c for c in view.table.columns if c in view.record["fields"]]
    for _, row in view.table.iterrows():
        setting = ", ".join(f"{plain(f)} = {plain(row[f])}" for f in fields) or "the study's setting"
        ood = f"; out of domain: {plain(row.ood_verdict)}" if row.get("ood_verdict") else ""
        lines.append(f"- {setting}: {plain(row.verdict)}{ood}")
    compute = equal_compute(view.runs, view.curves)
    text = "### Did distillation beat plain fine-tuning?\n" + "\n".join(lines) if lines else ""
    if compute:
        text += "\n\n### At equal minutes\n" + "\n".join(f"- {plain(line)}" for line in compute)
    return text


def show_study(studies: StudyService, study_id: str | None) -> tuple:
    if not study_id:
        return HOW, None, "", None, None, None, None
    try:
        view = studies.view(study_id)
    except (KeyError, ValueError) as err:
        return f"**{plain(err)}**", None, "", None, None, None, None
    shown = view.runs.drop(columns=["started", "baseline"], errors="ignore")
    return (progress_text(view), for_people(view.table), verdict_text(view), capacity_gap(view.runs),
            heatmap(view.table, view.record), wall_clock(view.runs, view.curves), for_people(shown))


def act(studies: StudyService, study_id: str | None, action: str, session: str | None) -> str:
    if not study_id:
        return "Pick a study first."
    try:
        if action == "cancel":
            done = studies.cancel(study_id, session)
            return f"Cancelling {len(done)} queued or running runs of {plain(study_id)}; each keeps its last checkpoint."
        queued = studies.resume(study_id, session)
        return f"Resumed {plain(study_id)}: {len(queued)} runs queued again." if queued else "Nothing left to resume."
    except (KeyError, ValueError, PermissionError, OSError) as err:  # ConfigError (a cap) is a ValueError
        return f"**{plain(err)}**"


def create_studies_tab(studies: StudyService) -> None:
    with gr.Tab("Studies", id="studies"):
        with gr.Row():
            picker = gr.Dropdown([], label="Study", allow_custom_value=False, scale=3)
            refresh = gr.Button("Refresh", size="sm", scale=0, elem_id="studies-refresh")
            cancel = gr.Button("Cancel study", size="sm", scale=0)
            resume = gr.Button("Resume study", size="sm", scale=0)
        status = gr.Markdown(HOW, elem_id="study-status")
        table = gr.Dataframe(label="One row per setting: mean, spread (_sd) over seeds, KD gain over CE-only (%)",
                             interactive=False, elem_id="study-table")
        verdict = gr.Markdown(elem_id="study-verdict")
        with gr.Row():
            gap = gr.Plot(label="Capacity gap")
            grid = gr.Plot(label="Two fields")
        clock = gr.Plot(label="Equal compute", elem_id="study-clock")
        with gr.Accordion("Every run of the study", open=False):
            runs = gr.Dataframe(interactive=False)
    outputs = [status, table, verdict, gap, grid, clock, runs]

    def on_refresh(chosen):
        choices = studies.choices()
        ids = [value for _, value in choices]
        chosen = chosen if chosen in ids else (ids[0] if ids else None)
        return gr.Dropdown(choices=choices, value=chosen), *show_study(studies, chosen)

    def on_act(action):
        def handler(request: gr.Request, chosen):
            return act(studies, chosen, action, getattr(request, "session_hash", None))
        return handler

    refresh.click(on_refresh, picker, [picker, *outputs], api_name="studies")
    picker.change(lambda chosen: show_study(studies, chosen), picker, outputs, api_name="study")
    cancel.click(on_act("cancel"), picker, status, api_name="cancel_study")
    resume.click(on_act("resume"), picker, status, api_name="resume_study")
