"""The gate's rules on their own: paths against the roots (symlinks, '..', file://), hub ids told from paths,
remote code, the API-key variables, public mode's folders and limits; the worker's environment; the SQL
console's row cap and time limit; and escaping of text that is not ours."""
import dataclasses
import time

import pytest
import yaml

from jobs.launcher import worker_env
from jobs.spec import JobSpec
from workbench.config.escaping import plain
from workbench.config.fields import ConfigError
from workbench.config.gate import Gate
from workbench.config.schema import DistillConfig
from workbench.engine.preflight import Preflight
from workbench.store.database import Store, StoreError
from workbench.ui import setup_tab
from workbench.ui.app import DEFAULT_CONFIG, build_app
from workbench.ui.form import DATA_HUB, DATA_UPLOAD, SetupForm
from workbench.ui.services import Services

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def places(tmp_path):
    """A runs folder, an allowed folder, and outside them a secret file and a model folder; a symlink in
    the runs folder points at the secret."""
    runs, allowed, outside = tmp_path / "runs", tmp_path / "allowed", tmp_path / "outside"
    for folder in (runs, allowed, outside / "model"):
        folder.mkdir(parents=True)
    (outside / "secret.txt").write_text("host secret\n")
    (outside / "model" / "config.json").write_text("{}")
    (allowed / "data.txt").write_text("a line\n")
    (runs / "link.txt").symlink_to(outside / "secret.txt")
    (runs / "linkdir").symlink_to(outside / "model")
    return runs, allowed, outside


def config(**sections) -> DistillConfig:
    data = {"teacher": {"name_or_path": "gpt2"}, "student": {"name_or_path": "distilgpt2"},
            "data": {"source": "org/corpus"}}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return DistillConfig.from_dict(data)


def tiny_form(teacher_dir, student_dir, corpus_files) -> SetupForm:
    """The tiny pair on an uploaded corpus, two steps, no evaluation."""
    return SetupForm.from_config(DistillConfig.load(DEFAULT_CONFIG)).replace(
        {"teacher.name_or_path": str(teacher_dir), "student.name_or_path": str(student_dir), "train.max_steps": 2,
         "train.seq_len": 32, "train.bf16": "off", "data_kind": DATA_UPLOAD, "data_upload": str(corpus_files[0]),
         "evaluation.at_end": False})


def fields(gate: Gate, cfg: DistillConfig) -> set[str]:
    return {name for name, _ in gate.config_problems(cfg)}


def test_paths_outside_the_roots_are_refused_whatever_the_field(places):
    runs, allowed, outside = places
    gate = Gate.for_app(runs, runs / "defaults", [allowed])
    secret, model = str(outside / "secret.txt"), str(outside / "model")
    bad = {"data.source": {"data": {"source": secret}}, "data.validation_source": {"data": {"validation_source":
                                                                                            str(runs / "link.txt")}},
           "teacher.name_or_path": {"teacher": {"name_or_path": model}},
           "student.name_or_path": {"student": {"name_or_path": str(runs / "linkdir")}},
           "generation.prompts": {"generation": {"prompts": f"{runs}/../outside/secret.txt"}},
           "on_policy.prompts": {"strategy": "on_policy", "on_policy": {"prompts": secret, "lmbda": 1.0}},
           "generation.dataset": {"strategy": "hard_label", "generation": {"dataset": secret}},
           "loss.teacher_cache": {"loss": {"teacher_cache": str(outside)}}}
    for field, change in bad.items():
        problems = gate.config_problems(config(**change))
        assert [name for name, _ in problems] == [field], (field, problems)
        assert str(allowed) in problems[0][1] or ".." in problems[0][1], problems
    for value in (f"file://{secret}", "json", "csv"):
        assert fields(gate, config(data={"source": value})) == {"data.source"}, value
    ok = config(data={"source": str(allowed / "data.txt")}, teacher={"name_or_path": "defaults:teacher"})
    assert fields(gate, ok) == set()  # inside the roots, hub ids and defaults pass
    assert fields(gate, config(data={"source": str(runs / "uploads" / "x.txt")})) == set()


def test_remote_code_and_key_variables_are_fixed_when_the_app_starts(places):
    runs, allowed, _ = places
    gate = Gate.for_app(runs, runs / "defaults", [allowed])
    remote = config(teacher={"name_or_path": "gpt2", "trust_remote_code": True})
    assert fields(gate, remote) == {"teacher.trust_remote_code"}
    assert fields(dataclasses.replace(gate, allow_remote_code=True), remote) == set()
    api = {"strategy": "hard_label", "generation": {"backend": "openai", "api_base_url": "http://127.0.0.1:9/v1",
                                                    "api_model": "m", "api_key_env": "HF_TOKEN"}}
    assert fields(gate, config(**api)) == {"generation.api_key_env"}
    api["generation"]["api_key_env"] = "OPENAI_API_KEY"
    assert fields(gate, config(**api)) == set()


def test_public_mode_keeps_to_defaults_uploads_and_allowed_folders(places, tmp_path):
    runs, allowed, _ = places
    (runs / "some-run" / "student").mkdir(parents=True)
    gate = Gate.for_app(runs, runs / "defaults", [allowed], public=True)
    assert fields(gate, config(student={"name_or_path": str(runs / "some-run" / "student")})) == \
        {"student.name_or_path"}
    assert fields(gate, config(data={"source": str(allowed / "data.txt")})) == set()
    assert fields(gate, config(data={"source": str(runs / "uploads" / "x.txt")})) == set()
    generated = runs / "some-run" / "generated" / "completions.jsonl"
    assert fields(gate, config(strategy="hard_label", generation={"dataset": str(generated)})) == set()
    assert fields(gate, config(train={"max_steps": gate.max_steps + 1})) == {"train.max_steps"}


def test_the_worker_gets_no_secret_it_does_not_need(tmp_path):
    base = {"PATH": "/usr/bin", "HOME": "/root", "HF_TOKEN": "hf_x", "AWS_SECRET_ACCESS_KEY": "aws",
            "OPENAI_API_KEY": "sk-1", "MY_KEY": "mine", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "0"}
    local = config(teacher={"name_or_path": str(tmp_path)}, student={"name_or_path": str(tmp_path)},
                   data={"source": str(tmp_path / "d.txt")})
    env = worker_env(JobSpec(local, str(tmp_path)), 30, base=base)
    assert {"PATH", "HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES"} <= set(env)
    assert not {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "MY_KEY"} & set(env)
    hub = dataclasses.replace(local, teacher=dataclasses.replace(local.teacher, name_or_path="org/teacher"))
    assert worker_env(JobSpec(hub, str(tmp_path)), 30, base=base)["HF_TOKEN"] == "hf_x"
    api = local.replace(strategy="hard_label", generation=dataclasses.replace(
        local.generation, backend="openai", api_base_url="http://127.0.0.1:9/v1", api_model="m"))
    env = worker_env(JobSpec(api, str(tmp_path)), 30, base=base)
    assert env["OPENAI_API_KEY"] == "sk-1" and not {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_KEY"} & set(env)


def test_public_limits_hold_on_the_server(tmp_path, teacher_dir, student_dir, corpus_files):
    """Whatever the form shows: steps per run, runs a browser session may have waiting, and the notice."""
    services = Services.start(tmp_path / "runs", allowed_roots=[teacher_dir.parent], public=True)
    try:
        form = tiny_form(teacher_dir, student_dir, corpus_files)
        services.jobs.close()  # nothing starts: the jobs stay queued, as on a busy Space
        services.jobs.max_concurrent = 0
        first, _ = setup_tab.launch(services, form, session="visitor-a")
        second, _ = setup_tab.launch(services, form, session="visitor-a")
        third, _ = setup_tab.launch(services, form, session="visitor-a")
        other, _ = setup_tab.launch(services, form, session="visitor-b")
        assert "Launched" in first and "Launched" in second and "Launched" in other
        assert "Not launched" in third and "session" in third
        steps, _ = setup_tab.launch(services, form.replace({"train.max_steps": 201}), session="visitor-c")
        assert "Not launched" in steps and "train.max_steps" in steps
        app = build_app(services)
        notice = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "public-notice"]
        assert notice and "reachable by others" in notice[0].value
    finally:
        services.close()


def test_the_sql_console_caps_rows_and_time(tmp_path):
    store = Store(tmp_path / "w.duckdb")
    try:
        frame = store.query("SELECT * FROM range(50) -- a comment", max_rows=20)
        assert len(frame) == 20 and frame.attrs["truncated"]
        assert not store.query("SELECT 1 AS x").attrs["truncated"]
        start = time.perf_counter()
        with pytest.raises(StoreError, match="stopped after 1 s"):
            store.query("SELECT count(*) FROM range(1000000000000)", timeout_s=1)
        assert time.perf_counter() - start < 10
        assert store.query("SELECT 2 AS x").x.tolist() == [2]  # the shared connection still answers
        for bad in ("COPY runs TO '/tmp/x.csv'", "SELECT * FROM read_csv('/etc/hostname')", "SELECT 1; SELECT 2"):
            with pytest.raises(StoreError):
                store.query(bad)
    finally:
        store.close()


def test_text_that_is_not_ours_is_escaped():
    assert "<" not in plain(HOSTILE) and "`" not in plain("`x`")
    # Markdown's formatting characters come out as entities: an error quoting glob('/*') stays literal.
    formatted = plain("glob('/*') *a* _b_ ~~c~~ \\* # h | t")
    assert not set("*~#|\\") & set(formatted.replace("&#", "")) and "_b" not in formatted
    assert plain("generation.api_key_env") == "generation.api_key_env"  # no emphasis inside a word
    assert "_" not in plain("__init__") and "_" not in plain("a__b")  # these could be emphasis
    report = Preflight(problems=[("data.source", f"no such file: {HOSTILE}")], notes=[f"teacher {HOSTILE}"])
    assert "<img" not in report.markdown() and "&lt;img" in report.markdown()
    from workbench.ui.config_tab import check_config
    verdict, _ = check_config(yaml.safe_dump({"teacher": {"name_or_path": "gpt2"}, HOSTILE: 1,
                                              "loss": {"divergence": HOSTILE}}))
    assert "<img" not in verdict


def test_hub_dataset_choice_passes_the_gate(places):
    """The form's hub-dataset data choice used to skip the folder check: any readable file was read."""
    from workbench.ui.form import form_to_config
    runs, allowed, outside = places
    gate = Gate.for_app(runs, runs / "defaults", [allowed])
    base = SetupForm.from_config(DistillConfig.load(DEFAULT_CONFIG))
    for value in (str(outside / "secret.txt"), str(runs / "link.txt"), f"file://{outside}/secret.txt"):
        form = base.replace({"teacher.name_or_path": "gpt2", "student.name_or_path": "distilgpt2",
                             "data_kind": DATA_HUB, "hub_dataset": value})
        with pytest.raises(ConfigError) as err:
            form_to_config(form, gate, runs / "uploads")
        assert err.value.field == "data.source", value


def test_an_upload_outside_the_upload_folders_is_refused(places):
    from workbench.ui.form import form_to_config
    runs, allowed, outside = places
    gate = Gate.for_app(runs, runs / "defaults", [allowed], upload_dirs=[runs.parent / "gradio"])
    form = SetupForm.from_config(DistillConfig.load(DEFAULT_CONFIG)).replace(
        {"teacher.name_or_path": "gpt2", "student.name_or_path": "distilgpt2", "data_kind": DATA_UPLOAD,
         "data_upload": str(outside / "secret.txt")})
    with pytest.raises(ConfigError) as err:
        form_to_config(form, gate, runs / "uploads")
    assert err.value.field == "data.source" and "not a file uploaded" in str(err.value)
    (runs.parent / "gradio" / "abc").mkdir(parents=True)
    received = runs.parent / "gradio" / "abc" / "data.txt"
    received.write_text("a line\n")
    kept = form_to_config(form.replace({"data_upload": str(received)}), gate, runs / "uploads")
    assert kept.config.data.source.startswith(str(runs / "uploads"))


def test_a_planted_run_is_neither_inspected_nor_evaluated(tmp_path, distilled_run, teacher_dir):
    """A run directory whose config asks for remote code (copied in, never launched here)."""
    import json
    import shutil
    run, _, _ = distilled_run
    runs = tmp_path / "runs"
    shutil.copytree(run.path, runs / "planted")
    data = json.loads((runs / "planted" / "config.json").read_text())
    data["student"]["trust_remote_code"] = True
    (runs / "planted" / "config.json").write_text(json.dumps(data))
    with Services.start(runs, allowed_roots=[teacher_dir.parent]) as services:
        with pytest.raises(ConfigError, match="student.trust_remote_code"):
            services.inspector.points("planted")
        answer = services.evaluations.request("planted", "final (step 30)")
        assert "not evaluated here" in answer and "student.trust_remote_code" in answer
        with pytest.raises(ConfigError, match="student.trust_remote_code"):
            services.add_baseline("planted")


def test_file_loader_names_are_no_hub_datasets(places):
    """`datasets` reads `conll` (and its other loaders) given no files as every file under the current
    folder: refused as a data source or prompt set, and by the loader itself."""
    from workbench.data.loading import DataError, load_hub
    runs, allowed, _ = places
    gate = Gate.for_app(runs, runs / "defaults", [allowed])
    for name in ("conll", "JSON", "fasta", "pdffolder"):
        assert fields(gate, config(data={"source": name})) == {"data.source"}, name
        assert fields(gate, config(strategy="hard_label", generation={"prompts": name})) == {"generation.prompts"}
        assert fields(gate, config(strategy="on_policy", on_policy={"prompts": name, "lmbda": 1.0})) == \
            {"on_policy.prompts"}
    for prompts in ("corpus", "project:instructions"):  # no file: nothing to check
        assert fields(gate, config(strategy="on_policy", on_policy={"prompts": prompts, "lmbda": 1.0})) == set()
    with pytest.raises(DataError, match="file loader"):
        load_hub("conll", None, "train", "data.source")
    assert fields(gate, config(strategy="hard_label", generation={"prompts": "defaults:corpus/train.jsonl"})) == \
        {"generation.prompts"}  # defaults: names resolve only in the model and data fields


def test_public_endpoints_get_no_key_and_no_inside_address(places):
    runs, allowed, _ = places
    api = {"strategy": "hard_label", "generation": {"backend": "openai", "api_model": "m"}}

    def endpoint(gate, url, key):
        return fields(gate, config(strategy="hard_label", generation={**api["generation"], "api_base_url": url,
                                                                      "api_key_env": key}))
    public = Gate.for_app(runs, runs / "defaults", [allowed], public=True)
    assert public.key_envs == frozenset()  # none unless the host names one
    assert endpoint(public, "https://api.example.com/v1", "OPENAI_API_KEY") == {"generation.api_key_env"}
    assert endpoint(public, "https://api.example.com/v1", "") == set()
    for inside in ("http://127.0.0.1:8000/v1", "http://localhost/v1", "http://10.0.0.5/v1", "http://[::1]/v1",
                   "http://169.254.169.254/latest"):
        assert endpoint(public, inside, "") == {"generation.api_base_url"}, inside
    named = Gate.for_app(runs, runs / "defaults", [allowed], public=True, key_envs=["OPENAI_API_KEY"],
                         api_base_urls=["https://api.openai.com/v1"])
    assert endpoint(named, "https://api.openai.com/v1", "OPENAI_API_KEY") == set()
    assert endpoint(named, "https://visitor.example/v1", "OPENAI_API_KEY") == {"generation.api_base_url"}


def test_public_caps_the_size_of_a_run_and_how_it_starts(places):
    runs, allowed, _ = places
    public = Gate.for_app(runs, runs / "defaults", [allowed], public=True)
    assert fields(public, config(train={"batch_size": 17, "seq_len": 4096})) == {"train.batch_size", "train.seq_len"}
    hub_prompts = config(strategy="hard_label", generation={"prompts": "org/prompts", "max_new_tokens": 4096})
    assert fields(public, hub_prompts) == {"generation.max_prompts", "generation.max_new_tokens"}
    sampled = config(strategy="on_policy", on_policy={"prompts": "org/prompts", "lmbda": 1.0, "max_new_tokens": 4096,
                                                      "samples_logged": 64})
    assert fields(public, sampled) == {"on_policy.max_prompts", "on_policy.max_new_tokens", "on_policy.samples_logged"}
    assert fields(public, config(strategy="on_policy")) == set()  # corpus prompts: bounded by the data
    # The form offers every config field: those that size the host's disk and work are capped too.
    heavy = config(train={"max_steps": 200, "eval_steps": 10, "save_total_limit": 50},
                   data={"max_eval_examples": 100_000},
                   evaluation={"max_new_tokens": 2048, "prompts": [f"p{i}" for i in range(9)]},
                   generation={"batch_size": 4096})
    assert fields(public, heavy) == {"train.eval_steps", "train.save_total_limit", "data.max_eval_examples",
                                     "evaluation.max_new_tokens", "evaluation.prompts", "generation.batch_size"}
    assert fields(public, config(train={"max_steps": 200, "eval_steps": 20})) == set()  # 10 evaluations
    assert fields(Gate.for_app(runs, runs / "defaults", [allowed]), heavy) == set()  # the host's own app
    assert {n for n, _ in public.launch_problems(2, str(allowed / "data.txt"))} == {"num_processes",
                                                                                     "accelerate_config"}
    assert public.preview_problem("org/huge-model") and not public.preview_problem("defaults:teacher")


def test_the_worker_env_holds_no_key_for_reused_data_and_no_stored_hub_token(tmp_path):
    base = {"PATH": "/usr/bin", "AWS_SECRET_ACCESS_KEY": "aws", "HF_TOKEN": "hf"}
    reused = config(strategy="hard_label", teacher={"name_or_path": str(tmp_path)},
                    student={"name_or_path": str(tmp_path)}, data={"source": str(tmp_path / "d.txt")},
                    generation={"backend": "openai", "api_base_url": "http://127.0.0.1:9/v1", "api_model": "m",
                                "api_key_env": "AWS_SECRET_ACCESS_KEY", "dataset": str(tmp_path / "c.jsonl")})
    env = worker_env(JobSpec(reused, str(tmp_path)), 30, base=base)
    assert "AWS_SECRET_ACCESS_KEY" not in env and "HF_TOKEN" not in env and env["HF_TOKEN_PATH"] == "/dev/null"


def test_the_sql_console_caps_the_size_of_a_result(tmp_path):
    store = Store(tmp_path / "w.duckdb")
    try:
        with pytest.raises(StoreError, match="over 64 MiB"):
            store.query("SELECT repeat('x', 70000000) AS big")
        with pytest.raises(StoreError):  # DuckDB calls it a SELECT; the wrapper refuses it
            store.query("WITH d AS (DELETE FROM runs RETURNING *) SELECT * FROM d")
    finally:
        store.close()


def test_shared_capacity_counts_every_session_and_resumes(tmp_path, teacher_dir, student_dir, corpus_files):
    services = Services.start(tmp_path / "runs", allowed_roots=[teacher_dir.parent], public=True)
    try:
        services.gate = dataclasses.replace(services.gate, max_active_jobs=2)
        services.jobs.close()
        services.jobs.max_concurrent = 0  # nothing starts: every run stays queued
        form = tiny_form(teacher_dir, student_dir, corpus_files)
        for session in ("a", "b"):
            assert "Launched" in setup_tab.launch(services, form, session=session)[0]
        busy, _ = setup_tab.launch(services, form, session="c")  # a new session is no way around it
        assert "Not launched" in busy and "busy" in busy
        first = services.sessions["a"][0]
        services.jobs.cancel(first)
        assert "Launched" in setup_tab.launch(services, form, session="d")[0]
        with pytest.raises(ConfigError, match="busy"):  # a resume is a run more: it counts too
            services.resume(first, "a")
    finally:
        services.close()


def test_a_planted_run_folder_links_to_nothing_outside_it(tmp_path, distilled_run):
    """Saved students reached through links out of the run folder are not offered, so not loaded."""
    import shutil

    from workbench.models.students import student_points
    run, config, _ = distilled_run
    planted = tmp_path / "planted"
    shutil.copytree(run.path, planted, ignore=shutil.ignore_patterns("student", "checkpoints"))
    (planted / "student").symlink_to(run.student)
    (planted / "checkpoints").mkdir()
    (planted / "checkpoints" / "checkpoint-10").symlink_to(run.checkpoints / "checkpoint-10")
    from workbench.store.rundir import RunDir
    assert [p.label for p in student_points(RunDir(planted), config)] == ["initial"]
    assert [p.label for p in student_points(run, config)][-1] == "final"


def test_brackets_and_aliases_are_no_way_in():
    assert "[" not in plain("![x](https://visitor.example/p.png)")
    from workbench.config.fields import parse_text
    bomb = "a: &a [x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    with pytest.raises(ValueError, match="aliases"):
        parse_text(bomb)
