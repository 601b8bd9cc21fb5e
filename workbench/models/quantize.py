"""An int8 student: PyTorch dynamic quantisation of every nn.Linear (weights int8, activations quantised on
the fly per batch), saved as a state dict beside its config and tokenizer, and loaded back the same way.

torch.ao.quantization.quantize_dynamic still works in torch 2.13 but warns that it is deprecated in
favour of torchao; it is used here because it needs nothing beyond torch. Quantised modules run on the
CPU only. A tied LM head becomes its own int8 copy: the input embedding stays fp32 (it is not a Linear),
so the export holds the embedding once in fp32 and once, as the head, in int8.
safetensors cannot hold packed int8 params, so the weights go through torch.save; torch.load reads
them back with weights_only=True (the packed params are plain tensors), so no pickled code is run."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

INT8_WEIGHTS = "model_int8.pt"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` (fp32, on the CPU) with every nn.Linear dynamically quantised to int8."""
    with warnings.catch_warnings():
        # The torch.ao deprecation notices, repeated per module; the API works as documented.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model.float().cpu().eval(), {torch.nn.Linear},
                                                      dtype=torch.qint8, inplace=False)


def save_int8(model: torch.nn.Module, tokenizer, folder: Path) -> Path:
    """Write a quantised model's weights (INT8_WEIGHTS), config and tokenizer into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    path = folder / INT8_WEIGHTS
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return path


def load_int8(folder: Path) -> torch.nn.Module:
    """The int8 model saved by save_int8: the fp32 architecture rebuilt from config.json (never the
    folder's own code), quantised the same way, then given the saved int8 weights."""
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    quantised = quantize_int8(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation inside torch.load
        state = torch.load(folder / INT8_WEIGHTS, map_location="cpu", weights_only=True)
    quantised.load_state_dict(state)
    return quantised.eval().requires_grad_(False)
