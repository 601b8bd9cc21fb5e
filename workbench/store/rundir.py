"""The run directory: the contract between a training process, the job manager, the store and the UI.

    RUN_DIR/
      config.json      resolved DistillConfig, written before anything loads
      spec.json        the job spec, when launched as a job (jobs/spec.py)
      status.json      {"state", "step", "total_steps", "eta_s", "error", ...}, rewritten atomically
      metrics.jsonl    one JSON object per log/eval event, flushed on every write
      samples.jsonl    on-policy runs: {"step", "prompt", "completion", "tokens"} per completion the student
                       sampled at a logging step (a few per log), grown and truncated like metrics.jsonl
      worker.log       stdout/stderr of a job's worker process
      worker.json      the job manager's record of the process it started (pid + start time)
      checkpoints/     transformers Trainer checkpoints (checkpoint-STEP/), resumable
      student/         the final student (save_pretrained + tokenizer + README.md model card)
      evaluations/     step-STEP.json: one evaluation of the student at that step (workbench/eval/metrics.py)
      notes.json       {"name", "tags", "notes"}: what a user calls the run and says about it (the app's)

Only one process writes a run directory (rank 0 of a job), and readers never lock it: status.json is
replaced by rename so a reader sees the old or the new file, never half of one; metrics.jsonl only
grows, except that a resumed run drops the lines past its checkpoint so no step appears twice.
Every file is strict JSON: a NaN or inf is written as null. Reading never raises on a damaged file
(bytes that are not UTF-8, not JSON, not the expected shape): the run reads as state "unknown" with the
reason, and every other run is unaffected.
evaluations/ is the exception: whoever evaluates a student (the job at its end, the app on demand)
writes its own step-STEP.json there, atomically, and no other file. notes.json is the app's alone (the
Runs tab's name, tags and notes), replaced atomically like status.json, so it is written while a worker
runs without either touching the other's files. The folder's name is the run id, never renamed: baselines
(spec.baseline_of) and folders refer to it; the display name lives in notes.json.
A folder whose name starts with "." is never a run (the manager renames a run that way while deleting it).

A job folder of kind cache_build (spec.json "kind") holds a teacher-cache build, not a training run: spec.json,
status.json, worker.log and worker.json only; the cache itself is written in the folder its spec names. The
job manager queues, cancels and resumes it like any job; the store does not index it (see ingest.py).
"""
from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import time
from pathlib import Path

from workbench.config.fields import text_problem
from workbench.config.paths import safe_exists, safe_is_dir

CONFIG = "config.json"
SPEC = "spec.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
LOG = "worker.log"
WORKER = "worker.json"
NOTES = "notes.json"
PROFILE = "profile.json"  # where the run's wall time went (engine/phase_clock.py)
CHECKPOINTS = "checkpoints"
STUDENT = "student"
EVALUATIONS = "evaluations"
TRAINER_STATE = "trainer_state.json"  # inside each checkpoint-STEP/, written by Trainer

# What a job does (spec.json "kind"): train a student, or build a teacher cache. A spec without one trains.
TRAINING, CACHE_BUILD = "training", "cache_build"

STATES = ("queued", "starting", "running", "succeeded", "failed", "cancelled", "interrupted")
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")

# What a user may write in notes.json: a name fit for a table cell, a few short tags, a paragraph.
NAME_MAX_CHARS = 200
TAGS_MAX = 20
TAG_MAX_CHARS = 40

# How a training process (the CLI's train command, a job's worker) ends, read by the job manager.
EXIT_FAILED = 1
EXIT_CONFIG = 2       # the config was refused before anything ran
EXIT_CANCELLED = 3    # stopped on request, with a checkpoint when a step finished


def is_run_dir(path: Path) -> bool:
    """A folder holding a run (or a job not yet started): what the manager, the store and the UI list."""
    return (not path.name.startswith(".") and safe_is_dir(path)
            and any(safe_exists(path / name) for name in (CONFIG, SPEC, STATUS)))


def job_kind(path: Path) -> str:
    """CACHE_BUILD for a teacher-cache build's job folder, else TRAINING (also for a damaged or missing spec)."""
    spec, _ = read_json(Path(path) / SPEC)
    return CACHE_BUILD if spec is not None and spec.get("kind") == CACHE_BUILD else TRAINING


def run_in(runs_dir: Path, run_id: str) -> "RunDir":
    """The run folder `run_id` directly inside `runs_dir`; KeyError for a name that is no such folder or
    would reach outside it ("../x", "a/b"), so a run id from a request never addresses another path. A
    link is no run folder either: "x" linking to "y" would have an action on x (delete) act on y."""
    runs_dir = Path(runs_dir).expanduser().resolve()
    named = runs_dir / str(run_id)
    try:
        path = named.resolve()
        found = path.parent == runs_dir and path.is_dir() and not named.is_symlink()
    except (OSError, RuntimeError, ValueError):  # a name the system refuses (too long, NUL)
        found = False
    if not isinstance(run_id, str) or not run_id or run_id.startswith(".") or not found:
        raise KeyError(f"no run {str(run_id)[:200]!r} in {runs_dir}")
    return RunDir(path)


def clean_notes(name, tags, notes) -> dict:
    """notes.json's content from what a user typed: name and notes as text, tags as a comma-separated text
    or a list. Anything else (a visitor may send any value) is a ValueError naming the field."""
    for field, value in (("name", name), ("notes", notes)):
        if not isinstance(value, str):
            raise ValueError(f"{field}: expected text")
        if problem := text_problem(value):
            raise ValueError(f"{field}: {problem}")
    name = " ".join(name.split())  # one line: it is a table cell
    if len(name) > NAME_MAX_CHARS:
        raise ValueError(f"name: at most {NAME_MAX_CHARS} characters")
    return {"name": name, "tags": _tag_list(tags), "notes": notes.strip()}


def _tag_list(tags) -> list[str]:
    if isinstance(tags, str):
        if problem := text_problem(tags):
            raise ValueError(f"tags: {problem}")
        tags = tags.split(",")
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError("tags: expected comma-separated text")
    found = list(dict.fromkeys(" ".join(tag.split()) for tag in tags if tag.strip()))  # in order, once each
    if len(found) > TAGS_MAX or any(len(tag) > TAG_MAX_CHARS or "," in tag for tag in found):
        raise ValueError(f"tags: at most {TAGS_MAX} tags of at most {TAG_MAX_CHARS} characters, separated by commas")
    return found


def json_safe(value):
    """A value as strict JSON can hold it: NaN and inf become null (a diverged loss must not break every
    reader that follows the standard), numpy and torch scalars become numbers, containers recurse."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if not isinstance(value, (str, bytes, int, float, bool, type(None))) and hasattr(value, "item"):
        try:
            value = value.item()
        except (TypeError, ValueError):  # an array of several values
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(data) -> str:
    """One strict JSON text (no NaN or Infinity tokens)."""
    return json.dumps(json_safe(data), default=str, allow_nan=False)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(json_safe(data), fh, indent=2, default=str, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> tuple[dict | None, str | None]:
    """(the mapping in a JSON file, None) or (None, why it cannot be read); (None, None) if there is no
    file. Never raises: bytes that are not UTF-8, text that is not JSON, JSON that is not an object,
    a folder in the file's place are all reasons."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except UnicodeDecodeError as err:
        return None, f"{Path(path).name} is not UTF-8 text (byte {err.start})"
    except (OSError, ValueError, RecursionError) as err:
        return None, f"{Path(path).name} is unreadable: {type(err).__name__}: {str(err)[:200]}"
    if not isinstance(data, dict):
        return None, f"{Path(path).name} holds {type(data).__name__}, not a JSON object"
    return data, None


def finite_number(value) -> float | None:
    """A finite number read from a run file, or None for anything else (a damaged file may hold any JSON:
    text, NaN, Infinity, an integer of 400 digits)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's numbers too (a table cell)
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _readable_json(path: Path) -> bool:
    return read_json(path)[0] is not None


def _records(data: bytes) -> list[dict]:
    """The JSON objects of metrics.jsonl's complete lines; a damaged line is skipped."""
    records = []
    for line in data.split(b"\n")[:-1]:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def student(self) -> Path:
        return self.path / STUDENT

    @property
    def evaluations(self) -> Path:
        return self.path / EVALUATIONS

    def evaluation_file(self, step: int) -> Path:
        return self.evaluations / f"step-{step}.json"

    def read_evaluations(self) -> list[dict]:
        """Every readable evaluation, by step (one being written is replaced atomically, never half-read);
        a damaged report is left out."""
        found = [report for path in self.evaluations.glob("step-*.json")
                 if (report := read_json(path)[0]) is not None and isinstance(report.get("step", 0), int)]
        return sorted(found, key=lambda e: e.get("step", 0))

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def read_status(self) -> dict:
        """The status; {} before there is one. A damaged file reads as {"state": "unknown", "error": why}."""
        status, problem = read_json(self.file(STATUS))
        if problem:
            return {"state": "unknown", "error": f"cannot read this run's status: {problem}"}
        if status is not None and status.get("state") not in STATES:
            return {**status, "state": "unknown",
                    "error": f"cannot read this run's status: state {str(status.get('state'))[:40]!r} is none of "
                             f"{', '.join(STATES)}"}
        return status or {}

    def write_status(self, state: str, **fields) -> dict:
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}; allowed: {', '.join(STATES)}")
        # A damaged status is replaced, not merged: the fields written now are all it can hold.
        status = {**(read_json(self.file(STATUS))[0] or {}), **fields, "state": state, "updated": time.time()}
        write_json_atomic(self.file(STATUS), status)
        return status

    def read_notes(self) -> dict:
        """{"name", "tags", "notes"}; empty ones when there is no file, and for a damaged one (any JSON)."""
        data, _ = read_json(self.file(NOTES))
        try:
            return clean_notes(data.get("name", ""), data.get("tags", []), data.get("notes", ""))
        except (AttributeError, ValueError):
            return {"name": "", "tags": [], "notes": ""}

    def write_notes(self, name, tags, notes) -> dict:
        """Replace notes.json atomically; ValueError (naming the field) for values it cannot hold."""
        cleaned = clean_notes(name, tags, notes)
        write_json_atomic(self.file(NOTES), cleaned)
        return cleaned

    def append_metrics(self, record: dict) -> None:
        self._append(METRICS, [record])

    def append_samples(self, records: list[dict]) -> None:
        self._append(SAMPLES, records)

    def _append(self, name: str, records: list[dict]) -> None:
        with open(self.file(name), "a", encoding="utf-8") as fh:
            fh.write("".join(dumps(record) + "\n" for record in records))
            fh.flush()

    def read_metrics(self) -> list[dict]:
        """All complete lines that hold a JSON object; a line being written right now (no newline yet) and
        a damaged one are skipped."""
        return _records(self._bytes(METRICS) or b"")

    def read_samples(self, tail_bytes: int | None = None) -> list[dict]:
        """samples.jsonl's records, read as metrics.jsonl's; with tail_bytes only those in the file's last
        tail_bytes (a poll's view: up to 64 completions of up to 32k tokens per log grow the file fast)."""
        if tail_bytes is None:
            return _records(self._bytes(SAMPLES) or b"")
        try:
            with open(self.file(SAMPLES), "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - tail_bytes))
                data = fh.read()
        except OSError:  # missing, a folder, unreadable: no samples to show
            return []
        # Read from the middle of the file, the first piece may be the end of a line: dropped.
        return _records(data.split(b"\n", 1)[1] if size > tail_bytes and b"\n" in data else data)

    def _bytes(self, name: str) -> bytes | None:
        try:
            return self.file(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def truncate_metrics_after(self, step: int) -> None:
        """On resume: drop records logged after the checkpoint (metrics and samples), which the resumed run
        logs again."""
        for name in (METRICS, SAMPLES):
            data = self._bytes(name)
            records = _records(data or b"")
            kept = [r for r in records if isinstance(r.get("step", 0), (int, float)) and r.get("step", 0) <= step]
            if data is None and name == SAMPLES or data is not None and len(kept) == data.count(b"\n"):
                continue  # nothing to drop: keep the file (and its inode, which incremental readers track)
            tmp = self.file(name + ".tmp")
            tmp.write_text("".join(dumps(r) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.file(name))

    @staticmethod
    def is_complete_checkpoint(path: Path) -> bool:
        """Trainer writes trainer_state.json last, so a process killed while saving leaves a folder
        without a readable one, which resume and every reader must skip."""
        return _readable_json(path / TRAINER_STATE)

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint."""
        found = [p for p in self.checkpoints.glob("checkpoint-*")
                 if p.name.split("-")[-1].isdigit() and self.is_complete_checkpoint(p)]
        return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None
