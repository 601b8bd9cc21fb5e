"""Pre-flight sizing: parameter counts without loading weights, and a rough memory estimate for a run.

Counts come from instantiating the architecture on the meta device (no memory, no weights read), so
the UI can show them before anything is loaded. The memory estimate is deliberately simple and says
which parts it adds up; it is for 'will this fit', not for capacity planning to the megabyte.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.config.schema import DistillConfig, ModelSpec
from workbench.models.loading import ModelLoadError, pretrained_args, resolve_dtype

GIB = 1024 ** 3


@dataclass
class ArchInfo:
    params: int
    layers: int
    hidden: int
    vocab: int
    heads: int
    context: int | None = None  # the longest sequence the model was built for (max_position_embeddings)


def arch_info(spec: ModelSpec, role: str, layers: int | None = None) -> ArchInfo:
    """`layers`: size the same architecture with that many decoder layers (a student pruned from it)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    source, kwargs = pretrained_args(spec, role)
    try:
        cfg = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{role}: could not read the model config from {source!r}: {err}") from err
    if layers:
        text_cfg = cfg.get_text_config()
        text_cfg.num_hidden_layers = min(layers, text_cfg.num_hidden_layers)
        if hasattr(text_cfg, "layer_types") and text_cfg.layer_types:
            text_cfg.layer_types = text_cfg.layer_types[:text_cfg.num_hidden_layers]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=spec.trust_remote_code)
    text_cfg = cfg.get_text_config()
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return ArchInfo(params=params, layers=text_cfg.num_hidden_layers, hidden=text_cfg.hidden_size,
                    vocab=model.get_output_embeddings().weight.shape[0], heads=text_cfg.num_attention_heads,
                    context=getattr(text_cfg, "max_position_embeddings", None))


@dataclass
class MemoryEstimate:
    teacher_weights: float
    student_weights: float
    optimizer_and_grads: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return (self.teacher_weights + self.student_weights + self.optimizer_and_grads
                + self.activations + self.logits)

    def as_gib(self) -> dict[str, float]:
        parts = {k: round(v / GIB, 3) for k, v in vars(self).items()}
        parts["total"] = round(self.total / GIB, 3)
        return parts


def estimate_memory(config: DistillConfig, teacher: ArchInfo | None, student: ArchInfo, bf16: bool,
                    trainable_fraction: float = 1.0, teacher_trains: bool = False) -> MemoryEstimate:
    """Bytes for one process. Adam keeps two fp32 moments per trainable weight, plus an fp32 gradient.
    Activations follow Korthikanti et al. (34·s·b·h per layer in 16-bit, doubled in fp32) and ignore
    the attention-score term, which is small at the sequence lengths a workbench uses. Logits: student
    and teacher logits, the two fp32 softmaxes of the KD term and the gradient of the student's.
    teacher None: training without one in memory (hard-label), logits and their gradient only.
    teacher_trains (co-distillation): the teacher is fp32 with gradients, Adam moments and activations."""
    t_bytes = torch.finfo(resolve_dtype(config.teacher, bf16)).bits // 8
    tokens = config.train.batch_size * config.train.seq_len
    act_bytes_per = 34 if bf16 else 68
    trainable = student.params * trainable_fraction
    trained = [student] + ([teacher] if teacher_trains else [])
    return MemoryEstimate(
        teacher_weights=teacher.params * (4 if teacher_trains else t_bytes) if teacher is not None else 0.0,
        student_weights=student.params * 4,
        optimizer_and_grads=trainable * 12 + (teacher.params * 12 if teacher_trains else 0),
        activations=sum(tokens * m.hidden * m.layers * act_bytes_per for m in trained),
        logits=tokens * max(teacher.vocab, student.vocab) * 4 * 5 if teacher is not None else tokens * student.vocab * 4 * 2,
    )
