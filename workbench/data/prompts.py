"""The prompts a hard-label teacher answers: the project's own instruction set, a local file or a hub
dataset, each row a prompt string or a chat conversation, as a list of conversations.

Errors are DataErrors naming the generation.* field to fix.
"""
from __future__ import annotations

from pathlib import Path

import datasets

from workbench.config.paths import BUILDERS, looks_like_local_path
from workbench.config.schema import DataSpec, GenerationSpec
from workbench.data.loading import DataError, check_file, load_file, load_hub

PROJECT_PREFIX = "project:"
PROJECT_SETS = {"instructions": Path(__file__).resolve().parents[2] / "assets" / "prompts" / "instructions.jsonl"}
MESSAGES_COLUMN = "messages"

Conversation = list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]


def prompt_source_path(source: str) -> Path | None:
    """The file a prompt source names, or None for a hub dataset."""
    if source.startswith(PROJECT_PREFIX):
        name = source[len(PROJECT_PREFIX):]
        if name not in PROJECT_SETS:
            raise DataError("generation.prompts", f"unknown project prompt set {source!r}; known: "
                                                  f"{', '.join(PROJECT_PREFIX + n for n in PROJECT_SETS)}")
        return PROJECT_SETS[name]
    return Path(source).expanduser() if looks_like_local_path(source, tuple(BUILDERS)) else None


def _load_rows(spec: GenerationSpec, max_file_mb: float) -> datasets.Dataset:
    field = "generation.prompts"
    source = spec.prompts.strip()
    if not source:
        raise DataError(field, "is required: a prompt file, a hub dataset id, or project:instructions")
    path = prompt_source_path(source)
    if path is None:
        return load_hub(source, None, spec.split, field)
    check_file(path, DataSpec(max_file_mb=max_file_mb), field)
    return load_file(path, "train", field)


def _conversation(row: dict, spec: GenerationSpec, index: int) -> Conversation:
    if MESSAGES_COLUMN in row:
        messages = row[MESSAGES_COLUMN]
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages)):
            raise DataError("generation.prompts", f"row {index}: {MESSAGES_COLUMN!r} must be a non-empty list of "
                                                  f"{{role, content}} messages, got {str(messages)[:200]}")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if messages[-1]["role"] == "assistant":  # the teacher writes the reply, so a given one is dropped
            messages = messages[:-1]
        if not messages:
            raise DataError("generation.prompts", f"row {index}: the conversation has only an assistant message")
        return messages
    text = row.get(spec.prompt_column)
    if not isinstance(text, str) or not text.strip():
        raise DataError("generation.prompt_column", f"row {index}: column {spec.prompt_column!r} must hold a "
                                                    f"non-empty prompt, got {str(text)[:200]!r}")
    return [{"role": "user", "content": text}]


def load_prompts(spec: GenerationSpec, max_file_mb: float = 1024.0) -> list[Conversation]:
    rows = _load_rows(spec, max_file_mb)
    columns = rows.column_names
    if MESSAGES_COLUMN not in columns and spec.prompt_column not in columns:
        raise DataError("generation.prompt_column", f"the prompts have neither a {MESSAGES_COLUMN!r} column nor "
                                                    f"{spec.prompt_column!r}; their columns are {columns}")
    if spec.max_prompts is not None:
        rows = rows.select(range(min(len(rows), spec.max_prompts)))
    return [_conversation(row, spec, i) for i, row in enumerate(rows)]


def prompt_text(conversation: Conversation) -> str:
    """What a person reads as the prompt: the user's last turn (earlier turns are context)."""
    users = [m["content"] for m in conversation if m["role"] == "user"]
    return users[-1] if users else conversation[-1]["content"]
