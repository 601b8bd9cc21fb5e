"""Teacher-written datasets (workbench/hardlabel/generation.py) as the app shows them: the ones in the runs folder
(each run's RUN/generated/, and RUNS/datasets/NAME/ from `python -m workbench generate`), and one
dataset's rows with length statistics."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from workbench.hardlabel.generation import COMPLETIONS, GENERATED, read_manifest

DATASETS = "datasets"
VIEW_COLUMNS = ["prompt", "completion", "finish_reason", "completion_tokens", "sample"]
MAX_VIEW_BYTES = 64 * 2**20  # a view reads at most this much of a file (the stats say when it stopped)


def dataset_folders(runs_dir: Path) -> list[Path]:
    runs_dir = Path(runs_dir)
    return [*runs_dir.glob(f"*/{GENERATED}"), *runs_dir.glob(f"{DATASETS}/*")]


def list_generated(runs_dir: Path) -> list[dict]:
    """Every folder holding completions and a manifest, newest first, with what choosing one needs."""
    out = []
    for folder in dataset_folders(runs_dir):
        try:
            out.append(_dataset_row(folder))
        except Exception:  # noqa: BLE001 - a damaged dataset is left out; the others are listed
            continue
    return sorted((r for r in out if r is not None), key=lambda r: -r["started"])


def _dataset_row(folder: Path) -> dict | None:
    manifest = read_manifest(folder)
    path = folder / COMPLETIONS
    if not isinstance(manifest, dict) or not path.is_file():
        return None
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    name = folder.parent.name if folder.name == GENERATED else folder.name
    return {"name": name, "path": str(path), "teacher": settings.get("teacher"), "backend": settings.get("backend"),
            "rows": _count_rows(path), "of": manifest.get("rows_total"), "temperature": settings.get("temperature"),
            "complete": bool(manifest.get("complete")), "MB": round(path.stat().st_size / 2**20, 3),
            "started": float(manifest.get("started", 0))}


def _count_rows(path: Path) -> int:
    """Complete lines, counted in 1 MiB chunks (a dataset still being written counts what it has)."""
    count = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def read_rows(path: Path, max_bytes: int = MAX_VIEW_BYTES) -> tuple[pd.DataFrame, bool]:
    """(the rows as a frame, whether the file was longer than max_bytes); a torn last line is skipped."""
    rows, truncated = [], False
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        data, truncated = data[:max_bytes], True
    for line in data.split(b"\n"):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return pd.DataFrame(rows), truncated


def length_stats(frame: pd.DataFrame) -> dict:
    """Word counts of prompts and completions (mean, median, max), and how completions ended."""
    if frame.empty:
        return {"rows": 0}
    words = {col: frame[col].astype(str).str.split().str.len() for col in ("prompt", "completion")}
    stats = {"rows": len(frame), "prompts": int(frame["prompt_index"].nunique()) if "prompt_index" in frame else None}
    for col, counts in words.items():
        stats[col] = {"mean": round(float(counts.mean()), 1), "median": float(counts.median()),
                      "max": int(counts.max())}
    if "finish_reason" in frame:
        stats["finish_reason"] = {str(k): int(v) for k, v in frame["finish_reason"].value_counts().items()}
    stats["empty_completions"] = int((frame["completion"].astype(str).str.strip() == "").sum())
    return stats
