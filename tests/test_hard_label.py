"""Hard-label distillation: a local tiny teacher or a real OpenAI-compatible HTTP server on 127.0.0.1
writes completions; the student (another tokenizer) is fine-tuned on them, CE on completion tokens only."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tiny

from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.data.loading import IGNORE_INDEX, load_raw, tokenize_datasets
from workbench.hardlabel.errors import GenerationError
from workbench.hardlabel.generation import COMPLETIONS, MANIFEST, generate_dataset
from workbench.models.loading import load_tokenizer

KEY = "sk-test-4f1c9e2b7a"


@pytest.fixture(scope="module")
def other_student(tmp_path_factory):
    """A student whose tokenizer is not the teacher's (another vocabulary size, so other merges and ids)."""
    folder = tmp_path_factory.mktemp("other")
    tok = tiny.build_tokenizer(folder / "tok", vocab_size=290)
    return tiny.save_llama(folder / "student", tok, layers=2, hidden=32, seed=3)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    starts = list(dict.fromkeys(" ".join(sentence.split()[:3]) for sentence in tiny.corpus(400, seed=7)))[:24]
    assert len(starts) == 24
    path.write_text("".join(json.dumps({"prompt": s}) + "\n" for s in starts), encoding="utf-8")
    return path


def hard_config(teacher, student, prompts, runs=".", **generation):
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher)}, "student": {"name_or_path": str(student)},
        "strategy": "hard_label",
        "generation": {"prompts": str(prompts), "max_new_tokens": 12, "batch_size": 5, **generation},
        "data": {"validation_fraction": 0.2},
        "evaluation": {"prompts": ["the cat"], "max_new_tokens": 4},
        "train": {"max_steps": 30, "batch_size": 8, "seq_len": 48, "lr": 1e-2, "logging_steps": 5,
                  "save_steps": 30},
        "output": {"runs_dir": str(runs), "run_name": "hard"}})


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_local_generation_is_deterministic_and_keeps_provenance(tmp_path, teacher_dir, student_dir, prompts_file):
    config = hard_config(teacher_dir, student_dir, prompts_file, samples_per_prompt=2)
    first = rows(generate_dataset(config, tmp_path / "a"))
    again = rows(generate_dataset(config, tmp_path / "b"))
    other = rows(generate_dataset(config.replace(generation=config.generation.__class__(
        **{**config.generation.__dict__, "seed": 1})), tmp_path / "c"))
    assert len(first) == 48 and [r["completion"] for r in first] == [r["completion"] for r in again]
    assert [r["completion"] for r in first] != [r["completion"] for r in other]
    row = first[3]
    assert (row["prompt_index"], row["sample"]) == (1, 1)
    assert row["teacher"] == str(teacher_dir) and row["backend"] == "local" and row["created"] > 0
    assert (row["temperature"], row["top_p"], row["max_new_tokens"]) == (0.7, 0.95, 12)
    assert row["messages"][-1] == {"role": "assistant", "content": row["completion"]}
    assert row["messages"][0]["content"] == row["prompt"]
    assert json.loads((tmp_path / "a" / MANIFEST).read_text())["complete"] is True


def test_resume_skips_answered_prompts(tmp_path, teacher_dir, student_dir, prompts_file):
    config = hard_config(teacher_dir, student_dir, prompts_file)
    whole = rows(generate_dataset(config, tmp_path / "whole"))
    # A crash after 7 rows, in the middle of writing the 8th.
    folder = tmp_path / "crashed"
    folder.mkdir()
    lines = (tmp_path / "whole" / COMPLETIONS).read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / COMPLETIONS).write_text("".join(lines[:7]) + lines[7][:20], encoding="utf-8")
    manifest = json.loads((tmp_path / "whole" / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    written = []
    resumed = rows(generate_dataset(config, folder, lambda done, total, eta: written.append(done)))
    assert written[0] == 7 and len(written) == 1 + len(whole) - 7  # only the missing rows were answered
    assert resumed[:7] == whole[:7]  # kept as they were (same creation times)
    assert sorted(r["completion"] for r in resumed) == sorted(r["completion"] for r in whole)
    with pytest.raises(GenerationError, match="temperature") as err:
        generate_dataset(config.replace(generation=config.generation.__class__(
            **{**config.generation.__dict__, "temperature": 0.2})), folder)
    assert err.value.field == "generation.temperature"
    with pytest.raises(GenerationError) as err:  # a local teacher's batches are part of its sampling
        generate_dataset(config.replace(generation=config.generation.__class__(
            **{**config.generation.__dict__, "batch_size": 3})), folder)
    assert err.value.field == "generation.batch_size"


def test_student_loss_covers_completion_tokens_only(tmp_path, teacher_dir, other_student, prompts_file):
    config = hard_config(teacher_dir, other_student, prompts_file)
    path = generate_dataset(config, tmp_path)
    tokenizer = load_tokenizer(config.student, "student")
    spec = config.data.__class__(source=str(path), packing=False, validation_fraction=0)
    train, _ = tokenize_datasets(spec, tokenizer, 48, 0)
    by_prompt = {r["prompt"]: r["completion"] for r in rows(path)}
    assert len(train) == len(by_prompt)
    for example in train:
        labels, ids = example["labels"], example["input_ids"]
        start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert all(label == IGNORE_INDEX for label in labels[:start])
        assert labels[start:] == ids[start:]  # everything after the prompt is learned
        text = tokenizer.decode(ids[:start])
        prompt = next(p for p in by_prompt if f"user\n{p}<|im_end|>" in text)  # the student's own template
        expected = tokenizer(by_prompt[prompt], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        assert labels[start:] == expected[:48 - start]


def test_mismatched_tokenizers_train_and_lower_the_loss(tmp_path, teacher_dir, other_student, prompts_file):
    from workbench.engine.runner import run_training
    from workbench.store.rundir import RunDir
    config = hard_config(teacher_dir, other_student, prompts_file, tmp_path, samples_per_prompt=2)
    final = run_training(config)
    run = RunDir(tmp_path / "hard")
    curve = [m for m in run.read_metrics() if "eval_ce" in m]
    assert curve[0]["step"] == 0 and final["eval_ce"] < curve[0]["eval_ce"] - 1.0
    saved = DistillConfig.load(run.file("config.json"))
    assert saved.data.source == str(run.path / "generated" / COMPLETIONS) and saved.data.packing is False
    train, held = load_raw(saved.data, saved.train.seed)
    # Both samples of a prompt stay on one side: no held-out prompt is trained on.
    assert len(held) == 2 * 5 and not set(held["prompt_index"]) & set(train["prompt_index"])
    status = run.read_status()
    assert status["state"] == "succeeded" and status["evaluation_error"] is None
    report = json.loads(run.evaluation_file(30).read_text())
    # Other tokens: no token-level comparison, but the student's gain and both models' speed are measured.
    assert "top1_agreement" not in report["metrics"] and "teacher_ce" not in report["metrics"]
    assert report["metrics"]["student_ce"] < report["metrics"]["untrained_ce"]
    assert report["speed"]["teacher"]["params"] > report["speed"]["student"]["params"]
    assert "not measured" in report["card"]


class ScriptedServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1: answers "answer: PROMPT", checks the key,
    and fails on a script: when `flaky`, 429 on the first request and 500 on every fifth; always 500 for
    the prompts in `broken`."""

    def __init__(self, key: str | None = KEY):
        self.key, self.requests, self.statuses, self.broken, self.flaky = key, 0, [], set(), True
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    number = server.requests
                prompt = body["messages"][-1]["content"]
                # Error bodies repeat the credentials sent, as careless servers do: the client must scrub them.
                sent = self.headers.get("Authorization")
                if server.key and sent != f"Bearer {server.key}":
                    return self.reply(401, {"error": {"message": f"Incorrect API key provided: {sent}", "type": "auth"}})
                if number == 1 and server.flaky:
                    return self.reply(429, {"error": {"message": "slow down", "type": "rate_limit"}})
                if (number % 5 == 0 and server.flaky) or prompt in server.broken:
                    return self.reply(500, {"error": {"message": f"boom ({sent})", "type": "server"}})
                self.reply(200, {"id": f"c{number}", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": f"answer: {prompt}"}}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})

            def reply(self, status, payload):
                with server.lock:
                    server.statuses.append(status)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "5")  # keep the client's backoff short in tests
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def api_config(server, student, prompts, runs=".", **generation):
    return DistillConfig.from_dict({
        "student": {"name_or_path": str(student)}, "strategy": "hard_label",
        "generation": {"prompts": str(prompts), "backend": "openai", "api_base_url": server.url,
                       "api_model": "scripted", "api_key_env": "WB_TEST_KEY", "concurrency": 3, **generation},
        "data": {"validation_fraction": 0.2}, "evaluation": {"at_end": False},
        "train": {"max_steps": 4, "batch_size": 8, "seq_len": 48, "logging_steps": 2, "save_steps": 4},
        "output": {"runs_dir": str(runs), "run_name": "api"}})


def test_api_teacher_retries_finishes_and_never_stores_the_key(tmp_path, server, other_student, prompts_file,
                                                               monkeypatch):
    from workbench.engine.runner import run_training
    from workbench.store.ingest import rebuild
    monkeypatch.setenv("WB_TEST_KEY", KEY)
    run_training(api_config(server, other_student, prompts_file, tmp_path))
    assert 429 in server.statuses and 500 in server.statuses  # both were retried
    written = rows(tmp_path / "api" / "generated" / COMPLETIONS)
    assert sorted(r["prompt_index"] for r in written) == list(range(24))
    assert all(r["completion"] == f"answer: {r['prompt']}" and r["teacher"] == f"scripted at {server.url}"
               for r in written)
    db, _ = rebuild(tmp_path, tmp_path / "store.duckdb")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10 and Path(db) in files
    assert [p for p in files if KEY.encode() in p.read_bytes()] == []


def test_api_failures_keep_partial_results_and_resume(tmp_path, server, other_student, prompts_file, monkeypatch):
    from workbench.engine.runner import run_training
    from workbench.store.rundir import RunDir
    monkeypatch.setenv("WB_TEST_KEY", KEY)
    config = api_config(server, other_student, prompts_file, tmp_path, max_retries=1)
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()]
    server.flaky, server.broken = False, {prompts[2], prompts[9]}
    with pytest.raises(GenerationError, match="failed after 1 retries") as err:
        run_training(config)
    assert "boom (Bearer ***)" in str(err.value)  # the server's echo of the key, scrubbed
    run = RunDir(tmp_path / "api")
    assert run.read_status()["state"] == "failed" and "GenerationError" in run.read_status()["traceback"]
    assert [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()] == []
    kept = rows(run.path / "generated" / COMPLETIONS)
    assert sorted(r["prompt_index"] for r in kept) == [i for i in range(24) if i not in (2, 9)]
    server.broken = set()
    before = server.requests
    run_training(DistillConfig.load(run.file("config.json")), run, resume=True)
    assert sorted(r["prompt_index"] for r in rows(run.path / "generated" / COMPLETIONS)) == list(range(24))
    assert server.requests - before == 2 and run.read_status()["state"] == "succeeded"  # only the missing two


def test_api_key_problems_are_clear(tmp_path, other_student, prompts_file, monkeypatch):
    scripted = ScriptedServer(key="another-key")
    scripted.flaky = False
    try:
        monkeypatch.delenv("WB_TEST_KEY", raising=False)
        config = api_config(scripted, other_student, prompts_file)
        with pytest.raises(GenerationError, match="WB_TEST_KEY is not set") as err:
            generate_dataset(config, tmp_path)
        assert err.value.field == "generation.api_key_env"
        monkeypatch.setenv("WB_TEST_KEY", KEY)
        with pytest.raises(GenerationError, match="AuthenticationError") as err:
            generate_dataset(config, tmp_path)
        assert err.value.field == "generation.api_key_env" and "Bearer ***" in str(err.value)
        assert scripted.requests <= 3  # the requests in flight (concurrency 3), not one per prompt
    finally:
        scripted.close()
    for change, field in (({"api_key_env": KEY}, "generation.api_key_env"),
                          ({"api_key_env": "gsk_a1b2c3d4e5"}, "generation.api_key_env"),
                          ({"api_base_url": "https://user:secret@api.example.com/v1"}, "generation.api_base_url"),
                          ({"api_base_url": "https://api.example.com/v1?key=secret"}, "generation.api_base_url"),
                          ({"api_base_url": "127.0.0.1:8000"}, "generation.api_base_url"),
                          ({"api_model": ""}, "generation.api_model")):
        with pytest.raises(ConfigError) as bad:
            DistillConfig.from_dict({"student": {"name_or_path": "s"}, "strategy": "hard_label",
                                     "generation": {"backend": "openai", "api_base_url": "http://x/v1",
                                                    "api_model": "m", **change}})
        assert bad.value.field == field and "secret" not in str(bad.value) and "gsk_" not in str(bad.value)


def test_the_form_launches_hard_label_and_the_data_is_reused(tmp_path, teacher_dir, other_student, prompts_file):
    from workbench.hardlabel.generated import list_generated
    from workbench.ui import generation_panel, runs_tab, setup_tab
    from workbench.ui.app import DEFAULT_CONFIG
    from workbench.ui.form import SetupForm
    from workbench.ui.services import Services
    services = Services.start(tmp_path / "runs", allowed_roots=[teacher_dir.parent, other_student.parent,
                                                               prompts_file.parent])
    try:
        form = SetupForm.from_config(DistillConfig.load(DEFAULT_CONFIG)).replace(
            {"teacher.name_or_path": str(teacher_dir), "student.name_or_path": str(other_student),
             "strategy": "hard_label", "train.max_steps": 4, "train.seq_len": 48, "train.bf16": "off",
             "prompt_upload": str(prompts_file), "generation.max_new_tokens": 8, "evaluation.at_end": False,
             "output.run_name": "written"})
        text, _ = setup_tab.launch(services, form)
        assert "Launched written" in text and "writes 24 completions" in text, text
        assert services.jobs.wait("written", timeout=300)["state"] == "succeeded"
        assert runs_tab.jobs_table(services).loc[0, "progress"] == "100%"
        choices = dict((path, label) for label, path in generation_panel.dataset_choices(
            list_generated(services.runs_dir)))
        path = str(services.runs_dir / "written" / "generated" / COMPLETIONS)
        assert path in choices and "24 rows" in choices[path]
        shown, stats, figure = generation_panel.dataset_view(services, path)
        assert len(shown) == 24 and "**24 rows** from 24 prompts" in stats and figure is not None
        assert generation_panel.dataset_view(services, "/etc/passwd")[1] == "Pick a dataset to look at."

        again = form.replace({"prompt_upload": None, "generation.dataset": path, "output.run_name": "reused"})
        text, _ = setup_tab.launch(services, again)
        assert "no teacher runs" in text, text
        assert services.jobs.wait("reused", timeout=300)["state"] == "succeeded"
        assert not (services.runs_dir / "reused" / "generated").exists()
        assert DistillConfig.load(services.runs_dir / "reused" / "config.json").data.source == path
    finally:
        services.close()


def test_a_reused_dataset_is_compared_only_with_the_teacher_that_wrote_it(tmp_path, teacher_dir, student_dir,
                                                                         other_student, prompts_file):
    from workbench.eval.pairing import has_local_teacher, token_comparable
    config = hard_config(teacher_dir, student_dir, prompts_file, max_prompts=2)
    path = generate_dataset(config, tmp_path)
    reused = config.generation.__class__(**{**config.generation.__dict__, "dataset": str(path)})
    assert has_local_teacher(config.replace(generation=reused)) and token_comparable(config.replace(generation=reused))
    stranger = config.replace(teacher=config.teacher.__class__(name_or_path=str(other_student)), generation=reused)
    assert not has_local_teacher(stranger) and not token_comparable(stranger)


def test_the_projects_own_prompt_set_loads():
    """project:instructions, the form's default prompt set, ships with the project (assets/prompts)."""
    from workbench.config.schema import GenerationSpec
    from workbench.data.prompts import load_prompts, prompt_source_path
    assert prompt_source_path("project:instructions").is_file()
    conversations = load_prompts(GenerationSpec(prompts="project:instructions"))
    assert len(conversations) == 120 and all(c[-1]["role"] == "user" and c[-1]["content"] for c in conversations)
