"""int8 export of a run's student: dynamic quantisation stays close to fp32, round-trips through its
files, shrinks the weights, and the CLI measures it on the run's held-out text."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny
from workbench.models.quantize import INT8_WEIGHTS, load_int8, quantize_int8, save_int8
from workbench.store.rundir import EXIT_CONFIG, STATUS

ROOT = Path(__file__).resolve().parents[1]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def tied_dir(tiny_dir, tokenizer):
    return tiny.save_llama(tiny_dir / "tied-student", tokenizer, layers=2, hidden=32, seed=3, tie=True)


@pytest.mark.parametrize("which", ["student_dir", "tied_dir", "teacher_dir"])
def test_int8_logits_stay_close_to_fp32(which, request, tokenizer):
    """int8 per-tensor weights carry ~0.4% relative error each (half a step of 1/127 of the largest
    weight), and activations are quantised too; through 2-4 layers that moves logits by a few percent
    of their spread (the trained teacher measures ~2% RMS, with single outliers near 0.7 std). The bound:
    RMS deviation under 10% of the logits' std, and the next-token choice agrees on at least 90% of
    positions."""
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(which), dtype=torch.float32).eval()
    ids = tokenizer(["the cat sees the red ball . a dog likes an apple ."] * 2, return_tensors="pt").input_ids
    fp32, int8 = _logits(model, ids), _logits(quantize_int8(model), ids)
    assert torch.isfinite(int8).all()
    assert (int8 - fp32).pow(2).mean().sqrt() < 0.1 * fp32.std()
    assert (int8.argmax(-1) == fp32.argmax(-1)).float().mean() >= 0.9
    assert not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in quantize_int8(model).modules())
    assert type(model.lm_head) is torch.nn.Linear  # the fp32 model is left as it was


def test_saved_int8_loads_back_identical_and_smaller(tied_dir, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tied_dir, dtype=torch.float32).eval()
    int8 = quantize_int8(model)
    weights = save_int8(int8, tokenizer, tmp_path / "export")
    loaded = load_int8(tmp_path / "export")
    ids = tokenizer(["a small bird reads a letter ."], return_tensors="pt").input_ids
    assert torch.equal(_logits(loaded, ids), _logits(int8, ids))
    assert weights.name == INT8_WEIGHTS and (tmp_path / "export" / "tokenizer.json").exists()
    # Tied model: the fp32 file holds the embedding once; int8 adds a head in int8 and shrinks the layers.
    assert weights.stat().st_size < (tied_dir / "model.safetensors").stat().st_size


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
    assert "## int8 export" in card and "int8 (dynamic quantisation of linear layers)" in card
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
