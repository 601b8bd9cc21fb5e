"""workbench.data.loading: loading local files, packing, per-example label masks, collation and the errors users meet."""
import json
import math
import os
import time

import pandas as pd
import pytest
import torch

from workbench.config.schema import DataSpec
from workbench.data import loading as data
from workbench.data.loading import DataError, PadCollator, load_raw, resolve_format, tokenize_datasets


def spec(source, **kw) -> DataSpec:
    kw.setdefault("validation_fraction", 0.0)
    return DataSpec(source=str(source), **kw)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def numbered(tmp_path, n=50):
    """Distinct lines, so row identity can be checked by text."""
    return write_lines(tmp_path / "numbered.txt", [f"line {i} the cat sees a green book." for i in range(n)])


# ---------------------------------------------------------------- loading

def test_txt_is_one_row_per_line_without_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\n\n   \nsecond line\n", encoding="utf-8")
    train, held = load_raw(spec(path), seed=0)
    assert train["text"] == ["first line", "second line"]
    assert held is None


ROWS = [{"text": "the cat sees an apple.", "id": 1}, {"text": "a dog reads a letter.", "id": 2}]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_structured_files_load_by_suffix(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    frame = pd.DataFrame(ROWS)
    {".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".json": lambda: path.write_text(json.dumps(ROWS), encoding="utf-8"),
     ".csv": lambda: frame.to_csv(path, index=False),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    train, _ = load_raw(spec(path), seed=0)
    assert train["text"] == [r["text"] for r in ROWS]
    assert list(train["id"]) == [1, 2]


def test_auto_format_prefers_chat_then_prompt_completion_then_text():
    s = DataSpec(source="x")
    assert resolve_format(s, ["messages", "prompt", "completion", "text"]) == "chat"
    assert resolve_format(s, ["prompt", "completion", "text"]) == "prompt_completion"
    assert resolve_format(s, ["prompt", "text"]) == "text"


def test_validation_fraction_holds_out_whole_rows_disjointly(tmp_path):
    path = numbered(tmp_path, 50)
    train, held = load_raw(spec(path, validation_fraction=0.2), seed=3)
    assert len(held) == 10 and len(train) == 40
    assert not set(train["text"]) & set(held["text"])
    assert set(train["text"]) | set(held["text"]) == set(path.read_text().splitlines())


def test_split_is_seeded(tmp_path):
    path = numbered(tmp_path, 50)
    first = load_raw(spec(path, validation_fraction=0.2), seed=3)[1]["text"]
    again = load_raw(spec(path, validation_fraction=0.2), seed=3)[1]["text"]
    other = load_raw(spec(path, validation_fraction=0.2), seed=4)[1]["text"]
    assert first == again
    assert set(first) != set(other)


def test_max_examples_caps_training_rows_after_the_split(tmp_path):
    train, held = load_raw(spec(numbered(tmp_path, 50), validation_fraction=0.2, max_examples=7), seed=0)
    assert len(train) == 7 and len(held) == 10


def test_validation_source_is_used_as_held_out(corpus_files):
    train_file, val_file = corpus_files
    train, held = load_raw(spec(train_file, validation_source=str(val_file), validation_fraction=0.3), seed=0)
    assert held["text"] == val_file.read_text().splitlines()
    assert len(train) == len(train_file.read_text().splitlines())  # nothing split off


def test_validation_split_missing_in_local_file(corpus_files):
    with pytest.raises(DataError) as err:
        load_raw(spec(corpus_files[0], validation_split="validation"), seed=0)
    assert err.value.field == "data.validation_split"
    assert "'validation'" in str(err.value)


# ---------------------------------------------------------------- packing

def test_packed_blocks_are_full_and_concatenate_the_documents(tokenizer, corpus_files):
    train_file = corpus_files[0]
    seq_len = 32
    train, held = tokenize_datasets(spec(train_file), tokenizer, seq_len, seed=0)
    assert held is None
    lines = train_file.read_text().splitlines()
    stream = [t for line in lines for t in ids(tokenizer, line) + [tokenizer.eos_token_id]]
    assert len(train) == len(stream) // seq_len
    assert all(len(row) == seq_len for row in train["input_ids"])
    assert train[0]["input_ids"] == stream[:seq_len]
    first = (ids(tokenizer, lines[0]) + [tokenizer.eos_token_id] + ids(tokenizer, lines[1]))[:seq_len]
    assert len(first) > len(ids(tokenizer, lines[0])) + 1  # the block reaches into the second document
    assert train[0]["input_ids"] == first  # first document, eos, then the start of the second
    assert [t for row in train["input_ids"] for t in row] == stream[:len(train) * seq_len]
    assert train["labels"] == train["input_ids"]
    assert all(set(mask) == {1} for mask in train["attention_mask"])


def test_tokenize_is_deterministic_and_seed_changes_held_out(tokenizer, corpus_files):
    s = spec(corpus_files[0], validation_fraction=0.1)
    a = tokenize_datasets(s, tokenizer, 16, seed=1)
    b = tokenize_datasets(s, tokenizer, 16, seed=1)
    c = tokenize_datasets(s, tokenizer, 16, seed=2)
    assert a[0].to_dict() == b[0].to_dict() and a[1].to_dict() == b[1].to_dict()
    assert a[1].to_dict() != c[1].to_dict()


def test_held_out_capped_at_max_eval_examples(tokenizer, corpus_files):
    train, held = tokenize_datasets(spec(corpus_files[0], validation_source=str(corpus_files[1]),
                                         max_eval_examples=3), tokenizer, 16, seed=0)
    assert len(held) == 3
    assert held[0]["input_ids"] == [t for line in corpus_files[1].read_text().splitlines()
                                    for t in ids(tokenizer, line) + [tokenizer.eos_token_id]][:16]


def test_packed_chat_rows_use_the_chat_template(tokenizer, tmp_path):
    conv = [{"role": "user", "content": "the cat sees an apple."}, {"role": "assistant", "content": "a dog reads."}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conv}] * 20)
    train, _ = tokenize_datasets(spec(path), tokenizer, 16, seed=0)
    expected = ids(tokenizer, tokenizer.apply_chat_template(conv, tokenize=False)) + [tokenizer.eos_token_id]
    assert train[0]["input_ids"] == (expected * 2)[:16]


def test_too_little_text_for_one_block(tokenizer, tmp_path):
    path = write_lines(tmp_path / "short.txt", ["the cat."])
    with pytest.raises(DataError) as err:
        tokenize_datasets(spec(path), tokenizer, 512, seed=0)
    n_tokens = len(ids(tokenizer, "the cat.")) + 1
    assert err.value.field == "train.seq_len"
    assert f"only {n_tokens} tokens" in str(err.value) and "512" in str(err.value)


# ---------------------------------------------------------------- per-example masks

def test_prompt_completion_masks_exactly_the_prompt(tokenizer, tmp_path):
    rows = [{"prompt": "the cat sees", "completion": " an apple."}, {"prompt": "a dog", "completion": " reads."}]
    path = write_jsonl(tmp_path / "pc.jsonl", rows)
    train, _ = tokenize_datasets(spec(path, packing=False), tokenizer, 64, seed=0)
    assert len(train) == 2
    for row, ex in zip(rows, train):
        n = len(ids(tokenizer, row["prompt"]))
        assert ex["input_ids"] == ids(tokenizer, row["prompt"]) + ids(tokenizer, row["completion"]) + [
            tokenizer.eos_token_id]
        assert ex["labels"][:n] == [-100] * n
        assert ex["labels"][n:] == ex["input_ids"][n:]
        assert ex["attention_mask"] == [1] * len(ex["input_ids"])


def test_text_rows_unpacked_are_truncated_and_fully_labelled(tokenizer, corpus_files):
    train, _ = tokenize_datasets(spec(corpus_files[0], packing=False), tokenizer, 6, seed=0)
    first = corpus_files[0].read_text().splitlines()[0]
    assert train[0]["input_ids"] == ids(tokenizer, first)[:6]
    assert train[0]["labels"] == train[0]["input_ids"]


def test_chat_masks_everything_up_to_the_assistant_reply(tokenizer, tmp_path):
    conv = [{"role": "system", "content": "be brief."}, {"role": "user", "content": "what does the cat see?"},
            {"role": "assistant", "content": "the cat sees an apple."}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conv}])
    train, _ = tokenize_datasets(spec(path, packing=False), tokenizer, 128, seed=0)
    ex = train[0]
    prompt = tokenizer.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True)
    n = len(ids(tokenizer, prompt))
    assert prompt.endswith("<|im_start|>assistant\n")
    assert ex["labels"][:n] == [-100] * n
    assert ex["labels"][n:] == ex["input_ids"][n:] == ids(tokenizer, conv[-1]["content"]) + [tokenizer.eos_token_id]


def test_chat_must_end_with_the_assistant(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError) as err:
        tokenize_datasets(spec(path, packing=False), tokenizer, 64, seed=0)
    assert err.value.field == "data.messages_column" and "'user'" in str(err.value)


def test_rows_with_no_completion_left_are_dropped(tokenizer, tmp_path):
    long_prompt = "the cat sees the red ball by the river " * 5
    rows = [{"prompt": long_prompt, "completion": " yes."}, {"prompt": "a dog", "completion": " reads."}]
    path = write_jsonl(tmp_path / "pc.jsonl", rows)
    train, _ = tokenize_datasets(spec(path, packing=False), tokenizer, 8, seed=0)
    assert len(train) == 1 and train[0]["input_ids"][:len(ids(tokenizer, "a dog"))] == ids(tokenizer, "a dog")
    write_jsonl(path, rows[:1])
    with pytest.raises(DataError) as err:
        tokenize_datasets(spec(path, packing=False), tokenizer, 8, seed=0)
    assert err.value.field == "train.seq_len" and "seq_len=8" in str(err.value)


# ---------------------------------------------------------------- collator

def test_collator_right_pads_and_masks(tokenizer):
    feats = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
             {"input_ids": [8, 9, 10, 11, 12], "attention_mask": [1] * 5, "labels": [8, 9, 10, 11, 12]}]
    batch = PadCollator(tokenizer)(feats)
    pad = tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[5, 6, 7, pad, pad], [8, 9, 10, 11, 12]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, -100], [8, 9, 10, 11, 12]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collator_pads_with_eos_without_a_pad_token():
    class NoPad:
        pad_token_id, eos_token_id = None, 3
    batch = PadCollator(NoPad())([{"input_ids": [1], "attention_mask": [1], "labels": [1]},
                                  {"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [1, 2]}])
    assert batch["input_ids"].tolist() == [[1, 3], [1, 2]]


# ---------------------------------------------------------------- errors

def assert_data_error(source, field, *fragments, **kw):
    with pytest.raises(DataError) as err:
        load_raw(spec(source, **kw), seed=0)
    assert isinstance(err.value, ValueError)
    assert err.value.field == field
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    return err.value


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    assert_data_error(path, "data.source", str(path), "empty")


def test_whitespace_only_file(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("  \n\t\n\n", encoding="utf-8")
    assert_data_error(path, "data.source", str(path), "whitespace")


def test_non_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("héllo\n".encode("utf-8") + b"caf\xe9\n")
    assert_data_error(path, "data.source", str(path), "UTF-8", "offset 10", "0xe9")


def test_non_utf8_offset_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_CHUNK_BYTES", 3)  # "é" (2 bytes) straddles the first chunk boundary
    path = tmp_path / "split.txt"
    path.write_bytes(b"ab" + "é".encode("utf-8") + b"c\xff")  # chunks: ab\xc3 | \xa9c\xff
    assert_data_error(path, "data.source", "offset 5")


def test_file_over_max_file_mb(tmp_path):
    path = write_lines(tmp_path / "big.txt", ["the cat sees an apple."] * 10)
    size = path.stat().st_size
    assert_data_error(path, "data.max_file_mb", str(path), f"{size} bytes", "1e-05", max_file_mb=1e-5)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "rows.xml"
    path.write_text("<a>text</a>", encoding="utf-8")
    assert_data_error(path, "data.source", str(path), "'.xml'", ".jsonl", ".parquet")


def test_missing_text_column_lists_existing_columns(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"body": "the cat.", "id": 1}])
    assert_data_error(path, "data.text_column", "'text'", "['body', 'id']")


def test_missing_file_path(tmp_path):
    path = tmp_path / "nowhere" / "train.jsonl"
    assert_data_error(path, "data.source", str(path), "does not exist")
    assert_data_error("nowhere/train.jsonl", "data.source", "nowhere/train.jsonl", "does not exist")


def test_malformed_jsonl_keeps_the_parser_message(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    assert_data_error(path, "data.source", str(path), "JSON parse error")


def test_hub_id_offline_fails_fast():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    start = time.monotonic()
    err = assert_data_error("no-such-org/no-such-dataset", "data.source", "'no-such-org/no-such-dataset'",
                            "HF_HUB_OFFLINE=1", "local")
    assert time.monotonic() - start < 10
    assert err.__cause__ is not None


def test_validation_fraction_too_large_for_tiny_data(tmp_path):
    path = write_lines(tmp_path / "one.txt", ["the cat."])
    assert_data_error(path, "data.validation_fraction", "0.5", "has 1 row:", validation_fraction=0.5)
    # The default fraction on a one-row upload: said in our words, not the splitter's ("n_samples=1, test_size")
    with pytest.raises(DataError) as err:
        load_raw(spec(path, validation_fraction=0.05), seed=0)
    assert "leaves none to train on" in str(err.value) and "n_samples" not in str(err.value)
    train, held = load_raw(spec(write_lines(tmp_path / "two.txt", ["a cat.", "a dog."]), validation_fraction=0.05),
                           seed=0)
    assert (len(train), len(held)) == (1, 1)
    assert math.isclose(DataSpec().validation_fraction, 0.05)  # the default still splits normal data
