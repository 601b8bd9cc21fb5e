"""Modules trained together with the student (a co-distilled teacher, a hidden-state projection) in one
nn.Module, so Trainer optimises, checkpoints and resumes them as one model.

A checkpoint holds each part where its readers look: CHECKPOINT/student/ is a plain student folder
(the inspector and evaluation load it like any checkpoint), CHECKPOINT/teacher/ the trained teacher,
CHECKPOINT/NAME.safetensors a plain module. At the end the student goes to RUN/student/, a trained
teacher to RUN/teacher/, and plain modules beside the student (RUN/student/NAME.safetensors).
"""
from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from transformers import PreTrainedModel

STUDENT = "student"


class TrainedTogether(torch.nn.Module):
    def __init__(self, student: PreTrainedModel, **extras: torch.nn.Module):
        super().__init__()
        self.parts = torch.nn.ModuleDict({STUDENT: student, **extras})

    @property
    def student(self) -> PreTrainedModel:
        return self.parts[STUDENT]

    def forward(self, **inputs):
        """The student's forward (the strategy calls other parts itself)."""
        return self.student(**inputs)

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
        folder = Path(folder)
        for name, part in self.parts.items():
            if isinstance(part, PreTrainedModel):
                _load_pretrained_weights(part, folder / name)
            else:
                load_module(part, folder / f"{name}.safetensors")


def save_module(module: torch.nn.Module, path: Path) -> None:
    """A plain module's weights, with its shapes in the metadata so a reader can rebuild it."""
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    safetensors.torch.save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path),
                                metadata={"shapes": json.dumps(shapes), "class": type(module).__name__})


def load_module(module: torch.nn.Module, path: Path) -> None:
    module.load_state_dict(safetensors.torch.load_file(str(path)))


def _load_pretrained_weights(model: PreTrainedModel, folder: Path) -> None:
    """Weights that save_pretrained wrote (one file or shards) into an existing model. Tied weights are
    stored once: a key missing from the files must share its tensor with one that was loaded."""
    index = folder / "model.safetensors.index.json"
    files = (sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
             if index.exists() else [folder / "model.safetensors"])
    state = {}
    for file in files:
        state.update(safetensors.torch.load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {p.data_ptr() for name, p in model.state_dict().items() if name in state}
    untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
    if untied or unexpected:
        raise ValueError(f"{folder} does not fit the model: missing {untied[:5]}, unexpected {unexpected[:5]}")
