"""Hard-label parts of the Set up tab: how the teacher writes the data (local checkpoint or an
OpenAI-compatible endpoint, prompts, sampling), and the teacher-written datasets in the runs folder, to
look at (rows, length statistics) and to reuse instead of generating again."""
from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from workbench.config.escaping import plain
from workbench.hardlabel.generated import VIEW_COLUMNS, dataset_folders, length_stats, list_generated, read_rows
from workbench.hardlabel.generation import COMPLETIONS, read_manifest
from workbench.ui.form import STRATEGY_SECTIONS
from workbench.ui.form_layout import Group
from workbench.ui.plots import completion_lengths
from workbench.ui.services import Services

GENERATE = ("none: the teacher writes new completions", "")
LIST_COLUMNS = ["name", "teacher", "backend", "rows", "of", "temperature", "complete", "MB"]
VIEW_ROWS = 200


def dataset_choices(found: list[dict]) -> list[tuple[str, str]]:
    """Finished datasets of a listing (generated_data.list_generated) to train on, after "generate"."""
    return [GENERATE] + [(f"{d['name']} ({d['rows']} rows, {d['teacher']})", d["path"]) for d in found if d["complete"]]


def _every(found: list[dict]) -> list[tuple[str, str]]:
    return [(f"{d['name']} ({d['rows']}/{d['of']} rows)", d["path"]) for d in found]


def _table(found: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(found, columns=LIST_COLUMNS)


def dataset_view(services: Services, path: str | None) -> tuple[pd.DataFrame, str, object]:
    """(first rows, statistics markdown, length histogram) of one dataset; only files the listing offers."""
    # Which files the listing may offer; no need to count their rows as the listing does.
    known = {str(folder / COMPLETIONS) for folder in dataset_folders(services.runs_dir)
             if read_manifest(folder) is not None and (folder / COMPLETIONS).is_file()}
    if not path or path not in known:
        return pd.DataFrame(columns=VIEW_COLUMNS), "Pick a dataset to look at.", None
    frame, truncated = read_rows(path)
    stats = length_stats(frame)
    shown = frame.reindex(columns=VIEW_COLUMNS).head(VIEW_ROWS)
    # finish_reason comes from the endpoint: escaped like any model-side text.
    note = (f"**{stats['rows']} rows** from {stats.get('prompts')} prompts"
            + (" (the first 64 MiB of the file)" if truncated else "") + ". Words per prompt: "
            + json.dumps(stats.get("prompt")) + "; per completion: " + json.dumps(stats.get("completion"))
            + f"; ended by: {plain(json.dumps(stats.get('finish_reason')))}; empty completions: "
            + str(stats.get("empty_completions")))
    return shown, note if stats["rows"] else "No rows yet.", completion_lengths(frame)


API_FIELDS = ("generation.api_base_url", "generation.api_model", "generation.api_key_env", "generation.concurrency",
              "generation.max_retries", "generation.timeout_s")
# The hard-label group: how the teacher writes the data; the endpoint's fields only for the openai backend.
GENERATION_GROUP = Group(
    (("generation.backend", "generation.prompts", "prompt_upload"), API_FIELDS[:3], API_FIELDS[3:],
     ("generation.temperature", "generation.top_p", "generation.max_new_tokens", "generation.samples_per_prompt",
      "generation.seed"),
     ("generation.prompt_column", "generation.split", "generation.max_prompts", "generation.batch_size")),
    strategies=(STRATEGY_SECTIONS["generation"],), section="generation",
    note="**Hard-label: the teacher writes the data.** It answers the prompts first (progress and ETA in Runs), "
         "then the student is fine-tuned on the answers, loss on completion tokens only. Teacher and student may "
         "use different tokenizers.")
DATASET_GROUP = Group((("generation.dataset",),), strategies=(STRATEGY_SECTIONS["generation"],))
SHOWN_WHEN = {key: ("generation.backend", lambda backend: backend == "openai") for key in API_FIELDS}


def prompt_upload(_value: None) -> gr.File:
    """An uploaded prompt file, used instead of generation.prompts."""
    return gr.File(label="…or upload prompts (.jsonl .json .csv .parquet)", type="filepath",
                   file_types=[".jsonl", ".json", ".csv", ".parquet"], height=110)


def create_dataset_panel(services: Services, value: str) -> gr.Dropdown:
    """The teacher-written datasets: a viewer, and the choice of one as generation.dataset."""
    with gr.Accordion("Teacher-written datasets: look at one, or train on it instead of generating", open=False):
        found = list_generated(services.runs_dir)  # one scan (it counts every file's rows) serves all three
        choice = gr.Dropdown(dataset_choices(found), value=value or "", label="Train on", allow_custom_value=True)
        table = gr.Dataframe(_table(found), label=f"Datasets in {services.runs_dir}", interactive=False)
        with gr.Row():
            look = gr.Dropdown(_every(found), value=None, label="Look at", info="finished or still being written")
            refresh = gr.Button("Refresh", size="sm")
        stats = gr.Markdown()
        lengths = gr.Plot(label="Lengths")
        rows = gr.Dataframe(pd.DataFrame(columns=VIEW_COLUMNS), label=f"Rows (first {VIEW_ROWS})", interactive=False,
                            wrap=True, elem_id="dataset-rows")

    def on_refresh(chosen):
        found = list_generated(services.runs_dir)
        return (gr.Dropdown(choices=dataset_choices(found), value=chosen), gr.Dropdown(choices=_every(found)),
                _table(found))

    refresh.click(on_refresh, choice, [choice, look, table])
    look.change(lambda path: dataset_view(services, path), look, [rows, stats, lengths])
    return choice
