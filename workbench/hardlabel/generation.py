"""Hard-label stage 1: the teacher writes a completion for every (prompt, sample), into a dataset file
the student is then fine-tuned on.

    FOLDER/manifest.json       the settings that wrote the rows (teacher, backend, sampling, seed,
                               prompt set and its hash; never an API key), counts, complete or not
    FOLDER/completions.jsonl   one row per completion, appended as it is written: the conversation
                               with the teacher's reply (`messages`, what training reads), `prompt`,
                               `completion`, and provenance (teacher, parameters, seed, time)

A run's folder is RUN/generated/. Rows are appended and flushed one by one, so a crash or a cancel
loses at most the row being written (a torn last line is dropped on resume); a resumed generation
skips every (prompt, sample) already answered. Later runs reuse the file (generation.dataset).
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbench.config.schema import DistillConfig
from workbench.data.prompts import Conversation, load_prompts, prompt_text
from workbench.hardlabel.api_writer import ApiTeacherWriter
from workbench.hardlabel.errors import GenerationError
from workbench.hardlabel.local_writer import LocalTeacherWriter
from workbench.store.rundir import write_json_atomic

GENERATED = "generated"
COMPLETIONS = "completions.jsonl"
MANIFEST = "manifest.json"
# Settings that change what the teacher writes: resuming with different ones would mix two datasets.
SETTINGS = ("backend", "teacher", "temperature", "top_p", "max_new_tokens", "samples_per_prompt", "seed",
            "batch_size", "prompts", "prompts_hash")

Progress = Callable[[int, int, float | None], None]  # (rows done, rows in all, ETA seconds or None)


@dataclass(frozen=True)
class Job:
    index: int           # position in the flat list of all (prompt, sample) pairs
    prompt_index: int
    sample: int
    messages: Conversation


def make_jobs(prompts: list[Conversation], samples: int) -> list[Job]:
    return [Job(p * samples + s, p, s, messages) for p, messages in enumerate(prompts) for s in range(samples)]


def teacher_name(config: DistillConfig) -> str:
    g = config.generation
    return f"{g.api_model} at {g.api_base_url}" if g.backend == "openai" else config.teacher.name_or_path


def _settings(config: DistillConfig) -> dict:
    g = config.generation
    # A local teacher's batches are seeded slices of the prompt list: their size is part of the sampling.
    return {"backend": g.backend, "teacher": teacher_name(config), "temperature": g.temperature, "top_p": g.top_p,
            "max_new_tokens": g.max_new_tokens, "samples_per_prompt": g.samples_per_prompt, "seed": g.seed,
            "batch_size": g.batch_size if g.backend == "local" else None, "prompts": g.prompts}


def settings_of(config: DistillConfig, prompts: list[Conversation]) -> dict:
    digest = hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()[:16]
    return {**_settings(config), "prompts_hash": digest}


def _already_complete(folder: Path, config: DistillConfig) -> bool:
    """A finished dataset with these settings: resuming a run after its data was written must not read
    the prompts again (the file may have changed, a hub dataset may be out of reach)."""
    manifest = read_manifest(folder)
    if not manifest or not manifest.get("complete"):
        return False
    same = all(manifest["settings"].get(key) == value for key, value in _settings(config).items())
    return same and len(CompletionFile(folder / COMPLETIONS).done) == manifest["rows_total"]


class CompletionFile:
    """completions.jsonl: the indices already written, and a thread-safe append of one row."""

    def __init__(self, path: Path):
        self.path = path
        self.done: set[int] = set()
        self._lock = threading.Lock()
        if path.exists():
            self._recover()

    def _recover(self) -> None:
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1  # a process killed mid-write leaves a line without its newline
        if good < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
        for line in data[:good].splitlines():
            if line.strip():
                self.done.add(json.loads(line)["index"])

    def add(self, row: dict) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            self.done.add(row["index"])


def _row(job: Job, answer: dict, config: DistillConfig, teacher: str) -> dict:
    """The stored row: the reply in the conversation (what training reads) plus who wrote it, how, when."""
    g = config.generation
    completion = answer["completion"]
    return {"index": job.index, "prompt_index": job.prompt_index, "sample": job.sample,
            "messages": [*job.messages, {"role": "assistant", "content": completion}],
            "prompt": prompt_text(job.messages), "completion": completion,
            "finish_reason": answer.get("finish_reason"), "completion_tokens": answer.get("completion_tokens"),
            "teacher": teacher, "backend": g.backend, "temperature": g.temperature, "top_p": g.top_p,
            "max_new_tokens": g.max_new_tokens, "seed": answer["seed"], "created": time.time()}


def _check_manifest(folder: Path, settings: dict, total: int) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        manifest = {"settings": settings, "rows_total": total, "rows_done": 0, "complete": False,
                    "started": time.time()}
        write_json_atomic(path, manifest)
        return manifest
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for key in SETTINGS:
        if manifest["settings"].get(key) != settings[key]:
            field = "generation.prompts" if key.startswith("prompts") else f"generation.{key}"
            raise GenerationError(field, f"{folder} holds completions written with {key} = "
                                         f"{manifest['settings'].get(key)!r}, this run asks for {settings[key]!r}; "
                                         "keep the settings to resume, or start a new run")
    return manifest


class _Clock:
    """Rows per second over this session (not counting rows found on disk), for the ETA."""

    def __init__(self, already: int):
        self.start, self.already = time.monotonic(), already

    def eta(self, done: int, total: int) -> float | None:
        new = done - self.already
        return (total - done) * (time.monotonic() - self.start) / new if new > 0 else None


def generate_dataset(config: DistillConfig, folder: Path, progress: Progress | None = None) -> Path:
    """Write (or finish writing) FOLDER/completions.jsonl; returns its path. Raises GenerationError
    when requests failed for good, after keeping every row that was written."""
    g = config.generation
    if _already_complete(folder, config):
        return folder / COMPLETIONS
    prompts = load_prompts(g, config.data.max_file_mb)
    jobs = make_jobs(prompts, g.samples_per_prompt)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _check_manifest(folder, settings_of(config, prompts), len(jobs))
    out = CompletionFile(folder / COMPLETIONS)
    clock, teacher = _Clock(len(out.done)), teacher_name(config)
    report = progress or (lambda _done, _total, _eta: None)

    def emit(job: Job, answer: dict) -> None:
        out.add(_row(job, answer, config, teacher))
        report(len(out.done), len(jobs), clock.eta(len(out.done), len(jobs)))

    report(len(out.done), len(jobs), None)
    failures: list[str] = []
    if len(out.done) < len(jobs):
        failures = _writer(config).write(jobs, out.done, emit)
    manifest.update(rows_done=len(out.done), complete=len(out.done) == len(jobs) and not failures)
    if manifest["complete"]:
        manifest["finished"] = time.time()
    write_json_atomic(folder / MANIFEST, manifest)
    if failures:
        raise GenerationError("generation.api_base_url", f"{len(failures)} of {len(jobs)} requests failed after "
                                                         f"{g.max_retries} retries (first: {failures[0]}); the "
                                                         f"{len(out.done)} answers written are kept, and resuming "
                                                         "the run asks only for the rest")
    return out.path


def _writer(config: DistillConfig):
    if config.generation.backend == "openai":
        return ApiTeacherWriter(config)
    return LocalTeacherWriter(config)


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
