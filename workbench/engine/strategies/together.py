"""Modules trained together with the student (a co-distilled teacher, a hidden-state projection) in one
nn.Module, so Trainer optimises, checkpoints and resumes them as one model.

One forward runs every part (under DDP, parameters used outside the wrapped module's forward would
break gradient synchronisation): each model part reads the batch, then `extra` (set by the strategy)
computes what plain modules add, e.g. projected hidden states. It returns {part name: output, ...}.

A checkpoint holds each part where its readers look: CHECKPOINT/student/ is a plain student folder
(the inspector and evaluation load it like any checkpoint), CHECKPOINT/teacher/ the trained teacher,
CHECKPOINT/NAME.safetensors a plain module. At the end the student goes to RUN/student/, a trained
teacher to RUN/teacher/, and plain modules beside the student (RUN/student/NAME.safetensors).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

STUDENT = "student"


class TrainedTogether(torch.nn.Module):
    def __init__(self, student: PreTrainedModel, extra: Callable | None = None, **parts: torch.nn.Module):
        super().__init__()
        self.parts = torch.nn.ModuleDict({STUDENT: student, **parts})
        self.extra = extra  # (parts, outputs) -> more outputs, for parts that read other parts' outputs

    @property
    def student(self) -> PreTrainedModel:
        return self.parts[STUDENT]

    def models(self) -> dict[str, PreTrainedModel]:
        return {name: part for name, part in self.parts.items() if isinstance(part, PreTrainedModel)}

    def forward(self, **inputs) -> dict:
        outputs = {name: model(**inputs) for name, model in self.models().items()}
        if self.extra is not None:
            outputs.update(self.extra(self.parts, outputs))
        return outputs

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """train.gradient_checkpointing: every model part recomputes its activations in backward."""
        for model in self.models().values():
            model.activation_checkpointing_enable(**kwargs)

    def save(self, folder: Path, tokenizer=None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, part in self.parts.items():
            if isinstance(part, PreTrainedModel):
                part.save_pretrained(folder / name)
                if tokenizer is not None:
                    tokenizer.save_pretrained(folder / name)
            else:
                save_module(part, folder / f"{name}.safetensors")

    def load(self, folder: Path) -> None:
        """Resume: each model part read back through from_pretrained (which undoes what save_pretrained
        does to some architectures' weights, and restores tied ones), then copied in place."""
        folder = Path(folder)
        for name, part in self.parts.items():
            if isinstance(part, PreTrainedModel):
                saved = AutoModelForCausalLM.from_pretrained(folder / name, dtype=part.dtype, local_files_only=True,
                                                             trust_remote_code=False)
                part.load_state_dict(saved.state_dict())
            else:
                load_module(part, folder / f"{name}.safetensors")


def save_module(module: torch.nn.Module, path: Path) -> None:
    """A plain module's weights, with its shapes in the metadata so a reader can rebuild it."""
    state = module.state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path),
                                metadata={"shapes": json.dumps({k: list(v.shape) for k, v in state.items()}),
                                          "class": type(module).__name__})


def load_module(module: torch.nn.Module, path: Path) -> None:
    module.load_state_dict(safetensors.torch.load_file(str(path)))
