"""Soft-label KD (Hinton et al.): the student matches the teacher's softened next-token distribution.

total = alpha * CE(student, data) + (1 - alpha) * T^2 * D(teacher_T || student_T)

With loss.chunk_size > 0 the models return their last hidden states instead of full logits and the loss
runs fused with their LM heads, chunk_size positions at a time (workbench/losses/fused.py); models whose
head does more than a linear map (logit soft-capping) use the plain path. With loss.teacher_cache the
teacher signal is the cache's stored top-k rows (losses.sparse_kd_loss), fused the same way: both losses
take the signal (workbench/losses/signal.py) and never ask where it came from. With loss.reuse_teacher the
teacher's rows of each training block are kept the first time a run reads it and read by later runs
(workbench/engine/teacher_rows.py), as from a cache, and its last hidden states over the held-out blocks too
(workbench/models/kept_states.py). With loss.cross_tokenizer the
teacher reads its own tokens of the batch's text (workbench/models/token_bridge.py) and the KD term compares
the two vocabularies' distributions at aligned positions (ULD or hybrid), on full logits.
"""
from __future__ import annotations

import dataclasses
import hashlib

import torch
import torch.nn.functional as F

from workbench.engine.strategies.base import Strategy
from workbench.engine.teacher_rows import TeacherRows
from workbench.losses.distill import distill_loss
from workbench.losses.fused import fused_distill_loss
from workbench.losses.signal import AlignedLogits, CachedTopK, LiveHead, LiveLogits, TeacherSignal
from workbench.models.heads import fusable, last_hidden, unwrap


def _batch_key(inputs) -> bytes:
    """The identity of a held-out batch: its tokens and mask (the held-out loader never shuffles, so each
    evaluation meets the same batches)."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    digest = hashlib.blake2b(str(tuple(ids.shape)).encode(), digest_size=16)
    for tensor in (ids, mask):
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.digest()


def _moved(signal: TeacherSignal, device: torch.device) -> TeacherSignal:
    """The signal's own tensors on `device`; the teacher's head weights it points to stay where they are."""
    return dataclasses.replace(signal, **{name: value.to(device) for name, value in vars(signal).items()
                                          if isinstance(value, torch.Tensor)
                                          and not isinstance(value, torch.nn.Parameter)})


def _nbytes(signal: TeacherSignal) -> int:
    """What keeping a signal costs: its tensors, not the teacher's head weights it points to."""
    return sum(t.numel() * t.element_size() for t in vars(signal).values()
               if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter))


class SoftLabelStrategy(Strategy):
    name = "soft_label"
    # A frozen teacher gives the same answer on the same held-out batch at every evaluation: its signal
    # is kept (up to this many bytes), so only the first evaluation runs the teacher. The default pair's
    # 32 held-out blocks take 9 MiB; the teacher's forward was two thirds of an evaluation's time.
    HELD_OUT_MEMO_BYTES = 256 * 2**20

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_spec = self.config.effective_loss()  # what α, T and the divergence are (on-policy brings its own)
        self._held_out: dict[bytes, TeacherSignal] = {}
        self._held_out_bytes = 0

    @classmethod
    def uses_teacher(cls, config) -> bool:
        # alpha = 1 is plain fine-tuning (the CE-only baseline): the teacher would never run; with a
        # teacher cache its stored top-k stands in for it.
        return config.loss.alpha < 1.0 and not config.loss.teacher_cache

    def compute_loss(self, model, inputs, num_items_in_batch):
        return self.losses(model, inputs, num_items_in_batch, [self.loss_spec])[0]

    def losses(self, model, inputs, num_items_in_batch, specs) -> list[dict]:
        """The loss terms for each LossSpec in `specs`, from one forward of each model: the first spec's
        terms carry the gradient, the others are computed without it (values to log)."""
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        # Causal shift: position i predicts token i+1. (B, L-1) labels against (B, L-1, ...) outputs.
        labels = inputs["labels"][:, 1:]
        chunk = self.loss_spec.chunk_size
        # A loaded teacher must be fusable too: it answers held-out batches (and, with kept rows, new blocks).
        fused = (bool(chunk) and self.bridge is None and fusable(model)
                 and (not self._live() or fusable(self.teacher)))
        with self.clock.phase("teacher"):
            teacher = self.teacher_signal(inputs, fused, held_out=self.evaluating)
        if fused:
            head = unwrap(model).get_output_embeddings()
            hidden = last_hidden(model, input_ids, attention_mask)
            loss = lambda spec: fused_distill_loss(hidden, head.weight, labels, spec, teacher,  # noqa: E731
                                                   student_bias=head.bias, num_items_in_batch=num_items_in_batch,
                                                   chunk=chunk)
        else:
            student_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
            loss = lambda spec: distill_loss(student_logits, teacher, labels, spec,  # noqa: E731
                                             num_items_in_batch=num_items_in_batch)
        with self.clock.phase("loss"):
            first = loss(specs[0])
            with torch.no_grad():
                if isinstance(teacher, AlignedLogits):
                    first["aligned_share"] = teacher.share(labels, num_items_in_batch)
                return [first, *(loss(spec) for spec in specs[1:])]

    def _live(self) -> bool:
        """Whether the teacher model runs: it is loaded and KD has weight (the hard-label strategy and the
        CE-only baseline train on CE alone)."""
        return self.teacher is not None and self.loss_spec.alpha < 1.0

    def teacher_signal(self, inputs, fused: bool, held_out: bool = False) -> TeacherSignal | None:
        """The teacher's side of this batch's KD term, or None for CE alone. From the cache: its stored rows
        for the batch's blocks (training batches carry their block index; held-out ones have none; kept rows
        (loss.reuse_teacher) first have the teacher answer the blocks they do not hold yet), over
        the cache teacher's vocabulary so the student's padding logits stay out of KD, as against a live
        teacher. Live: the teacher's hidden states and head for the fused loss, else its logits; for a
        held-out batch, kept from the first evaluation that met it."""
        if self.cache is not None:
            if "block" not in inputs:  # a held-out batch: the live teacher, where one is loaded (kept rows)
                return self._live_or_remembered(inputs, fused, held_out) if self.teacher is not None else None
            if self.loss_spec.alpha >= 1.0:
                return None
            blocks = inputs["block"].tolist()
            if isinstance(self.cache, TeacherRows):  # rows not kept yet: the teacher's, kept for the next run
                self.cache.fill(blocks, lambda missing: self._teacher_rows(inputs, blocks, missing))
            device = inputs["input_ids"].device
            return CachedTopK(*(t.to(device) for t in self.cache.rows(blocks)),
                              kd_vocab=self.cache.manifest.vocab, sampled=self.cache.manifest.tail_samples)
        return self._live_or_remembered(inputs, fused, held_out)

    def _live_or_remembered(self, inputs, fused: bool, held_out: bool) -> TeacherSignal | None:
        if not self._live():
            return None
        key = (_batch_key(inputs), fused) if held_out else None
        device = inputs["input_ids"].device
        if key in self._held_out:
            return _moved(self._held_out[key], device)
        signal = self._live_signal(inputs, fused, held_out)
        if key is not None and self._held_out_bytes + _nbytes(signal) <= self.HELD_OUT_MEMO_BYTES:
            self._held_out[key] = _moved(signal, torch.device("cpu"))  # host memory: the GPU's is the run's
            self._held_out_bytes += _nbytes(signal)
        return signal

    @torch.no_grad()
    def _teacher_rows(self, inputs, blocks: list[int], missing: list[int]) -> list[tuple]:
        """The kept-rows store's rows of the `missing` blocks of this batch, from one teacher forward over them."""
        at = torch.tensor([blocks.index(b) for b in missing], device=inputs["input_ids"].device)
        ids, mask = inputs["input_ids"][at], inputs["attention_mask"][at]
        vocab = self.cache.manifest.vocab
        if fusable(self.teacher):  # one block's (L-1, V) logits at a time, not the batch's
            head = self.teacher.get_output_embeddings()
            hidden = last_hidden(self.teacher, ids, mask)
            logits = (F.linear(hidden[i], head.weight, head.bias) for i in range(len(missing)))
        else:
            logits = iter(self.teacher(input_ids=ids, attention_mask=mask).logits[:, :-1])
        return [self.cache.block_rows(rows[:, :vocab].float(), block) for rows, block in zip(logits, missing)]

    @torch.no_grad()
    def _live_signal(self, inputs, fused: bool, held_out: bool = False) -> TeacherSignal:
        if self.bridge is not None:
            return self._aligned_signal(inputs)
        if fused:
            head = self.teacher.get_output_embeddings()
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            kept = held_out and self.states is not None  # an earlier run's held-out states, or kept for the next
            hidden = self.states.hidden(self.teacher, ids, mask) if kept else last_hidden(self.teacher, ids, mask)
            return LiveHead(hidden, head.weight, head.bias, self.shared_vocab)
        logits = self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        return LiveLogits(logits[:, :-1], self.shared_vocab)

    def _aligned_signal(self, inputs) -> AlignedLogits:
        """The teacher on its own tokens of the batch's text, its logits taken at the partner of each aligned
        student position 0..L-2 (each predicts the next token): (N, V_t), V_t its tokenizer's size. With a
        plain LM head only those N hidden states go through it, never the (B, L_t, V_t) logits (1 GB for a
        262k vocabulary at 4 x 256 tokens)."""
        alignment = self.bridge.align(inputs["input_ids"], inputs["attention_mask"])
        aligned = alignment.aligned[:, :-1]
        batch, position = aligned.nonzero(as_tuple=True)
        partner = alignment.partner[:, :-1][batch, position]
        ids, mask = alignment.teacher_ids, alignment.teacher_mask
        if fusable(self.teacher):
            head = self.teacher.get_output_embeddings()
            hidden = self.teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                  logits_to_keep=1).hidden_states[-1]
            rows = F.linear(hidden[batch, partner], head.weight, head.bias)
        else:
            rows = self.teacher(input_ids=ids, attention_mask=mask).logits[batch, partner]
        mode = self.loss_spec.cross_tokenizer
        shared = self.bridge.shared_ids() if mode == "hybrid" else (None, None)
        device = rows.device
        return AlignedLogits(rows[:, :self.bridge.teacher_vocab].float(), aligned, mode, self.bridge.student_vocab,
                             *(None if pair is None else pair.to(device) for pair in shared))
