"""Set-up fields of co-distillation (the teacher trains too; α's schedule) and of hidden-state matching
and attention transfer (the layer map and the term's weight), each group shown for its strategy."""
from __future__ import annotations

import gradio as gr

from workbench.config import SCHEDULES
from workbench.ui.form import SetupForm

LAYER_STRATEGIES = ("hidden_state", "attention")


def create_layer_fields(start: SetupForm) -> tuple[list, list, object]:
    """(the co_* and layer fields in SetupForm's order, the groups, a function strategy -> their updates)."""
    with gr.Group(visible=start.strategy == "co_distillation") as co_group:
        gr.Markdown("**Co-distillation: the teacher trains on the labels alongside the student.** The student's "
                    "α (CE weight) moves from its start to its end over the warm-up: early on the teacher is "
                    "noise, so CE carries the student. Divergence and T above shape the KD term.")
        with gr.Row():
            teacher_lr = gr.Number(start.co_teacher_lr, label="Teacher learning rate")
            alpha_start = gr.Number(start.co_alpha_start, label="α at the start", step=0.05)
            alpha_end = gr.Number(start.co_alpha_end, label="α after the warm-up", step=0.05)
            warmup = gr.Number(start.co_warmup, label="α warm-up steps", precision=0)
            schedule = gr.Dropdown(list(SCHEDULES), value=start.co_schedule, label="α schedule")
        with gr.Row():
            mutual = gr.Checkbox(start.co_mutual, label="Mutual learning",
                                 info="the teacher also learns from the student's soft labels")
            mutual_weight = gr.Number(start.co_mutual_weight, label="Teacher's KD weight (mutual)", step=0.1)
    layered = start.strategy in LAYER_STRATEGIES
    with gr.Group(visible=layered) as layer_group:
        gr.Markdown("**Layer matching**, added to α·CE + (1−α)·KD. Hidden states of other widths meet through a "
                    "learned projection, saved beside the student. Attention maps need eager attention, which is "
                    "slower than the default kernels.")
        with gr.Row():
            layer_map = gr.Textbox(start.layer_map, label="Layer map (student:teacher)",
                                   placeholder="e.g. 0:1, 1:3 — empty = evenly spaced (a pruned student: its own layers)")
            weight = gr.Number(start.layer_weight, label="Weight of the layer term", step=0.1)
            hidden_loss = gr.Dropdown(["mse", "cosine"], value=start.hidden_loss, label="Hidden-state loss",
                                      visible=start.strategy == "hidden_state")
            attention_loss = gr.Dropdown(["kl", "mse"], value=start.attention_loss, label="Attention loss",
                                         visible=start.strategy == "attention")
            heads = gr.Dropdown(["average", "map"], value=start.attention_heads, label="Heads",
                                info="map: teacher heads averaged in groups onto the student's",
                                visible=start.strategy == "attention")

    def show(strategy: str) -> list:
        return [gr.update(visible=strategy == "co_distillation"), gr.update(visible=strategy in LAYER_STRATEGIES),
                gr.update(visible=strategy == "hidden_state"), gr.update(visible=strategy == "attention"),
                gr.update(visible=strategy == "attention")]

    fields = [teacher_lr, alpha_start, alpha_end, warmup, schedule, mutual, mutual_weight, layer_map, weight,
              hidden_loss, attention_loss, heads]
    return fields, [co_group, layer_group, hidden_loss, attention_loss, heads], show
