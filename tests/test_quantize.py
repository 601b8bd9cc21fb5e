"""int8 export of a run's student: dynamic quantisation stays close to fp32, round-trips through its
files, shrinks the weights (a tied embedding stored once, in int8), and the CLI and the Evaluate tab's
Export buttons measure it on the run's held-out text."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tiny
from workbench.models.quantize import INT8_WEIGHTS, load_int8, quantize_int8, save_int8
from workbench.store.rundir import EXIT_CONFIG, STATUS
from workbench.ui import export_panel
from workbench.ui.services import Services

ROOT = Path(__file__).resolve().parents[1]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def tied_dir(tiny_dir, tokenizer):
    return tiny.save_llama(tiny_dir / "tied-student", tokenizer, layers=2, hidden=32, seed=3, tie=True)


@pytest.mark.parametrize("which", ["student_dir", "tied_dir", "teacher_dir"])
def test_int8_logits_stay_close_to_fp32(which, request, tokenizer):
    """int8 weights carry ~0.4% relative error each (half a step of 1/127 of a row's largest weight), and
    activations are quantised too; through 2-4 layers that moves logits by a few percent of their spread (the
    trained teacher measures ~2% RMS, with single outliers near 0.7 std). The bound: RMS deviation under 10%
    of the logits' std; wherever fp32's top choice leads the runner-up by more than 0.2 std, int8 picks it
    too (an untrained model's near-ties may flip), and for the trained teacher on 90% of all positions."""
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(which), dtype=torch.float32).eval()
    ids = tokenizer(["the cat sees the red ball . a dog likes an apple ."] * 2, return_tensors="pt").input_ids
    fp32, int8 = _logits(model, ids), _logits(quantize_int8(model), ids)
    assert torch.isfinite(int8).all()
    assert (int8 - fp32).pow(2).mean().sqrt() < 0.1 * fp32.std()
    agree, top2 = int8.argmax(-1) == fp32.argmax(-1), fp32.topk(2, dim=-1).values
    assert agree[top2[..., 0] - top2[..., 1] > 0.2 * fp32.std()].all()
    if which == "teacher_dir":
        assert agree.float().mean() >= 0.9
    int8_model = quantize_int8(model)
    fp32_left = {name for name, m in int8_model.named_modules() if type(m) is torch.nn.Linear}
    down = {f"model.layers.{i}.mlp.down_proj" for i in range(model.config.num_hidden_layers)}
    assert type(int8_model.get_input_embeddings()) is torch.ao.nn.quantized.Embedding
    if model.config.tie_word_embeddings:
        # Besides the down projections, the fp32 Linear left is the tied head: the int8 embedding read back.
        assert fp32_left == down | {"lm_head"}
        assert torch.equal(int8_model.lm_head.weight, int8_model.get_input_embeddings().weight().dequantize())
    else:
        assert fp32_left == down
    assert type(model.lm_head) is torch.nn.Linear  # the fp32 model is left as it was


def test_saved_int8_loads_back_identical_and_smaller(tied_dir, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tied_dir, dtype=torch.float32).eval()
    int8 = quantize_int8(model)
    weights = save_int8(int8, tokenizer, tmp_path / "export")
    loaded = load_int8(tmp_path / "export")
    ids = tokenizer(["a small bird reads a letter ."], return_tensors="pt").input_ids
    assert torch.equal(_logits(loaded, ids), _logits(int8, ids))
    assert weights.name == INT8_WEIGHTS and (tmp_path / "export" / "tokenizer.json").exists()
    # Tied model: the file holds the embedding once, in int8, and no head (derived from it on load).
    assert "lm_head.weight" not in torch.load(weights, weights_only=True)
    # A 30k-parameter model: per-row scales, pickle framing and the fp32 down projections weigh in; the
    # default student's test shows 3x.
    assert weights.stat().st_size < 0.7 * (tied_dir / "model.safetensors").stat().st_size


def _finished_run(runs: Path, config, student_dir: Path, name: str, with_student=True) -> Path:
    """A run folder as training leaves it (config.json, status.json, student/), without training."""
    run = runs / name
    run.mkdir(parents=True)
    config.save(run / "config.json")
    (run / STATUS).write_text(json.dumps({"state": "succeeded", "step": config.train.max_steps}))
    if with_student:
        shutil.copytree(student_dir, run / "student")
        (run / "student" / "README.md").write_text("# distilled\n\nA student distilled with Distill Workbench.\n")
    return run


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "workbench", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_export_measures_and_writes_the_card(distilled_config, teacher_dir, tmp_path):
    # The trained 4-layer teacher stands in for a finished student: its perplexity is meaningful.
    run = _finished_run(tmp_path, distilled_config, teacher_dir, "finished")
    done = _cli("export", run, "--int8")
    assert done.returncode == 0, done.stderr
    out = run / "student-int8"
    report = json.loads((out / "quantization.json").read_text())
    for key in ("fp32_perplexity", "int8_perplexity", "fp32_forward_tokens_per_s", "int8_forward_tokens_per_s",
                "size_ratio", "speedup"):
        assert math.isfinite(report[key]) and report[key] > 0, key
    assert report["int8_bytes"] < report["fp32_bytes"] and report["heldout_blocks"] <= 16
    assert abs(report["int8_perplexity"] / report["fp32_perplexity"] - 1) < 0.1
    card = (out / "README.md").read_text()
    assert "## int8 export" in card and "int8 (embedding and most linear layers)" in card
    assert card.startswith("# distilled") and report["line"] in done.stdout
    assert torch.isfinite(_logits(load_int8(out), torch.tensor([[1, 5, 9, 12]]))).all()


@pytest.mark.slow
def test_cli_export_of_a_run_without_a_student_says_so(distilled_config, student_dir, tmp_path):
    run = _finished_run(tmp_path, distilled_config, student_dir, "unfinished", with_student=False)
    done = _cli("export", run, "--int8", "--out", tmp_path / "x")
    assert done.returncode == EXIT_CONFIG
    assert "unfinished" in done.stderr and "no final student" in done.stderr and not (tmp_path / "x").exists()
    done = _cli("export", tmp_path / "nowhere", "--int8")
    assert done.returncode == EXIT_CONFIG and "not a run directory" in done.stderr


def _progress_log():
    seen = []

    def progress(done, desc=""):
        seen.append((done, desc))
    return progress, seen


def test_export_buttons_export_measure_and_show_the_numbers(distilled_config, teacher_dir, tmp_path):
    with Services.start(tmp_path / "runs") as services:
        _finished_run(services.runs_dir, distilled_config, teacher_dir, "finished")
        progress, seen = _progress_log()
        status, listing, table = export_panel.run_export(services, "finished", "int8", None, progress)
        assert "int8 (embedding and most linear layers)" in status and "smaller on disk" in status
        assert [done for done, _ in seen] == sorted(done for done, _ in seen) and seen[-1][0] == 1.0
        assert table["model"].tolist() == ["full precision", "int8"]
        fp32, int8 = table.to_dict("records")
        assert 0 < int8["disk MB"] < fp32["disk MB"] and int8["forward tok/s"] > 0
        assert abs(int8["perplexity"] / fp32["perplexity"] - 1) < 0.1
        assert "`student-int8/`" in listing and "`student/`" in listing
        # The run's own model card lists the export with its numbers.
        assert "## Exports\n\n- `student-int8/`: int8" in (services.runs_dir / "finished/student/README.md").read_text()
        assert export_panel.export_view(services, "finished")[0] == listing


def test_export_buttons_refuse_what_cannot_be_exported(distilled_config, student_dir, tmp_path):
    with Services.start(tmp_path / "runs") as services:
        _finished_run(services.runs_dir, distilled_config, student_dir, "unfinished", with_student=False)
        progress, _ = _progress_log()
        assert "no final student" in export_panel.run_export(services, "unfinished", "gguf", None, progress)[0]
        assert "must be one of int8, gguf" in export_panel.run_export(services, "unfinished", "onnx", None,
                                                                      progress)[0]
        assert "no run" in export_panel.run_export(services, "../x", "int8", None, progress)[0]
        assert export_panel.export_view(services, "unfinished") == (export_panel.NO_EXPORTS, None)
        assert not (services.runs_dir / "unfinished" / "student-int8").exists()


@pytest.mark.slow
def test_the_default_students_int8_file_holds_the_tied_embedding_once(defaults_root, tmp_path):
    """The real default student: its tied 49152 x 576 embedding is 57% of its 49.6M parameters, so int8 only
    pays off when the embedding is int8 too and stored once (measured: 198 MB fp32 -> 66.4 MB), and the head
    read back from it gives the logits the in-memory int8 model gives."""
    model = AutoModelForCausalLM.from_pretrained(defaults_root / "student", dtype=torch.float32).eval()
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())  # tied: the embedding counted once
    int8 = quantize_int8(model)
    weights = save_int8(int8, None, tmp_path / "int8")
    assert weights.stat().st_size < 0.36 * fp32_bytes
    ids = AutoTokenizer.from_pretrained(defaults_root / "student")("In the beginning God created the heaven and "
                                                                   "the earth.", return_tensors="pt").input_ids
    assert torch.equal(_logits(load_int8(tmp_path / "int8"), ids), _logits(int8, ids))
