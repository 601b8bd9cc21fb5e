"""The teacher's last hidden states over evaluation text, kept across runs (loss.reuse_teacher): the logits made
from them are the teacher's; a kept block is read, not recomputed; a damaged file is computed again; a full
store keeps nothing more; the end report of a repeated run reads them and gives the same numbers."""
import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench import cli
from workbench.engine.runner import run_training
from workbench.eval.report import evaluate_run
from workbench.models import kept_states
from workbench.models.kept_states import STATES_FOLDER, KeptStates
from workbench.store.rundir import RunDir


@pytest.fixture
def teacher(teacher_dir):
    return AutoModelForCausalLM.from_pretrained(teacher_dir).eval()


def _batch(rows=3, length=12, seed=0):
    ids = torch.randint(0, 40, (rows, length), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones_like(ids)


def _no_forward(*_args, **_kwargs):
    raise AssertionError("the teacher ran on a kept block")


def _logits(states, teacher, ids, mask):
    head = teacher.get_output_embeddings()
    return torch.nn.functional.linear(states.hidden(teacher, ids, mask), head.weight, head.bias)


def test_kept_states_give_the_teachers_logits_and_are_read_back(teacher, tmp_path, monkeypatch):
    ids, mask = _batch()
    states = KeptStates.open(tmp_path, "teacher-a", teacher)
    with torch.no_grad():
        live = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
    assert torch.allclose(_logits(states, teacher, ids, mask), live, atol=1e-5)
    assert len(list(states.folder.glob("*.npy"))) == 3

    monkeypatch.setattr(kept_states, "last_hidden", _no_forward)
    again = KeptStates.open(tmp_path, "teacher-a", teacher)
    assert again.folder == states.folder
    # the rows in another order and batch: each block is found by its tokens
    assert torch.allclose(_logits(again, teacher, ids[[2, 0]], mask[[2, 0]]), live[[2, 0]], atol=1e-5)
    # another teacher (or the same in another dtype) has states of its own
    assert KeptStates.open(tmp_path, "teacher-b", teacher).folder != states.folder
    assert KeptStates.open(tmp_path, "teacher-a", teacher.to(torch.bfloat16)).folder != states.folder


def test_a_damaged_block_is_computed_again_and_a_full_store_keeps_nothing_more(teacher, tmp_path):
    ids, mask = _batch(rows=2)
    states = KeptStates.open(tmp_path, "teacher-a", teacher)
    expected = states.hidden(teacher, ids, mask)
    damaged = sorted(states.folder.glob("*.npy"))[0]
    damaged.write_bytes(damaged.read_bytes()[:50])  # a file cut short (a disk that filled up, a copy stopped)
    assert torch.allclose(KeptStates.open(tmp_path, "teacher-a", teacher).hidden(teacher, ids, mask), expected)
    assert np.load(damaged).shape == expected.shape[1:]  # written whole again
    assert not list(states.folder.glob(".state-*"))  # nothing left half-written

    full = KeptStates(tmp_path / "full", torch.float32, limit_bytes=expected[0].numel() * 4)
    other_ids, other_mask = _batch(rows=3, seed=1)
    full.hidden(teacher, other_ids, other_mask)
    assert len(list(full.folder.glob("*.npy"))) == 1


@pytest.mark.slow
def test_a_repeated_run_and_its_report_read_the_teachers_kept_states(distilled_config, corpus_files, tmp_path,
                                                                      monkeypatch):
    config = copy.deepcopy(distilled_config)
    config.loss.reuse_teacher = True
    config.evaluation.ood_source = str(corpus_files[0])  # other blocks than the held-out ones
    config.train.max_steps, config.train.batch_size, config.train.save_steps = 3, 4, 3
    config.evaluation.at_end = False
    config.output.runs_dir = str(tmp_path / "runs")
    cache_dir = tmp_path / "cache"
    runs = {}
    for name in ("first", "second"):
        config.output.run_name = name
        runs[name] = run_training(copy.deepcopy(config), cache_dir=cache_dir)
        if name == "first":  # the held-out blocks' states are kept; the repeat never runs the teacher on them
            [folder] = (cache_dir / STATES_FOLDER).iterdir()
            kept = len(list(folder.glob("*.npy")))
            assert kept > 0
            reads = _read_only(monkeypatch)
    assert runs["second"]["eval_kd"] == pytest.approx(runs["first"]["eval_kd"], rel=1e-6)
    assert reads  # the held-out batches went through the kept states (then the run's memory had them)

    # The report: the live teacher's numbers, then (its out-of-domain states kept) the same from kept states.
    monkeypatch.undo()
    run = RunDir(tmp_path / "runs" / "first")
    live = evaluate_run(run, "final")["metrics"]
    evaluate_run(run, "final", states_root=cache_dir / STATES_FOLDER)
    assert len(list(folder.glob("*.npy"))) > kept  # the out-of-domain blocks joined the held-out ones
    reads = _read_only(monkeypatch)
    read = evaluate_run(run, "final", states_root=cache_dir / STATES_FOLDER)["metrics"]
    assert len(reads) >= 2  # held-out and out-of-domain batches alike
    for name in ("teacher_ce", "forward_kl", "top1_agreement", "ood_teacher_ce", "ood_forward_kl"):
        assert read[name] == pytest.approx(live[name], rel=1e-5), name
    # `python -m workbench evaluate` reads them from its cache folder too
    reads.clear()
    assert cli.main(["evaluate", str(run.path), "--student", "final", "--cache-dir", str(cache_dir)]) == 0
    assert len(reads) >= 2


def _read_only(monkeypatch) -> list:
    """From here on a teacher forward on a kept block fails the test, and each batch read from kept states is
    recorded (a path that bypassed them would run the teacher elsewhere and record nothing)."""
    monkeypatch.setattr(kept_states, "last_hidden", _no_forward)
    reads, hidden = [], KeptStates.hidden
    monkeypatch.setattr(KeptStates, "hidden", lambda self, *a: reads.append(a[1].shape) or hidden(self, *a))
    return reads


def test_the_apps_evaluations_read_the_kept_states_of_its_cache_folder(tmp_path, monkeypatch):
    """The Evaluate tab's queue hands the app's states folder to every evaluation, as a run's own report has it."""
    import time

    from workbench.eval import queue
    from workbench.ui.services import Services
    services = Services.start(tmp_path / "runs", cache_dir=tmp_path / "cache")
    services.close()
    assert services.evaluations.states_root == (tmp_path / "cache").resolve() / STATES_FOLDER

    seen = []
    monkeypatch.setattr(queue, "evaluate_run", lambda *args, **kwargs: seen.append(kwargs["states_root"]))
    (tmp_path / "runs" / "a-run").mkdir()
    evaluations = queue.EvaluationQueue(tmp_path / "runs", states_root=tmp_path / "states")
    assert "queued" in evaluations.request("a-run", "final")
    deadline = time.time() + 30
    while evaluations.state("a-run", "final") != "done" and time.time() < deadline:
        time.sleep(0.05)
    assert seen == [tmp_path / "states"]
