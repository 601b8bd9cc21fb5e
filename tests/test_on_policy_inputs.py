"""On-policy distillation's inputs: the prompt rows, the sampler (seeded, left-padded, cut at the end of a turn),
the step decision, and the settings refused before launch naming the field."""
import dataclasses
import json

import datasets
import pytest
import torch

from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.data.loading import DataError
from workbench.data.prompt_rows import corpus_rows, on_policy_rows
from workbench.engine.strategies.on_policy import completion_batch, is_on_policy_step, sampling_seed
from workbench.models.sampling import SamplingSettings, cut_at_eos, left_padded, sample

from on_policy_setup import config_for, models, rows  # noqa: F401 (fixtures)


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
