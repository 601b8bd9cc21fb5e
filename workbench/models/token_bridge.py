"""Two tokenizers over one text: the teacher's tokens for the student's, and which positions compare.

What is compared: the student's logits at position i are its next-token distribution after reading its
tokens 0..i, that is the text up to the character where token i ends. A teacher position j is its partner
when the teacher's token j ends at that same character: both models have then read exactly the same text
and both say what comes next (each in its own tokens). Student positions whose token ends where no teacher
token ends (inside a longer teacher token, or inside a character) have no partner: they are skipped by the
cross-tokenizer KD term and counted (the aligned share). CE on the student's own tokens covers every
position as usual.

How the teacher's tokens are made: the student's tokens are decoded piece by piece (tokenizers'
DecodeStream, so a character split over several byte tokens ends at its last one) and the text between
special tokens is encoded by the teacher with character offsets. A student special token becomes the
teacher's token of the same text when the teacher has one, else the teacher's end (or start) token for
the student's end (or start) token, else nothing; it counts as one character on both sides, so the text
after it stays aligned. A teacher that starts every text with its begin token gets it first.

Shared tokens (for the hybrid loss): pairs of ids whose decoded text is the same in both vocabularies;
a text that decodes from several ids of one vocabulary, or not to whole characters, is left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers.decoders import DecodeStream
from torch import Tensor

from workbench.models.loading import VocabMismatchError

SPECIAL_WIDTH = 1  # a special token's width in the shared character coordinate


@dataclass(frozen=True)
class Alignment:
    """The teacher's side of a student batch (B, L).

    teacher_ids, teacher_mask: (B, L_t) the teacher's tokens of the same text, right-padded.
    partner: (B, L) the teacher position compared with each student position (0 where there is none).
    aligned: (B, L) whether the student position has a partner.
    characters: (B,) the length of each row's text (a special token counts as one character).
    student_ends, teacher_ends: per row, the character where each token ends (None inside a character)."""
    teacher_ids: Tensor
    teacher_mask: Tensor
    partner: Tensor
    aligned: Tensor
    characters: Tensor
    student_ends: list[list[int | None]]
    teacher_ends: list[list[int | None]]


def decoded_pieces(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text as it appears in the sequence decoded token by token ("" for a token whose bytes
    end inside a character: the character comes with the token that completes it). In sequence a
    SentencePiece "▁the" is " the", although alone it decodes to "the"."""
    stream = DecodeStream(skip_special_tokens=False)
    return [stream.step(tokenizer.backend_tokenizer, token) or "" for token in ids]


def _stream(tokenizer, ids: list[int]) -> tuple[str, list[int | None]]:
    """The text of ordinary tokens decoded one by one, and where each token ends in it (None: inside a
    character, whose bytes continue in the next token)."""
    ends, position = [], 0
    pieces = decoded_pieces(tokenizer, ids)
    for piece in pieces:
        position += len(piece)
        ends.append(position if piece else None)
    return "".join(pieces), ends


class TokenBridge:
    """student_vocab, teacher_vocab: the logits each side compares (its tokenizer's ids that its model
    has logits for); teacher_context: the most tokens the teacher reads (the rest have no partner)."""

    def __init__(self, student_tokenizer, teacher_tokenizer, student_vocab: int | None = None,
                 teacher_vocab: int | None = None, teacher_context: int | None = None):
        self.student, self.teacher = student_tokenizer, teacher_tokenizer
        for role, tokenizer, size in (("student", student_tokenizer, student_vocab),
                                      ("teacher", teacher_tokenizer, teacher_vocab)):
            if size is not None and len(tokenizer) > size:  # an id past the logits would fail the forward
                raise VocabMismatchError(f"the {role} tokenizer has {len(tokenizer):,} tokens but the {role} model "
                                         f"only {size:,} logits")
        self.student_vocab = student_vocab or len(student_tokenizer)
        self.teacher_vocab = teacher_vocab or len(teacher_tokenizer)
        self.teacher_context = teacher_context
        self._specials = {int(i) for i in student_tokenizer.all_special_ids}
        self._special_map = {i: self._teacher_special(i) for i in self._specials}
        probe = teacher_tokenizer("a").input_ids
        bos = teacher_tokenizer.bos_token_id
        self._teacher_bos = bos if bos is not None and probe and probe[0] == bos else None
        self._shared: tuple[Tensor, Tensor] | None = None
        self._texts: tuple[list[str | None], list[str | None]] | None = None

    def _teacher_special(self, student_id: int) -> int | None:
        text = self.student.convert_ids_to_tokens(student_id)
        found = self.teacher.convert_tokens_to_ids(text)
        if found is not None and found != self.teacher.unk_token_id and self.teacher.convert_ids_to_tokens(found) == text:
            return int(found)
        for role in ("eos", "bos"):
            if student_id == getattr(self.student, f"{role}_token_id"):
                return getattr(self.teacher, f"{role}_token_id")
        return None

    def _walk(self, ids: list[int]) -> tuple[list[int | None], list[tuple[int, str] | int]]:
        """Where each student token ends in the shared coordinate (None inside a character), and the
        pieces: (start, text) for each run of ordinary tokens, the id of each special token."""
        ends: list[int | None] = []
        pieces: list[tuple[int, str] | int] = []
        position, run = 0, []

        def close_run():
            nonlocal position
            if run:
                text, run_ends = _stream(self.student, run)
                ends.extend(position + end if end is not None else None for end in run_ends)
                pieces.append((position, text))
                position += len(text)
                run.clear()

        for token in ids:
            if token in self._specials:
                close_run()
                pieces.append(token)
                position += SPECIAL_WIDTH
                ends.append(position)
            else:
                run.append(token)
        close_run()
        return ends, pieces

    def _teacher_tokens(self, pieces) -> tuple[list[int], list[int]]:
        """The teacher's ids for the pieces and the character where each ends."""
        ids, ends, position = [], [], 0
        # A teacher that starts every text with its begin token gets it, unless the student's row starts
        # with its own (mapped to the same token below): the teacher never reads two.
        starts_with_bos = bool(pieces) and isinstance(pieces[0], int) and \
            self._special_map.get(pieces[0]) == self._teacher_bos
        if self._teacher_bos is not None and not starts_with_bos:
            ids.append(self._teacher_bos)
            ends.append(0)
        for piece in pieces:
            if isinstance(piece, int):
                position += SPECIAL_WIDTH
                mapped = self._special_map.get(piece)
                if mapped is not None:
                    ids.append(mapped)
                    ends.append(position)
                continue
            start, text = piece
            encoded = self.teacher(text, add_special_tokens=False, return_offsets_mapping=True)
            decoded, pieces_end = _stream(self.teacher, encoded.input_ids)
            # Ends read off the teacher's own decoding, as the student's are; its offsets only where a
            # normaliser changed the text (their ends can move when offsets are trimmed of spaces).
            relative = pieces_end if decoded == text else [end for _, end in encoded.offset_mapping]
            ids.extend(encoded.input_ids)
            ends.extend(start + end if end is not None else None for end in relative)
            position = start + len(text)
        return ids, ends

    def align(self, input_ids: Tensor, attention_mask: Tensor) -> Alignment:
        """The teacher's tokens and the partners for a right-padded student batch (B, L)."""
        rows, partners, characters, all_student_ends, all_teacher_ends = [], [], [], [], []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            ids = ids[:sum(mask)]
            student_ends, pieces = self._walk(ids)
            characters.append(max((end for end in student_ends if end is not None), default=0))
            teacher_ids, teacher_ends = self._teacher_tokens(pieces)
            if self.teacher_context:
                teacher_ids, teacher_ends = teacher_ids[:self.teacher_context], teacher_ends[:self.teacher_context]
            last = {end: j for j, end in enumerate(teacher_ends) if end is not None}
            partners.append([last.get(end, -1) if end is not None else -1 for end in student_ends])
            rows.append(teacher_ids)
            all_student_ends.append(student_ends)
            all_teacher_ends.append(teacher_ends)
        width = max(1, max(len(r) for r in rows))
        b, length = input_ids.shape
        pad = self.teacher.pad_token_id if self.teacher.pad_token_id is not None else 0
        teacher_ids = torch.full((b, width), pad, dtype=torch.long)
        teacher_mask = torch.zeros((b, width), dtype=torch.long)
        partner = torch.full((b, length), -1, dtype=torch.long)
        for row, (ids, found) in enumerate(zip(rows, partners)):
            teacher_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            teacher_mask[row, :len(ids)] = 1
            partner[row, :len(found)] = torch.tensor(found, dtype=torch.long)
        device = input_ids.device
        aligned = partner >= 0
        return Alignment(teacher_ids.to(device), teacher_mask.to(device), partner.clamp(min=0).to(device),
                         aligned.to(device), torch.tensor(characters, device=device), all_student_ends,
                         all_teacher_ends)

    def token_texts(self) -> tuple[list[str | None], list[str | None]]:
        """Each compared id's text, student's and teacher's (None: not whole characters)."""
        if self._texts is None:
            self._texts = (_token_texts(self.student, self.student_vocab), _token_texts(self.teacher, self.teacher_vocab))
        return self._texts

    def shared_ids(self) -> tuple[Tensor, Tensor]:
        """(student ids, teacher ids), (M,) each: pairs with one decoded text, within the compared logits."""
        if self._shared is None:
            s_text, t_text = (_unique_texts(texts) for texts in self.token_texts())
            pairs = sorted((s_id, t_text[text]) for text, s_id in s_text.items() if text in t_text)
            self._shared = (torch.tensor([s for s, _ in pairs], dtype=torch.long),
                            torch.tensor([t for _, t in pairs], dtype=torch.long))
        return self._shared


def _token_texts(tokenizer, size: int) -> list[str | None]:
    """The text each id below `size` adds after an ordinary token, None where it is not whole characters.
    Decoded after an anchor ("a") because a decoder may drop the first token's leading space
    (SentencePiece's "▁the" alone decodes to "the", after "a" to " the")."""
    anchor = tokenizer("a", add_special_tokens=False).input_ids
    ids = range(min(size, len(tokenizer)))
    head = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    texts = tokenizer.batch_decode([anchor + [i] for i in ids], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    return [text[len(head):] if text.startswith(head) and "\ufffd" not in text and len(text) > len(head) else None
            for text in texts]


def _unique_texts(texts: list[str | None]) -> dict[str, int]:
    """text -> id for the ids whose text is whole characters and decodes from one id only."""
    seen: dict[str, int] = {}
    repeated: set[str] = set()
    for token_id, text in enumerate(texts):
        if text is None:
            continue
        if text in seen:
            repeated.add(text)
        seen[text] = token_id
    return {text: i for text, i in seen.items() if text not in repeated}


def alignment_share(bridge: TokenBridge, texts: list[str], max_tokens: int) -> tuple[int, int]:
    """(aligned, positions) over the student's first `max_tokens` tokens of each text: how many of its
    next-token positions have a teacher partner."""
    aligned = positions = 0
    for text in texts:
        ids = bridge.student(text, add_special_tokens=False).input_ids[:max_tokens]
        if len(ids) < 2:
            continue
        found = bridge.align(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).aligned[0, :-1]
        aligned += int(found.sum())
        positions += found.numel()
    return aligned, positions
