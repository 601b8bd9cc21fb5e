"""A student as one GGUF file, the format llama.cpp and Ollama load, written the way llama.cpp's
convert_hf_to_gguf.py writes a Llama-architecture model (LlamaModel there): its hyperparameters under
`llama.*` keys, tensors renamed by gguf's TensorNameMap, the q/k projections permuted into llama.cpp's rotary
layout, a tied LM head left out (llama.cpp then reads token_embd for the output), and the byte-level BPE
tokenizer as `gpt2` vocabulary, token types, merges and special ids.

Only Llama (SmolLM2, the offline default) is supported: other architectures need their own tensor
transforms and keys (Gemma 3 scales its norms by 1 + w and its embedding by sqrt(hidden)), so they are
refused by name rather than written wrong."""
from __future__ import annotations

import tempfile
from hashlib import sha256
from pathlib import Path

import gguf
import numpy as np
import torch

SUPPORTED = {"llama": gguf.MODEL_ARCH.LLAMA}
DTYPES = {"f16": (np.float16, gguf.LlamaFileType.MOSTLY_F16), "f32": (np.float32, gguf.LlamaFileType.ALL_F32)}

# llama.cpp names the pre-tokenizer (how text is split before BPE) by the hash of this text's token ids;
# copied from convert_hf_to_gguf.py's get_vocab_base_pre, with the hashes of the tokenizers used here.
CHECK_TEXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ "
              "(multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 "
              "3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
              "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
              "sure I'll make it, 'D you like some tea? We'Ve a'lL")
KNOWN_PRE = {"855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm"}
DEFAULT_PRE = "default"


class UnsupportedArchitecture(ValueError):
    """The model's architecture has no GGUF writer here."""


def check_supported(config) -> None:
    """UnsupportedArchitecture naming the model's architecture unless it is one this module writes."""
    kind = getattr(config, "model_type", None)
    name = ", ".join(getattr(config, "architectures", None) or []) or kind
    if kind not in SUPPORTED:
        raise UnsupportedArchitecture(
            f"GGUF export supports Llama-architecture students (model_type 'llama', e.g. SmolLM2, the default "
            f"student); this one is {name} (model_type {kind!r}). Export it as int8 instead, or convert the "
            "student folder with llama.cpp's convert_hf_to_gguf.py")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedArchitecture(f"GGUF export writes plain RoPE only; this model's rope_parameters.rope_type "
                                      f"is {rope.get('rope_type')!r}")


def pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or 'default' for one it has no name for (llama.cpp
    then splits text with its generic rules, which may differ from the original on digits or spaces)."""
    return KNOWN_PRE.get(sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest(), DEFAULT_PRE)


def write_gguf(model: torch.nn.Module, tokenizer, path: Path, dtype: str = "f16", name: str = "") -> dict:
    """Write `model` (a Hugging Face causal LM) and its byte-level BPE `tokenizer` to the GGUF file `path`;
    return what was written: architecture, dtype, pre-tokenizer, tensor count, bytes."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    config = model.config
    check_supported(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[SUPPORTED[config.model_type]])
    _write_hparams(writer, config, name, DTYPES[dtype][1])
    pre = _write_vocab(writer, tokenizer, config.vocab_size)
    count = _write_tensors(writer, model, DTYPES[dtype][0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return {"architecture": config.model_type, "dtype": dtype, "pre_tokenizer": pre, "tensors": count,
            "bytes": path.stat().st_size}


def _write_hparams(writer: gguf.GGUFWriter, config, name: str, file_type: gguf.LlamaFileType) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name or "student")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def _write_vocab(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> str:
    """Tokens by id (ids the tokenizer lacks up to the model's vocab_size become unused [PADi]), their
    types, and, through gguf's SpecialVocab, the merges, special ids, add-BOS flag and chat template."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    pre = pre_tokenizer_name(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        # SpecialVocab reads tokenizer.json / tokenizer_config.json from a folder, as convert_hf_to_gguf does.
        tokenizer.save_pretrained(folder)
        gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)
    return pre


def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """HF stores each head's rotary pairs as two halves (rotate_half); llama.cpp wants them interleaved.
    weight: (heads * head_dim, hidden) -> same shape, rows reordered within each head."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _write_tensors(writer: gguf.GGUFWriter, model: torch.nn.Module, dtype) -> int:
    config = model.config
    names = gguf.get_tensor_name_map(SUPPORTED[config.model_type], config.num_hidden_layers)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    count = 0
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp uses token_embd.weight as the output when output.weight is absent
        tensor = tensor.detach().float().cpu()
        if hf_name.endswith("q_proj.weight"):
            tensor = _permute(tensor, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = _permute(tensor, config.num_key_value_heads or config.num_attention_heads)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UnsupportedArchitecture(f"no GGUF name for tensor {hf_name!r} of this {config.model_type} model")
        # Norms and other 1-D tensors stay f32, as llama.cpp's converter keeps them.
        writer.add_tensor(gguf_name, tensor.numpy().astype(dtype if tensor.ndim > 1 else np.float32))
        count += 1
    return count
