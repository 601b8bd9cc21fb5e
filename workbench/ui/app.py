"""Build the workbench's Gradio Blocks: one builder per tab, all calling the services. app.py launches it."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from workbench.config.schema import DistillConfig
from workbench.ui.compare_tab import create_compare_tab
from workbench.ui.chat_tab import create_chat_tab
from workbench.ui.config_tab import create_config_tab
from workbench.ui.defaults_banner import create_defaults_banner
from workbench.ui.evaluate_tab import create_evaluate_tab
from workbench.ui.inspect_tab import create_inspect_tab
from workbench.ui.learn_tab import create_learn_tab
from workbench.ui.runs_tab import create_runs_tab
from workbench.ui.services import Services
from workbench.ui.setup_tab import create_setup_tab
from workbench.ui.studies_tab import create_studies_tab
from workbench.ui.study_panel import create_study_panel
from workbench.ui.study_service import StudyService

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_CONFIG = ASSETS / "configs" / "default.yaml"
INTRO = """# Distill Workbench
Distill a teacher language model into a smaller student. New here? **Learn** shows on a real teacher, before
any run, what a student is trained on: soft vs hard labels, temperature, α and the T² factor. **Set up** a run
(the offline default is preselected), **Launch** it as a background job, watch it in **Runs**, see token by
token where the student departs from the teacher in **Inspect**, ask teacher, student and baseline the
same prompt side by side in **Chat**, get its run card in **Evaluate**, put runs
side by side in **Compare**, and run a whole grid of them (sizes, α, T, seeds, with CE-only baselines) as a **Study**. Every run is also a folder and a YAML config that runs the same from the command
line."""


def build_app(services: Services) -> gr.Blocks:
    default = DistillConfig.load(DEFAULT_CONFIG)
    with gr.Blocks(title="Distill Workbench") as app:
        gr.Markdown(INTRO)
        if services.preparation is not None:
            create_defaults_banner(services.preparation)
        gate = services.gate
        if gate.public:
            gr.Markdown(f"**This workbench is reachable by others** (a share link, a public address or a Space). "
                        f"Models and data come from the hub, uploads, the offline default or the folders its host "
                        f"allowed; a run has at most {gate.max_steps} steps, a visitor at most "
                        f"{gate.max_jobs_per_session} runs waiting or training, an upload at most "
                        f"{gate.max_upload_mb:g} MiB. Everyone who can open this page sees every run.",
                        elem_id="public-notice")
        with gr.Tabs(elem_id="tabs") as tabs:
            create_learn_tab(services)  # first: it needs no run, so a newcomer sees dark knowledge at once
            studies = StudyService(services)
            setup_inputs = create_setup_tab(services, default, lambda inputs: create_study_panel(studies, default,
                                                                                                 inputs))
            create_runs_tab(services, setup_inputs, tabs)  # "Clone into Set up" fills the form and opens its tab
            create_inspect_tab(services)
            create_chat_tab(services)
            create_evaluate_tab(services)
            create_compare_tab(services)
            create_studies_tab(studies)
            create_config_tab(DEFAULT_CONFIG.read_text(encoding="utf-8"))
        gr.Markdown(f"Runs folder: `{services.runs_dir}` · results store: `{services.store.path}`")
    return app
