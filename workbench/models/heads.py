"""A causal LM seen as a body and a linear head: the last hidden states the head reads, and whether the head is
a plain linear map (so a loss or a metric can take the hidden states and apply the head itself, a few
positions at a time)."""
from __future__ import annotations

import inspect

import torch


def unwrap(model):
    """The model inside DDP (.module), torch.compile (._orig_mod) and peft (get_base_model: LoRA's adapters stay
    in its layers) wrappers; forward still goes through the wrapper, which passes logits_to_keep and
    output_hidden_states on."""
    while True:
        if hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        elif hasattr(model, "module") or hasattr(model, "_orig_mod"):
            inner = model.module if hasattr(model, "module") else model._orig_mod
        else:
            return model
        if inner is model:
            return model
        model = inner


# Config fields of models whose logits are the head's output changed afterwards (soft-capped: Gemma 2; scaled:
# Cohere, Granite, Falcon-H1), with the value that leaves them unchanged.
LOGIT_CHANGES = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0,
                 "lm_head_multiplier": 1.0}


def fusable(model) -> bool:
    """Whether the model's logits are a plain torch Linear head (not a LoRA-adapted or quantized one) applied to
    its last hidden states and nothing more (no soft-capping or scaling), and its forward can skip the head
    (logits_to_keep)."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    forward = getattr(type(inner), "forward", None)
    text = config.get_text_config() if config is not None else None
    return (forward is not None and "logits_to_keep" in inspect.signature(forward).parameters
            and all(getattr(text, field, plain) in (plain, None) for field, plain in LOGIT_CHANGES.items())
            and type(inner.get_output_embeddings()) is torch.nn.Linear)


def last_hidden(model, input_ids, attention_mask):
    """(B, L-1, H) final hidden states (after the last norm: what the LM head reads) for positions
    0..L-2; logits only for the last position, which costs nothing."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1][:, :-1]
