"""Run directories -> the DuckDB store, incrementally and idempotently.

For each run the store remembers how far into metrics.jsonl it has read (byte offset + the file's
inode) and a signature of the other files. Ingesting again reads only lines appended since; a run
whose files did not change costs a few stat calls. A resumed run rewrites metrics.jsonl (new inode,
lines past the checkpoint dropped): its metric rows are then read again from the start. Rows are
numbered by their line in the file, so an incremental database equals one rebuilt from scratch.
Study records (RUNS/.studies/) are few and small: the studies table is rewritten whole when one changes.

A teacher-cache build's job folder (rundir.job_kind CACHE_BUILD) is not ingested. The store indexes training
runs: every reader of its runs table (Compare, the run pickers, baselines, studies, the overview) means runs
with a student, metrics and evaluations, and a cache build has none of them; listed there it would be a
"run" with no metrics that each reader had to filter out. The Runs tab lists jobs from the job manager (their
folders), so a cache build still shows there, marked as one.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path

from workbench.config.paths import safe_exists
from workbench.config.strategy_sections import ON_POLICY_LOSS
from workbench.store.database import DB_NAME, Store
from workbench.store.rundir import (
    CONFIG,
    LOG,
    METRICS,
    NOTES,
    SPEC,
    STATUS,
    TRAINER_STATE,
    TRAINING,
    RunDir,
    dumps,
    is_run_dir,
    job_kind,
    read_json,
)
from workbench.store.studies import studies_dir, study_records

log = logging.getLogger(__name__)

METRIC_TERMS = ("loss", "ce", "kd", "learning_rate", "grad_norm", "tokens_per_s")
_BOOKKEEPING = {"step", "epoch", "time"}
_TIMING = ("runtime", "per_second", "preparation_time")


def _timestamp(value) -> datetime | None:
    number = _double(value)
    try:
        return datetime.fromtimestamp(number) if number is not None else None
    except (OverflowError, OSError, ValueError):
        return None


def _double(value) -> float | None:
    """A number for a DOUBLE column; anything else a damaged file may hold (text, 10**400) is None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _integer(value) -> int | None:
    """A whole number for an INTEGER column (32-bit), else None."""
    number = _double(value)
    return int(number) if number is not None and number.is_integer() and abs(number) < 2**31 else None


def _flag(value) -> bool | None:
    return value if isinstance(value, bool) else None


def _text(value) -> str | None:
    return None if value is None else str(value)[:10_000]


def _section(data: dict, name: str) -> dict:
    found = data.get(name)
    return found if isinstance(found, dict) else {}


def _config(run: RunDir) -> dict:
    for name, key in ((CONFIG, None), (SPEC, "config")):
        data, _ = read_json(run.file(name))
        if data is not None and key is not None:
            data = data.get(key)
        if isinstance(data, dict):
            return data
    return {}


def run_row(run: RunDir) -> dict:
    config, status, notes = _config(run), run.read_status(), run.read_notes()
    teacher, student, loss, train = (_section(config, name) for name in ("teacher", "student", "loss", "train"))
    if config.get("strategy") == "on_policy":  # it trains with its own section's α, T and β (a JSD)
        own = _section(config, "on_policy")
        loss = {**loss, "divergence": "jsd", **{field: own.get(name) for field, name in ON_POLICY_LOSS.items()}}
    if loss.get("cross_tokenizer") in ("uld", "hybrid"):  # the distance across tokenizers replaces the divergence
        loss = {**loss, "divergence": loss["cross_tokenizer"]}
    spec = read_json(run.file(SPEC))[0] or {}
    created = spec.get("created") or status.get("queued_at") or status.get("started")
    layers = _integer(student.get("init_from_teacher_layers"))
    return {
        "run_id": run.path.name, "path": str(run.path), "teacher": _text(teacher.get("name_or_path")),
        "student": (f"{teacher.get('name_or_path')} ({layers} layers)" if layers
                    else _text(student.get("name_or_path"))),
        "strategy": _text(config.get("strategy")),
        "divergence": _text(loss.get("divergence")), "alpha": _double(loss.get("alpha")),
        "temperature": _double(loss.get("temperature")), "beta": _double(loss.get("beta")),
        "skew_lambda": _double(loss.get("skew_lambda")), "lr": _double(train.get("lr")),
        "steps": _integer(train.get("max_steps")), "batch_size": _integer(train.get("batch_size")),
        "grad_accum": _integer(train.get("grad_accum")), "seq_len": _integer(train.get("seq_len")),
        "seed": _integer(train.get("seed")), "lora": _flag(_section(student, "lora").get("enabled")),
        "data": _text(_section(config, "data").get("source")), "baseline_of": _text(spec.get("baseline_of")),
        "study": _text(_section(config, "output").get("study")),
        "status": _text(status.get("state")), "step": _integer(status.get("step")), "error": _text(status.get("error")),
        "created": _timestamp(created), "started": _timestamp(status.get("started")),
        "updated": _timestamp(status.get("updated")), "config": dumps(config) if config else None,
        "name": notes["name"], "tags": ", ".join(notes["tags"]), "notes": notes["notes"],
    }


def study_row(record: dict) -> dict:
    return {"study_id": record["study_id"], "name": _text(record.get("name")),
            "created": _timestamp(record.get("created")), "fields": dumps(record.get("fields") or []),
            "runs": dumps(record["runs"]), "spec": dumps(record.get("spec") or {}),
            "cancelled": _timestamp(record.get("cancelled"))}


def parse_record(run_id: str, seq: int, record: dict) -> tuple[dict | None, list[dict]]:
    """One metrics.jsonl line -> (a metrics row for a training log point, eval rows in long format)."""
    step = _integer(record.get("step"))
    numbers = {k: v for k, v in ((k, _double(v)) for k, v in record.items()) if v is not None and k not in _BOOKKEEPING}
    evals = [{"run_id": run_id, "seq": seq, "step": step, "split": "validation", "metric": k[5:], "value": v}
             for k, v in numbers.items() if k.startswith("eval_") and not any(t in k for t in _TIMING)]
    if "loss" not in record:
        # The end-of-training summary (train_loss): a value about the whole run, kept with the evals.
        evals += [{"run_id": run_id, "seq": seq, "step": step, "split": "train", "metric": k[6:], "value": v}
                  for k, v in numbers.items() if k.startswith("train_")]
        return None, evals
    row = {"run_id": run_id, "seq": seq, "step": step, "epoch": _double(record.get("epoch")),
           "time": _double(record.get("time")), **{term: numbers.get(term) for term in METRIC_TERMS},
           "terms": dumps(numbers)}
    return row, evals


def evaluation_rows(run: RunDir) -> list[dict]:
    """Each evaluation report's numbers (RUN/evaluations/step-STEP.json) as split 'evaluation' rows."""
    rows = []
    for report in run.read_evaluations():
        step = report.get("step")
        metrics = report.get("metrics")
        rows += [{"run_id": run.path.name, "seq": step, "step": step, "split": "evaluation", "metric": k, "value": v}
                 for k, v in ((k, _double(v)) for k, v in (metrics if isinstance(metrics, dict) else {}).items())
                 if v is not None]
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


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
        return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:  # gone since it was listed
        return "-"


def _signature(run: RunDir) -> str:
    parts = [_stamp(run.file(name)) for name in (CONFIG, SPEC, STATUS, METRICS, NOTES)]
    # with whether each is complete yet: Trainer writes trainer_state.json into it last
    parts += [f"{p.name}:{safe_exists(p / TRAINER_STATE)}" for p in sorted(run.checkpoints.glob("checkpoint-*"))]
    parts += [f"{p.name}:{_stamp(p)}" for p in sorted(run.evaluations.glob("step-*.json"))]
    parts.append(str((run.student / "config.json").exists()))
    return "|".join(parts)


class Ingestor:
    def __init__(self, store: Store, runs_dir: str | Path):
        self.store = store
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self._lock = threading.Lock()
        self._studies_seen: str | None = None
        self._kinds: dict[str, tuple[str, str]] = {}  # run id -> (spec.json's stamp, job kind): read once per spec

    def ingest_run(self, path: str | Path) -> int:
        """Bring one run up to date; returns the number of new metric and eval rows."""
        run = RunDir(Path(path).resolve())
        run_id = run.path.name
        with self._lock:
            if not is_run_dir(run.path):  # deleted since it was listed: no row may bring it back
                self.store.forget(run_id)
                return 0
            if self._kind(run) != TRAINING:  # a cache build: see the module docstring
                return 0
            state = self.store.ingest_state(run_id) or {}
            try:
                signature = _signature(run)
            except OSError as err:  # a folder this process may not read
                signature = f"unreadable: {err}"
            if state.get("signature") == signature:
                return 0
            try:
                metric_rows, eval_rows, new_state, reset = self._read_metrics(run, state)
                new_state["signature"] = signature
                self.store.write(run_id, run_row(run), metric_rows, eval_rows, artifacts(run), new_state, reset,
                                 evaluation_rows(run))
            except Exception as err:  # noqa: BLE001 - one damaged run must not stop the others being ingested
                log.warning("%s: cannot ingest: %s", run.path, err)
                reason = f"cannot ingest this run: {type(err).__name__}: {str(err)[:300]}"
                self.store.write(run_id, {"run_id": run_id, "path": str(run.path), "status": "unknown",
                                          "error": reason}, [], [], [],
                                 {"run_id": run_id, "signature": signature}, True)
                return 0
            return len(metric_rows) + len(eval_rows)

    def _kind(self, run: RunDir) -> str:
        stamp = _stamp(run.file(SPEC))
        known = self._kinds.get(run.path.name)
        if known is None or known[0] != stamp:
            known = self._kinds[run.path.name] = (stamp, job_kind(run.path))
        return known[1]

    def forget(self, run_id: str) -> None:
        """Drop a deleted run's rows once no ingest of it is under way (one would write them back)."""
        with self._lock:
            self.store.forget(run_id)

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
                except (ValueError, RecursionError, AttributeError):  # not UTF-8, not JSON, not an object
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
        self.ingest_studies()
        return sum(self.ingest_run(path) for path in present.values())

    def ingest_studies(self) -> None:
        """The studies table from RUNS/.studies/, rewritten whole when any record changed."""
        folder = studies_dir(self.runs_dir)
        try:
            seen = "|".join(_stamp(p) for p in sorted(folder.iterdir())) if folder.is_dir() else ""
        except OSError as err:
            seen = f"unreadable: {err}"
        if seen == self._studies_seen:
            return
        records, problems = study_records(self.runs_dir)
        for problem in problems:
            log.warning("%s: %s", folder, problem)
        self.store.write_studies([study_row(r) for r in records])
        self._studies_seen = seen


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
                if self.ingestor.store.reopen_if_replaced():
                    log.warning("%s was deleted while the app ran: rebuilding it from the run directories",
                                self.ingestor.store.path)
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
    except BaseException:
        store.close()
        for stale in (tmp, Path(f"{tmp}.wal")):  # a failed rebuild leaves the old database as the only one
            stale.unlink(missing_ok=True)
        raise
    store.close()
    Path(f"{db_path}.wal").unlink(missing_ok=True)  # a WAL of the old file must not replay onto the new one
    os.replace(tmp, db_path)
    return db_path, rows
