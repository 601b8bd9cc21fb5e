"""A banner that shows the offline default's preparation on first start, then what it holds."""
from __future__ import annotations

import html

import gradio as gr

from workbench.data.defaults import Preparation


def banner_text(state: dict) -> str:
    if state["error"]:
        return f"**Preparing the offline default failed.** {html.escape(str(state['error']), quote=False)}"
    if state["manifest"] is None:
        return (f"**Preparing the offline default (first start only): {state['fraction']:.0%}** — "
                f"{state['message']}")
    m = state["manifest"]
    ratio = m["teacher"]["parameters"] / m["student"]["parameters"]
    return (f"Offline default ready: teacher SmolLM2-135M-Instruct ({m['teacher']['parameters'] / 1e6:.1f}M "
            f"parameters), student with {len(m['student']['kept_layers'])} of its {m['teacher']['layers']} layers "
            f"({m['student']['parameters'] / 1e6:.1f}M, {ratio:.1f}x smaller), corpus World English Bible "
            f"({m['corpus']['train']['chapters']} training / {m['corpus']['validation']['chapters']} held-out "
            "chapters).")


def create_defaults_banner(preparation: Preparation) -> None:
    text = gr.Markdown(banner_text(preparation.state()))
    timer = gr.Timer(1.0, active=not preparation.state()["done"])

    def poll():
        state = preparation.state()
        return banner_text(state), gr.Timer(active=not state["done"])

    timer.tick(poll, outputs=[text, timer])
