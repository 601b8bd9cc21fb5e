"""GGUF export: a Llama student written as one .gguf loads back through transformers' GGUF reader (the
same tensor names, q/k layout and tokenizer keys llama.cpp reads) with the same logits and the same token
ids; other architectures are refused by name; the run export writes the file, its card and its report."""
import json
import shutil

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

import tiny
from workbench.eval.exports import GGUF_SUBDIR, export, exports_of
from workbench.models.gguf_export import UnsupportedArchitecture, _permute, check_supported, write_gguf
from workbench.store.rundir import EXIT_CONFIG, STATUS, RunDir

TEXTS = ["the cat sees the red ball . a dog likes an apple .", "a small bird reads a letter ."]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _roundtrip(folder, tokenizer, tmp_path, dtype):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    info = write_gguf(model, tokenizer, tmp_path / "out" / "m.gguf", dtype)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", gguf_file="m.gguf", dtype=torch.float32)
    return model, loaded.eval(), info


@pytest.fixture(scope="module")
def gqa_dirs(tiny_dir, tokenizer):
    """Grouped-query attention (4 query heads, 2 kv heads) as in SmolLM2, tied and untied."""
    return {tie: tiny.save_llama(tiny_dir / f"gguf-gqa-{tie}", tokenizer, layers=2, hidden=64, seed=5,
                                 heads=4, kv_heads=2, tie=tie) for tie in (True, False)}


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_loads_back_with_the_same_logits(gqa_dirs, tokenizer, tmp_path, tie, dtype):
    model, loaded, info = _roundtrip(gqa_dirs[tie], tokenizer, tmp_path, dtype)
    ids = tokenizer(TEXTS, padding=True, return_tensors="pt").input_ids
    want, got = _logits(model, ids), _logits(loaded, ids)
    # f32 is exact up to summation order; f16 rounds each weight by at most 2^-11 of itself.
    bound = 1e-4 if dtype == "f32" else 2e-2 * want.std()
    assert (got - want).abs().max() < bound
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert info["dtype"] == dtype and info["architecture"] == "llama" and info["pre_tokenizer"] == "default"
    reader = gguf.GGUFReader(tmp_path / "out" / "m.gguf")
    names = {t.name for t in reader.tensors}
    # A tied head is stored once, as token_embd; llama.cpp reads it as the output too.
    assert ("output.weight" in names) is not tie and "token_embd.weight" in names and "blk.1.attn_k.weight" in names
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert kinds["blk.0.attn_q.weight"] == (gguf.GGMLQuantizationType.F16 if dtype == "f16"
                                            else gguf.GGMLQuantizationType.F32)


def test_gguf_tokenizer_encodes_the_same_ids(gqa_dirs, tokenizer, tmp_path):
    write_gguf(AutoModelForCausalLM.from_pretrained(gqa_dirs[True]), tokenizer, tmp_path / "m.gguf")
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    for text in TEXTS + ["  two  spaces, and 123 digits!"]:
        assert loaded(text).input_ids == tokenizer(text).input_ids, text
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<s>", "</s>", "<pad>")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    field = reader.fields["tokenizer.ggml.model"]
    assert bytes(field.parts[field.data[0]]).decode() == "gpt2"
    assert len(reader.fields["tokenizer.ggml.merges"].data) > 0


def test_q_and_k_rows_are_interleaved_per_head_for_llama_cpp():
    # One head of dimension 4: HF keeps rotary pairs as halves (0, 1 | 2, 3) -> llama.cpp pairs (0, 2, 1, 3).
    rows = torch.arange(8.0).reshape(8, 1)  # 2 heads x head_dim 4, hidden 1
    assert _permute(rows, heads=2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_other_architectures_are_refused_by_name(tiny_dir, tokenizer, tmp_path):
    gemma = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    with pytest.raises(UnsupportedArchitecture, match="gemma3_text"):
        check_supported(gemma)
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny.save_gpt2(tiny_dir / "gguf-gpt2", tokenizer, layers=1,
                                                               hidden=16, seed=0))
    with pytest.raises(UnsupportedArchitecture, match=r"GPT2LMHeadModel \(model_type 'gpt2'\)"):
        write_gguf(gpt2, tokenizer, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())  # refused before a byte is written


def _finished_run(runs, config, student_dir, name):
    run = runs / name
    run.mkdir(parents=True)
    config.save(run / "config.json")
    (run / STATUS).write_text(json.dumps({"state": "succeeded", "step": config.train.max_steps}))
    shutil.copytree(student_dir, run / "student")
    (run / "student" / "README.md").write_text("---\nlibrary_name: transformers\n---\n\n# distilled\n\nA student.\n")
    return RunDir(run)


def test_run_export_writes_the_file_its_card_and_lists_it(distilled_config, student_dir, tmp_path):
    run = _finished_run(tmp_path, distilled_config, student_dir, "finished")
    report = export(run, "gguf")
    out = run.path / GGUF_SUBDIR
    assert report["file"] == "finished-f16.gguf" and (out / report["file"]).stat().st_size == report["bytes"]
    assert json.loads((out / "gguf.json").read_text())["line"] == report["line"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: gguf\n") and "# distilled" in card and "## GGUF export" in card
    assert "gguf_file='finished-f16.gguf'" in card and "## Exports" not in card
    student_card = (run.student / "README.md").read_text()
    assert f"- `{GGUF_SUBDIR}/`: {report['line']}" in student_card
    assert exports_of(run) == {"student": "the final student, full precision", GGUF_SUBDIR: report["line"]}
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=report["file"])
    assert torch.isfinite(_logits(loaded, torch.tensor([[1, 5, 9]]))).all()


@pytest.mark.slow
def test_the_default_student_exports_and_loads_with_its_logits(defaults_root, tmp_path):
    """The real SmolLM2 student (GQA 9/3 heads, tied 49k embedding, byte-level BPE with split digits)."""
    folder = defaults_root / "student"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model, loaded, info = _roundtrip(folder, tokenizer, tmp_path, "f16")
    assert info["pre_tokenizer"] == "smollm" and info["bytes"] < 110e6
    text = "In the beginning God created the heaven and the earth. 12 loaves, 345 fish."
    assert AutoTokenizer.from_pretrained(tmp_path / "out", gguf_file="m.gguf")(text).input_ids == \
        tokenizer(text).input_ids
    ids = tokenizer(text, return_tensors="pt").input_ids
    want, got = _logits(model, ids), _logits(loaded, ids)
    assert (got - want).abs().max() < 2e-2 * want.std() and (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.slow
def test_cli_exports_gguf_and_refuses_other_architectures(distilled_config, student_dir, tokenizer, tiny_dir,
                                                          tmp_path):
    from test_quantize import _cli
    run = _finished_run(tmp_path, distilled_config, student_dir, "llama")
    done = _cli("export", run.path, "--gguf", "--dtype", "f32")
    assert done.returncode == 0, done.stderr
    report = json.loads((run.path / GGUF_SUBDIR / "gguf.json").read_text())
    assert report["dtype"] == "f32" and report["line"] in done.stdout
    assert (run.path / GGUF_SUBDIR / report["file"]).exists()
    gpt2 = _finished_run(tmp_path, distilled_config, tiny.save_gpt2(tiny_dir / "cli-gpt2", tokenizer, layers=1,
                                                                    hidden=16, seed=0), "gpt2")
    done = _cli("export", gpt2.path, "--gguf")
    assert done.returncode == EXIT_CONFIG and "GPT2LMHeadModel (model_type 'gpt2')" in done.stderr
    assert not (gpt2.path / GGUF_SUBDIR).exists()
    assert "not allowed with argument" in _cli("export", gpt2.path, "--gguf", "--int8").stderr  # one at a time
