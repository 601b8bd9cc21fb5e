"""Run pickers refreshed when their tab opens: the runs there are now, keeping the user's choice only where
it still names one (a run deleted meanwhile leaves both the choices and the value, so Gradio never meets a
value outside its choices)."""
from __future__ import annotations

import gradio as gr


def run_picker(choices: list[str], chosen) -> gr.Dropdown:
    """The picker's update: `chosen` is one run id, a list of them (multiselect), or None."""
    if isinstance(chosen, list):
        return gr.Dropdown(choices=choices, value=[run for run in chosen if run in choices])
    return gr.Dropdown(choices=choices, value=chosen if chosen in choices else None)
