"""Hard-label parts of the Set up tab: how the teacher writes the data (local checkpoint or an
OpenAI-compatible endpoint, prompts, sampling), and the teacher-written datasets in the runs folder, to
look at (rows, length statistics) and to reuse instead of generating again."""
from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from workbench.config import BACKENDS
from workbench.generated_data import VIEW_COLUMNS, dataset_folders, length_stats, list_generated, read_rows
from workbench.generation import COMPLETIONS, read_manifest
from workbench.plots import completion_lengths
from workbench.escaping import plain
from workbench.services import Services
from workbench.ui.form import SetupForm

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


def create_generation_fields(start: SetupForm, visible: bool) -> tuple[gr.Group, list]:
    """The generation fields, in SetupForm's gen_* order (backend ... max_prompts); hidden unless the
    strategy is hard_label."""
    with gr.Group(visible=visible) as group:
        gr.Markdown("**Hard-label: the teacher writes the data.** It answers the prompts first (progress and ETA "
                    "in Runs), then the student is fine-tuned on the answers, loss on completion tokens only. "
                    "Teacher and student may use different tokenizers.")
        with gr.Row():
            backend = gr.Radio(list(BACKENDS), value=start.gen_backend, label="Teacher runs",
                               info="local = the teacher checkpoint above; openai = an OpenAI-compatible endpoint")
            prompts = gr.Textbox(start.gen_prompts, label="Prompts",
                                 info="project:instructions (120 built in), a hub dataset id, or an allowed file")
            upload = gr.File(label="…or upload prompts (.jsonl .json .csv .parquet)", type="filepath",
                             file_types=[".jsonl", ".json", ".csv", ".parquet"], height=110)
        with gr.Row(visible=start.gen_backend == "openai") as api_row:
            base_url = gr.Textbox(start.gen_api_base_url, label="Endpoint base URL",
                                  placeholder="http://127.0.0.1:8000/v1")
            model = gr.Textbox(start.gen_api_model, label="Model name")
            key_env = gr.Textbox(start.gen_api_key_env, label="API key environment variable",
                                 info="its NAME: the key is read from the app's environment, never stored")
            concurrency = gr.Number(start.gen_concurrency, label="Requests at once", precision=0)
        with gr.Row():
            temperature = gr.Number(start.gen_temperature, label="Sampling temperature", step=0.1,
                                    info="0 = greedy")
            top_p = gr.Number(start.gen_top_p, label="top_p", step=0.05)
            max_new_tokens = gr.Number(start.gen_max_new_tokens, label="Max new tokens", precision=0)
            samples = gr.Number(start.gen_samples, label="Completions per prompt", precision=0)
            seed = gr.Number(start.gen_seed, label="Sampling seed", precision=0,
                             info="the same seed writes the same completions")
        with gr.Row():
            prompt_column = gr.Textbox(start.gen_prompt_column, label="Prompt column",
                                       info="used when the prompts have no chat messages column")
            max_prompts = gr.Number(start.gen_max_prompts, label="At most N prompts (0 = all)", precision=0)
    backend.change(lambda b: gr.update(visible=b == "openai"), backend, api_row)
    return group, [backend, prompts, upload, base_url, model, key_env, temperature, top_p, max_new_tokens, samples,
                   concurrency, seed, prompt_column, max_prompts]


def create_dataset_panel(services: Services, value: str, visible: bool) -> tuple[gr.Accordion, gr.Dropdown]:
    """The teacher-written datasets: a viewer, and the choice of one as generation.dataset."""
    with gr.Accordion("Teacher-written datasets: look at one, or train on it instead of generating",
                      open=False, visible=visible) as panel:
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
    return panel, choice
