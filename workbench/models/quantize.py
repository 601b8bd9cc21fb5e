"""An int8 student: PyTorch dynamic quantisation of its linear layers (weights int8 per output row,
activations quantised on the fly per batch) and of its input embedding (int8 per row, weight-only), saved as
a state dict beside its config and tokenizer, and loaded back the same way.

Two layers are not quantised on their own:
- A tied LM head is rebuilt in fp32 from the int8 embedding, so the file holds the embedding once, in int8.
  On the default student (SmolLM2 pruned to 6 layers, a 49k x 576 tied embedding = 57% of its weights) that
  is what makes int8 small; quantising only the linear layers gave 198 -> 163 MB (the embedding stayed fp32,
  the head became a second, int8 copy) and +16% held-out perplexity, mostly from the head.
- The MLP output projections (down_proj) stay fp32: their inputs carry the outlier activations that per-batch
  int8 activation quantisation cannot hold (LLM.int8()). On SmolLM2-135M (30 layers) quantising them took
  held-out perplexity 18.1 -> 71.8; keeping them fp32, 18.1 -> 21.4. On the 40-step default student:
  +2.9% with them in int8 (50.5 MB), +0.5% without (66.4 MB, from 198 MB fp32).

torch.ao.quantization.quantize_dynamic still works in torch 2.13 but warns that it is deprecated in favour
of torchao; it is used because it needs nothing beyond torch. Quantised modules run on the CPU only.
safetensors cannot hold packed int8 params, so the weights go through torch.save; torch.load reads them
back with weights_only=True (the packed params are plain tensors), so no pickled code is run."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch.ao.quantization import float_qparams_weight_only_qconfig, per_channel_dynamic_qconfig
from transformers import AutoConfig, AutoModelForCausalLM

INT8_WEIGHTS = "model_int8.pt"
HEAD = "lm_head.weight"
FP32_LINEARS = ("down_proj",)  # outlier inputs: see above


def _is_tied(model: torch.nn.Module) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def _quantise_modules(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with the input embedding and the linear layers quantised, except a tied head and the
    FP32_LINEARS (left fp32)."""
    tied = _is_tied(model)
    embedding = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
    head = model.get_output_embeddings()
    spec = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not (tied and module is head)
            and not name.endswith(FP32_LINEARS)}
    spec[embedding] = float_qparams_weight_only_qconfig
    with warnings.catch_warnings():
        # The torch.ao deprecation notices, repeated per module; the API works as documented.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False)


def _tie_head_to_int8_embedding(model: torch.nn.Module) -> None:
    """The head becomes an fp32 Linear whose weight (vocab, hidden) is the int8 embedding dequantised."""
    weight = model.get_input_embeddings().weight().dequantize()
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    model.set_output_embeddings(head)


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` (made fp32, on the CPU) with its embedding and most linear layers in int8."""
    fp32 = model.float().cpu().eval()
    tied = _is_tied(fp32)
    quantised = _quantise_modules(fp32)
    if tied:
        _tie_head_to_int8_embedding(quantised)
    return quantised.eval().requires_grad_(False)


def save_int8(model: torch.nn.Module, tokenizer, folder: Path) -> Path:
    """Write a quantised model's weights (INT8_WEIGHTS), config and tokenizer into `folder`. A head derived
    from the embedding (tied) is left out: load_int8 derives it again."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop(HEAD, None)
    path = folder / INT8_WEIGHTS
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_int8(folder: Path) -> torch.nn.Module:
    """The int8 model saved by save_int8: the fp32 architecture rebuilt from config.json (never the
    folder's own code), quantised the same way, then given the saved int8 weights."""
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    tied = _is_tied(model)
    quantised = _quantise_modules(model.eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation inside torch.load
        state = torch.load(folder / INT8_WEIGHTS, map_location="cpu", weights_only=True)
    missing, unexpected = quantised.load_state_dict(state, strict=False)
    if unexpected or set(missing) - ({HEAD} if tied else set()):
        raise ValueError(f"{folder / INT8_WEIGHTS} does not fit the model its config.json describes: missing "
                         f"{sorted(missing)}, unexpected {sorted(unexpected)}")
    if tied:
        _tie_head_to_int8_embedding(quantised)
    return quantised.eval().requires_grad_(False)
