"""Pre-flight refuses what cannot run (a sequence past the models' positions, a run that cannot fit in
memory) naming the field, warns only when close, shows a refusal without the rest of the report, and
reads unchanged model folders once."""
from __future__ import annotations

import dataclasses
import re
import shutil
from collections import namedtuple

import pytest

from workbench.config.schema import DistillConfig
from workbench.engine import preflight as pf
from workbench.models import loading

Memory = namedtuple("Memory", "available total")


def tiny_config(teacher_dir, student_dir, corpus_files, **train) -> DistillConfig:
    return DistillConfig.from_dict({"teacher": {"name_or_path": str(teacher_dir)},
                                    "student": {"name_or_path": str(student_dir)},
                                    "data": {"source": str(corpus_files[0])},
                                    "train": {"seq_len": 64, "batch_size": 4, "bf16": "off", **train}})


@pytest.fixture
def available(monkeypatch):
    """Pretend the machine has `free` bytes of RAM free, of `total` (default: as much as is free)."""
    def set_bytes(free: float, total: float | None = None) -> None:
        monkeypatch.setattr(pf.psutil, "virtual_memory", lambda: Memory(free, total or free))
        monkeypatch.setattr(pf.torch.cuda, "is_available", lambda: False)
    return set_bytes


def test_a_sequence_longer_than_the_models_positions_is_refused(teacher_dir, student_dir, corpus_files):
    report = pf.preflight(tiny_config(teacher_dir, student_dir, corpus_files, seq_len=100_000))
    assert ("train.seq_len" in [name for name, _ in report.problems]) and "at most 512 tokens" in report.markdown()
    assert pf.preflight(tiny_config(teacher_dir, student_dir, corpus_files, seq_len=512)).ok


def test_memory_that_cannot_fit_is_refused_and_close_is_only_a_warning(teacher_dir, student_dir, corpus_files,
                                                                       available):
    config = tiny_config(teacher_dir, student_dir, corpus_files)
    available(2**40)
    fine = pf.preflight(config)
    need = fine.memory_gib["total"] * 2**30
    assert fine.ok and any(note.endswith(": fits") for note in fine.notes)
    available(need / 0.9)  # the estimate is 90% of what is free
    close = pf.preflight(config)
    assert close.ok and any("close to the limit" in note for note in close.notes)
    # Over what is free, but not over the machine: another job holds the rest, and the run can wait for it.
    available(need / 2, total=need * 4)
    waits = pf.preflight(config)
    assert waits.ok and any("more than is free now" in note for note in waits.notes)
    available(need / 2)
    refused = pf.preflight(config)
    problems = dict(refused.problems)
    assert not refused.ok and "train.seq_len" in problems and "tokens fit" in problems["train.seq_len"]
    available(1)  # not even the weights fit
    assert "student.lora.enabled" in dict(pf.preflight(config).problems)


def test_a_refusal_shows_only_the_refusal(teacher_dir, corpus_files):
    config = DistillConfig.from_dict({"teacher": {"name_or_path": str(teacher_dir)},
                                      "student": {"init_from_teacher_layers": 64},
                                      "data": {"source": str(corpus_files[0])}})
    report = pf.preflight(config)
    text = report.markdown()
    assert "student.init_from_teacher_layers" in text and report.notes  # the notes exist ...
    assert "smaller" not in text and "memory estimate" not in text  # ... but are not shown beside a refusal


def test_unchanged_model_folders_are_read_once(teacher_dir, student_dir, corpus_files, tmp_path, monkeypatch):
    teacher = shutil.copytree(teacher_dir, tmp_path / "teacher")
    config = tiny_config(teacher, student_dir, corpus_files)
    loads = []
    real = loading.load_tokenizer
    monkeypatch.setattr(pf, "load_tokenizer", lambda spec, role="student": loads.append(role) or real(spec, role))
    # The report, less the machine's free RAM (it moves between two calls on a busy machine).
    report = lambda: re.sub(r"[\d.]+ of [\d.]+ GiB RAM free", "RAM", pf.preflight(config).markdown())  # noqa: E731
    first = report()
    assert loads == ["teacher", "student"] and report() == first and len(loads) == 2
    (teacher / "tokenizer_config.json").write_text((teacher / "tokenizer_config.json").read_text() + " ")
    pf.preflight(config)
    assert len(loads) == 4  # a rewritten folder is read again


def test_bf16_on_a_cpu_without_bf16_instructions_is_flagged(teacher_dir, student_dir, corpus_files, monkeypatch):
    monkeypatch.setattr(pf.torch.cuda, "is_available", lambda: False)
    config = tiny_config(teacher_dir, student_dir, corpus_files, bf16="on")
    for native, flagged in ((False, True), (True, False)):
        monkeypatch.setattr(pf, "native_cpu_bf16", lambda: native)
        report = pf.preflight(config)
        assert report.ok and any("no bf16 instructions" in note for note in report.notes) == flagged
    assert not any("bf16" in note for note in pf.preflight(tiny_config(teacher_dir, student_dir, corpus_files)).notes)


def test_bf16_native_follows_the_hardware(teacher_dir, student_dir, corpus_files, monkeypatch):
    """native: bf16 on a CPU that multiplies it, float32 on one that would emulate it (~100x slower); auto
    stays float32 on any CPU, on stays on."""
    from workbench.engine import trainer
    monkeypatch.setattr(trainer.torch.cuda, "is_available", lambda: False)
    for native in (False, True):
        monkeypatch.setattr(trainer, "native_cpu_bf16", lambda: native)
        assert trainer.use_bf16(tiny_config(teacher_dir, student_dir, corpus_files, bf16="native")) is native
        assert not trainer.use_bf16(tiny_config(teacher_dir, student_dir, corpus_files, bf16="auto"))
        assert trainer.use_bf16(tiny_config(teacher_dir, student_dir, corpus_files, bf16="on"))


def test_a_missing_out_of_domain_file_is_named_before_launch(teacher_dir, student_dir, corpus_files, tmp_path):
    config = tiny_config(teacher_dir, student_dir, corpus_files)
    typo = config.replace(evaluation=dataclasses.replace(config.evaluation, ood_source=str(tmp_path / "nvel.txt")))
    assert dict(pf.preflight(typo).problems) == {"evaluation.ood_source": f"no such file: {tmp_path / 'nvel.txt'}"}
    found = config.replace(evaluation=dataclasses.replace(config.evaluation, ood_source=str(corpus_files[1])))
    assert pf.preflight(found).ok
