"""Telling local paths from hub ids, one rule for models and datasets alike; and the checks that keep a
path value from crashing the calls that read it."""
from __future__ import annotations

import os
from pathlib import Path

# What marks a model reference as a file or folder rather than a hub id.
MODEL_SUFFIXES = (".gguf", ".safetensors", ".bin")
# The data files the loaders read, by suffix, and the `datasets` builder that reads each.
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
DEFAULTS_PREFIX = "defaults:"  # defaults:teacher, defaults:corpus/train.jsonl: the offline default's files
NAME_MAX = 255    # bytes in one path component (Linux); a longer one makes every stat raise ENAMETOOLONG
PATH_MAX = 4095


def path_problem(value: str) -> str | None:
    """Why `value` cannot name a file or folder on this machine, or None. The cases are those that make
    pathlib raise instead of answering "no such file": an unknown ~user, a component over 255 bytes, a
    path over 4095 bytes, a NUL byte."""
    if "\x00" in value:
        return "contains a NUL byte"
    expanded = os.path.expanduser(value)
    if value.startswith("~") and expanded == value:  # pathlib raises RuntimeError for it
        return f"{value.split('/')[0][:40]!r} names no user on this machine"
    try:
        encoded = expanded.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no file system call accepts it
        return "is not valid Unicode text (a lone surrogate)"
    if len(encoded) > PATH_MAX:
        return f"is {len(encoded):,} bytes long; a path can have at most {PATH_MAX:,}"
    if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        return f"has a folder or file name longer than {NAME_MAX} bytes"
    return None


def safe_exists(path: Path) -> bool:
    """Path.exists that answers False instead of raising for names the system refuses (too long, NUL)."""
    try:
        return path.exists()
    except (OSError, ValueError, RuntimeError):
        return False


def safe_is_dir(path: Path) -> bool:
    """Path.is_dir that answers False for a folder this process may not read (PermissionError)."""
    try:
        return path.is_dir()
    except (OSError, ValueError, RuntimeError):
        return False


def looks_like_local_path(name: str, suffixes: tuple[str, ...] = ()) -> bool:
    """Hub ids are `name` or `org/name`. Anything that exists, starts like a path, has more than one
    slash or a backslash, or ends in one of `suffixes` is meant as a path: a typo in it should say
    "no such file", not send the user into a confusing hub lookup."""
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or name.lower().endswith(suffixes):
        return True
    return path_problem(name) is None and safe_exists(Path(name))


def file_loader_names() -> frozenset[str]:
    """Names `datasets.load_dataset` reads as one of its own file loaders (json, csv, conll, ...): given one
    without data files, it reads every matching file under the current folder, so such a name is never a
    hub dataset here."""
    from datasets import packaged_modules
    return frozenset(getattr(packaged_modules, "_PACKAGED_DATASETS_MODULES", {})) | set(BUILDERS.values()) | {
        "arrow", "pandas", "sql", "generator", "imagefolder", "audiofolder", "videofolder", "webdataset", "xml",
        "spark", "cache"}
