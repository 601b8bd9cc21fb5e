import subprocess
import sys
import time

import pytest
import tiny
import torch

from workbench.config.schema import DistillConfig, LoraSpec, ModelSpec
from workbench.models.loading import (
    ModelLoadError,
    VocabMismatchError,
    apply_lora,
    check_vocab,
    count_parameters,
    load_student,
    load_teacher,
    load_tokenizer,
    logit_size,
    resolve_source,
)
from workbench.models.sizing import arch_info, estimate_memory


def test_local_folder_loads_through_from_pretrained(teacher_dir, student_dir):
    teacher = load_teacher(ModelSpec(name_or_path=str(teacher_dir)), train_bf16=False)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.dtype == torch.float32
    assert load_teacher(ModelSpec(name_or_path=str(teacher_dir)), train_bf16=True).dtype == torch.bfloat16
    student = load_student(ModelSpec(name_or_path=str(student_dir)))
    assert all(p.requires_grad for p in student.parameters()) and student.dtype == torch.float32
    assert load_tokenizer(ModelSpec(name_or_path=str(student_dir))).pad_token == "<pad>"


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="local folder .*nope does not exist"):
        resolve_source(ModelSpec(name_or_path=str(tmp_path / "nope")), "teacher")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(ModelSpec(name_or_path=str(tmp_path / "empty")), "student")


def test_hub_id_offline_fails_fast_with_a_fix():
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_teacher(ModelSpec(name_or_path="someorg/not-cached-model"), train_bf16=False)
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "someorg/not-cached-model" in msg and "HF_HUB_OFFLINE" in msg and "local folder" in msg


@pytest.mark.slow
def test_hub_id_without_network_fails_fast_even_when_offline_mode_is_off():
    """No HF_HUB_OFFLINE, no network: transformers alone retries for ~27 s here; we must answer in < 5 s."""
    code = ("import time; from workbench.models.loading import load_tokenizer, ModelLoadError; "
            "from workbench.config.schema import ModelSpec; t=time.perf_counter()\n"
            "try: load_tokenizer(ModelSpec(name_or_path='someorg/not-cached'))\n"
            "except ModelLoadError as e: print(round(time.perf_counter()-t, 2), e)")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://unreachable.invalid",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HOME": "/tmp"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    seconds, _, message = out.stdout.partition(" ")
    assert float(seconds) < 5, out.stdout + out.stderr
    assert "cannot be reached" in message


def test_vocab_check_same_tokenizer_and_padding_rows(tokenizer):
    assert check_vocab(tokenizer, tokenizer, 320, 320).shared_size == 320
    # Qwen2.5-3B vs 72B: one tokenizer, 151,936 vs 152,064 logits. Here: 320 tokens, 320 vs 384 logits.
    padded = check_vocab(tokenizer, tokenizer, 384, 320)
    assert padded.shared_size == 320 and "padding rows" in padded.note


def test_vocab_check_prefix_vocabulary_is_shared_part(tmp_path, tokenizer):
    """A BPE with fewer merges from the same training is a prefix of the larger one: same ids below 300."""
    smaller = tiny.build_tokenizer(tmp_path / "smaller", vocab_size=300)
    assert check_vocab(tokenizer, smaller, 320, 300).shared_size == 300


def test_vocab_check_real_mismatch_suggests_hard_label(tokenizer):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    words = {tok: i for i, tok in enumerate(["</s>", "<pad>", "the", "cat"])}  # </s> at 0, not 2
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="<pad>")))
    with pytest.raises(VocabMismatchError, match="hard-label") as err:
        check_vocab(tokenizer, other, 320, 4)
    # The example is the disagreeing token with the lowest teacher id: '<pad>' is 0 vs 1.
    assert "'<pad>' is 0 for the teacher but 1 for the student" in str(err.value)
    with pytest.raises(VocabMismatchError, match="only 100 logits"):
        check_vocab(tokenizer, tokenizer, 320, 100)


def test_lora_trains_only_adapters(student_dir):
    student = load_student(ModelSpec(name_or_path=str(student_dir)))
    total_before, _ = count_parameters(student)
    wrapped = apply_lora(student, LoraSpec(enabled=True, r=4, target_modules=["q_proj", "v_proj"]))
    total, trainable = count_parameters(wrapped)
    assert 0 < trainable < total_before * 0.2 and total > total_before
    with pytest.raises(ModelLoadError, match="target_modules"):
        apply_lora(load_student(ModelSpec(name_or_path=str(student_dir))),
                   LoraSpec(enabled=True, target_modules=["no_such_module"]))


def test_sizing_counts_without_loading_and_estimates_memory(teacher_dir, student_dir):
    info = arch_info(ModelSpec(name_or_path=str(student_dir)), "student")
    loaded = load_student(ModelSpec(name_or_path=str(student_dir)))
    assert info.params == count_parameters(loaded)[0] and info.layers == 2 and info.vocab == logit_size(loaded)
    cfg = DistillConfig.from_dict({"teacher": {"name_or_path": str(teacher_dir)},
                                   "student": {"name_or_path": str(student_dir)}, "data": {"source": "x.txt"},
                                   "train": {"batch_size": 2, "seq_len": 64}})
    t_info = arch_info(cfg.teacher, "teacher")
    est = estimate_memory(cfg, t_info, info, bf16=False)
    assert est.student_weights == info.params * 4 and est.optimizer_and_grads == info.params * 12
    bigger = estimate_memory(cfg.replace(train=cfg.train.__class__(batch_size=4, seq_len=64)), t_info, info, False)
    assert bigger.activations == 2 * est.activations and bigger.total > est.total
    assert est.as_gib()["total"] >= 0
