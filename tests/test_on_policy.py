"""On-policy distillation (strategy on_policy): the loss against TRL's GKD, lmbda 0 against the soft-label
loss, the weighted loss fused or plain, resume after a crash, and processes that sample apart (the rows, the
sampler and the refusals: test_on_policy_inputs.py)."""
import ast
import dataclasses
import hashlib
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from workbench.config.schema import LossSpec
from workbench.data.loading import PadCollator
from workbench.engine.runner import run_training
from workbench.engine.strategies.on_policy import REFERENCE, STUDENT, is_on_policy_step
from workbench.engine.strategies.soft import SoftLabelStrategy
from workbench.store.rundir import RunDir

from on_policy_setup import (  # noqa: F401 (models and rows are fixtures)
    config_for, models, rows, sampled_batch, sampling_step, strategy_for)

ROOT = Path(__file__).resolve().parents[1]
# TRL's GKD loss is read from its wheel, pinned like the default pair: the reference is TRL's own code.
TRL_WHEEL = ("trl", "1.16.0", "c4726e139dd40e1a41661511c639c8a68416782b2e3e8c0befebd77bb7ba0396")



# ---------------------------------------------------------------- the loss

def _trl_generalized_jsd_loss(tmp_path_factory):
    """TRL's GKDTrainer.generalized_jsd_loss, its source taken from the pinned wheel (pip download)."""
    name, version, sha = TRL_WHEEL
    folder = Path.home() / ".cache" / "distill-workbench" / "reference"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{name}=={version}", "-d",
                        str(folder)], check=True, timeout=300)
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == sha
    source = zipfile.ZipFile(wheel).read("trl/experimental/gkd/gkd_trainer.py").decode()
    found = next(node for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.FunctionDef) and node.name == "generalized_jsd_loss")
    namespace = {"torch": torch, "F": F}
    exec(textwrap.dedent(ast.get_source_segment(source, found)), namespace)  # noqa: S102 - TRL's pinned code
    return namespace["generalized_jsd_loss"]


@pytest.mark.network
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("chunk", [0, 128])
def test_loss_on_the_students_samples_equals_trls_gkd_loss(rows, models, tmp_path_factory, beta, chunk):
    """Ours = T² · TRL's generalized_jsd_loss(temperature=T) on the same sampled batch, per completion token
    (TRL leaves T² out); with α > 0 the student's own samples still train on the divergence alone, × (1 − α)."""
    trl_loss = _trl_generalized_jsd_loss(tmp_path_factory)
    config, tokenizer, data, _ = rows
    teacher, student = models
    batch = sampled_batch(config, tokenizer, data, student, teacher)
    assert (batch["source"] == STUDENT).all()
    T, alpha = 2.0, 0.25
    config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, chunk_size=chunk),
                                 on_policy=dataclasses.replace(config.on_policy, beta=beta, loss_temperature=T,
                                                               alpha=alpha))
    ours = sampling_step(config, teacher, tokenizer).compute_loss(student, batch, None)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    reference = T ** 2 * trl_loss(s, t, labels, beta=beta, temperature=T, num_items_in_batch=(labels != -100).sum())
    assert ours["kd"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert ours["loss"].item() == pytest.approx((1 - alpha) * reference.item(), rel=1e-5)
    assert "ce" not in ours  # no reference completion on the student's own samples


@pytest.mark.parametrize("chunk", [0, 128])
def test_lmbda_0_is_the_soft_label_loss_on_the_data_completions(rows, models, chunk):
    config, tokenizer, data, _ = rows
    teacher, student = models
    config = dataclasses.replace(
        config, loss=dataclasses.replace(config.loss, chunk_size=chunk),
        on_policy=dataclasses.replace(config.on_policy, lmbda=0.0, beta=0.3, alpha=0.4, loss_temperature=1.5))
    strategy = strategy_for(config, teacher, tokenizer)
    strategy.begin_step(0)
    raw = PadCollator(tokenizer)([data[i] for i in range(4)])
    prepared = strategy.prepare_batch(student, raw)
    assert (prepared["source"] == REFERENCE).all() and torch.equal(prepared["input_ids"], raw["input_ids"])
    ours = strategy.compute_loss(student, prepared, None)
    soft = dataclasses.replace(config, strategy="soft_label", loss=LossSpec(
        divergence="jsd", beta=0.3, alpha=0.4, temperature=1.5, chunk_size=chunk))
    theirs = strategy_for(soft, teacher, tokenizer, SoftLabelStrategy).compute_loss(
        student, {k: raw[k] for k in ("input_ids", "attention_mask", "labels")}, None)
    for term in ("loss", "ce", "kd"):
        assert ours[term].item() == pytest.approx(theirs[term].item(), rel=1e-6)


def test_the_sampled_rkl_term_is_the_reverse_kl_at_t_1(rows, models):
    config, tokenizer, data, _ = rows
    teacher, student = models
    batch = sampled_batch(config, tokenizer, data, student, teacher)
    config = dataclasses.replace(config, on_policy=dataclasses.replace(config.on_policy, beta=0.0,
                                                                       loss_temperature=3.0))
    terms = sampling_step(config, teacher, tokenizer).compute_loss(student, batch, None)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
    per_token = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)  # KL(q ‖ p)
    assert terms["sampled_rkl"].item() == pytest.approx(per_token[labels != -100].mean().item(), rel=1e-5)


# ---------------------------------------------------------------- runs

@pytest.mark.slow
def test_a_run_logs_samples_timings_and_resumes_to_the_same_weights(
        teacher_dir, student_dir, corpus_files, tmp_path, crash_at_step):
    """lmbda 0.5: steps of both kinds. A crash after step 3 and a resume from checkpoint 2 end with the
    weights of the uninterrupted run: the same steps sample the same tokens."""
    settings = {"lmbda": 0.5}
    # A seed whose first 4 steps hold both kinds (the decision is a function of seed and step).
    seed = next(s for s in range(100) if len({is_on_policy_step(s, step, 0.5) for step in range(4)}) == 2)
    straight = config_for(teacher_dir, student_dir, corpus_files, tmp_path, "straight", settings, seed=seed)
    run_training(straight)
    run = RunDir(tmp_path / "straight")
    logs = [r for r in run.read_metrics() if "loss" in r]
    on = [is_on_policy_step(straight.train.seed, step, 0.5) for step in range(4)]
    for record, sampled in zip(logs, on):
        assert ("sampled_rkl" in record) == sampled and ("ce" in record) == (not sampled)
        assert record["on_policy_share"] == float(sampled)
        assert all(record[k] >= 0 for k in ("sample_s", "teacher_s", "update_s"))
        assert (record["sampled_tokens_per_s"] > 0) == sampled
    samples = run.read_samples()
    assert {s["step"] for s in samples} == {step + 1 for step, sampled in enumerate(on) if sampled}
    assert all(isinstance(s["completion"], str) and 0 < s["tokens"] <= 8 for s in samples)

    crashed = config_for(teacher_dir, student_dir, corpus_files, tmp_path, "crashed", settings, seed=seed)
    arm, disarm = crash_at_step
    arm(3)
    with pytest.raises(KeyboardInterrupt):
        run_training(crashed)
    disarm()
    run_training(crashed, RunDir(tmp_path / "crashed"), resume=True)
    resumed = RunDir(tmp_path / "crashed")
    assert [r["step"] for r in resumed.read_metrics() if "loss" in r] == [1, 2, 3, 4]
    assert resumed.read_samples() == samples  # the resumed steps sampled the same tokens
    a = AutoModelForCausalLM.from_pretrained(run.student).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed.student).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_sample_different_completions_and_agree_on_steps(
        teacher_dir, student_dir, corpus_files, tmp_path):
    """DDP on CPU (gloo), every step on-policy: each rank samples with its own seed; both take 2 steps."""
    from test_cli import free_port
    config = config_for(teacher_dir, student_dir, corpus_files, tmp_path, "ddp", {"lmbda": 1.0, "samples_logged": 4},
                        max_steps=2, batch_size=2)
    path = config.save(tmp_path / "ddp.yaml")
    script = tmp_path / "ranks.py"
    # Each rank writes what it sampled at step 0: the prompts it drew and its completions.
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from workbench.engine.strategies import on_policy
        from workbench.config.schema import DistillConfig
        from workbench.engine.runner import run_training
        original = on_policy.sample
        def recording(model, prompts, settings, seed):
            out = original(model, prompts, settings, seed)
            with open({str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.jsonl", "a") as fh:
                fh.write(json.dumps({{"seed": seed, "completions": out}}) + "\\n")
            return out
        on_policy.sample = recording
        run_training(DistillConfig.load({str(path)!r}))
    """))
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
                          "--dynamo_backend", "no", str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-8000:]
    ranks = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # one sampled micro-batch per step on each rank
    assert ranks[0][0]["seed"] != ranks[1][0]["seed"]
    assert ranks[0][0]["completions"] != ranks[1][0]["completions"]
    run = RunDir(tmp_path / "ddp")
    assert run.read_status()["state"] == "succeeded" and run.read_status()["step"] == 2


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_weighted_loss_and_its_gradient_fused_or_plain(rows, models, beta):
    """Offline: on the student's samples loss = (1 − α)·T²·JSD_β per completion token (losses.divergences,
    itself checked against TRL's formula), and the fused loss gives the plain loss's gradients."""
    from workbench.losses.divergences import generalized_jsd
    config, tokenizer, data, _ = rows
    teacher, student = models
    batch = sampled_batch(config, tokenizer, data, student, teacher)
    T, alpha = 1.5, 0.3
    grads = {}
    for chunk in (0, 128):
        spec = dataclasses.replace(config, loss=dataclasses.replace(config.loss, chunk_size=chunk),
                                   on_policy=dataclasses.replace(config.on_policy, beta=beta, alpha=alpha,
                                                                 loss_temperature=T))
        strategy = sampling_step(spec, teacher, tokenizer)
        student.zero_grad()
        terms = strategy.compute_loss(student, batch, None)
        terms["loss"].backward()
        grads[chunk] = [p.grad.clone() for p in student.parameters()]
        with torch.no_grad():
            s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        expected = T ** 2 * generalized_jsd(s, t, T, beta)[labels != -100].mean()
        assert terms["loss"].item() == pytest.approx((1 - alpha) * expected.item(), rel=1e-5)
    for plain, fused in zip(grads[0], grads[128]):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-6)
    student.zero_grad()
