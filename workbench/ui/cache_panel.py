"""The teacher-cache panel of the Set up tab: the caches in the runs folder (teacher, k, size, bytes per
token, the share of the teacher's mass kept) and the choice of one for the run being set up."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from workbench.engine.teacher_cache import list_caches
from workbench.ui.services import Services

NONE = ("none: run the teacher live", "")
COLUMNS = ["name", "teacher", "k", "blocks", "MB", "bytes/token", "mass kept", "KD vs live", "complete"]


def cache_choices(services: Services) -> list[tuple[str, str]]:
    return [NONE] + [(f"{c['name']} (k={c['k']}, {c['blocks']} blocks)", c["path"])
                     for c in list_caches(services.caches_dir) if c["complete"]]


def cache_table(services: Services) -> pd.DataFrame:
    return pd.DataFrame(list_caches(services.caches_dir), columns=COLUMNS)


def create_cache_panel(services: Services, value: str) -> gr.Dropdown:
    """Inside the Set up tab; returns the dropdown whose value is loss.teacher_cache."""
    with gr.Accordion("Teacher cache: train from the teacher's stored top-k, without running it", open=False):
        gr.Markdown(f"Build one for a config with `python -m workbench cache CONFIG.yaml {services.caches_dir}/NAME "
                    "--k 32 --fidelity 20` (resumable; `--fidelity N` also trains N steps live and from the cache and "
                    "keeps the held-out KL difference, shown as *KD vs live*). It must match this run's tokenizer and training data (source, "
                    "sequence length, seed, max examples): launching refuses one that does not.")
        choice = gr.Dropdown(cache_choices(services), value=value or "", label="Teacher cache",
                             allow_custom_value=True)
        table = gr.Dataframe(cache_table(services), label=f"Caches in {services.caches_dir}", interactive=False)
        refresh = gr.Button("Refresh", size="sm")
    refresh.click(lambda chosen: (gr.Dropdown(choices=cache_choices(services), value=chosen), cache_table(services)),
                  choice, [choice, table])
    return choice
