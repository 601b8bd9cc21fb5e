"""The teacher-cache panel of the Set up tab: the caches in the runs folder (teacher, k, size, bytes per
token, the share of the teacher's mass kept), the choice of one for the run being set up, and a button that
queues a cache-build job for the form's config (followed, cancelled and resumed in the Runs tab)."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from jobs.cache_spec import MAX_FIDELITY_STEPS, MAX_K
from workbench.config.escaping import plain
from workbench.config.fields import ConfigError
from workbench.engine.cache_build import DEFAULT_K
from workbench.engine.teacher_cache import list_caches
from workbench.ui.form import SetupForm, form_to_config
from workbench.ui.services import Services

NONE = ("none: run the teacher live", "")
COLUMNS = ["name", "teacher", "k", "tail samples", "blocks", "MB", "bytes/token", "mass kept", "KD vs live", "complete"]
DEFAULT_FIDELITY_STEPS = 20


def cache_choices(services: Services) -> list[tuple[str, str]]:
    return [NONE] + [(f"{c['name']} (k={c['k']}, {c['blocks']} blocks)", c["path"])
                     for c in list_caches(services.caches_dir) if c["complete"]]


def cache_table(services: Services) -> pd.DataFrame:
    return pd.DataFrame(list_caches(services.caches_dir), columns=COLUMNS)


def start_build(services: Services, form: SetupForm, folder, k, fidelity, steps, session: str | None,
                tail_samples=0) -> str:
    """Markdown: the queued job, or the problems naming their fields (nothing is queued then). The form's
    config says what the cache is for; every value is checked by the services, whatever a caller sends."""
    try:
        config = form_to_config(form, services.gate, services.uploads_dir).config
        run_id = services.build_cache(config, folder, k, steps if fidelity is True else 0, session, tail_samples)
    except ConfigError as err:
        return "**Cache build not queued — fix these first:**\n" + "\n".join(
            f"- **{plain(name)}**: {plain(message)}" for name, message in err.problems)
    except (ValueError, PermissionError, OSError) as err:
        return f"**Cache build not queued:** {plain(err)}"
    return (f"**{plain(run_id)}** queued: {plain(str(k))} teacher tokens per position over this form's training data. Follow, "
            "cancel or resume it in **Runs** (a cancelled build resumes at its first unfinished shard); once it "
            "is complete, Refresh and pick it here.")


class CachePanel:
    """Made by the form (`create`: the dropdown is loss.teacher_cache) before the form's other components
    exist; `wire` connects the Build button to all of them once they do."""

    def __init__(self, services: Services):
        self.services = services
        self.build: _BuildControls | None = None

    def create(self, value: str) -> gr.Dropdown:
        services = self.services
        with gr.Accordion("Teacher cache: train from the teacher's stored top-k, without running it", open=False):
            gr.Markdown("A cache must match this run's tokenizer and training data (source, sequence length, seed, "
                        "max examples): launching refuses one that does not. Build one below for this form's "
                        f"config, or with `python -m workbench cache CONFIG.yaml {services.caches_dir}/NAME --k 32 "
                        "--fidelity 20`; or tick *build teacher cache* to have the run build it first if missing.")
            choice = gr.Dropdown(cache_choices(services), value=value or "", label="Teacher cache",
                                 allow_custom_value=True)
            table = gr.Dataframe(cache_table(services), label=f"Caches in {services.caches_dir}", interactive=False)
            refresh = gr.Button("Refresh", size="sm")
            self.build = _build_controls()
        refresh.click(lambda chosen: (gr.Dropdown(choices=cache_choices(services), value=chosen),
                                      cache_table(services)), choice, [choice, table])
        return choice

    def wire(self, default, inputs: dict) -> None:
        """`inputs`: the form's components in the endpoints' order."""
        services, ui = self.services, self.build

        def on_build(request: gr.Request, folder, k, tail_samples, fidelity, steps, *values):
            return start_build(services, SetupForm.from_list(default, values), folder, k, fidelity, steps,
                               getattr(request, "session_hash", None), tail_samples)

        ui.button.click(on_build, [ui.folder, ui.k, ui.tail_samples, ui.fidelity, ui.steps, *inputs.values()],
                        ui.message,
                        api_name="build_cache")


@dataclass
class _BuildControls:
    folder: gr.Textbox
    k: gr.Number
    tail_samples: gr.Number
    fidelity: gr.Checkbox
    steps: gr.Number
    button: gr.Button
    message: gr.Markdown


def _build_controls() -> _BuildControls:
    gr.Markdown("**Build a cache for this form's config** (a background job: progress, ETA and cancel in Runs)")
    with gr.Row():
        folder = gr.Textbox("", label="Cache folder", placeholder="a name (a folder in the caches folder) or a path",
                            info="inside the folders this app may use", elem_id="cache-build-folder")
        k = gr.Number(DEFAULT_K, label="k", precision=0, minimum=1, maximum=MAX_K,
                      info=f"tokens kept per position, 1 to {MAX_K}", elem_id="cache-build-k")
        # 8 of 32: measured within 1% of the live teacher's held-out KL, where the plain top 32 was 5% off
        tail_samples = gr.Number(8, label="Tail samples", precision=0, minimum=0, maximum=MAX_K,
                                 info="of the k, drawn from the teacher beyond its top k − S: the student learns "
                                      "how the tail is spread, at the same bytes (0: the plain top k)",
                                 elem_id="cache-build-tail")
        fidelity = gr.Checkbox(False, label="Measure fidelity", info="then train a few steps live and from the "
                                                                       "cache and keep the held-out KL difference")
        steps = gr.Number(DEFAULT_FIDELITY_STEPS, label="Fidelity steps", precision=0, minimum=1,
                          maximum=MAX_FIDELITY_STEPS)
    button = gr.Button("Build cache", size="sm", elem_id="cache-build")
    message = gr.Markdown(elem_id="cache-build-message")
    return _BuildControls(folder, k, tail_samples, fidelity, steps, button, message)
