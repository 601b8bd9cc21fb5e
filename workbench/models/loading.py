"""Load teacher, student and tokenizer; check that two models can be compared logit by logit; LoRA.

Every load goes through `from_pretrained`, for hub ids and local folders alike. A source that is not
on disk and not in the hub cache is looked up on the hub only after a bounded reachability probe, so
an offline machine gets a clear error in seconds instead of transformers' retry loop (~27 s here).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from workbench.config.paths import MODEL_SUFFIXES, looks_like_local_path
from workbench.config.schema import LoraSpec, ModelSpec

PROBE_TIMEOUT_S = 3.0
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be found or loaded; the message says what was looked for and the fix."""


class VocabMismatchError(ValueError):
    """Teacher and student do not share one vocabulary, so their logits cannot be compared."""


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to the hub endpoint opens within `timeout` (DNS included)."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo has no timeout of its own; a daemon thread bounds it.
    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The folder of a hub model already in the local hub cache, else None (nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    return hub_snapshot(repo_id, revision) is not None


def resolve_source(spec: ModelSpec, role: str) -> tuple[str, bool]:
    """Where to load `spec` from: (path or hub id, local_files_only). Raises ModelLoadError fast if nowhere."""
    name = spec.name_or_path.strip()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{role}: {path} is a file; give the folder that holds it"
                                 + (" and set gguf_file to its name" if path.suffix == ".gguf" else ""))
        if not spec.gguf_file and not (path / "config.json").is_file():
            raise ModelLoadError(f"{role}: {path} has no config.json, so it is not a transformers checkpoint "
                                 "(for a .gguf file set gguf_file)")
        if spec.gguf_file and not (path / spec.gguf_file).is_file():
            raise ModelLoadError(f"{role}: no GGUF file {spec.gguf_file!r} in {path}")
        return str(path), True
    if looks_like_local_path(name, MODEL_SUFFIXES):
        raise ModelLoadError(f"{role}: local folder {path} does not exist")
    if _in_hub_cache(name, spec.revision):
        return name, True
    fix = (f"download it where there is network (`hf download {name}`) and copy the hub cache here, "
           f"or point {role}.name_or_path at a local folder")
    if _hub_offline():
        raise ModelLoadError(f"{role}: {name!r} is not a local folder and not in the hub cache, and "
                             f"HF_HUB_OFFLINE=1 forbids downloading it; {fix}")
    if not hub_reachable():
        raise ModelLoadError(f"{role}: {name!r} is not a local folder and not in the hub cache, and the hub "
                             f"cannot be reached from this machine; {fix}")
    return name, False


def resolve_dtype(spec: ModelSpec, train_bf16: bool) -> torch.dtype:
    if spec.dtype == "auto":
        return torch.bfloat16 if train_bf16 else torch.float32
    return TORCH_DTYPES[spec.dtype]


def pretrained_args(spec: ModelSpec, role: str) -> tuple[str, dict]:
    """(source, kwargs) for any `from_pretrained` of this spec: config, tokenizer or model."""
    source, local_only = resolve_source(spec, role)
    kwargs = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code, "local_files_only": local_only}
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    return source, kwargs


def load_tokenizer(spec: ModelSpec, role: str = "student"):
    from transformers import AutoTokenizer
    source, kwargs = pretrained_args(spec, role)
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{role}: could not load a tokenizer from {source!r}: {err}") from err
    if tok.pad_token is None:
        # Padding positions are masked out of every loss, so any existing token can stand in.
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_model(spec: ModelSpec, role: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM
    source, kwargs = pretrained_args(spec, role)
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{role}: could not load a causal LM from {source!r}: {err}") from err


def load_teacher(spec: ModelSpec, train_bf16: bool):
    """The teacher is frozen: eval mode (no dropout) and no gradients, so no optimizer state either."""
    teacher = load_model(spec, "teacher", resolve_dtype(spec, train_bf16))
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def load_student(spec: ModelSpec):
    """fp32 master weights unless the user pins a dtype: mixed precision autocasts the compute."""
    dtype = torch.float32 if spec.dtype == "auto" else TORCH_DTYPES[spec.dtype]
    return load_model(spec, "student", dtype)


def logit_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def context_length(*models) -> int | None:
    """The longest sequence every model given reads (max_position_embeddings), or None when none says;
    None entries (a model not loaded) are skipped."""
    sizes = [getattr(m.config.get_text_config(), "max_position_embeddings", None) for m in models if m is not None]
    return min((size for size in sizes if size), default=None)


def shared_logit_size(*models) -> int:
    """Logit rows every model has: rows beyond them are padding rows (see check_vocab)."""
    return min(logit_size(m) for m in models)


@dataclass
class VocabCheck:
    shared_size: int          # KD compares logits[..., :shared_size]
    teacher_size: int
    student_size: int

    @property
    def note(self) -> str:
        if self.teacher_size == self.student_size:
            return f"same vocabulary ({self.shared_size} logits)"
        return (f"vocabularies agree; logits differ only by padding rows "
                f"(teacher {self.teacher_size}, student {self.student_size}): KD uses the first {self.shared_size}")


def check_vocab(teacher_tok, student_tok, teacher_logits: int, student_logits: int) -> VocabCheck:
    """Same token -> id mapping, or a clear error. Logit rows beyond the shared part are padding rows
    (e.g. Qwen2.5-3B has 151,936 logits and 72B 152,064 for one tokenizer) and are sliced off."""
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    shared = min(teacher_logits, student_logits)
    differ = sorted((tok for tok in t_vocab.keys() & s_vocab.keys() if t_vocab[tok] != s_vocab[tok]),
                    key=t_vocab.get)
    only_one = sorted(((tok, idx) for vocab, other in ((t_vocab, s_vocab), (s_vocab, t_vocab))
                       for tok, idx in vocab.items() if tok not in other and idx < shared), key=lambda x: x[1])
    if differ or only_one:
        example = (f"{differ[0]!r} is {t_vocab[differ[0]]} for the teacher but {s_vocab[differ[0]]} for the student"
                   if differ else f"{only_one[0][0]!r} (id {only_one[0][1]}) exists in only one tokenizer")
        raise VocabMismatchError(
            f"teacher and student tokenizers disagree on {len(differ) + len(only_one)} tokens, e.g. {example}. "
            "Logit-based strategies compare distributions token by token and need one vocabulary; "
            "pick a student from the teacher's family, set loss.cross_tokenizer to uld or hybrid (soft_label: "
            "compares the two distributions where both models have read the same text), or use hard-label "
            "distillation, which passes text between the models.")
    for role, tok in (("teacher", teacher_tok), ("student", student_tok)):
        if len(tok) > (teacher_logits if role == "teacher" else student_logits):
            raise VocabMismatchError(f"the {role} tokenizer has {len(tok)} tokens but the {role} model only "
                                     f"{teacher_logits if role == 'teacher' else student_logits} logits")
    return VocabCheck(shared_size=shared, teacher_size=teacher_logits, student_size=student_logits)


def apply_lora(model, spec: LoraSpec):
    """Wrap the student in peft LoRA adapters; only the adapters train."""
    from peft import LoraConfig, get_peft_model
    targets = spec.target_modules
    lora = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear" if targets == ["all-linear"] else list(targets))
    try:
        return get_peft_model(model, lora)
    except ValueError as err:
        raise ModelLoadError(f"student.lora.target_modules {targets}: {err}") from err


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable) parameter counts; tied weights counted once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def tokenizer_hash(tokenizer) -> str:
    """Changes with any token -> id mapping or special token, the things that make ids mean something."""
    data = {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def loaded_identity(spec: ModelSpec, model) -> str:
    """model_identity of a model loaded from `spec`, at the hub commit transformers loaded it from."""
    return model_identity(spec.name_or_path, getattr(model.config, "_commit_hash", None), spec.gguf_file)


def model_identity(name_or_path: str, commit: str | None = None, gguf_file: str | None = None) -> str:
    """A model's name, the hub commit it was loaded at (a hub id's newer revision is another model) and the
    GGUF file taken from it; for a local folder also its weight files' and config's names, sizes and times, so
    replaced weights or an edited config are another model too."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return json.dumps([name_or_path, commit, gguf_file])
    files = sorted(p for p in folder.iterdir()
                   if p.suffix in (".safetensors", ".bin", ".pt", ".gguf") or p.name == "config.json")
    return json.dumps([str(folder.resolve()), gguf_file,
                       *[(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]])
