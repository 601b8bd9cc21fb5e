"""What the on-policy tests share: a tiny on-policy config, the tiny teacher and student, the corpus's prompt
rows, and the strategy as the trainer leaves it at the start of a sampling step."""
import dataclasses

import pytest
from transformers import AutoModelForCausalLM

from workbench.config.schema import DistillConfig
from workbench.data.loading import PadCollator, tokenize_datasets
from workbench.data.prompt_rows import corpus_rows
from workbench.engine.strategies.on_policy import OnPolicyStrategy
from workbench.models.loading import load_tokenizer


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
