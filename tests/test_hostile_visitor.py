"""A hostile visitor of a shared app: app.py on a free port with --auth, driven through Gradio's HTTP API
with gradio_client only (no form, so no value is limited to what a component offers). Every attack is
refused with a message naming the field, and a server the visitor chose receives no secret."""
import http.cookiejar
import json
import shutil
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from apphost import running_app

from workbench.config.schema import DistillConfig
from workbench.ui.app import DEFAULT_CONFIG
from workbench.ui.form import DATA_HUB, SetupForm

SECRETS = {"HF_TOKEN": "hf_host_token_7e1", "AWS_SECRET_ACCESS_KEY": "aws_host_secret_93c"}
OPENAI_KEY = "sk-allowed-key-51d"
HOSTILE = "<img src=x onerror=alert(1)>"


class Recorder(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that keeps every request it receives, headers and body."""
    seen: list[str] = []

    def do_POST(self):  # noqa: N802 - the http.server name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
        Recorder.seen.append(str(self.headers) + body)
        answer = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "the cat sees a dog."}}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def plant(runs: Path, name: str, config: DistillConfig, state: str, spec: bool = False) -> None:
    """A run directory the visitor did not make through the app (copied in, or left by someone)."""
    folder = runs / name
    folder.mkdir(parents=True)
    data = config.to_dict()
    data["teacher"]["trust_remote_code"] = True
    (folder / "config.json").write_text(json.dumps(data))
    (folder / "status.json").write_text(json.dumps({"state": state, "step": 0, "total_steps": 2,
                                                    "queued_at": time.time()}))
    if spec:
        (folder / "spec.json").write_text(json.dumps({"config": data, "run_dir": str(folder), "num_processes": 1}))


@pytest.fixture(scope="module")
def site(tmp_path_factory, defaults_root, teacher_dir, student_dir, corpus_files):
    """The app, its runs folder with planted runs, and a folder outside everything it may read."""
    root = tmp_path_factory.mktemp("hostile")
    runs, outside = root / "runs", root / "outside"
    (outside / "model").mkdir(parents=True)
    (outside / "secret.txt").write_text("host secret line one\nhost secret line two\n")
    shutil.copy(teacher_dir / "config.json", outside / "model" / "config.json")
    runs.mkdir()
    (runs / "link.txt").symlink_to(outside / "secret.txt")
    tiny = DistillConfig.from_dict({"teacher": {"name_or_path": str(teacher_dir)},
                                    "student": {"name_or_path": str(student_dir)},
                                    "data": {"source": str(corpus_files[0])}, "train": {"max_steps": 2}})
    plant(runs, "planted-remote", tiny, "succeeded")
    plant(runs, "planted-queued", tiny, "queued", spec=True)
    from gradio_client import Client
    with running_app(["--runs-dir", str(runs), "--auth", "u:p", "--cache-dir", str(defaults_root.parent),
                      "--allow-dir", str(teacher_dir.parent)], env={**SECRETS, "OPENAI_API_KEY": OPENAI_KEY}) as url:
        yield Client(url, auth=("u", "p"), verbose=False), runs, outside


def form_values(**changes) -> list:
    """The endpoints' inputs, in the form's order: the offline default with `changes` (keyed by field path,
    given as section__name, or a UI-only key)."""
    form = SetupForm.from_config(DistillConfig.load(DEFAULT_CONFIG))
    return form.replace({key.replace("__", "."): value for key, value in changes.items()}).as_list()


def refused(verdict: str, field: str) -> bool:
    return "Not launched" in verdict and f"**{field}**" in verdict and "Ready to launch" not in verdict


def test_paths_outside_the_allowed_folders_are_refused_in_every_field(site, teacher_dir):
    client, runs, outside = site
    secret, model = str(outside / "secret.txt"), str(outside / "model")
    attacks = [
        ("data.source", dict(data_kind=DATA_HUB, hub_dataset=secret)),
        ("data.source", dict(data_kind=DATA_HUB, hub_dataset=str(runs / "link.txt"))),  # a symlink out
        ("data.source", dict(data_kind=DATA_HUB, hub_dataset=f"file://{secret}")),
        ("data.source", dict(data_kind=DATA_HUB, hub_dataset=f"{runs}/../outside/secret.txt")),
        ("data.source", dict(data_kind=DATA_HUB, hub_dataset="json")),
        ("teacher.name_or_path", dict(teacher__name_or_path=model)),
        ("student.name_or_path", dict(student__name_or_path=model)),
        ("generation.prompts", dict(strategy="hard_label", generation__prompts=secret)),
        ("generation.dataset", dict(strategy="hard_label", generation__dataset=secret)),
        ("loss.teacher_cache", dict(loss__teacher_cache=str(outside))),
        ("teacher.gguf_file", dict(teacher__gguf_file="../../outside/model.gguf")),
        ("accelerate_config", dict(accelerate_config=secret)),
    ]
    for field, changes in attacks:
        for endpoint in ("/check", "/launch"):
            verdict = client.predict(*form_values(**changes), api_name=endpoint)
            assert refused(verdict, field), (field, changes, verdict)
            assert "host secret" not in verdict
    assert sorted(p.name for p in runs.iterdir() if (p / "spec.json").exists()) == ["planted-queued"]


def raw_call(url: str, api_name: str, data: list) -> str:
    """One call through Gradio's HTTP API itself, logged in as a visitor: gradio_client would upload a
    local file it is given, while a hostile caller names a path on the server."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.open(url + "login", data=urllib.parse.urlencode({"username": "u", "password": "p"}).encode())
    request = urllib.request.Request(f"{url}gradio_api/call/{api_name}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    event = json.loads(opener.open(request).read())["event_id"]
    return opener.open(f"{url}gradio_api/call/{api_name}/{event}").read().decode()


def test_an_upload_must_be_a_file_the_app_received(site):
    """A file value naming a path on the host is refused before any handler runs (Gradio answers an
    error event); the form's own check (gate.upload_problem) is the second line, tested in test_gate."""
    client, _, outside = site
    planted = {"path": str(outside / "secret.txt"), "meta": {"_type": "gradio.FileData"}, "orig_name": "secret.txt"}
    answer = raw_call(client.src, "check", form_values(data_kind="upload a file", data_upload=planted))
    assert answer.startswith("event: error") and "Ready to launch" not in answer and "host secret" not in answer


def test_host_secrets_never_reach_a_server_the_visitor_chose(site, recorder, student_dir):
    client, runs, _ = site
    api = dict(strategy="hard_label", generation__backend="openai", generation__api_base_url=recorder,
               generation__api_model="m", generation__max_prompts=3, student__name_or_path=str(student_dir),
               train__max_steps=2, train__seq_len=32, train__bf16="off", evaluation__at_end=False)
    for variable in SECRETS:
        verdict = client.predict(*form_values(**api, generation__api_key_env=variable), api_name="/launch")
        assert refused(verdict, "generation.api_key_env"), verdict
    assert Recorder.seen == []
    # The one variable the app hands out (OPENAI_API_KEY by default) reaches the endpoint, and nothing else.
    verdict = client.predict(*form_values(**api, generation__api_key_env="OPENAI_API_KEY",
                                          output__run_name="api-run"), api_name="/launch")
    assert "Launched" in verdict, verdict
    deadline = time.time() + 300
    while time.time() < deadline and json.loads((runs / "api-run" / "status.json").read_text()).get("state") not in (
            "succeeded", "failed"):
        time.sleep(1)
    assert Recorder.seen and all(f"Bearer {OPENAI_KEY}" in request for request in Recorder.seen)
    assert not any(secret in request for request in Recorder.seen for secret in SECRETS.values())
    for path in (runs / "api-run").rglob("*"):
        if path.is_file() and path.stat().st_size < 2**20:
            text = path.read_bytes().decode("utf-8", "replace")
            assert OPENAI_KEY not in text and not any(s in text for s in SECRETS.values()), path


def test_preview_loads_nothing_outside_the_gate(site):
    client, runs, outside = site
    for teacher in (str(outside / "model"), str(runs / "link.txt"), f"file://{outside}/model"):
        figure, note = client.predict(teacher, "In the beginning", 1.0, api_name="/preview")
        assert figure is None and "teacher.name_or_path" in note, note


def test_a_planted_run_cannot_switch_remote_code_on(site):
    client, runs, _ = site
    queued = json.loads((runs / "planted-queued" / "status.json").read_text())
    assert queued["state"] == "failed" and "trust_remote_code" in queued["error"]  # refused, never started
    assert not (runs / "planted-queued" / "worker.log").exists() or \
        "trust_remote_code" not in (runs / "planted-queued" / "worker.log").read_text()
    # Each tab lists its runs when opened; Gradio then accepts only a listed run for this session.
    deadline = time.time() + 30
    while time.time() < deadline and "planted-remote" not in str(client.predict(None, api_name="/inspect_runs")):
        time.sleep(0.5)
    client.predict(None, api_name="/evaluate_runs")
    client.predict(None, (), api_name="/runs")
    rendered = client.predict("planted-remote", 1, "the cat", 1.0, 5, "forward_kl", 0, api_name="/inspect")
    assert "teacher.trust_remote_code" in rendered[-1], rendered[-1]
    # Evaluate offers no student of a refused run (its listing passes the gate too), so Gradio refuses the
    # request itself; the queue's own check is tested in-process (test_gate).
    client.predict("planted-remote", api_name="/choose")
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("planted-remote", "final (step 2)", api_name="/evaluate")
    assert "teacher.trust_remote_code" in client.predict("planted-queued", api_name="/resume")
    assert "teacher.trust_remote_code" in client.predict("planted-remote", api_name="/add_baseline")


def test_a_long_query_is_interrupted_and_the_app_answers_again(site):
    client, _, _ = site
    start = time.time()
    _, message = client.predict("SELECT count(*) FROM range(1000000000000)", api_name="/sql")
    assert "stopped after" in message and time.time() - start < 60
    frame, message = client.predict("SELECT 1 AS one", api_name="/sql")
    assert message == "" and frame["data"] == [[1]]


def test_script_in_a_run_name_or_a_config_comes_back_as_text(site, corpus_files, student_dir, teacher_dir):
    client, _, _ = site
    verdict = client.predict(*form_values(teacher__name_or_path=str(teacher_dir),
                                          student__name_or_path=str(student_dir), data_kind=DATA_HUB,
                                          hub_dataset=str(corpus_files[0]), output__run_name=HOSTILE,
                                          train__max_steps=2, train__seq_len=32, train__bf16="off",
                                          evaluation__at_end=False), api_name="/launch")
    assert "Launched" in verdict and "<img" not in verdict, verdict
    verdict, _ = client.predict(f"teacher:\n  name_or_path: '{HOSTILE}'\n{HOSTILE}: 1\n", api_name="/check_config")
    assert "Invalid config" in verdict and "<img" not in verdict
