"""Push to the Hub from the Evaluate tab: opt-in, only the run's own student or export folders, a repo id
checked on the server, and the token kept nowhere. HfApi is replaced, so nothing reaches the network."""
import json
import os
import shutil

import pytest
from huggingface_hub import HfApi

from workbench.store.hub_push import PushRefused, check_repo_id, push
from workbench.store.rundir import RunDir
from workbench.ui.export_panel import push_folder
from workbench.ui.services import Services

TOKEN = "hf_secretTOKEN1234567890abcdef"
ENV_TOKEN = "hf_envTOKEN0987654321fedcba"


@pytest.fixture
def hub(monkeypatch):
    """Every call that would reach the hub, recorded instead (with the token the client was made with)."""
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", self.token, repo_id, kw))

    def upload_folder(self, **kw):
        calls.append(("upload_folder", self.token, kw["repo_id"], kw))
        return "https://huggingface.co/owner/student/commit/abc123"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return calls


@pytest.fixture
def services(tmp_path):
    started = Services.start(tmp_path / "runs")
    yield started
    started.close()


def _run(runs_dir, student_dir, name="done"):
    run = runs_dir / name
    shutil.copytree(student_dir, run / "student")
    (run / "config.json").write_text("{}")
    (run / "student" / "README.md").write_text("# done\n\nA student distilled with Distill Workbench.\n")
    return run


def _files_hold(folder, secret: str) -> list:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_push_uploads_the_student_and_keeps_no_token(services, hub, student_dir):
    run = _run(services.runs_dir, student_dir)
    message = push_folder(services, "done", "student", " owner/student ", TOKEN, True, None)
    assert "Pushed" in message and "commit/abc123" in message and TOKEN not in message
    (_, token, repo, create), (_, token2, repo2, upload) = hub
    assert token == token2 == TOKEN and repo == repo2 == "owner/student"
    assert create["private"] is True and create["exist_ok"] is True and create["repo_type"] == "model"
    assert upload["folder_path"] == run / "student" and upload["repo_type"] == "model"
    assert _files_hold(run, TOKEN) == [] and _files_hold(services.runs_dir, TOKEN) == []


def test_a_folder_without_a_card_gets_one_before_it_is_pushed(hub, student_dir, tmp_path):
    run = _run(tmp_path, student_dir)
    (run / "student" / "README.md").unlink()
    push(RunDir(run), "student", "owner/student", TOKEN)
    card = (run / "student" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "# done" in card
    assert len(hub) == 2


def test_env_token_is_used_only_outside_a_shared_app(hub, student_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    with Services.start(tmp_path / "local") as local:
        run = _run(local.runs_dir, student_dir)
        assert "Pushed" in push_folder(local, "done", "student", "owner/x", "", False, None)
        assert hub[-1][1] == ENV_TOKEN and hub[0][3]["private"] is False
        assert _files_hold(run, ENV_TOKEN) == []
    hub.clear()
    with Services.start(tmp_path / "shared", public=True) as shared:
        _run(shared.runs_dir, student_dir)
        shared.sessions["visitor"] = ["done"]
        message = push_folder(shared, "done", "student", "owner/x", "", True, "visitor")
        assert "no hub token" in message and "HF_TOKEN" not in message.split("(")[1] and hub == []
        # And only the session that launched the run may push it.
        message = push_folder(shared, "done", "student", "owner/x", TOKEN, True, "someone-else")
        assert "only the browser session that launched done" in message and hub == []


@pytest.mark.parametrize("repo_id", ["", "student", "a/b/c", "../x", "owner/..b", "own--er/x", "owner/name.git",
                                     "https://huggingface.co/owner/x", "owner/x y", "owner/" + "x" * 97, None, 5])
def test_bad_repo_ids_are_refused_before_any_call(services, hub, student_dir, repo_id):
    _run(services.runs_dir, student_dir)
    message = push_folder(services, "done", "student", repo_id, TOKEN, True, None)
    assert "repo id must be 'owner/name'" in message and hub == []
    with pytest.raises(PushRefused):
        check_repo_id(repo_id)


@pytest.mark.parametrize("folder", ["checkpoints", "../done/student", "/etc", "student/..", "", None, "student-int8"])
def test_only_the_runs_existing_student_and_export_folders_can_be_pushed(services, hub, student_dir, folder):
    run = _run(services.runs_dir, student_dir)
    (run / "checkpoints").mkdir()
    message = push_folder(services, "done", folder, "owner/x", TOKEN, True, None)
    assert hub == [] and "Pushed" not in message
    assert ("must be one of student, student-int8, student-gguf" in message
            or "has no student-int8/ folder" in message)
    assert "no run" in push_folder(services, "../elsewhere", "student", "owner/x", TOKEN, True, None)


def test_a_link_inside_the_folder_is_refused(hub, student_dir, tmp_path):
    run = _run(tmp_path, student_dir)
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the run")
    os.symlink(secret, run / "student" / "notes.txt")
    with pytest.raises(PushRefused, match="notes.txt is a link"):
        push(RunDir(run), "student", "owner/x", TOKEN)
    assert hub == []


def test_a_hub_error_is_shown_without_the_token(services, student_dir, monkeypatch):
    _run(services.runs_dir, student_dir)

    def refuse(self, repo_id, **kw):
        raise OSError(f"401 Unauthorized for token {self.token}")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    message = push_folder(services, "done", "student", "owner/x", TOKEN, True, None)
    assert "push to owner/x failed: 401 Unauthorized for token &#42;&#42;&#42;" in message and TOKEN not in message


def test_the_int8_export_is_pushed_with_its_card(hub, student_dir, tmp_path):
    run = _run(tmp_path, student_dir)
    (run / "student-int8").mkdir()
    (run / "student-int8" / "README.md").write_text("# done\n\n## int8 export\n")
    (run / "student-int8" / "quantization.json").write_text(json.dumps({"line": "int8"}))
    push(RunDir(run), "student-int8", "owner/x-int8", TOKEN, private=False)
    assert hub[1][3]["folder_path"] == run / "student-int8" and hub[0][3]["private"] is False
