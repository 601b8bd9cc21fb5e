"""The study files: RUNS/.studies/STUDY_ID.json, one per study, written by jobs/study.py and read by ingest.

A study's record says what was asked (its spec and base config) and which run answers which setting; the
runs themselves stay ordinary run directories (each one's config names its study in output.study), so the
store can be rebuilt from the runs folder alone. The folder is hidden so that no run can be named like it.

    {"study_id", "name", "created", "fields": [field paths varied], "spec": {grid, settings, baselines},
     "base": {config}, "cancelled": time or null,
     "runs": [{"run_id", "role": "distilled" | "baseline", "setting": {field: value}, "baseline": run_id | null}]}
"""
from __future__ import annotations

import re
from pathlib import Path

from workbench.store.rundir import read_json, write_json_atomic

STUDIES_DIR = ".studies"
STUDY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def studies_dir(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / STUDIES_DIR


def study_file(runs_dir: str | Path, study_id: str) -> Path:
    """The record of `study_id`; KeyError for an id that is no study name (it comes from requests too)."""
    if not isinstance(study_id, str) or not STUDY_ID.fullmatch(study_id) or ".." in study_id:
        raise KeyError(f"no study {str(study_id)[:80]!r}")
    return studies_dir(runs_dir) / f"{study_id}.json"


def read_study(runs_dir: str | Path, study_id: str) -> dict:
    """KeyError for no such study, ValueError for a record that cannot be read (says why)."""
    path = study_file(runs_dir, study_id)
    record, problem = read_json(path)
    if problem:
        raise ValueError(f"study {study_id}: {problem}")
    if record is None:
        raise KeyError(f"no study {study_id!r} in {runs_dir}")
    return record


def write_study(runs_dir: str | Path, record: dict) -> Path:
    path = study_file(runs_dir, record["study_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


def study_records(runs_dir: str | Path) -> tuple[list[dict], list[str]]:
    """Every readable study record, and a line for each file that could not be read (never raises)."""
    folder = studies_dir(runs_dir)
    records, problems = [], []
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return [], []
    for path in paths:
        record, problem = read_json(path)
        if problem or record is None or record.get("study_id") != path.stem or not isinstance(record.get("runs"), list):
            problems.append(f"{path.name}: {problem or 'not a study record'}")
        else:
            records.append(record)
    return records, problems
