"""The UI without a browser: the app builds, the form maps to a config (and refuses bad input naming the
field), handlers submit through the job manager, pre-flight, the temperature preview, the SQL box."""
import time

import gradio as gr
import pytest
import tiny
import yaml

from workbench.config.fields import ConfigError
from workbench.config.gate import PUBLIC_MAX_STEPS, Gate, is_public
from workbench.config.schema import DistillConfig, ModelSpec
from workbench.engine.preflight import preflight
from workbench.eval.preview import temperature_preview
from workbench.ui import compare_tab, evaluate_tab, inspect_tab, runs_tab, setup_tab
from workbench.ui.app import DEFAULT_CONFIG, build_app
from workbench.ui.form import STUDENT_PRUNED, SetupForm, form_to_config, setup_fields
from workbench.ui.form_layout import elem_id
from workbench.ui.services import Services


def test_the_app_builds_with_every_tab(services):
    app = build_app(services)
    labels = {getattr(block, "label", None) for block in app.blocks.values()}
    assert {"Set up", "Runs", "Inspect", "Evaluate", "Compare", "Config"} <= labels
    # Anything but a Tab directly in gr.Tabs (a Timer, a State) makes the browser's tab bar repeat a tab.
    tabs = next(block for block in app.blocks.values() if isinstance(block, gr.Tabs))
    assert all(isinstance(child, gr.Tab) for child in tabs.children), [type(c).__name__ for c in tabs.children]


def test_every_form_field_is_bound_to_its_own_component(services):
    """Components are keyed by field path, and the endpoints take them in setup_fields' order: one out of
    place would hand its value to another field. Built from a config whose changed fields all differ, each
    component must show its own field's start value, carry its path as label and elem_id, and sit in the
    inputs list where setup_fields puts its key."""
    changes = {"loss": dict(alpha=0.3, beta=0.6, temperature=2.0),
               "train": dict(max_steps=123, batch_size=5, seq_len=77, lr=0.002, on_nonfinite="skip"),
               "generation": dict(temperature=0.8, top_p=0.9, max_new_tokens=99, samples_per_prompt=3, concurrency=6,
                                  seed=7, max_prompts=11, prompt_column="instruction", api_key_env="MY_KEY",
                                  api_base_url="http://127.0.0.1:9/v1", api_model="m"),
               "co_distillation": dict(teacher_lr=0.004, alpha_start=0.95, alpha_end=0.35, alpha_warmup_steps=12,
                                       alpha_schedule="linear", mutual=True, mutual_weight=0.45),
               "hidden": dict(layer_map=["0:3", "1:5"], weight=3.5, loss="cosine"),
               "attention": dict(loss="mse", heads="map")}
    data = DistillConfig.load(DEFAULT_CONFIG).to_dict()
    for section, values in changes.items():
        data[section].update(values)
    config = DistillConfig.from_dict(data)
    start = SetupForm.from_config(config)
    with gr.Blocks():
        inputs = setup_tab.create_setup_tab(services, config)
    assert list(inputs) == [f.key for f in setup_fields()]
    changed = [f"{section}.{key}" for section, values in changes.items() for key in values]
    values = [start.values[key] for key in changed if type(start.values[key]) is not bool]
    assert len(set(map(str, values))) == len(values)  # all distinct, so a swap shows (bools: a swap with another type)
    for key, component in inputs.items():
        expected = start.values[key]
        assert (type(component.value) is bool, component.value) == (type(expected) is bool, expected), key
        assert component.elem_id == elem_id(key), key
        if "." in key and key not in ("loss.teacher_cache", "generation.dataset"):  # those two: their panels' own
            assert component.label == key, key


def test_the_form_maps_to_a_config_and_keeps_the_upload(services, tiny_form, corpus_files):
    plan = form_to_config(tiny_form, services.gate, services.uploads_dir)
    config = plan.config
    assert plan.processes == 1 and plan.accelerate_config is None and config.train.max_steps == 6 and config.train.bf16 == "off"
    assert config.train.logging_steps == 1  # a 6-step run still draws a curve
    kept = config.data.source
    assert kept.startswith(str(services.uploads_dir)) and open(kept).read() == corpus_files[0].read_text()
    assert config.data.validation_source is None and config.loss.alpha == 0.5
    assert config.evaluation.at_end and config.loss.teacher_cache is None
    cache = services.caches_dir / "k32"
    cached = form_to_config(tiny_form.replace({"loss.teacher_cache": str(cache)}), services.gate,
                            services.uploads_dir)
    assert cached.config.loss.teacher_cache == str(cache)
    with pytest.raises(ConfigError) as err:
        form_to_config(tiny_form.replace({"loss.teacher_cache": "/etc/cache"}), services.gate,
                       services.uploads_dir)
    assert err.value.field == "loss.teacher_cache"
    quiet = form_to_config(tiny_form.replace({"evaluation.at_end": False}), services.gate, services.uploads_dir)
    assert not quiet.config.evaluation.at_end


def test_bad_form_input_names_every_field(services, tiny_form, tmp_path):
    outside = tmp_path / "elsewhere" / "model"
    outside.mkdir(parents=True)
    bad = tiny_form.replace({"teacher.name_or_path": str(outside), "train.max_steps": 2.5, "loss.alpha": 1.5,
                             "accelerate_config": "/etc/fsdp.yaml"})
    with pytest.raises(ConfigError) as err:
        form_to_config(bad, services.gate, services.uploads_dir)
    fields = {name for name, _ in err.value.problems}
    assert fields == {"teacher.name_or_path", "train.max_steps", "accelerate_config"}  # checked at the edge, before the config
    with pytest.raises(ConfigError) as err:
        form_to_config(tiny_form.replace({"loss.alpha": 1.5}), services.gate, services.uploads_dir)
    assert err.value.field == "loss.alpha" and "1.5" in str(err.value)
    wrong = tmp_path / "notes.docx"
    wrong.write_text("x")
    with pytest.raises(ConfigError, match="use a .txt"):
        form_to_config(tiny_form.replace({"data_upload": str(wrong)}), services.gate, services.uploads_dir)


def test_a_public_app_caps_the_steps(services, tiny_form, teacher_dir, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/distill")
    assert is_public("127.0.0.1", share=False) and is_public("0.0.0.0", share=False) is True
    public = Gate.for_app(services.runs_dir, teacher_dir.parent, [teacher_dir.parent], public=True)
    with pytest.raises(ConfigError) as err:
        form_to_config(tiny_form.replace({"train.max_steps": PUBLIC_MAX_STEPS + 1}), public, services.uploads_dir)
    assert err.value.field == "train.max_steps"


def test_the_lesson_preset_is_the_lesson_config_with_its_baseline_ticked(services):
    values = setup_tab.lesson_values()
    plan = form_to_config(SetupForm.from_list(DistillConfig.load(DEFAULT_CONFIG), values), services.gate,
                          services.uploads_dir)
    lesson = DistillConfig.load(setup_tab.LESSON_CONFIG)
    assert plan.with_baseline and plan.processes == 1
    for section in ("teacher", "student", "data", "loss", "evaluation"):
        assert getattr(plan.config, section) == getattr(lesson, section), section
    train = plan.config.train
    assert (train.max_steps, train.seq_len, train.lr, train.eval_steps) == (40, 128, 1e-3, 10)
    assert plan.config.data.max_eval_examples == 8 and not plan.config.evaluation.speed
    # Every other form starts unticked: only the preset (or the user) asks for a baseline.
    assert not SetupForm.from_config(DistillConfig.load(DEFAULT_CONFIG)).values["with_baseline"]


def test_launch_with_baseline_queues_it_and_a_refused_baseline_leaves_the_run(services, tiny_form, monkeypatch):
    text, run_id = setup_tab.launch(services, tiny_form.replace({"output.run_name": "taught", "with_baseline": True}))
    assert run_id == "taught" and "taught-ce-baseline" in text and "queued behind it" in text
    jobs = {job["run_id"]: job for job in services.jobs.jobs()}
    assert set(jobs) == {"taught", "taught-ce-baseline"}
    assert services.launch_of("taught-ce-baseline")[0].loss.alpha == 1.0

    def full(run_id, session=None):
        raise ConfigError([("session", "this app is shared and busy")])
    monkeypatch.setattr(services, "add_baseline", full)
    text, run_id = setup_tab.launch(services, tiny_form.replace({"output.run_name": "alone", "with_baseline": True}))
    assert run_id == "alone" and "was not queued" in text and "busy" in text
    assert services.jobs.wait("taught-ce-baseline", timeout=300)["state"] == "succeeded"


def test_launch_refuses_invalid_input_and_submits_valid_input(services, tiny_form):
    text, _ = setup_tab.launch(services, tiny_form.replace({"loss.alpha": -0.1, "output.run_name": "bad"}))
    assert "Not launched" in text and "loss.alpha" in text and services.jobs.jobs() == []

    assert "Ready to launch" in setup_tab.check(services, tiny_form)[0]
    text, run_id = setup_tab.launch(services, tiny_form.replace({"output.run_name": "good"}))
    assert "Launched good" in text and "5.0x smaller" in text and run_id == "good"
    assert not services.exports_dir.exists()  # checking and launching write no file: the YAML only when asked
    yaml_path, saved = setup_tab.save_yaml(services, tiny_form)
    assert DistillConfig.from_dict(yaml.safe_load(open(yaml_path))).train.max_steps == 6  # the CLI runs it
    assert "python -m workbench train" in saved and len(list(services.exports_dir.iterdir())) == 1
    assert services.jobs.wait("good", timeout=300)["state"] == "succeeded"
    table = runs_tab.jobs_table(services)
    assert table.loc[0, "run"] == "good" and table.loc[0, "state"] == "succeeded" and table.loc[0, "progress"] == "100%"
    services.ingest.wake()
    services.ingest.ingestor.ingest_all()
    figure, log, key = runs_tab.run_details(services, "good")
    # 6 logged steps; held-out loss/ce/kd at step 0 and at the end, and the run's mean train loss
    assert key == ("good", 6, 7)
    assert {t.name for t in figure.data} >= {"total loss", "CE (labels)", "KD (teacher)", "held-out loss"}
    assert "step 6/6" in log
    assert "only cancelled, failed, interrupted" in runs_tab.act(services, "resume", "good")

    # One click: the CE-only baseline of "good"; Compare then brings it in and answers the question.
    assert services.add_baseline("good") == "good-ce-baseline"
    with pytest.raises(ValueError, match="already has its CE-only baseline"):
        services.add_baseline("good")
    assert services.jobs.wait("good-ce-baseline", timeout=300)["state"] == "succeeded"
    services.ingest.ingestor.ingest_all()
    curves, compared, verdict = compare_tab.compare(services, ["good"], "kd")
    assert list(compared.run_id) == ["good", "good-ce-baseline"] and len(curves.data) == 2
    assert compared.loc[1, "alpha"] == 1.0 and compared.loc[1, "baseline_of"] == "good"
    assert compared.loc[0, "heldout_perplexity"] > 1 and 0 <= compared.loc[0, "top1_agreement"] <= 1  # evaluated at its end
    assert "Did distillation beat plain fine-tuning?" in verdict and "(good-ce-baseline, α = 1)" in verdict


def test_pre_flight_flags_a_tokenizer_mismatch_on_the_student_field(tmp_path, teacher_dir, corpus_files):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    words = {tok: i for i, tok in enumerate(["</s>", "<pad>", "the", "cat"])}
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="<pad>")),
                                    pad_token="<pad>", eos_token="</s>")
    stranger = tiny.save_llama(tmp_path / "stranger", other, layers=1, hidden=32, seed=3)
    config = DistillConfig.from_dict({"teacher": {"name_or_path": str(teacher_dir)},
                                      "student": {"name_or_path": str(stranger)},
                                      "data": {"source": str(corpus_files[0])}})
    report = preflight(config)
    assert not report.ok and report.problems[0][0] == "student.name_or_path"
    assert "tokenizers disagree" in report.problems[0][1]


def test_pre_flight_sizes_a_student_pruned_from_the_teacher(teacher_dir, corpus_files):
    config = DistillConfig.from_dict({"teacher": {"name_or_path": str(teacher_dir)},
                                      "student": {"init_from_teacher_layers": 2},
                                      "data": {"source": str(corpus_files[0])}})
    report = preflight(config)
    assert report.ok, report.problems
    assert 1 < report.teacher_params / report.student_params < 2  # half the layers, all the embeddings
    assert any("format text" in note for note in report.notes) and report.memory_gib["total"] > 0


def test_pruned_student_form_trains_end_to_end(services, tiny_form):
    form = tiny_form.replace({"student_kind": STUDENT_PRUNED, "student.init_from_teacher_layers": 2,
                              "student.name_or_path": "", "output.run_name": "pruned"})
    text, _ = setup_tab.launch(services, form)
    assert "Launched pruned" in text, text
    assert services.jobs.wait("pruned", timeout=300)["state"] == "succeeded"
    saved = DistillConfig.load(services.runs_dir / "pruned" / "config.json")
    assert saved.student.init_from_teacher_layers == 2
    import json
    assert json.loads((services.runs_dir / "pruned" / "student" / "config.json").read_text())["num_hidden_layers"] == 2


def test_temperature_preview_spreads_the_mass(teacher_dir):
    spec = ModelSpec(name_or_path=str(teacher_dir))
    cold, hot = (temperature_preview(spec, "the cat", t) for t in (1.0, 4.0))
    assert hot.entropy_t > cold.entropy_t == pytest.approx(cold.entropy_t1)
    assert cold.probs_t == pytest.approx(cold.probs_t1) and sum(cold.probs_t) <= 1.0
    assert hot.probs_t[0] < hot.probs_t1[0]  # the top token loses mass at high T
    with pytest.raises(ValueError, match="temperature"):
        temperature_preview(spec, "the cat", 0)


def test_the_sql_box_refuses_writes_and_exports_what_it_shows(services):
    frame, message = compare_tab.run_sql(services, "DELETE FROM runs")
    assert frame is None and "only a single SELECT" in message
    frame, message = compare_tab.run_sql(services, "SELECT 1 AS one, 'x' AS two")
    assert message == "" and frame.one.tolist() == [1]
    path, text = compare_tab.export(services, frame, "parquet")
    assert path.endswith(".parquet") and "1 rows" in text
    assert compare_tab.export(services, None, "csv")[0] is None


def test_inspect_and_evaluate_views_of_a_finished_run(distilled_run, teacher_dir):
    run, _, _ = distilled_run
    # The run's models and data lie outside its runs folder: the app reads them once it is told it may.
    with Services.start(run.path.parent) as refused:
        with pytest.raises(ConfigError, match="--allow-dir"):
            inspect_tab.inspect_view(refused, "distilled", 12, "the cat", 2.0, 5, "forward_kl", None)
    services = Services.start(run.path.parent, allowed_roots=[teacher_dir.parent])
    try:
        view = inspect_tab.inspect_view(services, "distilled", 12, "the cat sees the red ball.", 2.0, 5,
                                        "forward_kl", None)
        assert view.point.label == "checkpoint-10"  # the saved student nearest step 12
        assert view.position == view.positions - 1 and 'data-pos="0"' in view.heatmap
        assert {t.name for t in view.distributions.data} == {"teacher", "student"}
        assert "T = 2" in view.summary

        card, table, diagram, generations = evaluate_tab.report_view(services, "distilled", 30)
        assert "× smaller" in card and list(table.model) == ["teacher", "student", "untrained"]
        assert {t.name for t in diagram.data} >= {"teacher", "student"}
        # Two prompts, each followed by the teacher's and the student's continuation, one per row.
        assert list(generations.model) == ["teacher", "student"] * 2 and list(generations.prompt)[1::2] == ["", ""]

        student = "checkpoint-20 (step 20)"
        assert "queued" in services.evaluations.request("distilled", student)
        deadline = time.time() + 120
        while services.evaluations.state("distilled", student) != "done" and time.time() < deadline:
            time.sleep(0.2)
        assert services.evaluations.state("distilled", student) == "done"
        assert 20 in [r["step"] for r in services.evaluation_reports("distilled")]
        for bad in ("../distilled", "distilled/student", ""):  # run ids never address another folder
            with pytest.raises(KeyError):
                services.evaluation_reports(bad)
            with pytest.raises(KeyError):
                services.evaluations.request(bad, student)
    finally:
        services.close()
