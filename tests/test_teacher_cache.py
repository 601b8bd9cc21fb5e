"""The teacher cache: a round trip is exact, a build resumes where it stopped, a cache of another tokenizer
or other data is refused by name, and the sparse KD loss with k = V equals the dense one."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench.config.schema import DIVERGENCES
from workbench.data.loading import tokenize_datasets
from workbench.engine.teacher_cache import (
    MANIFEST,
    CacheError,
    TeacherCache,
    build_cache,
    data_hash,
    tokenizer_hash,
    top_k_logprobs,
)
from workbench.losses.divergences import kd_loss, sparse_kd_loss
from workbench.store.rundir import RunDir


@pytest.fixture(scope="module")
def blocks(tokenizer, corpus_files):
    from workbench.config.schema import DataSpec
    train, _ = tokenize_datasets(DataSpec(source=str(corpus_files[0])), tokenizer, 32, 0)
    return train.select(range(20))


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return AutoModelForCausalLM.from_pretrained(teacher_dir).eval()


def test_round_trip_is_exact_at_storage_precision(teacher, tokenizer, blocks, tmp_path):
    manifest = build_cache(teacher, tokenizer, blocks, tmp_path, k=8, teacher_name="tiny", batch_size=3,
                           shard_blocks=6)
    assert manifest.complete and manifest.shards == 4 and manifest.bytes_per_token == 8 * 2 + 8 * 2 + 2
    cache = TeacherCache.open(tmp_path, tokenizer_hash(tokenizer), data_hash(blocks))
    chosen = [13, 2, 19, 6]  # across shards, out of order (a shuffled batch)
    logp, ids, tail = cache.rows(chosen)
    with torch.no_grad():
        values, top, rest = top_k_logprobs(teacher(input_ids=torch.tensor(blocks[chosen]["input_ids"])).logits[:, :-1], 8)
    assert torch.equal(ids, top)
    assert torch.equal(logp, values.half().float()) and torch.equal(tail, rest.half().float())
    total = logp.exp().sum(-1) + tail.exp()  # top k + the rest: one distribution
    assert torch.allclose(total, torch.ones_like(total), atol=1e-2)


def test_a_stopped_build_resumes_and_mismatches_are_refused(teacher, tokenizer, blocks, tmp_path):
    calls = []
    build_cache(teacher, tokenizer, blocks, tmp_path, k=4, shard_blocks=8,
                progress=lambda message, fraction: calls.append(fraction))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["shards_done"] = [0]  # as if stopped after the first shard
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / "ids-00001.npy").unlink()
    with pytest.raises(CacheError, match="incomplete"):
        TeacherCache.open(tmp_path, tokenizer_hash(tokenizer), data_hash(blocks))
    calls.clear()
    build_cache(teacher, tokenizer, blocks, tmp_path, k=4, shard_blocks=8, progress=lambda m, f: calls.append(m))
    assert calls and "/12 blocks" in calls[-1]  # only the two missing shards (8 + 4 blocks) were run
    TeacherCache.open(tmp_path, tokenizer_hash(tokenizer), data_hash(blocks))
    with pytest.raises(CacheError, match="another tokenizer"):
        TeacherCache.open(tmp_path, "0" * 16, data_hash(blocks))
    with pytest.raises(CacheError, match="other data"):
        TeacherCache.open(tmp_path, tokenizer_hash(tokenizer), data_hash(blocks.select(range(5))))
    with pytest.raises(CacheError, match="at k=4"):
        build_cache(teacher, tokenizer, blocks, tmp_path, k=16, shard_blocks=8)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 2.5, 10.0, 100.0])
def test_sparse_kd_with_k_equal_to_the_vocabulary_is_dense_kd(divergence, temperature):
    """Exact at every temperature the config allows: the empty tail holds no mass on either side
    (a floored log-mass re-softened by T would get some: 4e-2 relative error at T = 100)."""
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(3, 5, 40, generator=g) * 2).requires_grad_(True)
    teacher = torch.randn(3, 5, 40, generator=g) * 2
    labels = torch.randint(0, 40, (3, 5), generator=g)
    labels[0, :2] = -100
    top_logp, top_ids, tail = top_k_logprobs(teacher, 40)
    dense = kd_loss(student, teacher, labels, divergence, temperature, 0.3, 0.2)
    assert torch.isneginf(tail).all()
    sparse = sparse_kd_loss(student, top_logp, top_ids, tail, labels, divergence, temperature, 0.3, 0.2)
    # At T = 100 float32 rounding of x / T leaves both paths ~3e-5 from the float64 value.
    rel = 1e-4 if temperature >= 100 else 2e-5
    assert sparse.item() == pytest.approx(dense.item(), rel=rel, abs=1e-7)
    (g_dense,) = torch.autograd.grad(dense, student)
    (g_sparse,) = torch.autograd.grad(sparse, student)
    assert torch.isfinite(g_sparse).all()
    torch.testing.assert_close(g_sparse, g_dense, rtol=10 * rel, atol=1e-6)


def test_sparse_kd_with_a_small_k_keeps_the_tail_as_one_bucket():
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(4, 30, generator=g) * 3
    labels = torch.zeros(4, dtype=torch.long)
    top_logp, top_ids, tail = top_k_logprobs(teacher, 3)
    # a student equal to the teacher has zero divergence whatever k is
    assert sparse_kd_loss(teacher.clone(), top_logp, top_ids, tail, labels).abs().item() < 1e-6
    assert np.isfinite(sparse_kd_loss(torch.zeros(4, 30), top_logp, top_ids, tail, labels).item())


@pytest.mark.slow
def test_students_train_from_a_cache_without_the_teacher(teacher_dir, student_dir, corpus_files, tmp_path,
                                                         monkeypatch):
    import yaml

    from workbench.cli import main
    from workbench.config.fields import ConfigError
    from workbench.config.schema import DistillConfig
    from workbench.engine import runner
    config = {"teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
              "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1]), "max_examples": 120},
              "loss": {"alpha": 0.2}, "evaluation": {"at_end": False},
              "train": {"max_steps": 20, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "logging_steps": 5},
              "output": {"runs_dir": str(tmp_path / "runs")}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["cache", str(path), str(tmp_path / "cache"), "--k", "16"]) == 0

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(runner, "load_teacher", no_teacher)
    for name in ("a", "b"):  # several students from one cache
        cached = DistillConfig.load(path, [f"loss.teacher_cache={tmp_path / 'cache'}", f"output.run_name={name}"])
        runner.run_training(cached)
        records = [r for r in RunDir(tmp_path / "runs" / name).read_metrics() if "kd" in r]
        assert records[-1]["kd"] < 0.7 * records[0]["kd"], records  # the student moves toward the cached teacher
    other = DistillConfig.load(path, [f"loss.teacher_cache={tmp_path / 'cache'}", "data.max_examples=60",
                                      "output.run_name=c"])
    with pytest.raises(ConfigError, match="loss.teacher_cache.*other data"):
        runner.run_training(other)


def test_caches_are_listed_with_what_picking_one_needs(teacher, tokenizer, blocks, tmp_path):
    from workbench.engine.teacher_cache import list_caches
    build_cache(teacher, tokenizer, blocks, tmp_path / "k4", k=4, teacher_name="tiny")
    (tmp_path / "not-a-cache").mkdir()
    [row] = list_caches(tmp_path)
    assert (row["name"], row["k"], row["blocks"], row["complete"], row["bytes/token"]) == ("k4", 4, 20, True, 18)
    values, _, _ = top_k_logprobs(teacher(input_ids=torch.tensor(blocks["input_ids"])).logits[:, :-1].detach(), 4)
    assert row["mass kept"] == pytest.approx(float(values.exp().sum(-1).mean()), abs=1e-3)
    stored = sum(p.stat().st_size for p in (tmp_path / "k4").glob("*.npy")) / 2**20
    assert row["MB"] == pytest.approx(stored, abs=1e-3) and row["MB"] > 0


@pytest.mark.slow
def test_fidelity_is_measured_against_the_live_teacher_and_listed(teacher_dir, student_dir, corpus_files, tmp_path):
    """With k = the vocabulary the cache holds the whole distribution (at fp16): the cached run must reach
    the live run's held-out KL, and the cache manager lists the difference."""
    import yaml

    from workbench.cli import main
    from workbench.engine.teacher_cache import list_caches, read_fidelity
    config = {"teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
              "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1]), "max_examples": 60,
                       "max_eval_examples": 8},
              "loss": {"alpha": 0.2}, "train": {"batch_size": 8, "seq_len": 32, "lr": 1e-2},
              "output": {"runs_dir": str(tmp_path / "runs")}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    vocab = AutoModelForCausalLM.from_pretrained(teacher_dir).config.vocab_size
    assert main(["cache", str(path), str(tmp_path / "caches" / "full"), "--k", str(vocab), "--fidelity", "4"]) == 0
    found = read_fidelity(tmp_path / "caches" / "full")
    assert found["steps"] == 4 and found["live_kl"] > 0 and abs(found["relative"]) < 0.01, found
    [row] = list_caches(tmp_path / "caches")
    assert row["KD vs live"] == f"{100 * found['relative']:+.2f}% KL (4 steps)"
    assert not list((tmp_path / "runs").glob("*"))  # the two short runs leave nothing in the runs folder
