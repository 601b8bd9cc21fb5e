"""What an on-policy run shows: in Set up its own group (and not the loss group's knobs, which it does not
use), and in Runs its student's latest samples as text, the teacher's reverse KL on them and where a step's
time goes; nothing of it for other strategies. Fake run folders, no training."""
from __future__ import annotations

import gradio as gr
import pytest

from workbench.config.fields import ConfigError
from workbench.config.gate import Gate
from workbench.config.schema import DistillConfig
from workbench.store.rundir import CONFIG, SAMPLES, RunDir
from workbench.ui import on_policy_panel, runs_tab, services as services_module, setup_tab
from workbench.ui.app import DEFAULT_CONFIG
from workbench.ui.form import SetupForm, form_to_config
from workbench.ui.plots import sampled_rkl, step_seconds
from workbench.ui.services import Services

HOSTILE = "<img src=x onerror=alert(1)>"
BOLD = "**bold** [link](http://x) `code`"
# Three logs of an on-policy run: the second had no on-policy step, so no sampled_rkl.
LOGS = [{"step": 2, "sampled_rkl": 2.5, "sample_s": 0.6, "teacher_s": 0.2, "update_s": 0.1,
         "sampled_tokens_per_s": 410.0, "on_policy_share": 1.0},
        {"step": 4, "sample_s": 0.0, "teacher_s": 0.2, "update_s": 0.1, "sampled_tokens_per_s": 0.0,
         "on_policy_share": 0.0},
        {"step": 6, "sampled_rkl": 1.5, "sample_s": 0.5, "teacher_s": 0.25, "update_s": 0.125,
         "sampled_tokens_per_s": 512.0, "on_policy_share": 0.5}]


@pytest.fixture
def default():
    return DistillConfig.load(DEFAULT_CONFIG)


@pytest.fixture
def services(tmp_path):
    started = Services.start(tmp_path / "runs")
    yield started
    started.close()


def fake_run(services: Services, name: str, strategy: str, samples: list[dict] = ()) -> str:
    """A finished run folder as a job leaves it, ingested into the store."""
    data = DistillConfig.load(DEFAULT_CONFIG).to_dict()
    data["strategy"] = strategy
    run = RunDir(services.runs_dir / name).create()
    DistillConfig.from_dict(data).save(run.file(CONFIG))
    for log in LOGS:
        run.append_metrics({"loss": 3.0, "ce": 0.0, "kd": 3.0, "tokens_per_s": 100.0, **log})
    if samples:
        run.append_samples(list(samples))
    run.write_status("succeeded", step=6, total_steps=6)
    services.ingest.ingestor.ingest_all()
    return name


def test_the_latest_samples_show_as_text_with_their_step(services):
    run_id = fake_run(services, "op", "on_policy", [
        {"step": 2, "prompt": "old", "completion": "old", "tokens": 1},
        {"step": 6, "prompt": f"p {HOSTILE}", "completion": HOSTILE, "tokens": 9},
        {"step": 6, "prompt": "q", "completion": BOLD, "tokens": 7}])
    box, note, frame, rkl, seconds = on_policy_panel.on_policy_outputs(services, run_id, changed=True)
    assert box["visible"] is True
    assert list(frame.completion) == [HOSTILE, BOLD] and list(frame.prompt) == [f"p {HOSTILE}", "q"]
    assert list(frame.tokens) == [9, 7]
    # The note is Markdown: numbers only, no model text.
    assert "step 6" in note and "512 tokens/s" in note and "50%" in note and "<img" not in note
    assert "bold" not in note and "old" not in note
    with gr.Blocks():
        view = on_policy_panel.create_on_policy_view()
    # Gradio renders "str" cells as text: the model's markup is shown, never rendered.
    assert view.samples.datatype[:2] == ["str", "str"]
    sent = view.samples.postprocess(frame)
    assert sent.headers == on_policy_panel.SAMPLE_COLUMNS and [row[1] for row in sent.data] == [HOSTILE, BOLD]


def test_samples_are_read_from_the_files_end(services, monkeypatch):
    monkeypatch.setattr(services_module, "SAMPLES_TAIL_BYTES", 300)
    many = [{"step": step, "prompt": "p" * 50, "completion": "c", "tokens": 1} for step in range(1, 40)]
    run_id = fake_run(services, "long", "on_policy", many + [{"step": 40, "prompt": "last", "completion": "x"}])
    run = RunDir(services.runs_dir / run_id)
    with open(run.file(SAMPLES), "a") as fh:
        fh.write('{"step": 41, "prompt": "being writ')  # a line still being written
    assert services.latest_samples(run_id) == [{"step": 40, "prompt": "last", "completion": "x"}]
    assert services.latest_samples("no-such-run") == [] and services.latest_samples("op") == []
    frame = on_policy_panel.samples_frame([{"prompt": "x" * 5000, "completion": None, "tokens": "many"}])
    assert len(frame.prompt[0]) < 2100 and frame.completion[0] == "" and frame.tokens.isna().all()


def test_the_step_time_splits_into_sampling_teacher_and_update(services):
    metrics = services.store.metrics([fake_run(services, "op", "on_policy")])
    figure = step_seconds(metrics)
    assert [t.name for t in figure.data] == ["sampling", "teacher scoring", "update"]
    assert figure.layout.barmode == "stack"
    for trace, column in zip(figure.data, ("sample_s", "teacher_s", "update_s")):
        assert list(trace.x) == [2, 4, 6] and list(trace.y) == [log[column] for log in LOGS]


def test_the_reverse_kl_on_samples_has_a_point_per_log_that_sampled(services):
    figure = sampled_rkl(services.store.metrics([fake_run(services, "op", "on_policy")]))
    assert len(figure.data) == 1 and list(figure.data[0].x) == [2, 6] and list(figure.data[0].y) == [2.5, 1.5]
    assert "reverse KL on the student's own samples" in figure.layout.title.text
    assert "no step has sampled" in sampled_rkl(services.store.metrics(["none"])).layout.annotations[0].text


def test_other_runs_hide_the_on_policy_views_and_an_unchanged_poll_sends_nothing(services):
    soft = fake_run(services, "soft", "soft_label")
    picked = runs_tab.pick(services, None, soft)
    assert picked[-5]["visible"] is False and all(isinstance(v, type(gr.skip())) for v in picked[-4:])
    on_policy = fake_run(services, "op", "on_policy")
    assert runs_tab.pick(services, None, on_policy)[-5]["visible"] is True
    _, _, key = runs_tab.run_details(services, on_policy)
    polled = runs_tab.poll(services, None, on_policy, key)
    assert all(isinstance(v, type(gr.skip())) for v in polled[-5:])  # the same points: nothing is redrawn
    with gr.Blocks():
        view = runs_tab._layout(services)
    assert len(polled) == len(view.polled) and len(picked) == len(view.picked)
    assert view.on_policy.box.visible is False


def visibility_after(services, default, strategy: str) -> dict[str, bool]:
    """Whether the Set-up group holding each key shows once `strategy` is chosen."""
    with gr.Blocks() as demo:
        inputs = setup_tab.create_setup_tab(services, default)
    event = next(fn for fn in demo.fns.values() if fn.inputs == [inputs["strategy"]])
    shown = {id(block): update["visible"] for block, update in zip(event.outputs, event.fn(strategy))}

    def group_of(block):
        while id(block) not in shown:
            block = block.parent
        return shown[id(block)]
    return {key: group_of(inputs[key]) for key in ("on_policy.prompts", "on_policy.lmbda", "on_policy.top_p",
                                                   "loss.divergence", "data_kind", "generation.prompts")}


def test_the_on_policy_group_shows_for_on_policy_only_and_the_loss_knobs_do_not(services, default):
    assert visibility_after(services, default, "on_policy") == {
        "on_policy.prompts": True, "on_policy.lmbda": True, "on_policy.top_p": True, "loss.divergence": False,
        "data_kind": True, "generation.prompts": False}
    assert visibility_after(services, default, "soft_label") == {
        "on_policy.prompts": False, "on_policy.lmbda": False, "on_policy.top_p": False, "loss.divergence": True,
        "data_kind": True, "generation.prompts": False}


def test_the_form_launches_on_policy_with_its_defaults(default, tmp_path, monkeypatch):
    gate = Gate((tmp_path,))
    form = SetupForm.from_config(default).replace({"strategy": "on_policy"})
    config = form_to_config(form, gate, tmp_path).config
    assert config.strategy == "on_policy" and config.on_policy == default.on_policy
    assert config.on_policy.prompts == "corpus" and config.data.source == "defaults:corpus/train.jsonl"
    # Named prompt sets pass as they are, even beside a folder of the same name.
    (tmp_path / "corpus").mkdir()
    monkeypatch.chdir(tmp_path)
    assert form_to_config(form, gate, tmp_path).config.on_policy.prompts == "corpus"
    chosen = {"on_policy.prompts": "project:instructions", "on_policy.lmbda": 1.0}
    assert form_to_config(form.replace(chosen), gate, tmp_path).config.on_policy.prompts == "project:instructions"
    # A prompt file is read by the worker and its prompts shown in Runs: only from the allowed folders.
    with pytest.raises(ConfigError) as err:
        form_to_config(form.replace({**chosen, "on_policy.prompts": "/etc/prompts.jsonl"}), gate, tmp_path)
    assert err.value.field == "on_policy.prompts" and "outside the folders" in str(err.value)
    inside = tmp_path / "prompts.jsonl"
    inside.write_text('{"prompt": "hi"}\n')
    assert form_to_config(form.replace({**chosen, "on_policy.prompts": str(inside)}), gate,
                          tmp_path).config.on_policy.prompts == str(inside)
    soft = form_to_config(form.replace({"strategy": "soft_label", "on_policy.lmbda": 0.9}), gate, tmp_path).config
    assert soft.on_policy == default.on_policy  # a strategy's section applies only when it is chosen


def test_compare_overlays_the_reverse_kl_on_samples_of_several_runs(services):
    from workbench.ui.compare_tab import compare
    runs = [fake_run(services, name, "on_policy") for name in ("op-a", "op-b")]
    figure, _, _ = compare(services, runs, "sampled_rkl")
    assert [trace.name for trace in figure.data] == runs
    assert [y for y in figure.data[0].y if y == y] == [2.5, 1.5]  # the log without sampling is a gap (NaN)
    assert "own samples" in figure.layout.title.text
