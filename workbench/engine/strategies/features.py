"""Hidden-state matching and attention transfer: the soft-label loss plus a weighted term over mapped
layers (workbench/losses/features.py):

    total = alpha * CE + (1 - alpha) * KD + weight * term(student layers, teacher layers)

The layer map pairs student and teacher decoder layers (default: evenly spaced, or the layers a pruned
student came from). Hidden states of different widths meet through a learned linear projection
(student width -> teacher width, trained with the student, saved beside it as
hidden_projection.safetensors). Attention maps need eager attention (slower than SDPA): both models
switch to it for these runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import safetensors
import torch

from workbench.config.fields import ConfigError
from workbench.engine.strategies.soft import SoftLabelStrategy
from workbench.models.heads import unwrap
from workbench.engine.strategies.together import STUDENT, TrainedTogether
from workbench.losses.distill import distill_loss
from workbench.losses.features import attention_loss, hidden_state_loss, layer_map
from workbench.losses.signal import LiveLogits

PROJECTION = "hidden_projection"


def _text_config(model):
    return model.config.get_text_config()


def load_projection(path: Path) -> torch.nn.Linear:
    """The projection a hidden-state run saved beside its student."""
    with safetensors.safe_open(str(path), "pt") as fh:
        out_features, in_features = json.loads(fh.metadata()["shapes"])["weight"]
    projection = torch.nn.Linear(in_features, out_features, bias=False)
    projection.load_state_dict(safetensors.torch.load_file(str(path)))
    return projection


class _FeatureStrategy(SoftLabelStrategy):
    section: ClassVar[str]   # the config section with layer_map, loss and weight; also the term's name
    outputs: ClassVar[str]   # what the models must return: output_<outputs>=True

    @classmethod
    def uses_teacher(cls, config) -> bool:
        return True  # the term compares with the teacher's layers whatever alpha is

    def _map(self, student) -> list[tuple[int, int]]:
        spec = getattr(self.config, self.section)
        return layer_map(spec.layer_map, _text_config(student).num_hidden_layers,
                         _text_config(self.teacher).num_hidden_layers, f"{self.section}.layer_map",
                         getattr(student.config, "pruned_from_layers", None))

    def trainable_model(self, student):
        self.pairs = self._map(student)
        return self._prepare(student)

    def _sizes(self, student, attribute: str) -> tuple[int, int]:
        """(student's, teacher's) value of a text-config attribute, e.g. hidden_size."""
        return getattr(_text_config(student), attribute), getattr(_text_config(self.teacher), attribute)

    def _prepare(self, student) -> torch.nn.Module:
        """What trains: the student, or the student with the modules the term needs."""
        raise NotImplementedError

    def _term(self, outputs, student_out, teacher_out, labels, num_items) -> torch.Tensor:
        """The layer term from both models' outputs (`outputs`: what the trained module returned);
        labels (B, L) unshifted."""
        raise NotImplementedError
    def compute_loss(self, model, inputs, num_items_in_batch):
        spec = getattr(self.config, self.section)
        forward = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       **{f"output_{self.outputs}": True})
        outputs = model(**forward)
        # A TrainedTogether (a projection trains too) answers {part: output}; a plain student its own output.
        student = outputs[STUDENT] if isinstance(unwrap(model), TrainedTogether) else outputs
        with torch.no_grad():
            teacher = self.teacher(**forward)
        labels = inputs["labels"]
        signal = LiveLogits(teacher.logits[:, :-1], self.shared_vocab) if self.config.loss.alpha < 1 else None
        terms = distill_loss(student.logits[:, :-1], signal, labels[:, 1:], self.config.loss,
                             num_items_in_batch=num_items_in_batch)
        terms[self.section] = self._term(outputs, student, teacher, labels, num_items_in_batch)
        terms["loss"] = terms["loss"] + spec.weight * terms[self.section]
        return terms


class HiddenStateStrategy(_FeatureStrategy):
    name = "hidden_state"
    section = "hidden"
    outputs = "hidden_states"

    def _prepare(self, student):
        width, target = self._sizes(student, "hidden_size")
        if width == target:
            return student
        return TrainedTogether(student, extra=self._project, **{PROJECTION: torch.nn.Linear(width, target, bias=False)})

    def _student_states(self, student_out) -> list[torch.Tensor]:
        # hidden_states[0] is the embedding output: decoder layer i's output is hidden_states[i + 1] (the
        # last one after the final norm, as transformers returns it).
        return [student_out.hidden_states[i + 1] for i, _ in self.pairs]

    def _project(self, parts, outputs) -> dict:
        """Inside the trained module's forward: the student's mapped states at the teacher's width."""
        return {PROJECTION: [parts[PROJECTION](h) for h in self._student_states(outputs[STUDENT])]}

    def _term(self, outputs, student_out, teacher_out, labels, num_items):
        s = outputs[PROJECTION] if PROJECTION in outputs else self._student_states(student_out)
        t = [teacher_out.hidden_states[j + 1] for _, j in self.pairs]
        return hidden_state_loss(s, t, labels, self.config.hidden.loss, num_items)


class AttentionStrategy(_FeatureStrategy):
    name = "attention"
    section = "attention"
    outputs = "attentions"

    def _prepare(self, student):
        heads, teacher_heads = self._sizes(student, "num_attention_heads")
        if self.config.attention.heads == "map" and teacher_heads % heads:
            raise ConfigError([("attention.heads", f"map needs the teacher's {teacher_heads} heads to be a multiple of "
                                                   f"the student's {heads}; use average")])
        for model in (student, self.teacher):
            model.set_attn_implementation("eager")  # SDPA and flash kernels never form the attention matrix
        return student

    def _term(self, outputs, student_out, teacher_out, labels, num_items):
        s = [student_out.attentions[i] for i, _ in self.pairs]
        t = [teacher_out.attentions[j] for _, j in self.pairs]
        return attention_loss(s, t, labels, self.config.attention.loss, self.config.attention.heads == "map",
                              num_items)
