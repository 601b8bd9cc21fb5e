"""Soft-label KD (Hinton et al.): the student matches the teacher's softened next-token distribution.

total = alpha * CE(student, data) + (1 - alpha) * T^2 * D(teacher_T || student_T)

With loss.chunk_size > 0 the models return their last hidden states instead of full logits and the loss
runs fused with their LM heads, chunk_size positions at a time (workbench/chunked_loss.py); models whose
head does more than a linear map (logit soft-capping) use the plain path. With loss.teacher_cache the
teacher signal is the cache's stored top-k rows (losses.sparse_kd_loss), fused the same way.
"""
from __future__ import annotations

import inspect

import torch

from workbench.chunked_loss import fused_distill_loss
from workbench.losses import ce_loss, combine, distill_loss, sparse_kd_loss
from workbench.strategies.base import Strategy


def _unwrap(model):
    """The model inside DDP (.module) and torch.compile (._orig_mod) wrappers; forward still goes
    through the wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = model.module if hasattr(model, "module") else model._orig_mod
    return model


def _fusable(model) -> bool:
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    forward = getattr(type(inner), "forward", None)
    text = config.get_text_config() if config is not None else None
    return (forward is not None and "logits_to_keep" in inspect.signature(forward).parameters
            and not getattr(text, "final_logit_softcapping", None) and inner.get_output_embeddings() is not None)


def _hidden(model, input_ids, attention_mask):
    """(B, L-1, H) final hidden states (after the last norm: what the LM head reads) for positions
    0..L-2; logits only for the last position, which costs nothing."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1][:, :-1]


class SoftLabelStrategy(Strategy):
    name = "soft_label"

    @classmethod
    def uses_teacher(cls, config) -> bool:
        # alpha = 1 is plain fine-tuning (the CE-only baseline): the teacher would never run; with a
        # teacher cache its stored top-k stands in for it.
        return config.loss.alpha < 1.0 and not config.loss.teacher_cache

    def compute_loss(self, model, inputs, num_items_in_batch):
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        # Causal shift: position i predicts token i+1. (B, L-1) labels against (B, L-1, ...) outputs.
        labels = inputs["labels"][:, 1:]
        if self.cache is not None:
            return self._cached_loss(model, inputs, labels, num_items_in_batch)
        # No teacher loaded (alpha = 1, or the hard-label strategy): the loss is the student's CE.
        use_teacher = self.teacher is not None and self.config.loss.alpha < 1.0
        if self.config.loss.chunk_size and _fusable(model) and (not use_teacher or _fusable(self.teacher)):
            return self._fused_loss(model, input_ids, attention_mask, labels, use_teacher, num_items_in_batch)
        student_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        teacher_logits = None
        if use_teacher:
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        return distill_loss(student_logits, teacher_logits, labels, self.config.loss,
                            num_items_in_batch=num_items_in_batch, kd_vocab=self.shared_vocab)

    def _fused_loss(self, model, input_ids, attention_mask, labels, use_teacher, num_items_in_batch):
        head = _unwrap(model).get_output_embeddings()
        teacher_hidden = teacher_head = None
        if use_teacher:
            with torch.no_grad():
                teacher_hidden = _hidden(self.teacher, input_ids, attention_mask)
            teacher_head = self.teacher.get_output_embeddings()
        return fused_distill_loss(
            _hidden(model, input_ids, attention_mask), head.weight, labels, self.config.loss,
            teacher_hidden=teacher_hidden, teacher_weight=None if teacher_head is None else teacher_head.weight,
            student_bias=head.bias, teacher_bias=None if teacher_head is None else teacher_head.bias,
            num_items_in_batch=num_items_in_batch, kd_vocab=self.shared_vocab, chunk=self.config.loss.chunk_size)

    def _cached_loss(self, model, inputs, labels, num_items_in_batch):
        """KD against the teacher cache's rows for these blocks (training batches carry their block
        index); held-out batches have none and get the CE term alone."""
        spec = self.config.loss
        # The student's padding logits beyond the cache teacher's vocabulary stay out of KD, as they do
        # against a live teacher (kd_vocab); CE keeps the student's full softmax.
        vocab = self.cache.manifest.vocab
        rows = None
        if "block" in inputs and spec.alpha < 1.0:
            device = inputs["input_ids"].device
            rows = tuple(t.to(device) for t in self.cache.rows(inputs["block"].tolist()))
        if spec.chunk_size and _fusable(model):
            head = _unwrap(model).get_output_embeddings()
            return fused_distill_loss(_hidden(model, inputs["input_ids"], inputs["attention_mask"]), head.weight,
                                      labels, spec, student_bias=head.bias, num_items_in_batch=num_items_in_batch,
                                      kd_vocab=vocab, chunk=spec.chunk_size, teacher_rows=rows)
        student_logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
        if rows is None:
            return distill_loss(student_logits, None, labels, spec, num_items_in_batch=num_items_in_batch)
        ce = ce_loss(student_logits, labels, num_items_in_batch)
        kd = sparse_kd_loss(student_logits[..., :vocab], *rows, labels, spec.divergence, spec.temperature, spec.beta,
                            spec.skew_lambda, num_items_in_batch)
        return {"loss": combine(ce, kd, spec.alpha), "ce": ce, "kd": kd}
