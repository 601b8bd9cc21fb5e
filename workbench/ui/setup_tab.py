"""Set up tab: pick teacher and student, strategy and knobs, data; preview T; pre-flight; launch.

The form is generated from the config (workbench/ui/form_fields.py): LAYOUT below says where fields sit,
every other one shows in the Advanced accordion. Components are keyed by field path, and the one ordered
list of keys (form.setup_fields) is both the inputs of the check/launch endpoints and the form's mapping."""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import gradio as gr
import yaml

from workbench.config.escaping import plain
from workbench.config.fields import ConfigError
from workbench.config.schema import STRATEGIES, DistillConfig, ModelSpec
from workbench.data.defaults import resolve_default
from workbench.engine.preflight import preflight
from workbench.eval.preview import temperature_preview
from workbench.ui import generation_panel
from workbench.ui.cache_panel import CachePanel
from workbench.ui.cluster_panel import create_cluster_panel
from workbench.ui.form import (
    DATA_HUB,
    DATA_KINDS,
    DATA_UPLOAD,
    STUDENT_CHECKPOINT,
    STUDENT_PRUNED,
    UI_FIELDS,
    Launch,
    SetupForm,
    form_to_config,
    setup_fields,
)
from workbench.ui.form_layout import Group, build_form, wire_visibility
from workbench.ui.layers_panel import LAYER_GROUPS
from workbench.ui.on_policy_panel import ON_POLICY_GROUP
from workbench.ui.plots import temperature_preview as preview_figure
from workbench.ui.services import Services

DEFAULT_PAIR = "offline default: SmolLM2-135M-Instruct → 6 of its layers"
GEMMA_PAIR = "offline, two tokenizers: Gemma-3-270M → SmolLM2's 6 layers (loss.cross_tokenizer)"
# Teacher -> student pairs that share a tokenizer (the Gemma pair: two families, for cross-tokenizer KD;
# fetched with prepare-defaults --gemma), the others for users who have the hub.
KNOWN_PAIRS = {
    DEFAULT_PAIR: ("defaults:teacher", "defaults:student"),
    GEMMA_PAIR: ("defaults:gemma-3-270m", "defaults:student"),
    "gpt2 → distilgpt2": ("gpt2", "distilgpt2"),
    "SmolLM2-360M → SmolLM2-135M": ("HuggingFaceTB/SmolLM2-360M", "HuggingFaceTB/SmolLM2-135M"),
    "Qwen2.5-1.5B → Qwen2.5-0.5B": ("Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-0.5B"),
}
# Known pairs of two tokenizer families: picking one turns cross-tokenizer KD on (hybrid measured better
# than ULD on the Gemma pair: README); picking any other known pair turns it off.
CROSS_PAIRS = {GEMMA_PAIR: "hybrid"}
# The lesson preset: a run a class watches end to end on 2 CPU cores, its CE-only baseline queued behind it.
LESSON_CONFIG = Path(__file__).resolve().parents[2] / "assets" / "configs" / "lesson.yaml"
LESSON_NOTE = (
    "**Lesson preset loaded** (assets/configs/lesson.yaml): the offline default pair, 40 steps of 4 × 128 tokens, "
    "8 held-out blocks, its CE-only baseline queued behind it. Measured in this app on 2 CPU cores: the run "
    "finished (training and evaluation) 4.7 minutes after Launch, the baseline at 8.8, then Compare gave its "
    "verdict; the held-out KL to the teacher fell from 13.6 to 2.5 nats/token. What it trades away against the "
    "default run: a tenth of its training tokens, held-out numbers on 1,024 tokens (they move by several "
    "percent between seeds), short generations and no speed measurement. It shows the direction of "
    "distillation, not its size. Press Launch.")
PRUNED_LAYERS = 6  # the layers a student pruned from the teacher keeps when the config names none
LIVE_TEACHER = tuple(s for s in STRATEGIES if s != "hard_label")  # the strategies that train on data.source
# The strategies whose loss the loss group's knobs set: on_policy has its own divergence, α and T.
LOSS_KNOBS = tuple(s for s in LIVE_TEACHER if s != "on_policy")
# Where each field sits, group by group (rows of keys); a field named nowhere shows in Advanced.
LAYOUT = (
    Group((("pair", "teacher.name_or_path"),
           ("student_kind", "student.name_or_path", "student.init_from_teacher_layers"), ("strategy",))),
    Group((("loss.divergence", "loss.alpha", "loss.temperature", "loss.beta", "loss.skew_lambda"),),
          strategies=LOSS_KNOBS),
    Group((("train.max_steps", "train.lr", "train.batch_size", "train.seq_len"),)),
    *LAYER_GROUPS,
    ON_POLICY_GROUP,
    generation_panel.GENERATION_GROUP,
    generation_panel.DATASET_GROUP,
    Group((("data_kind", "data_upload", "hub_dataset"),), strategies=LIVE_TEACHER),
    Group((("student.lora.enabled", "train.bf16", "num_processes", "accelerate_config", "output.run_name",
            "evaluation.at_end", "train.on_nonfinite", "with_baseline"),)),
    Group((("loss.cross_tokenizer", "loss.teacher_cache", "loss.build_teacher_cache", "loss.reuse_teacher"),),
          strategies=("soft_label",)),
)
# Fields shown only while another key's value passes a test: key -> (controlling key, test).
SHOWN_WHEN = {
    "student.name_or_path": ("student_kind", lambda kind: kind != STUDENT_PRUNED),
    "student.init_from_teacher_layers": ("student_kind", lambda kind: kind == STUDENT_PRUNED),
    "loss.alpha": ("strategy", lambda strategy: strategy != "co_distillation"),  # its α is scheduled
    "loss.beta": ("loss.divergence", lambda divergence: divergence == "jsd"),
    "loss.skew_lambda": ("loss.divergence", lambda divergence: str(divergence).startswith("skew")),
    "data_upload": ("data_kind", lambda kind: kind == DATA_UPLOAD),
    "hub_dataset": ("data_kind", lambda kind: kind == DATA_HUB),
    **generation_panel.SHOWN_WHEN,
}
PREVIEW_TEXT = "In the beginning God created the heavens and the"


def pick_pair(name: str) -> tuple:
    """(teacher, student, loss.cross_tokenizer) for a known pair; nothing changes for anything else."""
    if name not in KNOWN_PAIRS:
        return gr.skip(), gr.skip(), gr.skip()
    return (*KNOWN_PAIRS[name], CROSS_PAIRS.get(name, "off"))


def _problems_markdown(err: ConfigError) -> str:
    return "**Not launched — fix these first:**\n" + "\n".join(
        f"- **{plain(name)}**: {plain(msg)}" for name, msg in err.problems)


def save_yaml(services: Services, form: SetupForm) -> tuple[str | None, str]:
    """(the config as a YAML file that `python -m workbench train` runs the same, message), written only when
    asked: a pre-flight or a launch leaves no file behind (the run's folder holds its own config)."""
    try:
        config = form_to_config(form, services.gate, services.uploads_dir).config
    except ConfigError as err:
        return None, _problems_markdown(err)
    services.exports_dir.mkdir(parents=True, exist_ok=True)
    path = services.exports_dir / f"config-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    # The name is ours (a time stamp), so it may sit in a code span.
    return str(path), f"Saved as {path.name}: `python -m workbench train {path.name}` runs it."


def check(services: Services, form: SetupForm) -> tuple[str, Launch | None]:
    """(verdict markdown, what to launch or None)."""
    try:
        plan = form_to_config(form, services.gate, services.uploads_dir)
    except ConfigError as err:
        return _problems_markdown(err), None
    report = preflight(plan.config, services.cache_dir, plan.processes)
    return report.markdown(), (plan if report.ok else None)


def launch(services: Services, form: SetupForm, session: str | None = None) -> tuple[str, str | None]:
    """(verdict markdown, the launched run's id or None); with_baseline also queues its CE-only baseline."""
    verdict, plan = check(services, form)
    if plan is None:
        return verdict, None
    try:
        run_id = services.submit(plan.config, session, num_processes=plan.processes,
                                 accelerate_config=plan.accelerate_config)
    except ConfigError as err:
        return _problems_markdown(err), None
    text = f"{verdict}\n\n**Launched {plain(run_id)}** — follow it in the Runs tab."
    if plan.with_baseline:
        try:
            baseline = services.add_baseline(run_id, session)
            text += (f" Its CE-only baseline **{plain(baseline)}** is queued behind it: Compare gives the verdict "
                     "once both have finished.")
        except (ConfigError, ValueError, OSError) as err:  # a shared app's queue cap: the run itself stands
            text += f" Its CE-only baseline was not queued: {plain(err)}"
    return text, run_id


def lesson_values() -> list:
    """The form's values for the lesson preset, its baseline ticked."""
    return SetupForm.from_config(DistillConfig.load(LESSON_CONFIG)).replace({"with_baseline": True}).as_list()


def preview(services: Services, teacher, text, temperature) -> tuple[object, str]:
    """The teacher's next-token distribution at T = 1 and at T. The teacher passes the gate as at launch:
    a visitor cannot have the app load any folder or checkpoint code."""
    if not isinstance(teacher, str) or not isinstance(text, str) or len(text) > 10_000:
        return None, "**Preview failed:** **teacher.name_or_path**: give a model and a text of at most 10,000 characters"
    problem = services.gate.preview_problem(teacher)
    if problem:
        return None, f"**Preview failed:** **teacher.name_or_path**: {plain(problem)}"
    try:
        spec = ModelSpec(name_or_path=resolve_default(teacher.strip(), "teacher.name_or_path", services.cache_dir))
        result = temperature_preview(spec, text, float(temperature))
    except Exception as err:  # noqa: BLE001 - any load or input problem is shown next to the plot
        return None, f"**Preview failed:** {plain(err)}"
    figure = preview_figure(result.tokens, result.probs_t1, result.probs_t, float(temperature), result.context)
    return figure, (f"Entropy of the teacher's next-token distribution: {result.entropy_t1:.2f} nats at T = 1, "
                    f"{result.entropy_t:.2f} at T = {float(temperature):g}. Higher T spreads the mass over more "
                    "tokens, so the student sees more of the teacher's ranking of wrong answers.")


def _makers(services: Services, cache_panel: CachePanel) -> dict:
    """The components of the UI-only keys and of the fields a panel holds."""
    return {
        "pair": lambda _: gr.Dropdown(list(KNOWN_PAIRS), value=None, label="Known teacher → student pairs",
                                      info="fills in both; hub pairs need the Hugging Face hub"),
        "student_kind": lambda kind: gr.Radio([STUDENT_CHECKPOINT, STUDENT_PRUNED], value=kind, label="Student"),
        "data_kind": lambda kind: gr.Radio(list(DATA_KINDS), value=kind, label="Data"),
        "data_upload": lambda _: gr.File(label="Training file (.txt .jsonl .json .csv .parquet)", type="filepath",
                                         file_types=[".txt", ".jsonl", ".json", ".csv", ".parquet"]),
        "hub_dataset": lambda name: gr.Textbox(name, label="Hub dataset id", info="→ data.source"),
        "prompt_upload": generation_panel.prompt_upload,
        "num_processes": lambda n: gr.Number(n, label="Processes", precision=0, info="> 1: accelerate launch"),
        "accelerate_config": lambda path: gr.Textbox(path, label="accelerate config file (optional)",
                                                     info="FSDP / DeepSpeed on GPUs; `accelerate config` writes one"),
        "with_baseline": lambda ticked: gr.Checkbox(ticked, label="Queue its CE-only baseline too",
                                                    info="the same student, data, steps and seed on the labels alone: "
                                                         "Compare's answer to 'did distillation help?'"),
        "loss.teacher_cache": cache_panel.create,
        "generation.dataset": partial(generation_panel.create_dataset_panel, services),
    }


def create_setup_tab(services: Services, default: DistillConfig, extra=None) -> dict:
    """The tab, its form generated from `default`'s class and started from its values; key -> component.
    `extra(inputs)` places more under the form, inside the tab (the Study panel)."""
    start = SetupForm.from_config(default)
    fields = setup_fields(type(default))
    with gr.Tab("Set up", id="setup"):
        with gr.Row():
            lesson_button = gr.Button("Lesson preset: a run a class can watch (~4 min + its baseline)", size="sm",
                                      elem_id="setup-lesson")
        cache_panel = CachePanel(services)
        components, boxes = build_form(LAYOUT, fields, tuple(f.key for f in UI_FIELDS), start.values,
                                       _makers(services, cache_panel), type(default))
        with gr.Accordion("Temperature preview", open=False):
            preview_text = gr.Textbox(PREVIEW_TEXT, label="Text the teacher continues")
            preview_button = gr.Button("Preview T")
            preview_plot = gr.Plot(label="Teacher next-token distribution")
            preview_note = gr.Markdown()
        with gr.Row():
            check_button = gr.Button("Pre-flight check")
            launch_button = gr.Button("Launch", variant="primary")
            save_button = gr.Button("Save config as YAML")
            download = gr.DownloadButton("Download config (YAML)", visible=False)
        verdict = gr.Markdown(elem_id="setup-verdict")
        inputs = {f.key: components[f.key] for f in fields}  # the endpoints' positional order
        cache_panel.wire(default, inputs)
        if extra is not None:
            extra(inputs)
        create_cluster_panel(services, default, inputs)
    rules = [(components[key], control, test) for key, (control, test) in SHOWN_WHEN.items()]
    rules += [(box, "strategy", lambda chosen, group=group: chosen in group.strategies)
              for group, box in zip(LAYOUT, boxes) if group.strategies]
    wire_visibility(rules, components, start.values)

    def on_check(*values):
        return check(services, SetupForm.from_list(default, values))[0]

    def on_launch(request: gr.Request, *values):
        return launch(services, SetupForm.from_list(default, values), getattr(request, "session_hash", None))[0]

    def on_save(*values):
        path, text = save_yaml(services, SetupForm.from_list(default, values))
        return text, gr.DownloadButton(value=path, visible=path is not None)

    teacher, student, layers = (components[key] for key in ("teacher.name_or_path", "student.name_or_path",
                                                            "student.init_from_teacher_layers"))
    components["pair"].change(pick_pair, components["pair"], [teacher, student, components["loss.cross_tokenizer"]])
    components["student_kind"].change(
        lambda kind, kept: PRUNED_LAYERS if kind == STUDENT_PRUNED and not kept else gr.skip(),
        [components["student_kind"], layers], layers)
    lesson_button.click(lambda: (*lesson_values(), LESSON_NOTE), None, [*inputs.values(), verdict],
                        api_name="lesson_preset")
    check_button.click(on_check, list(inputs.values()), verdict, api_name="check")
    launch_button.click(on_launch, list(inputs.values()), verdict, api_name="launch")
    save_button.click(on_save, list(inputs.values()), [verdict, download], api_name="save_config")
    preview_button.click(lambda t, x, temp: preview(services, t, x, temp),
                         [teacher, preview_text, components["loss.temperature"]], [preview_plot, preview_note],
                         api_name="preview")
    return inputs
