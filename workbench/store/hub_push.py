"""Push a run's final student or one of its exports to the Hugging Face Hub, on request only.

Every value comes from a request (a Gradio handler is an HTTP endpoint anyone who reaches the app can call),
so the repo id is checked here, and only the run's own deployable folders (student/, student-int8/,
student-gguf/), holding no links, can be pushed. The token is used for this one call and kept nowhere: it
is not written to the run, a log, the config or the hub's own token file (HfApi(token=...) does not save
it), and it is cut out of any error message shown."""
from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from workbench.store.modelcard import write_plain_card
from workbench.store.rundir import RunDir

# owner/name: the hub's rules (validate_repo_id), and an owner always, so that a push never lands in
# whatever account the token happens to belong to under a name the user did not see.
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
PUSHABLE = ("student", "student-int8", "student-gguf")
TOKEN_ENV = "HF_TOKEN"


class PushRefused(ValueError):
    """The request names something that must not be pushed, or lacks what a push needs."""


def check_repo_id(repo_id) -> str:
    """The repo id, stripped; PushRefused naming the field unless it is a valid 'owner/name'."""
    text = repo_id.strip() if isinstance(repo_id, str) else ""
    try:
        validate_repo_id(text)
    except HFValidationError:
        text = ""
    if not REPO_ID.fullmatch(text) or text.endswith(".git"):
        raise PushRefused(f"repo id must be 'owner/name' (letters, digits, '-', '_', '.'; no '--' or '..'), "
                          f"not {str(repo_id)[:100]!r}")
    return text


def pushable_folder(run: RunDir, which) -> Path:
    """The run's folder `which` (one of PUSHABLE), holding files and folders only: a link inside could
    make the upload read a file outside the run."""
    if which not in PUSHABLE:
        raise PushRefused(f"folder must be one of {', '.join(PUSHABLE)}, not {str(which)[:100]!r}")
    folder = run.path / which
    if folder.is_symlink() or not folder.is_dir():
        raise PushRefused(f"run {run.path.name} has no {which}/ folder yet: train it to the end or export it first")
    for path in folder.rglob("*"):
        if path.is_symlink():
            raise PushRefused(f"{which}/{path.relative_to(folder)} is a link; only plain files are pushed")
    return folder


def resolve_token(typed, allow_env: bool, environ=os.environ) -> str:
    """The token typed in, else HF_TOKEN from the app's environment where that is allowed (not in a shared
    app: a visitor must never push with the host's account)."""
    token = typed.strip() if isinstance(typed, str) else ""
    if not token and allow_env:
        token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        where = f"type a hub token or start the app with {TOKEN_ENV} set" if allow_env else "type a hub token"
        raise PushRefused(f"token: no hub token ({where})")
    return token


def push(run: RunDir, which, repo_id, token: str, private: bool = True) -> str:
    """Upload the run's folder `which` to the model repo `repo_id` (created if missing, private unless
    asked otherwise); return the commit's URL. A folder without a model card gets one first."""
    repo_id = check_repo_id(repo_id)
    folder = pushable_folder(run, which)
    if not (folder / "README.md").is_file():
        write_plain_card(folder / "README.md", run.path.name)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=bool(private), exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                   commit_message=f"{which} of run {run.path.name} (Distill Workbench)",
                                   ignore_patterns=[".*"])  # temporary files of an export in progress
    except Exception as err:  # noqa: BLE001 -- the hub's errors are many; each becomes one clean message
        raise RuntimeError(f"push to {repo_id} failed: {redact(str(err), token)}") from None
    return str(getattr(commit, "commit_url", None) or commit)


def redact(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text
