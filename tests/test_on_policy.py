"""On-policy distillation (strategy on_policy): the loss against TRL's GKD, lmbda 0 against the soft-label
loss, the sampler, resume after a crash, processes that sample apart, and the refusals before launch."""
import ast
import dataclasses
import hashlib
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig, LossSpec
from workbench.data.loading import DataError, PadCollator, tokenize_datasets
from workbench.data.prompt_rows import corpus_rows, on_policy_rows
from workbench.engine.runner import run_training
from workbench.engine.strategies.on_policy import (
    REFERENCE,
    STUDENT,
    OnPolicyStrategy,
    completion_batch,
    is_on_policy_step,
    sampling_seed,
)
from workbench.engine.strategies.soft import SoftLabelStrategy
from workbench.models.loading import load_tokenizer
from workbench.models.sampling import SamplingSettings, cut_at_eos, left_padded, sample
from workbench.store.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
# TRL's GKD loss is read from its wheel, pinned like the default pair: the reference is TRL's own code.
TRL_WHEEL = ("trl", "1.16.0", "c4726e139dd40e1a41661511c639c8a68416782b2e3e8c0befebd77bb7ba0396")


def config_for(teacher_dir, student_dir, corpus_files, runs, name="op", on_policy=None, **train):
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
        "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1]), "max_examples": 64,
                 "max_eval_examples": 8},
        "strategy": "on_policy", "evaluation": {"at_end": False},
        "on_policy": {"prompt_tokens": 8, "max_new_tokens": 8, **(on_policy or {})},
        "train": {"max_steps": 4, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "logging_steps": 1, "save_steps": 2,
                  "lr_scheduler": "linear", **train},
        "output": {"runs_dir": str(runs), "run_name": name}})


@pytest.fixture(scope="module")
def models(teacher_dir, student_dir):
    return (AutoModelForCausalLM.from_pretrained(teacher_dir).eval(),
            AutoModelForCausalLM.from_pretrained(student_dir))


@pytest.fixture(scope="module")
def rows(teacher_dir, student_dir, corpus_files, tmp_path_factory):
    config = config_for(teacher_dir, student_dir, corpus_files, tmp_path_factory.mktemp("runs"))
    tokenizer = load_tokenizer(config.student)
    blocks, _ = tokenize_datasets(config.data, tokenizer, config.train.seq_len, config.train.seed)
    return config, tokenizer, corpus_rows(blocks, config.on_policy), len(blocks)


def strategy_for(config, teacher, tokenizer, cls=OnPolicyStrategy):
    strategy = cls(config, teacher, len(tokenizer))
    strategy.configure(tokenizer, len(tokenizer))
    return strategy


def sampling_step(config, teacher, tokenizer):
    """The strategy as the trainer leaves it at the start of an on-policy step (lmbda 1: every step)."""
    config = dataclasses.replace(config, on_policy=dataclasses.replace(config.on_policy, lmbda=1.0))
    strategy = strategy_for(config, teacher, tokenizer)
    strategy.begin_step(0)
    return strategy


def sampled_batch(config, tokenizer, rows, student, teacher):
    """A step's micro-batch as the trainer prepares it on an on-policy step: prompts + the student's samples."""
    batch = PadCollator(tokenizer)([rows[i] for i in range(4)])
    return sampling_step(config, teacher, tokenizer).prepare_batch(student, batch)


# ---------------------------------------------------------------- the rows and the sampler

def test_corpus_rows_are_prompt_and_reference_windows(rows):
    config, _, data, blocks = rows
    row = data[0]
    assert row["prompt_len"] == 8 and len(row["input_ids"]) == 16
    assert row["labels"][:8] == [-100] * 8 and row["labels"][8:] == row["input_ids"][8:]
    assert len(data) == blocks * (32 // 16)  # each 32-token block gives two windows of 8 + 8


def test_task_examples_keep_their_own_prompt_and_completion():
    """Unpacked chat or prompt/completion rows: the unlabelled prompt is the prompt, never a reference."""
    spec = DistillConfig().on_policy
    examples = datasets.Dataset.from_dict({"input_ids": [list(range(10, 60))], "labels": [[-100] * 40 + list(range(50, 60))]})
    [row] = corpus_rows(examples, spec)
    assert row["prompt_len"] == 40 and row["input_ids"] == list(range(10, 60))
    assert row["labels"] == [-100] * 40 + list(range(50, 60))


def test_left_padding_and_eos_cut():
    ids, mask = left_padded([[5, 6, 7], [9]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert cut_at_eos([4, 2, 8, 2], (2,)) == [4, 2] and cut_at_eos([4, 8], (2,)) == [4, 8]


def test_sampling_is_seeded_keeps_the_mode_and_the_global_rng(rows, models):
    _, tokenizer, data, _ = rows
    _, student = models
    student.train()
    settings = SamplingSettings(1.0, 1.0, 8, tokenizer.pad_token_id, (tokenizer.eos_token_id,), 50)
    prompts = [data[i]["input_ids"][:8] for i in range(4)]
    before = torch.get_rng_state()
    first, again = sample(student, prompts, settings, seed=3), sample(student, prompts, settings, seed=3)
    assert first == again and first != sample(student, prompts, settings, seed=4)
    assert torch.equal(torch.get_rng_state(), before)  # the run's own RNG (dropout, data order) is untouched
    assert student.training  # sampled in eval mode, given back in train mode
    assert all(t < 50 for completion in first for t in completion)  # only ids both models have
    greedy = dataclasses.replace(settings, temperature=0.0)
    assert sample(student, prompts, greedy, seed=1) == sample(student, prompts, greedy, seed=2)


def test_the_checkpoints_own_generation_settings_stay_out_and_its_end_of_turn_ends(rows, models):
    """Sampling at T and top-p means exactly that: a checkpoint's repetition penalty or top-k (which
    generate() would otherwise fill in) do not apply; its own end token ends a completion too."""
    _, tokenizer, data, _ = rows
    _, student = models
    settings = SamplingSettings(1.0, 1.0, 8, tokenizer.pad_token_id, (tokenizer.eos_token_id,), None)
    prompts = [data[i]["input_ids"][:8] for i in range(4)]
    plain = sample(student, prompts, settings, seed=5)
    saved = student.generation_config
    try:
        student.generation_config = saved.__class__(**{**saved.to_dict(), "repetition_penalty": 50.0, "top_k": 1,
                                                        "no_repeat_ngram_size": 1})
        assert sample(student, prompts, settings, seed=5) == plain
        ended = plain[0][0]  # the first sampled token, declared an end of turn by the checkpoint
        student.generation_config.eos_token_id = [tokenizer.eos_token_id, ended]
        assert sample(student, prompts, settings, seed=5)[0] == [ended]
    finally:
        student.generation_config = saved


def test_the_step_decision_and_seeds():
    decisions = [is_on_policy_step(42, step, 0.3) for step in range(2000)]
    assert 0.25 < sum(decisions) / len(decisions) < 0.35
    assert decisions == [is_on_policy_step(42, step, 0.3) for step in range(2000)]  # same on resume, every rank
    assert not any(is_on_policy_step(42, s, 0.0) for s in range(100)) and all(
        is_on_policy_step(42, s, 1.0) for s in range(100))
    assert sampling_seed(42, 7, 0, 0) != sampling_seed(42, 7, 0, 1) != sampling_seed(42, 7, 1, 0)


def test_completion_batch_labels_only_the_completion():
    batch = completion_batch([[5, 6], [7]], [[8, 2], []], pad_id=0, device=torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[5, 6, 8, 2], [7, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 8, 2], [-100, -100, -100, -100]]


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


# ---------------------------------------------------------------- refusals

def test_bad_settings_are_refused_naming_the_field(teacher_dir, student_dir, corpus_files, tmp_path):
    def problems(**on_policy):
        with pytest.raises(ConfigError) as err:
            config_for(teacher_dir, student_dir, corpus_files, tmp_path, on_policy=on_policy)
        return {name for name, _ in err.value.problems}

    assert problems(max_new_tokens=0) == {"on_policy.max_new_tokens"}
    assert problems(prompts="  ") == {"on_policy.prompts"}
    assert problems(prompts="project:instructions", lmbda=0.5) == {"on_policy.lmbda"}
    assert problems(alpha=1.0) == {"on_policy.alpha"}
    config_for(teacher_dir, student_dir, corpus_files, tmp_path, on_policy={"prompts": "project:instructions",
                                                                            "lmbda": 1.0})
    config_for(teacher_dir, student_dir, corpus_files, tmp_path, on_policy={"prompts": "project:instructions",
                                                                            "lmbda": 0.5, "seq_kd": True})


def test_prompt_sets_too_long_or_empty_are_refused(rows, tmp_path):
    config, tokenizer, data, _ = rows
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "the cat sees the red ball. " * 200}) + "\n")
    spec = dataclasses.replace(config.on_policy, prompts=str(long), lmbda=1.0)
    with pytest.raises(DataError) as err:
        on_policy_rows(spec, data, tokenizer, context=512, seq_len=10_000, max_file_mb=10)
    assert err.value.field == "on_policy.prompts" and "context of 512" in str(err.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "no prompt column"}) + "\n")
    with pytest.raises(DataError) as err:
        on_policy_rows(dataclasses.replace(spec, prompts=str(empty)), data, tokenizer, context=512, seq_len=512,
                       max_file_mb=10)
    assert err.value.field == "on_policy.prompt_column"
    with pytest.raises(DataError) as err:  # fits the context, not train.seq_len (what memory is planned for)
        on_policy_rows(spec, data, tokenizer, context=None, seq_len=64, max_file_mb=10)
    assert err.value.field == "on_policy.prompts" and "train.seq_len=64" in str(err.value)
    built = on_policy_rows(dataclasses.replace(spec, prompts="project:instructions", max_prompts=5), data, tokenizer,
                           context=512, seq_len=512, max_file_mb=10)
    assert len(built) == 5 and all(label == -100 for row in built["labels"] for label in row)
    assert tokenizer.decode(built[0]["input_ids"]).endswith("<|im_start|>assistant\n")  # the chat template's turn


def test_preflight_refuses_what_cannot_fit_and_another_tokenizer(teacher_dir, student_dir, corpus_files, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tiny import corpus, save_llama
    from workbench.engine.preflight import preflight

    def refused(config):
        return {name for name, _ in preflight(config).problems}

    def with_on_policy(**values):
        return config_for(teacher_dir, student_dir, corpus_files, tmp_path, on_policy=values)

    ready = preflight(with_on_policy())
    assert ready.ok and any("on-policy" in note and "reverse KL" in note for note in ready.notes)
    assert refused(with_on_policy(max_new_tokens=600)) == {"on_policy.max_new_tokens"}  # context 512
    assert refused(with_on_policy(prompt_tokens=32)) == {"on_policy.prompt_tokens"}  # = train.seq_len
    assert refused(with_on_policy(prompt_tokens=8, max_new_tokens=510)) == {"on_policy.prompt_tokens"}
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "the cat sees the red ball. " * 200}) + "\n")
    assert refused(with_on_policy(prompts=str(long), lmbda=1.0)) == {"on_policy.prompts"}
    assert refused(with_on_policy(prompts="project:typo", lmbda=1.0)) == {"on_policy.prompts"}
    listed = preflight(config_for(teacher_dir, student_dir, corpus_files, tmp_path, seq_len=128, on_policy={
        "prompts": "project:instructions", "lmbda": 1.0, "max_prompts": 7}))  # ~47-token chat prompts
    assert listed.ok and any("7 prompts" in note for note in listed.notes)
    # A word-level tokenizer: the same text, other tokens and ids than the teacher's byte-level BPE.
    words = ["<pad>", "<s>", "</s>", *sorted(set(" ".join(corpus(200)).replace(".", " .").split()))]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>")
    other = save_llama(tmp_path / "other", tokenizer, layers=2, hidden=32, seed=3)
    assert refused(config_for(teacher_dir, other, corpus_files, tmp_path)) == {"student.name_or_path"}


def test_a_sharding_accelerate_config_is_refused_for_on_policy(teacher_dir, student_dir, corpus_files, tmp_path):
    from jobs.spec import JobSpec
    config = config_for(teacher_dir, student_dir, corpus_files, tmp_path)
    for kind, refused in (("FSDP", True), ("DEEPSPEED", True), ("MULTI_GPU", False)):
        path = tmp_path / f"{kind}.yaml"
        path.write_text(f"distributed_type: {kind}\nnum_processes: 2\n")
        spec = JobSpec(config, str(tmp_path / "job"), num_processes=2, accelerate_config=str(path))
        if refused:
            with pytest.raises(ConfigError) as err:
                spec.validate()
            assert err.value.field == "accelerate_config" and kind in str(err.value)
        else:
            spec.validate()
    soft = dataclasses.replace(config, strategy="soft_label")
    JobSpec(soft, str(tmp_path / "job"), num_processes=2, accelerate_config=str(tmp_path / "FSDP.yaml")).validate()


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
