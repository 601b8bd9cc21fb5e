"""Run directories -> the DuckDB store, incrementally and idempotently.

For each run the store remembers how far into metrics.jsonl it has read (byte offset + the file's
inode) and a signature of the other files. Ingesting again reads only lines appended since; a run
whose files did not change costs a few stat calls. A resumed run rewrites metrics.jsonl (new inode,
lines past the checkpoint dropped): its metric rows are then read again from the start. Rows are
numbered by their line in the file, so an incremental database equals one rebuilt from scratch.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path

from workbench.rundir import CONFIG, LOG, METRICS, SPEC, STATUS, TRAINER_STATE, RunDir, is_run_dir
from workbench.store import DB_NAME, Store

log = logging.getLogger(__name__)

METRIC_TERMS = ("loss", "ce", "kd", "learning_rate", "grad_norm", "tokens_per_s")
_BOOKKEEPING = {"step", "epoch", "time"}
_TIMING = ("runtime", "per_second", "preparation_time")


def _timestamp(value) -> datetime | None:
    return datetime.fromtimestamp(value) if isinstance(value, (int, float)) else None


def _config(run: RunDir) -> dict:
    for name, key in ((CONFIG, None), (SPEC, "config")):
        try:
            data = json.loads(run.file(name).read_text(encoding="utf-8"))
            return data[key] if key else data
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            continue
    return {}


def run_row(run: RunDir) -> dict:
    config, status = _config(run), run.read_status()
    part = lambda name: config.get(name) or {}  # noqa: E731 - five lookups below read better this way
    teacher, student, loss, train = part("teacher"), part("student"), part("loss"), part("train")
    try:
        spec = json.loads(run.file(SPEC).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        spec = {}
    created = spec.get("created") or status.get("queued_at") or status.get("started")
    return {
        "run_id": run.path.name, "path": str(run.path), "teacher": teacher.get("name_or_path"),
        "student": (f"{teacher.get('name_or_path')} ({student['init_from_teacher_layers']} layers)"
                    if student.get("init_from_teacher_layers") else student.get("name_or_path")),
        "strategy": config.get("strategy"),
        "divergence": loss.get("divergence"), "alpha": loss.get("alpha"), "temperature": loss.get("temperature"),
        "beta": loss.get("beta"), "skew_lambda": loss.get("skew_lambda"), "lr": train.get("lr"),
        "steps": train.get("max_steps"), "batch_size": train.get("batch_size"), "grad_accum": train.get("grad_accum"),
        "seq_len": train.get("seq_len"), "seed": train.get("seed"),
        "lora": (student.get("lora") or {}).get("enabled"), "data": part("data").get("source"),
        "baseline_of": spec.get("baseline_of"),
        "status": status.get("state"), "step": status.get("step"), "error": status.get("error"),
        "created": _timestamp(created), "started": _timestamp(status.get("started")),
        "updated": _timestamp(status.get("updated")), "config": json.dumps(config) if config else None,
    }


def parse_record(run_id: str, seq: int, record: dict) -> tuple[dict | None, list[dict]]:
    """One metrics.jsonl line -> (a metrics row for a training log point, eval rows in long format)."""
    step = record.get("step")
    numbers = {k: v for k, v in record.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _BOOKKEEPING}
    evals = [{"run_id": run_id, "seq": seq, "step": step, "split": "validation", "metric": k[5:], "value": v}
             for k, v in numbers.items() if k.startswith("eval_") and not any(t in k for t in _TIMING)]
    if "loss" not in record:
        # The end-of-training summary (train_loss): a value about the whole run, kept with the evals.
        evals += [{"run_id": run_id, "seq": seq, "step": step, "split": "train", "metric": k[6:], "value": v}
                  for k, v in numbers.items() if k.startswith("train_")]
        return None, evals
    row = {"run_id": run_id, "seq": seq, "step": step, "epoch": record.get("epoch"), "time": record.get("time"),
           **{term: numbers.get(term) for term in METRIC_TERMS}, "terms": json.dumps(numbers)}
    return row, evals


def evaluation_rows(run: RunDir) -> list[dict]:
    """Each evaluation report's numbers (RUN/evaluations/step-STEP.json) as split 'evaluation' rows."""
    rows = []
    for report in run.read_evaluations():
        step = report.get("step")
        rows += [{"run_id": run.path.name, "seq": step, "step": step, "split": "evaluation", "metric": k, "value": v}
                 for k, v in (report.get("metrics") or {}).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return rows


def artifacts(run: RunDir) -> list[dict]:
    found = [("config", run.file(CONFIG)), ("spec", run.file(SPEC)), ("log", run.file(LOG)),
             ("metrics", run.file(METRICS)), ("model_card", run.student / "README.md"),
             ("adapter", run.student / "adapter")]
    if (run.student / "config.json").exists():
        found.append(("student", run.student))
    found += [("checkpoint", p) for p in sorted(run.checkpoints.glob("checkpoint-*"))
              if run.is_complete_checkpoint(p)]
    found += [("evaluation", p) for p in sorted(run.evaluations.glob("step-*.json"))]
    return [{"run_id": run.path.name, "kind": kind, "path": str(path)} for kind, path in found if path.exists()]


def _signature(run: RunDir) -> str:
    parts = []
    for name in (CONFIG, SPEC, STATUS, METRICS):
        try:
            st = run.file(name).stat()
            parts.append(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append("-")
    # with whether each is complete yet: Trainer writes trainer_state.json into it last
    parts += [f"{p.name}:{(p / TRAINER_STATE).exists()}" for p in sorted(run.checkpoints.glob("checkpoint-*"))]
    parts += [f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(run.evaluations.glob("step-*.json"))]
    parts.append(str((run.student / "config.json").exists()))
    return "|".join(parts)


class Ingestor:
    def __init__(self, store: Store, runs_dir: str | Path):
        self.store = store
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self._lock = threading.Lock()

    def ingest_run(self, path: str | Path) -> int:
        """Bring one run up to date; returns the number of new metric and eval rows."""
        run = RunDir(Path(path).resolve())
        run_id = run.path.name
        with self._lock:
            state = self.store.ingest_state(run_id) or {}
            signature = _signature(run)
            if state.get("signature") == signature:
                return 0
            metric_rows, eval_rows, new_state, reset = self._read_metrics(run, state)
            new_state["signature"] = signature
            self.store.write(run_id, run_row(run), metric_rows, eval_rows, artifacts(run), new_state, reset,
                             evaluation_rows(run))
            return len(metric_rows) + len(eval_rows)

    def _read_metrics(self, run: RunDir, state: dict) -> tuple[list, list, dict, bool]:
        run_id = run.path.name
        try:
            st = run.file(METRICS).stat()
            inode, size = st.st_ino, st.st_size
        except FileNotFoundError:
            inode, size = None, 0
        offset, seq = state.get("metrics_offset") or 0, state.get("metrics_seq") or 0
        reset = inode != state.get("metrics_inode") or size < offset
        if reset:
            offset, seq = 0, 0
        metric_rows, eval_rows = [], []
        if inode is not None and size > offset:
            with open(run.file(METRICS), "rb") as fh:
                fh.seek(offset)
                chunk = fh.read(size - offset)
            complete = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits for the next pass
            for line in complete.split(b"\n")[:-1]:
                try:
                    metric, evals = parse_record(run_id, seq, json.loads(line))
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                    log.warning("%s: skipping unreadable metrics line %d", run.path, seq)
                    metric, evals = None, []
                seq += 1
                if metric:
                    metric_rows.append(metric)
                eval_rows += evals
            offset += len(complete)
        new_state = {"run_id": run_id, "metrics_inode": inode, "metrics_offset": offset, "metrics_seq": seq}
        return metric_rows, eval_rows, new_state, reset

    def ingest_all(self) -> int:
        """Every run directory under runs_dir; runs whose directory is gone are dropped."""
        present = {p.name: p for p in sorted(self.runs_dir.iterdir()) if is_run_dir(p)} \
            if self.runs_dir.is_dir() else {}
        for gone in set(self.store.run_ids()) - set(present):
            self.store.forget(gone)
        return sum(self.ingest_run(path) for path in present.values())


class IngestLoop:
    """The app's background ingestion: every `interval` seconds, or at once after `wake()`."""

    def __init__(self, ingestor: Ingestor, interval: float = 1.0):
        self.ingestor = ingestor
        self.interval = interval
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ingest", daemon=True)

    def start(self) -> "IngestLoop":
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.ingestor.ingest_all()
                self.last_error = None
            except Exception as err:  # noqa: BLE001 - keep ingesting; the UI shows the last error
                self.last_error = f"{type(err).__name__}: {err}"
                log.exception("ingest failed")
            self._wake.wait(self.interval)
            self._wake.clear()


def rebuild(runs_dir: str | Path, db_path: str | Path | None = None) -> tuple[Path, int]:
    """Build a fresh database from the run directories, then swap it in (the old one stays intact until
    the new one is complete). Refuses while another process (the app) holds the file."""
    runs_dir = Path(runs_dir).expanduser().resolve()
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs folder not found: {runs_dir}")
    db_path = Path(db_path) if db_path else runs_dir / DB_NAME
    if db_path.exists():
        Store(db_path).close()  # raises StoreError naming the holder if the app has it open
    tmp = db_path.with_name(db_path.name + ".rebuild")
    for stale in (tmp, Path(f"{tmp}.wal")):
        stale.unlink(missing_ok=True)
    store = Store(tmp)
    try:
        rows = Ingestor(store, runs_dir).ingest_all()
    finally:
        store.close()
    Path(f"{db_path}.wal").unlink(missing_ok=True)  # a WAL of the old file must not replay onto the new one
    os.replace(tmp, db_path)
    return db_path, rows
