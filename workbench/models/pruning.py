"""Student from teacher by depth pruning: keep a subset of the teacher's decoder layers and copy their
weights, with the embeddings, final norm and LM head (DistilBERT's initialisation; Minitron's depth
pruning). Works for any causal LM whose decoder layers sit in one nn.ModuleList (Llama, Qwen,
Mistral, GPT-2, ...), found by its length rather than by architecture-specific names."""
from __future__ import annotations

import copy
import re

from torch import nn


def evenly_spaced(keep: int, total: int) -> list[int]:
    """`keep` layer indices spread over 0..total-1, first and last included (keep=6, total=30 ->
    0, 6, 12, 17, 23, 29)."""
    if not 1 <= keep <= total:
        raise ValueError(f"keep must be in [1, {total}] for a teacher with {total} layers, got {keep}")
    if keep == 1:
        return [0]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, module list) of the decoder layers: the ModuleList as long as the layer count."""
    total = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == total:
            return name, module
    raise ValueError(f"{type(model).__name__}: found no list of {total} decoder layers to prune")


def _check_layers(layers: list[int], total: int) -> list[int]:
    if not layers:
        raise ValueError("keep at least one layer")
    bad = [i for i in layers if not 0 <= i < total]
    if bad:
        raise ValueError(f"layer indices {bad} are out of range for a teacher with {total} layers (0..{total - 1})")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layer indices repeat: {layers}")
    return sorted(layers)


def student_from_teacher(teacher: nn.Module, keep: int | list[int]) -> nn.Module:
    """A new model of the teacher's class with only the kept layers; weights copied exactly."""
    total = teacher.config.get_text_config().num_hidden_layers
    layers = evenly_spaced(keep, total) if isinstance(keep, int) else _check_layers(list(keep), total)
    config = copy.deepcopy(teacher.config)
    text_config = config.get_text_config()
    text_config.num_hidden_layers = len(layers)
    if getattr(text_config, "layer_types", None):  # per-layer attention kinds (sliding/full) follow their layer
        text_config.layer_types = [text_config.layer_types[i] for i in layers]
    # Built for real, not on the meta device: non-persistent buffers (rotary inv_freq) must exist.
    student = type(teacher)(config).to(next(teacher.parameters()).dtype)
    name, _ = decoder_layers(teacher)
    layer_key = re.compile(rf"^{re.escape(name)}\.(\d+)\.(.+)$")
    state = {}
    for key, value in teacher.state_dict().items():
        match = layer_key.match(key)
        if match is None:
            state[key] = value
        elif int(match[1]) in layers:
            state[f"{name}.{layers.index(int(match[1]))}.{match[2]}"] = value
    student.load_state_dict(state, strict=True)
    student.config.pruned_from_layers = layers  # recorded in config.json: which teacher layers it kept
    return student.eval()  # like from_pretrained; Trainer switches to train mode itself
