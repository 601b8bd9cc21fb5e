"""loss.reuse_teacher: the first run stores the teacher's rows of the blocks it reads; a repeat of it reads them
without running the teacher and trains alike; a killed write is redone; another teacher gets its own rows."""
import copy
import json

import numpy as np
import pytest
import torch

from workbench.engine.runner import run_training
from workbench.engine.strategies.soft import SoftLabelStrategy
from workbench.engine.teacher_cache import top_k_logprobs
from workbench.engine.teacher_rows import ROWS_FOLDER, TeacherRows
from workbench.models.loading import model_identity
from workbench.store.rundir import PROFILE, RunDir


@pytest.fixture
def rows_config(distilled_config, tmp_path):
    config = copy.deepcopy(distilled_config)
    config.loss.reuse_teacher = True
    config.train.max_steps, config.train.batch_size, config.train.save_steps = 3, 4, 3
    config.evaluation.at_end = False
    config.output.runs_dir = str(tmp_path / "runs")
    return config


def _run(config, name, cache_dir):
    config = copy.deepcopy(config)
    config.output.run_name = name
    final = run_training(config, cache_dir=cache_dir)
    return RunDir(cache_dir.parent / "runs" / name), final


def test_a_repeated_run_reads_the_kept_rows_and_trains_alike(rows_config, tmp_path, monkeypatch, teacher_dir):
    cache_dir = tmp_path / "cache"
    first_run, first = _run(rows_config, "first", cache_dir)
    [folder] = (cache_dir / ROWS_FOLDER).iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    filled = np.load(folder / "filled.npy")
    assert manifest["k"] == 32 and manifest["tail_samples"] == 8
    assert filled.sum() == 12  # 3 steps of 4 blocks, each read once

    # The stored rows are the teacher's top 24 tokens and 8 draws from its tail at those blocks.
    from transformers import AutoModelForCausalLM

    from workbench.data.loading import tokenize_datasets
    from workbench.models.loading import load_tokenizer
    block = int(np.flatnonzero(filled)[0])
    logp, ids, tail = (torch.from_numpy(np.load(folder / f"{name}.npy")[block].astype(np.float32))
                       for name in ("logp", "ids", "tail"))
    tokenizer = load_tokenizer(rows_config.student, "student")
    train, _ = tokenize_datasets(rows_config.data, tokenizer, rows_config.train.seq_len, rows_config.train.seed)
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(teacher_dir)(input_ids=torch.tensor([train[block]["input_ids"]]))
    head_logp, head_ids, head_tail = top_k_logprobs(logits.logits[0, :-1], 24)
    assert torch.equal(ids[:, :24].long(), head_ids)
    assert torch.allclose(logp[:, :24], head_logp, rtol=1e-3, atol=1e-3)  # stored as float16
    assert torch.allclose(tail, head_tail, rtol=1e-3, atol=1e-3)
    assert (logp[:, 24:] <= head_logp[:, -1:] + 1e-2).all()  # the draws come from beyond the head

    # A repeat never runs the teacher on a training block, and ends where the first run ended.
    calls = []
    original = SoftLabelStrategy._teacher_rows
    monkeypatch.setattr(SoftLabelStrategy, "_teacher_rows", lambda self, *a: calls.append(a) or original(self, *a))
    second_run, second = _run(rows_config, "second", cache_dir)
    assert calls == []
    assert second["eval_ce"] == pytest.approx(first["eval_ce"], rel=1e-5)
    assert second["eval_kd"] == pytest.approx(first["eval_kd"], rel=1e-5)
    # and spends no time on the teacher outside its held-out evaluations
    assert json.loads(second_run.file(PROFILE).read_text())["seconds"]["teacher"] < \
        json.loads(first_run.file(PROFILE).read_text())["seconds"]["teacher"]


def test_a_write_that_dies_leaves_the_block_to_be_written_again(tmp_path, tokenizer):
    dataset = [{"input_ids": list(range(9))}] * 3
    from datasets import Dataset
    rows = TeacherRows.open(tmp_path, "teacher-a", tokenizer, Dataset.from_list(dataset), vocab=40)

    def dies(missing):
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        rows.fill([0, 1], dies)
    assert rows.filled_count() == 0
    logits = torch.randn(8, 40)
    assert rows.fill([0, 1, 1], lambda missing: [rows.block_rows(logits, b) for b in missing]) == 2
    assert rows.fill([1, 0], lambda missing: pytest.fail("kept rows were computed again")) == 0
    again = TeacherRows.open(tmp_path, "teacher-a", tokenizer, Dataset.from_list(dataset), vocab=40)
    assert again.folder == rows.folder and again.filled_count() == 2
    # The draws are the block's own: the same logits give block 1 the same rows however it is reached.
    assert all(torch.equal(a, b) for a, b in zip(again.rows([1]), rows.rows([1])))


def test_another_teacher_or_replaced_weights_get_rows_of_their_own(tmp_path, tokenizer):
    from datasets import Dataset
    data = Dataset.from_list([{"input_ids": list(range(9))}] * 2)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"one")
    first = TeacherRows.open(tmp_path / "rows", model_identity(str(teacher)), tokenizer, data, vocab=40)
    assert TeacherRows.open(tmp_path / "rows", model_identity("org/teacher-b", "abc"), tokenizer, data,
                            vocab=40).folder != first.folder
    # a hub id at a newer commit is another teacher
    assert model_identity("org/teacher-b", "abc") != model_identity("org/teacher-b", "def")
    before = model_identity(str(teacher))
    (teacher / "model.safetensors").write_bytes(b"other weights")
    assert model_identity(str(teacher)) != before
    # and so is an edited config, or another GGUF file of one folder or hub id
    before = model_identity(str(teacher))
    (teacher / "config.json").write_text("{}")
    assert model_identity(str(teacher)) != before
    assert model_identity(str(teacher), gguf_file="q4.gguf") != model_identity(str(teacher), gguf_file="q8.gguf")
    assert model_identity("org/teacher-b", "abc", "q4.gguf") != model_identity("org/teacher-b", "abc", "q8.gguf")
    assert TeacherRows.open(tmp_path / "rows", model_identity(str(teacher)), tokenizer, data,
                            vocab=40).folder != first.folder
    # and the same teacher over other blocks gets other rows
    other = Dataset.from_list([{"input_ids": list(range(1, 10))}] * 2)
    assert TeacherRows.open(tmp_path / "rows", model_identity(str(teacher)), tokenizer, other,
                            vocab=40).folder != first.folder
