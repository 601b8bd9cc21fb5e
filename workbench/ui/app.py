"""Build the workbench's Gradio Blocks. app.py parses flags and launches it."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from workbench.services import Services
from workbench.ui.config_tab import create_config_tab
from workbench.ui.defaults_banner import create_defaults_banner

ASSETS = Path(__file__).resolve().parents[2] / "assets"
INTRO = """# Distill Workbench
Distill a teacher language model into a smaller student: soft-label knowledge distillation
(α·CE + (1−α)·T²·KL and other divergences) on `transformers.Trainer`. Write or check a run
configuration here (the offline default is preselected), then run it with
`python -m workbench train CONFIG.yaml`."""


def build_app(services: Services) -> gr.Blocks:
    default = (ASSETS / "configs" / "default.yaml").read_text(encoding="utf-8")
    with gr.Blocks(title="Distill Workbench") as app:
        gr.Markdown(INTRO)
        create_defaults_banner(services.preparation)
        gr.Markdown(f"Runs folder: `{services.runs_dir}`")
        create_config_tab(default)
    return app
