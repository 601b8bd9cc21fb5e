"""Telling local paths from hub ids, one rule for models and datasets alike."""
from __future__ import annotations

from pathlib import Path


def looks_like_local_path(name: str, suffixes: tuple[str, ...] = ()) -> bool:
    """Hub ids are `name` or `org/name`. Anything that exists, starts like a path, has more than one
    slash or a backslash, or ends in one of `suffixes` is meant as a path: a typo in it should say
    "no such file", not send the user into a confusing hub lookup."""
    return (Path(name).expanduser().exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1
            or "\\" in name or name.lower().endswith(suffixes))
