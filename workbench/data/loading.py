"""Training and held-out data: load a local file or a hub dataset, tokenize it into packed blocks
(general distillation) or one masked example per row (task data), and pad batches for the Trainer.

Every problem a user can cause raises DataError, which names the config field, the bad value and a fix.
"""
from __future__ import annotations

import codecs
import dataclasses
import math
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch

from workbench.config.paths import BUILDERS, file_loader_names, looks_like_local_path
from workbench.config.schema import DataSpec

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv")
IGNORE_INDEX = -100
GROUP_COLUMN = "prompt_index"  # rows of one prompt (teacher-written samples) stay on one side of a split
_CHUNK_BYTES = 1 << 20


class DataError(ValueError):
    """A bad data setting or file; `field` is the dotted config field to fix (e.g. "data.source")."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


# ---------------------------------------------------------------- loading

def _has_text(path: Path, field: str) -> bool:
    """True if the file holds non-whitespace text. Decodes in chunks (a big file never sits in memory
    whole) and reports the offset of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, has_text = 0, False
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(_CHUNK_BYTES)
            held = len(decoder.getstate()[0])  # bytes of a character split across chunks
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                bad = offset - held + err.start
                raise DataError(field, f"{path} is not valid UTF-8: byte 0x{err.object[err.start]:02x} at byte "
                                       f"offset {bad}; re-save the file as UTF-8 (e.g. iconv -t utf-8)") from None
            has_text = has_text or bool(text.strip())
            if not chunk:
                return has_text
            offset += len(chunk)


def check_file(path: Path, spec: DataSpec, field: str) -> None:
    """Refuse what would fail late or confusingly inside `datasets`, before any loading."""
    if not path.exists():
        raise DataError(field, f"file {str(path)!r} does not exist (relative paths start at {os.getcwd()}); "
                               "fix the path, or give a hub dataset id such as org/name")
    if not path.is_file():
        raise DataError(field, f"{str(path)!r} is not a regular file; give one {'/'.join(BUILDERS)} file")
    if path.suffix.lower() not in BUILDERS:
        raise DataError(field, f"{str(path)!r} has suffix {path.suffix or '(none)'!r}; allowed suffixes are "
                               f"{', '.join(BUILDERS)}; convert or rename the file")
    size, limit = path.stat().st_size, spec.max_file_mb * 2**20
    if size > limit:
        raise DataError("data.max_file_mb", f"{path} is {size} bytes ({size / 2**20:.3g} MiB), over the limit "
                                            f"data.max_file_mb={spec.max_file_mb:g} MiB; raise the limit or "
                                            "use a smaller file")
    if size == 0:
        raise DataError(field, f"{path} is empty (0 bytes); give a file with text")
    if path.suffix.lower() in TEXT_SUFFIXES and not _has_text(path, field):
        raise DataError(field, f"{path} holds only whitespace; give a file with text")


def _reason(err: BaseException) -> str:
    """`datasets` wraps parser errors in a bland DatasetGenerationError; the causes say what is wrong."""
    parts = []
    while err is not None and len(parts) < 3:
        parts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return " <- ".join(parts)


def load_file(path: Path, split: str, field: str) -> datasets.Dataset:
    builder = BUILDERS[path.suffix.lower()]
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split=split)
    except Exception as err:  # noqa: BLE001 - any parser failure is the file's fault
        raise DataError(field, f"could not read {path} with the {builder!r} loader (split {split!r}; a local "
                               f"file has only the split 'train'): {_reason(err)}") from err
    if builder == "text":  # blank lines are paragraph breaks, not documents
        ds = ds.filter(lambda rows: [bool(t.strip()) for t in rows], input_columns="text", batched=True,
                       keep_in_memory=True)
    return ds


def load_hub(source: str, config: str | None, split: str, field: str) -> datasets.Dataset:
    if source.strip().lower() in file_loader_names():
        raise DataError(field, f"{source!r} names a file loader of the datasets library, not a hub dataset; give "
                               "a hub id (org/name) or a local file")
    try:
        return datasets.load_dataset(source, config, split=split)
    except Exception as err:  # noqa: BLE001 - offline, missing, gated, bad config or split: all the user's to fix
        raise DataError(field, f"could not load hub dataset {source!r} (config {config!r}, split {split!r}): "
                               f"{_reason(err)}. Without network access (or with HF_HUB_OFFLINE=1) a hub "
                               "dataset must already be in the local Hugging Face cache; otherwise give a local "
                               f"{'/'.join(BUILDERS)} file") from err


def _load(source: str, config: str | None, split: str, spec: DataSpec, field: str) -> datasets.Dataset:
    if looks_like_local_path(source, tuple(BUILDERS)):
        path = Path(source).expanduser()
        check_file(path, spec, field)
        ds = load_file(path, split, field)
    else:
        ds = load_hub(source, config, split, field)
    if len(ds) == 0:
        raise DataError(field, f"{source!r} (split {split!r}) has no rows; give data with at least one row")
    return ds


def _split_off(ds: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Hold out whole rows (documents) before packing, so no document is in both sets. Rows of a
    teacher-written dataset are held out by prompt: other samples of a held-out prompt must not train."""
    if GROUP_COLUMN in ds.column_names:
        return _split_off_groups(ds, fraction, seed)
    rows = len(ds)
    # As datasets rounds a fractional split: ceil for the held-out rows, floor for the training rows.
    held, kept = math.ceil(fraction * rows), math.floor((1 - fraction) * rows)
    if held < 1 or kept < 1:
        raise DataError("data.validation_fraction",
                        f"the data has {rows} row{'s' if rows != 1 else ''}: holding out {fraction:g} of them leaves "
                        f"{'none' if kept < 1 else kept} to train on and {held} to evaluate on. Give at least 2 "
                        "rows (better, dozens), a data.validation_source, or set data.validation_fraction to 0")
    # No keep_in_memory here: datasets 5.2 then clashes with its own indices cache file name.
    parts = ds.train_test_split(test_size=fraction, seed=seed)
    return parts["train"], parts["test"]


def _split_off_groups(ds: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    groups = np.asarray(ds[GROUP_COLUMN])
    unique = np.unique(groups)
    n_held = int(round(fraction * len(unique)))
    if not 0 < n_held < len(unique):
        raise DataError("data.validation_fraction", f"cannot hold out {fraction} of {len(unique)} prompts; set "
                                                    "data.validation_fraction so at least one prompt is held out "
                                                    "and one trains, or answer more prompts")
    held = np.isin(groups, np.random.default_rng(seed).choice(unique, n_held, replace=False))
    return ds.select(np.flatnonzero(~held)), ds.select(np.flatnonzero(held))


def resolve_format(spec: DataSpec, columns: list[str], where: str = "the data") -> str:
    """The concrete format (text, chat or prompt_completion); DataError if its columns are missing."""
    fmt = spec.format
    if fmt == "auto":
        fmt = ("chat" if spec.messages_column in columns
               else "prompt_completion" if {"prompt", "completion"} <= set(columns) else "text")
    needed = {"text": [("data.text_column", spec.text_column)],
              "chat": [("data.messages_column", spec.messages_column)],
              "prompt_completion": [("data.format", "prompt"), ("data.format", "completion")]}[fmt]
    for field, column in needed:
        if column not in columns:
            raise DataError(field, f"column {column!r} (needed for format {fmt!r}) is not in {where}, whose "
                                   f"columns are {columns}; set {field} to match the data")
    return fmt


def _held_out_field(spec: DataSpec) -> str:
    return ("data.validation_source" if spec.validation_source
            else "data.validation_split" if spec.validation_split else "data.validation_fraction")


def load_raw(spec: DataSpec, seed: int) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Training and held-out rows, untokenized. Held-out rows come from `validation_source` (its split
    `validation_split`, default train), else the source's `validation_split`, else a seeded
    `validation_fraction` of the rows (0 = none)."""
    train = _load(spec.source, spec.hub_config, spec.split, spec, "data.source")
    held: datasets.Dataset | None = None
    if spec.validation_source:
        held = _load(spec.validation_source, None, spec.validation_split or "train", spec, "data.validation_source")
    elif spec.validation_split:
        held = _load(spec.source, spec.hub_config, spec.validation_split, spec, "data.validation_split")
    elif spec.validation_fraction > 0:
        train, held = _split_off(train, spec.validation_fraction, seed)
    if spec.max_examples is not None:
        train = train.select(range(min(len(train), spec.max_examples)))
    fmt = resolve_format(spec, train.column_names, "the training data")
    held_fmt = resolve_format(spec, held.column_names, "the held-out data") if held is not None else fmt
    if held_fmt != fmt:
        raise DataError(_held_out_field(spec), f"held-out data is in format {held_fmt!r} but training data in "
                                               f"{fmt!r}; give held-out data of the same kind")
    return train, held


# ---------------------------------------------------------------- tokenizing

def _strings(batch: dict, column: str, field: str) -> list[str]:
    values = batch[column]
    for value in values:
        if not isinstance(value, str):  # csv/json turn numbers and blanks into int/float/None
            raise DataError(field, f"column {column!r} holds {type(value).__name__} values such as {value!r}; "
                                   "every row needs text")
    return values


def _messages(batch: dict, spec: DataSpec) -> list[list[dict]]:
    rows = batch[spec.messages_column]
    for messages in rows:
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages)):
            raise DataError("data.messages_column", f"column {spec.messages_column!r} must hold non-empty lists of "
                                                    f"{{role, content}} messages, got {str(messages)[:200]}")
    return rows


def render_chat(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    # Base models have no template: a plain transcript still shows who said what.
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + ("assistant: " if generation_prompt else "")


def _prompts_and_completions(batch: dict, fmt: str, spec: DataSpec, tokenizer) -> tuple[list[str], list[str]]:
    """Per row: the part the loss ignores and the part it is trained on (text rows: all completion)."""
    if fmt == "text":
        texts = _strings(batch, spec.text_column, "data.text_column")
        return [""] * len(texts), texts
    if fmt == "prompt_completion":
        return _strings(batch, "prompt", "data.format"), _strings(batch, "completion", "data.format")
    prompts, completions = [], []
    for messages in _messages(batch, spec):
        if messages[-1]["role"] != "assistant":
            raise DataError("data.messages_column", f"the last message must be the assistant's reply to train on, "
                                                    f"got role {messages[-1]['role']!r}; end each conversation "
                                                    "with an assistant message, or use packing")
        prompts.append(render_chat(tokenizer, messages[:-1], generation_prompt=True))
        completions.append(messages[-1]["content"])
    return prompts, completions


def _documents(batch: dict, fmt: str, spec: DataSpec, tokenizer) -> list[str]:
    if fmt == "chat":
        return [render_chat(tokenizer, messages) for messages in _messages(batch, spec)]
    return [p + c for p, c in zip(*_prompts_and_completions(batch, fmt, spec, tokenizer))]


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    # verbose=False: long documents are cut into blocks later, so the max-length warning is noise.
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _pack(ds: datasets.Dataset, fmt: str, spec: DataSpec, tokenizer, seq_len: int, field: str, where: str
          ) -> datasets.Dataset:
    """Documents, each ended by eos, concatenated and cut into full seq_len blocks (remainder dropped)."""
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        return {"input_ids": [ids + [eos] for ids in _ids(tokenizer, _documents(batch, fmt, spec, tokenizer))]}

    docs = ds.map(tokenize, batched=True, remove_columns=ds.column_names, load_from_cache_file=False)
    # One flat arrow array, reshaped: exact across map batches and no python list per token.
    flat = pa.concat_arrays([chunk.flatten() for chunk in docs.data.column("input_ids").chunks])
    n_blocks = len(flat) // seq_len
    if n_blocks == 0:
        raise DataError(field, f"{where} has only {len(flat)} tokens, fewer than one block of "
                               f"train.seq_len={seq_len}; use a smaller seq_len or more data")
    blocks = pa.FixedSizeListArray.from_arrays(flat.slice(0, n_blocks * seq_len), seq_len)
    ones = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(n_blocks * seq_len, dtype=np.int8)), seq_len)
    return datasets.Dataset(pa.table({"input_ids": blocks, "attention_mask": ones, "labels": blocks}))


def _examples(ds: datasets.Dataset, fmt: str, spec: DataSpec, tokenizer, seq_len: int, field: str, where: str
              ) -> datasets.Dataset:
    """One example per row, truncated to seq_len; prompt tokens get label -100 so only the completion
    (and its eos) is learned. Prompt and completion are tokenized apart so the mask boundary is exact."""
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        prompts, completions = _prompts_and_completions(batch, fmt, spec, tokenizer)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for p, c in zip(_ids(tokenizer, prompts), _ids(tokenizer, completions)):
            labels = ([IGNORE_INDEX] * len(p) + c + [eos])[:seq_len]
            if all(label == IGNORE_INDEX for label in labels):
                continue  # the prompt fills seq_len: nothing left to learn
            out["input_ids"].append((p + c + [eos])[:seq_len])
            out["attention_mask"].append([1] * len(labels))
            out["labels"].append(labels)
        return out

    out = ds.map(tokenize, batched=True, remove_columns=ds.column_names, load_from_cache_file=False)
    if len(out) == 0:
        raise DataError(field, f"all {len(ds)} rows of {where} have prompts of at least train.seq_len={seq_len} "
                               "tokens, so no completion token is left to train on; raise seq_len or shorten prompts")
    return out


def _check_eos(tokenizer) -> None:
    if tokenizer.eos_token_id is None:
        raise DataError("student.name_or_path", "the tokenizer has no eos token, needed to end documents; "
                                                "use a tokenizer that defines eos_token")


def _build_held(held: datasets.Dataset, fmt: str, spec: DataSpec, tokenizer, seq_len: int,
                field: str | None = None, where: str = "the held-out data") -> datasets.Dataset:
    held = (_pack if spec.packing else _examples)(held, fmt, spec, tokenizer, seq_len, field or _held_out_field(spec),
                                                  where)
    if spec.max_eval_examples is not None:
        held = held.select(range(min(len(held), spec.max_eval_examples)))
    return held


def tokenize_datasets(spec: DataSpec, tokenizer, seq_len: int, seed: int
                      ) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Trainer-ready datasets with input_ids, attention_mask and labels; held-out capped at max_eval_examples."""
    _check_eos(tokenizer)
    train, held = load_raw(spec, seed)
    fmt = resolve_format(spec, train.column_names)
    build = _pack if spec.packing else _examples
    train = build(train, fmt, spec, tokenizer, seq_len, "train.seq_len", f"the training data {spec.source!r}")
    return train, (_build_held(held, fmt, spec, tokenizer, seq_len) if held is not None else None)


def heldout_dataset(spec: DataSpec, tokenizer, seq_len: int, seed: int) -> datasets.Dataset | None:
    """The held-out blocks exactly as training evaluates on them, without tokenizing the training data."""
    _check_eos(tokenizer)
    train, held = load_raw(spec, seed)
    return _build_held(held, resolve_format(spec, train.column_names), spec, tokenizer, seq_len) \
        if held is not None else None


def other_heldout_dataset(source: str, spec: DataSpec, tokenizer, seq_len: int, field: str) -> datasets.Dataset:
    """Blocks of other held-out text (evaluation.ood_source: a local file or a hub dataset's train split), built
    as the held-out blocks are (packing, seq_len, the max_eval_examples cap). Its format is read from its own
    columns, so plain text measures a chat-trained student too; every problem names `field`."""
    _check_eos(tokenizer)
    rows = _load(source, None, "train", spec, field)
    own = dataclasses.replace(spec, format="auto")
    try:
        fmt = resolve_format(own, rows.column_names, repr(source))
        return _build_held(rows, fmt, own, tokenizer, seq_len, field, repr(source))
    except DataError as err:
        if err.field == field:
            raise
        raise DataError(field, str(err)) from None


def heldout_documents(spec: DataSpec, tokenizer, seed: int, limit: int = 20) -> list[str]:
    """Up to `limit` held-out documents as text (chat rendered with the template), for the inspector."""
    train, held = load_raw(spec, seed)
    if held is None:
        return []
    rows = held.select(range(min(len(held), limit)))
    return [d for d in _documents(rows[:], resolve_format(spec, train.column_names), spec, tokenizer) if d.strip()]


# ---------------------------------------------------------------- batching

class PadCollator:
    """Right-pads features to the longest in the batch: input_ids with the pad token (eos if none),
    attention_mask with 0, labels with -100 so padding never counts in the loss."""

    def __init__(self, tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
        self.pads = {"input_ids": pad, "attention_mask": 0, "labels": IGNORE_INDEX}

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        # Per-row integers besides the token columns (e.g. "block", a teacher-cache row) pass through.
        batch = {key: torch.tensor([f[key] for f in features]) for key in features[0] if key not in self.pads}
        for key, pad in self.pads.items():
            out = torch.full((len(features), length), pad, dtype=torch.long)
            for row, f in enumerate(features):
                values = torch.as_tensor(f[key], dtype=torch.long)
                out[row, :len(values)] = values
            batch[key] = out
        return batch
