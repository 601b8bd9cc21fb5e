"""The training rows of on-policy distillation: a prompt, and where there is one, a reference completion.

Each row holds input_ids = prompt + reference, labels = -100 on the prompt and the reference's ids after
it, and prompt_len. A step that trains on the reference uses the row as it is (the soft-label loss on the
data's completions); a step that samples keeps only input_ids[:prompt_len] (workbench/engine/strategies/
on_policy.py).

- corpus: every training block of data.source (train.seq_len tokens) is cut into windows of
  prompt_tokens + max_new_tokens; each window's start is a prompt and the rest its reference. Task data
  (packing off) keeps each example's own prompt and completion.
- a prompt set (the built-in instructions, a file, a hub dataset, as hard-label reads them): each prompt
  in the tokenizer's chat template, with no reference.
"""
from __future__ import annotations

import datasets

from workbench.config.schema import CORPUS_PROMPTS, GenerationSpec, OnPolicySpec
from workbench.data.loading import IGNORE_INDEX, DataError, render_chat
from workbench.data.prompts import load_prompts


def corpus_rows(blocks: datasets.Dataset, spec: OnPolicySpec) -> datasets.Dataset:
    """Prompt + reference rows from the tokenized training data (input_ids and labels per row). A packed
    block is cut into windows; an example whose labels start after an unlabelled prompt (chat or
    prompt/completion data, packing off) keeps that prompt and its labelled completion (the first
    max_new_tokens of it), so no prompt text is trained on as a reference."""
    window = spec.prompt_tokens + spec.max_new_tokens
    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_len": []}

    def add(ids: list[int], prompt_len: int) -> None:
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append([IGNORE_INDEX] * prompt_len + ids[prompt_len:])
        rows["prompt_len"].append(prompt_len)

    for ids, labels in zip(blocks["input_ids"], blocks["labels"]):
        ids = list(ids)
        lead = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        if 0 < lead < len(ids):
            add(ids[:lead + spec.max_new_tokens], lead)
            continue
        # A block shorter than one window still gives one row while a reference token is left.
        for start in range(0, max(len(ids) - window, 0) + 1, window):
            if len(ids[start:start + window]) > spec.prompt_tokens:
                add(ids[start:start + window], spec.prompt_tokens)
    if not rows["input_ids"]:
        raise DataError("on_policy.prompt_tokens", f"{spec.prompt_tokens} leaves no reference token in a block of "
                                                   "train.seq_len tokens; use fewer prompt tokens or a longer "
                                                   "train.seq_len")
    return datasets.Dataset.from_dict(rows)


def prompt_set_rows(spec: OnPolicySpec, tokenizer, context: int | None, seq_len: int, max_file_mb: float
                    ) -> datasets.Dataset:
    """One row per prompt of a prompt set, rendered in the tokenizer's chat template (a plain transcript
    without one); refused when a prompt and max_new_tokens do not fit train.seq_len (what the memory
    estimate and public mode's cap count on) or the models' context."""
    source = GenerationSpec(prompts=spec.prompts, prompt_column=spec.prompt_column, split=spec.split,
                            max_prompts=spec.max_prompts)
    try:
        conversations = load_prompts(source, max_file_mb)
    except DataError as err:
        raise DataError(err.field.replace("generation.", "on_policy."), str(err).split(": ", 1)[1]) from None
    if not conversations:
        raise DataError("on_policy.prompts", f"{spec.prompts!r} holds no prompts")
    texts = [render_chat(tokenizer, messages, generation_prompt=True) for messages in conversations]
    # A chat template writes its own special tokens; a plain transcript gets the usual ones (bos).
    ids = tokenizer(texts, add_special_tokens=not tokenizer.chat_template, verbose=False)["input_ids"]
    for i, prompt in enumerate(ids):
        if not prompt:
            raise DataError("on_policy.prompts", f"prompt {i} is empty once tokenized")
        if context is not None and len(prompt) + spec.max_new_tokens > context:
            raise DataError("on_policy.prompts", f"prompt {i} has {len(prompt)} tokens: with on_policy."
                                                 f"max_new_tokens={spec.max_new_tokens} that is over the models' "
                                                 f"context of {context} tokens; shorten it or sample fewer tokens")
        if len(prompt) + spec.max_new_tokens > seq_len:
            raise DataError("on_policy.prompts", f"prompt {i} has {len(prompt)} tokens: with on_policy."
                                                 f"max_new_tokens={spec.max_new_tokens} that is over "
                                                 f"train.seq_len={seq_len}; shorten it, sample fewer tokens or "
                                                 "raise train.seq_len")
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(p) for p in ids],
                                       "labels": [[IGNORE_INDEX] * len(p) for p in ids],
                                       "prompt_len": [len(p) for p in ids]})


def on_policy_rows(spec: OnPolicySpec, blocks: datasets.Dataset, tokenizer, context: int | None, seq_len: int,
                   max_file_mb: float) -> datasets.Dataset:
    if spec.prompts.strip() == CORPUS_PROMPTS:
        return corpus_rows(blocks, spec)
    return prompt_set_rows(spec, tokenizer, context, seq_len, max_file_mb)
