"""Every strategy trains at the edges of alpha: alpha 0 (pure KD, the form's own hint), 0.5 and 1 (pure CE),
with loss.chunk_size 0 and 128 (the fused loss where the strategy has one: soft_label and hard_label; the
layer strategies and co-distillation compute on full logits whatever the setting, which must not break
them either), from the live teacher and, for soft_label, from a teacher cache. Each run goes through
run_training on the tiny models and must move the student."""
import json

import pytest
import torch
from safetensors.torch import load_file

from workbench.config.schema import DistillConfig
from workbench.data.loading import tokenize_datasets
from workbench.engine.runner import run_training
from workbench.engine.teacher_cache import build_cache
from workbench.models.loading import load_tokenizer
from workbench.store.rundir import RunDir

pytestmark = pytest.mark.slow  # every test trains a student

ALPHAS = (0.0, 0.5, 1.0)
CHUNKS = (0, 128)
STEPS = 3


def base(teacher_dir, student_dir, corpus_files, runs, name, **sections):
    data = {"teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
            "data": {"source": str(corpus_files[0]), "validation_fraction": 0, "max_examples": 64},
            "evaluation": {"at_end": False},
            "train": {"max_steps": STEPS, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "logging_steps": 1,
                      "save_steps": 100},
            "output": {"runs_dir": str(runs), "run_name": name}}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return DistillConfig.from_dict(data)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.fixture(scope="module")
def initial(student_dir):
    return weights(student_dir)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, teacher_dir, student_dir, corpus_files):
    """A teacher cache at k = 16 over exactly the training blocks the soft-label runs below read."""
    from transformers import AutoModelForCausalLM
    config = base(teacher_dir, student_dir, corpus_files, ".", "x")
    tokenizer = load_tokenizer(config.student)
    train, _ = tokenize_datasets(config.data, tokenizer, config.train.seq_len, config.train.seed)
    folder = tmp_path_factory.mktemp("cache")
    build_cache(AutoModelForCausalLM.from_pretrained(teacher_dir), tokenizer, train, folder, k=16)
    return folder


@pytest.fixture(scope="module")
def completions(tmp_path_factory, teacher_dir, student_dir, corpus_files):
    """A small teacher-written dataset, so hard-label runs train without generating each time."""
    from workbench.hardlabel.generation import generate_dataset
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("the cat", "a dog", "my sister", "the old")))
    config = base(teacher_dir, student_dir, corpus_files, ".", "x", strategy="hard_label",
                  generation={"prompts": str(prompts), "max_new_tokens": 8, "batch_size": 4})
    return generate_dataset(config, tmp_path_factory.mktemp("generated"))


def check_trained(run: RunDir, initial: dict, alpha: float, total_is_one_term: bool = False) -> None:
    status = run.read_status()
    assert status["state"] == "succeeded", status.get("error")
    after = weights(run.student)
    moved = [name for name, value in after.items() if name in initial and not torch.equal(value, initial[name])]
    assert moved, "no student weight changed"
    assert all(torch.isfinite(value).all() for value in after.values())
    logged = [r for r in run.read_metrics() if "loss" in r]
    assert len(logged) == STEPS and all(r["loss"] is not None for r in logged)
    if total_is_one_term and alpha in (0.0, 1.0):
        # At the edges the soft-label total is exactly one term (at alpha 1 the teacher is not even run).
        term = "kd" if alpha == 0.0 else "ce"
        assert all(r["loss"] == pytest.approx(r[term], rel=1e-5) for r in logged)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("teacher", ["live", "cached"])
def test_soft_label(teacher, alpha, chunk, tmp_path, teacher_dir, student_dir, corpus_files, initial, cache_dir):
    loss = {"alpha": alpha, "chunk_size": chunk, "teacher_cache": str(cache_dir) if teacher == "cached" else None}
    config = base(teacher_dir, student_dir, corpus_files, tmp_path, "run", loss=loss)
    run_training(config)
    check_trained(RunDir(tmp_path / "run"), initial, alpha, total_is_one_term=True)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("strategy", ["hidden_state", "attention"])
def test_layer_strategies(strategy, alpha, chunk, tmp_path, teacher_dir, student_dir, corpus_files, initial):
    config = base(teacher_dir, student_dir, corpus_files, tmp_path, "run", strategy=strategy,
                  loss={"alpha": alpha, "chunk_size": chunk})
    run_training(config)
    check_trained(RunDir(tmp_path / "run"), initial, alpha)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_co_distillation(alpha, chunk, tmp_path, teacher_dir, student_dir, corpus_files, initial):
    """Co-distillation's alpha is scheduled: held at the value throughout (start = end)."""
    config = base(teacher_dir, student_dir, corpus_files, tmp_path, "run", strategy="co_distillation",
                  loss={"chunk_size": chunk},
                  co_distillation={"alpha_start": alpha, "alpha_end": alpha, "alpha_warmup_steps": 0})
    run_training(config)
    run = RunDir(tmp_path / "run")
    check_trained(run, initial, alpha)
    logged = [r for r in run.read_metrics() if "loss" in r]
    assert all(r["alpha"] == alpha for r in logged)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_hard_label(alpha, chunk, tmp_path, teacher_dir, student_dir, corpus_files, initial, completions):
    """alpha does not enter hard-label training (CE on the teacher's text), and must not break it."""
    config = base(teacher_dir, student_dir, corpus_files, tmp_path, "run", strategy="hard_label",
                  loss={"alpha": alpha, "chunk_size": chunk}, generation={"dataset": str(completions)})
    run_training(config)
    check_trained(RunDir(tmp_path / "run"), initial, alpha)
