"""Set up's Study panel: the form's config as the base, a grid over any of its fields, seeds, and the CE-only
baselines, queued as one study (followed and compared in the Studies tab)."""
from __future__ import annotations

import gradio as gr

from workbench.config.escaping import plain
from workbench.config.fields import ConfigError
from workbench.config.study import MAX_RUNS
from workbench.ui.form import SetupForm, form_to_config
from workbench.ui.study_service import StudyService

GRID_EXAMPLE = "student.init_from_teacher_layers: [3, 6, 10]"
GRID_INFO = ("One `field: [values]` per line, any config field (as in the YAML); every combination is one run, "
             f"at most {MAX_RUNS} runs with baselines. E.g. loss.alpha: [0.2, 0.5, 0.8] and "
             "loss.temperature: [1, 2] for an α × T heatmap.")


def launch_study(studies: StudyService, form: SetupForm, name, grid_text, seeds_text, baselines,
                 session: str | None) -> str:
    """Markdown: what was queued, or the problems naming their fields (nothing is queued then)."""
    try:
        base = form_to_config(form, studies.services.gate, studies.services.uploads_dir).config
        plan = studies.plan(name, grid_text, seeds_text, baselines, base)
        study_id = studies.submit(plan, session)
    except ConfigError as err:
        return "**Study not launched — fix these first:**\n" + "\n".join(
            f"- **{plain(field)}**: {plain(message)}" for field, message in err.problems)
    except (ValueError, OSError) as err:  # a name taken by a run of its own, a full disk: the study's runs so far stay
        return f"**Study not launched whole:** {plain(err)}"
    return (f"**Study {plain(study_id)} launched:** {len(plan.runs)} runs"
            + (f" and {len(plan.baselines)} CE-only baselines" if plan.baselines else "")
            + " queued. Follow it, cancel or resume it, and read its table and plots in the **Studies** tab.")


def create_study_panel(studies: StudyService, default, inputs: dict) -> None:
    """An accordion under the form; `inputs` are the form's components in the endpoints' order."""
    with gr.Accordion("Study: many runs from this form (a grid over its fields, seeds, CE-only baselines)",
                      open=False):
        with gr.Row():
            name = gr.Textbox("study", label="Study name", max_length=48, elem_id="study-name")
            seeds = gr.Textbox("1, 2", label="Seeds (train.seed)", info="two or more give each number its spread",
                               elem_id="study-seeds")
            baselines = gr.Checkbox(True, label="CE-only baseline for each distilled run",
                                    info="shared where runs differ only in KD knobs")
        grid = gr.Textbox(GRID_EXAMPLE, label="Grid", lines=3, info=GRID_INFO, elem_id="study-grid")
        button = gr.Button("Launch study", elem_id="study-launch")
        message = gr.Markdown(elem_id="study-launch-message")

    def on_launch(request: gr.Request, study_name, grid_text, seeds_text, with_baselines, *values):
        return launch_study(studies, SetupForm.from_list(default, values), study_name, grid_text, seeds_text,
                            with_baselines is True, getattr(request, "session_hash", None))

    button.click(on_launch, [name, grid, seeds, baselines, *inputs.values()], message, api_name="launch_study")
