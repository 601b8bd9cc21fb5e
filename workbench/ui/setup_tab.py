"""Set up tab: pick teacher and student, strategy and knobs, data; preview T; pre-flight; launch."""
from __future__ import annotations

import dataclasses
import time

import gradio as gr
import yaml

from workbench.config import DIVERGENCES, NONFINITE, STRATEGIES, DistillConfig, ModelSpec
from workbench.configbase import ConfigError
from workbench.defaults import resolve_default
from workbench.escaping import plain
from workbench.plots import temperature_preview as preview_figure
from workbench.preflight import preflight
from workbench.preview import temperature_preview
from workbench.services import Services
from workbench.ui.cache_panel import create_cache_panel
from workbench.ui.generation_panel import create_dataset_panel, create_generation_fields
from workbench.ui.layers_panel import create_layer_fields
from workbench.ui.form import (DATA_HUB, DATA_KINDS, DATA_UPLOAD, KNOWN_PAIRS, STUDENT_CHECKPOINT, STUDENT_PRUNED,
                               Launch, SetupForm, form_to_config)

FIELDS = [f.name for f in dataclasses.fields(SetupForm) if f.name != "base"]
PREVIEW_TEXT = "In the beginning God created the heavens and the"


def _problems_markdown(err: ConfigError) -> str:
    return "**Not launched — fix these first:**\n" + "\n".join(
        f"- **{plain(name)}**: {plain(msg)}" for name, msg in err.problems)


def _save_yaml(services: Services, config: DistillConfig) -> str:
    services.exports_dir.mkdir(parents=True, exist_ok=True)
    path = services.exports_dir / f"config-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return str(path)


def check(services: Services, form: SetupForm) -> tuple[str, str | None, Launch | None]:
    """(verdict markdown, YAML file of the config or None, what to launch or None)."""
    try:
        plan = form_to_config(form, services.gate, services.uploads_dir)
    except ConfigError as err:
        return _problems_markdown(err), None, None
    report = preflight(plan.config, services.cache_dir, plan.processes)
    yaml_path = _save_yaml(services, plan.config)
    return report.markdown(), yaml_path, (plan if report.ok else None)


def launch(services: Services, form: SetupForm, session: str | None = None) -> tuple[str, str | None]:
    verdict, yaml_path, plan = check(services, form)
    if plan is None:
        return verdict, yaml_path
    try:
        run_id = services.submit(plan.config, session, num_processes=plan.processes,
                                 accelerate_config=plan.accelerate_config)
    except ConfigError as err:
        return _problems_markdown(err), yaml_path
    return f"{verdict}\n\n**Launched {plain(run_id)}** — follow it in the Runs tab.", yaml_path


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


def create_setup_tab(services: Services, default: DistillConfig) -> dict:
    start = SetupForm.from_config(default)
    with gr.Tab("Set up", id="setup"):
        with gr.Row():
            pair = gr.Dropdown(list(KNOWN_PAIRS), value=None, label="Known teacher → student pairs",
                               info="fills in both; hub pairs need the Hugging Face hub")
            teacher = gr.Textbox(start.teacher, label="Teacher", info="hub id, local folder, or defaults:teacher")
        with gr.Row():
            student_kind = gr.Radio([STUDENT_CHECKPOINT, STUDENT_PRUNED], value=start.student_kind, label="Student")
            student = gr.Textbox(start.student, label="Student checkpoint", info="hub id or local folder")
            keep_layers = gr.Slider(1, 64, value=start.keep_layers, step=1, label="Keep N teacher layers",
                                    visible=start.student_kind == STUDENT_PRUNED)
        hard = start.strategy == "hard_label"
        with gr.Row():
            strategy = gr.Dropdown(list(STRATEGIES), value=start.strategy, label="Strategy",
                                   info="soft_label: match the teacher's distributions; hard_label: learn its text")
        with gr.Row(visible=not hard) as soft_row:
            divergence = gr.Dropdown(list(DIVERGENCES), value=start.divergence, label="Divergence")
            alpha = gr.Number(start.alpha, label="α (CE weight)", info="0 = pure KD, 1 = plain fine-tuning", step=0.05,
                              visible=start.strategy != "co_distillation")
            temperature = gr.Number(start.temperature, label="Temperature T", step=0.5)
            beta = gr.Number(start.beta, label="β (JSD)", step=0.1, visible=start.divergence == "jsd")
        with gr.Row():
            max_steps = gr.Number(start.max_steps, label="Steps", precision=0)
            lr = gr.Number(start.lr, label="Learning rate")
            batch_size = gr.Number(start.batch_size, label="Batch size", precision=0)
            seq_len = gr.Number(start.seq_len, label="Sequence length", precision=0)
        layer_fields, layer_groups, show_layers = create_layer_fields(start)
        generation, generation_fields = create_generation_fields(start, hard)
        datasets, gen_dataset = create_dataset_panel(services, start.gen_dataset, hard)
        with gr.Row(visible=not hard) as data_row:
            data_kind = gr.Radio(list(DATA_KINDS), value=start.data_kind, label="Data")
            upload = gr.File(label="Training file (.txt .jsonl .json .csv .parquet)", visible=False, type="filepath",
                             file_types=[".txt", ".jsonl", ".json", ".csv", ".parquet"])
            hub_dataset = gr.Textbox(label="Hub dataset id", visible=False)
        with gr.Row():
            lora = gr.Checkbox(start.lora, label="LoRA adapters")
            bf16 = gr.Dropdown(["auto", "on", "off"], value=start.bf16, label="bf16")
            processes = gr.Number(start.processes, label="Processes", precision=0, info="> 1: accelerate launch")
            accelerate_config = gr.Textbox(label="accelerate config file (optional)",
                                           info="FSDP / DeepSpeed on GPUs; `accelerate config` writes one")
            run_name = gr.Textbox(start.run_name, label="Run name (optional)")
            evaluate = gr.Checkbox(start.evaluate, label="Evaluate at the end",
                                   info="perplexity, agreement, calibration, speed, generations: the run card")
            on_nonfinite = gr.Dropdown(list(NONFINITE), value=start.on_nonfinite, label="If a step's loss is NaN/inf",
                                       info="stop: the run fails, its checkpoints stay finite; skip: no update, "
                                            "counted in the metrics")
        cache_panel, teacher_cache = create_cache_panel(services, start.teacher_cache, start.strategy == "soft_label")
        with gr.Accordion("Temperature preview", open=False):
            preview_text = gr.Textbox(PREVIEW_TEXT, label="Text the teacher continues")
            preview_button = gr.Button("Preview T")
            preview_plot = gr.Plot(label="Teacher next-token distribution")
            preview_note = gr.Markdown()
        with gr.Row():
            check_button = gr.Button("Pre-flight check")
            launch_button = gr.Button("Launch", variant="primary")
            download = gr.DownloadButton("Download config (YAML)", visible=False)
        verdict = gr.Markdown(elem_id="setup-verdict")

    # strict: a field added to SetupForm without its component (or the reverse) fails when the app builds.
    inputs = dict(zip(FIELDS, [teacher, student_kind, student, keep_layers, strategy, divergence, alpha, temperature,
                               beta, max_steps, lr, batch_size, seq_len, data_kind, upload, hub_dataset, lora, bf16,
                               processes, accelerate_config, run_name, evaluate, on_nonfinite, teacher_cache,
                               *generation_fields,
                               gen_dataset, *layer_fields], strict=True))
    for name, component in inputs.items():
        component.elem_id = f"setup-{name}"  # stable handles for browser tests and custom CSS
    base = default.to_dict()

    def form(values) -> SetupForm:
        return SetupForm(**dict(zip(FIELDS, values)), base=base)

    def on_check(*values):
        text, path, _ = check(services, form(values))
        return text, gr.DownloadButton(value=path, visible=path is not None)

    def on_launch(request: gr.Request, *values):
        text, path = launch(services, form(values), getattr(request, "session_hash", None))
        return text, gr.DownloadButton(value=path, visible=path is not None)

    pair.change(lambda name: KNOWN_PAIRS.get(name, (gr.skip(), gr.skip())), pair, [teacher, student])
    student_kind.change(lambda kind: (gr.update(visible=kind == STUDENT_PRUNED), gr.update(visible=kind != STUDENT_PRUNED)),
                        student_kind, [keep_layers, student])
    divergence.change(lambda d: gr.update(visible=d == "jsd"), divergence, beta)
    strategy.change(lambda chosen: [gr.update(visible=chosen != "hard_label"), gr.update(visible=chosen != "hard_label"),
                                    gr.update(visible=chosen == "soft_label"), gr.update(visible=chosen == "hard_label"),
                                    gr.update(visible=chosen == "hard_label"), *show_layers(chosen),
                                    gr.update(visible=chosen != "co_distillation")],  # its α is scheduled
                    strategy, [soft_row, data_row, cache_panel, generation, datasets, *layer_groups, alpha])
    data_kind.change(lambda k: (gr.update(visible=k == DATA_UPLOAD), gr.update(visible=k == DATA_HUB)),
                     data_kind, [upload, hub_dataset])
    check_button.click(on_check, list(inputs.values()), [verdict, download], api_name="check")
    launch_button.click(on_launch, list(inputs.values()), [verdict, download], api_name="launch")
    preview_button.click(lambda t, x, temp: preview(services, t, x, temp), [teacher, preview_text, temperature],
                         [preview_plot, preview_note], api_name="preview")
    return inputs
