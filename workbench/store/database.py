"""The results store: one DuckDB file indexing every run directory (schema, writes, queries, export).

The app process is the file's only writer (DuckDB locks a file to one writing process; workers only
write run directories, and workbench/store/ingest.py copies them in). Inside the app, one connection is
shared and every call takes its own cursor, so the ingest thread and UI readers never block each other.
The database is an index, not the truth: a file from another schema version is dropped and rebuilt
from the run directories.

Tables (readers get pandas DataFrames):
  runs       one row per run: config columns flattened for filtering, status, times, the config as JSON,
             and what a user called it (name, tags as comma-separated text, notes: RUN/notes.json)
  metrics    one row per logged training point: step, every loss term, lr, grad norm, tokens/s
  evals      long format: (run, step, split, metric, value): held-out terms during training (split
             validation), end-of-run summaries (train), and student evaluations (evaluation, one set
             per evaluated step, from RUN/evaluations/)
  artifacts  (run, kind, path): config, log, checkpoints, the student, its adapter and model card
  studies    one row per study (RUNS/.studies/STUDY.json): its name, the fields it varies, and its plan
             (which run answers which setting, and each distilled run's baseline); runs.study names it
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import duckdb
import pandas as pd

SCHEMA_VERSION = 4
DB_NAME = "workbench.duckdb"

RUN_COLUMNS = {
    "run_id": "VARCHAR PRIMARY KEY", "path": "VARCHAR", "teacher": "VARCHAR", "student": "VARCHAR",
    "strategy": "VARCHAR", "divergence": "VARCHAR", "alpha": "DOUBLE", "temperature": "DOUBLE",
    "beta": "DOUBLE", "skew_lambda": "DOUBLE", "lr": "DOUBLE", "steps": "INTEGER", "batch_size": "INTEGER",
    "grad_accum": "INTEGER", "seq_len": "INTEGER", "seed": "INTEGER", "lora": "BOOLEAN", "data": "VARCHAR", "baseline_of": "VARCHAR", "study": "VARCHAR",
    "status": "VARCHAR", "step": "INTEGER", "error": "VARCHAR", "created": "TIMESTAMP",
    "started": "TIMESTAMP", "updated": "TIMESTAMP", "config": "JSON",
    # Text, not VARCHAR[]: a list column breaks the tables that show query results; SQL still finds a tag
    # with list_contains(string_split(tags, ', '), 'x').
    "name": "VARCHAR", "tags": "VARCHAR", "notes": "VARCHAR",
}
METRIC_COLUMNS = {
    "run_id": "VARCHAR", "seq": "INTEGER", "step": "INTEGER", "epoch": "DOUBLE", "time": "DOUBLE",
    "loss": "DOUBLE", "ce": "DOUBLE", "kd": "DOUBLE", "learning_rate": "DOUBLE", "grad_norm": "DOUBLE",
    "tokens_per_s": "DOUBLE", "terms": "JSON",
}
EVAL_COLUMNS = {"run_id": "VARCHAR", "seq": "INTEGER", "step": "INTEGER", "split": "VARCHAR",
                "metric": "VARCHAR", "value": "DOUBLE"}
ARTIFACT_COLUMNS = {"run_id": "VARCHAR", "kind": "VARCHAR", "path": "VARCHAR"}
STUDY_COLUMNS = {"study_id": "VARCHAR PRIMARY KEY", "name": "VARCHAR", "created": "TIMESTAMP", "fields": "JSON",
                 "runs": "JSON", "spec": "JSON", "cancelled": "TIMESTAMP"}
# Where incremental ingestion stopped in each run's files (see workbench/store/ingest.py).
INGEST_COLUMNS = {"run_id": "VARCHAR PRIMARY KEY", "metrics_inode": "BIGINT", "metrics_offset": "BIGINT",
                  "metrics_seq": "INTEGER", "signature": "VARCHAR"}

TABLES = {"runs": (RUN_COLUMNS, ""), "metrics": (METRIC_COLUMNS, ", PRIMARY KEY (run_id, seq)"),
          "evals": (EVAL_COLUMNS, ", PRIMARY KEY (run_id, split, seq, metric)"),
          "artifacts": (ARTIFACT_COLUMNS, ", PRIMARY KEY (run_id, path)"), "ingest_state": (INGEST_COLUMNS, ""),
          "studies": (STUDY_COLUMNS, "")}
USER_TABLES = ("runs", "metrics", "evals", "artifacts")
# What one query typed by a user may take of the shared connection.
QUERY_MAX_ROWS = 10_000
QUERY_TIMEOUT_S = 10.0
QUERY_MAX_CHARS = 100_000
QUERY_MAX_BYTES = 64 * 2**20


class StoreError(ValueError):
    pass


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._write_lock = threading.Lock()
        # Held while the connection is replaced (reopen_if_replaced): a reader asking for a cursor then
        # waits for the new file's tables instead of meeting a closed connection or an empty file.
        self._swap_lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.IOException as err:
            raise StoreError(f"cannot open {self.path}: {err}. Only one process may write it: stop the "
                             "other one (the app), or use another file.") from err
        self._opened = _file_id(self.path)
        self._migrate()
        # Queries typed by users run here: no file reads or writes through SQL (read_csv, COPY, ATTACH).
        self._con.execute("SET enable_external_access = false")

    def close(self) -> None:
        self._con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._swap_lock:
            return self._con.cursor()

    def reopen_if_replaced(self) -> bool:
        """If the file was deleted (or another put in its place) while this process held it, open the one at
        the path anew, empty: the ingest thread then rebuilds it from the run directories. Otherwise the app
        would go on writing to a deleted file that no later start can see. True when it reopened."""
        if _file_id(self.path) == self._opened:
            return False
        with self._write_lock, self._swap_lock:
            # Closing writes the old connection's WAL into the deleted file and removes it, so the new file
            # does not replay it. Queries running at this moment fail once; the next ones use the new file.
            self._con.close()
            self._open()
        return True

    def _migrate(self) -> None:
        cur = self._con.cursor()  # not cursor(): reopen_if_replaced holds the swap lock while it migrates
        cur.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        found = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if found and int(found[0]) != SCHEMA_VERSION:
            for table in TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {table}")  # an index: the ingest thread refills it
        for table, (columns, extra) in TABLES.items():
            body = ", ".join(f"{name} {kind}" for name, kind in columns.items())
            cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body}{extra})")
        cur.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    # -- writes (the ingest thread) ------------------------------------------------------------------
    def write(self, run_id: str, run_row: dict, metric_rows: list[dict], eval_rows: list[dict],
              artifacts: list[dict], state: dict, reset: bool, evaluation_rows: list[dict] = ()) -> None:
        """One run's changes in one transaction, so a reader never sees half an ingest and a crash
        mid-way leaves the old offsets, which the next ingest simply repeats. evaluation_rows replace
        all of the run's split 'evaluation' rows (a few files, re-read whole)."""
        with self._write_lock:
            cur = self.cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                if reset:
                    for table in ("metrics", "evals"):
                        cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
                _insert(cur, "runs", RUN_COLUMNS, [run_row], replace=True)
                _insert(cur, "metrics", METRIC_COLUMNS, metric_rows, replace=True)
                _insert(cur, "evals", EVAL_COLUMNS, eval_rows, replace=True)
                cur.execute("DELETE FROM evals WHERE run_id = ? AND split = 'evaluation'", [run_id])
                _insert(cur, "evals", EVAL_COLUMNS, list(evaluation_rows))
                cur.execute("DELETE FROM artifacts WHERE run_id = ?", [run_id])
                _insert(cur, "artifacts", ARTIFACT_COLUMNS, artifacts)
                _insert(cur, "ingest_state", INGEST_COLUMNS, [state], replace=True)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def forget(self, run_id: str) -> None:
        """A run directory that was deleted: drop every row of it."""
        with self._write_lock:
            cur = self.cursor()
            for table in (*USER_TABLES, "ingest_state"):
                cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])

    def write_studies(self, rows: list[dict]) -> None:
        """Replace the studies table with these rows (a few small records, re-read whole each pass)."""
        with self._write_lock:
            cur = self.cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                cur.execute("DELETE FROM studies")
                _insert(cur, "studies", STUDY_COLUMNS, rows)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def studies(self) -> pd.DataFrame:
        """Every study with its number of planned runs and how many have finished, newest first."""
        return self.cursor().execute("""
            SELECT s.study_id, s.name, s.created, json_array_length(s.runs) AS planned,
                   count(r.run_id) FILTER (WHERE r.status = 'succeeded') AS finished,
                   count(r.run_id) FILTER (WHERE r.status IN ('queued', 'starting', 'running')) AS active,
                   s.fields
            FROM studies s
            -- the runs the record plans and that say they are the study's: a run that merely claims a study
            -- (output.study typed into a config) is not counted in it
            LEFT JOIN runs r ON r.study = s.study_id
                AND list_contains(json_extract_string(s.runs, '$[*].run_id'), r.run_id)
            GROUP BY ALL ORDER BY s.created DESC""").df()

    def study(self, study_id: str) -> dict | None:
        row = self.cursor().execute("SELECT name, fields, runs, spec, cancelled FROM studies WHERE study_id = ?",
                                    [study_id]).fetchone()
        if row is None:
            return None
        return {"study_id": study_id, "name": row[0], "fields": json.loads(row[1]), "runs": json.loads(row[2]),
                "spec": json.loads(row[3]), "cancelled": row[4]}

    def study_runs(self, run_ids: list[str]) -> pd.DataFrame:
        """Per run: status, the last held-out CE during training, when it started and its last training log
        (Unix time), and its folder; the final evaluation's numbers come from final_evaluations."""
        return self.cursor().execute("""
            WITH last AS (SELECT run_id, arg_max(value, seq) AS heldout_ce FROM evals
                          WHERE split = 'validation' AND metric = 'ce' AND list_contains(?, run_id) GROUP BY run_id),
                 clock AS (SELECT run_id, min(time) AS first_log, max(time) AS last_log FROM metrics
                           WHERE list_contains(?, run_id) GROUP BY run_id)
            SELECT r.run_id, r.status, r.step, r.steps, r.seed, r.path, r.baseline_of, l.heldout_ce, r.started,
                   c.first_log, c.last_log
            FROM runs r LEFT JOIN last l USING (run_id) LEFT JOIN clock c USING (run_id)
            WHERE list_contains(?, r.run_id) ORDER BY r.run_id""", [list(run_ids)] * 3).df()

    def final_evaluations(self, run_ids: list[str]) -> pd.DataFrame:
        """(run_id, metric, value) of each run's latest student evaluation."""
        return self.cursor().execute("""
            SELECT run_id, metric, value FROM evals WHERE split = 'evaluation' AND list_contains(?, run_id)
            QUALIFY step = max(step) OVER (PARTITION BY run_id)""", [list(run_ids)]).df()

    def heldout_curves(self, run_ids: list[str]) -> pd.DataFrame:
        """Held-out CE during training with the Unix time of the training log at the same step (none at step
        0): (run_id, step, time, ce)."""
        return self.cursor().execute("""
            WITH t AS (SELECT run_id, step, max(time) AS time FROM metrics WHERE list_contains(?, run_id)
                       GROUP BY ALL)
            SELECT e.run_id, e.step, t.time, e.value AS ce
            FROM evals e LEFT JOIN t ON t.run_id = e.run_id AND t.step = e.step
            WHERE e.split = 'validation' AND e.metric = 'ce' AND list_contains(?, e.run_id)
            ORDER BY e.run_id, e.step""", [list(run_ids)] * 2).df()

    def ingest_state(self, run_id: str) -> dict | None:
        cur = self.cursor()
        row = cur.execute("SELECT * FROM ingest_state WHERE run_id = ?", [run_id]).fetchone()
        return dict(zip(INGEST_COLUMNS, row)) if row else None

    def run_ids(self) -> list[str]:
        return [r[0] for r in self.cursor().execute("SELECT run_id FROM ingest_state").fetchall()]

    # -- reads ----------------------------------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        return self.cursor().execute("SELECT * EXCLUDE (config) FROM runs ORDER BY created DESC NULLS LAST").df()

    def run_overview(self) -> pd.DataFrame:
        """What the Runs table adds to the jobs' states, in one query: each run's name and tags and its last
        logged loss and tokens/s (run_id, name, tags, loss, tokens_per_s)."""
        return self.cursor().execute(
            "WITH last AS (SELECT run_id, arg_max(loss, seq) AS loss, arg_max(tokens_per_s, seq) AS tokens_per_s "
            "FROM metrics GROUP BY run_id) "
            "SELECT r.run_id, r.name, r.tags, l.loss, l.tokens_per_s FROM runs r LEFT JOIN last l USING (run_id)").df()

    def metrics(self, run_ids: list[str] | None = None) -> pd.DataFrame:
        return self._for_runs("metrics", run_ids, "run_id, seq")

    def evals(self, run_ids: list[str] | None = None) -> pd.DataFrame:
        return self._for_runs("evals", run_ids, "run_id, split, seq, metric")

    def _for_runs(self, table: str, run_ids: list[str] | None, order: str) -> pd.DataFrame:
        if run_ids is None:
            return self.cursor().execute(f"SELECT * FROM {table} ORDER BY {order}").df()
        return self.cursor().execute(f"SELECT * FROM {table} WHERE list_contains(?, run_id) ORDER BY {order}",
                                     [list(run_ids)]).df()

    def compare(self, run_ids: list[str]) -> pd.DataFrame:
        """The chosen runs' configs next to their last held-out value of each metric and the headline
        numbers of their latest student evaluation."""
        return self.cursor().execute("""
            WITH last AS (
                SELECT run_id, metric, arg_max(value, seq) AS value FROM evals
                WHERE split = 'validation' AND list_contains(?, run_id) GROUP BY run_id, metric),
            judged AS (  -- every number from each run's latest evaluation, none from older ones
                SELECT run_id, metric, value FROM evals
                WHERE split = 'evaluation' AND list_contains(?, run_id)
                QUALIFY step = max(step) OVER (PARTITION BY run_id))
            SELECT r.run_id, r.status, r.step,
                   exp(max(CASE WHEN l.metric = 'ce' THEN l.value END)) AS heldout_perplexity,
                   max(CASE WHEN l.metric = 'loss' THEN l.value END) AS heldout_loss,
                   max(CASE WHEN l.metric = 'ce' THEN l.value END) AS heldout_ce,
                   max(CASE WHEN l.metric = 'kd' THEN l.value END) AS heldout_kd,
                   max(CASE WHEN j.metric = 'top1_agreement' THEN j.value END) AS top1_agreement,
                   max(CASE WHEN j.metric = 'forward_kl' THEN j.value END) AS kl_to_teacher,
                   -- the teacher's reverse KL on the student's own answers (eval/on_policy_measure.py)
                   max(CASE WHEN j.metric = 'onpolicy_rkl_greedy' THEN j.value END) AS own_answers_rkl_greedy,
                   max(CASE WHEN j.metric = 'onpolicy_rkl_sampled' THEN j.value END) AS own_answers_rkl_sampled,
                   max(CASE WHEN j.metric = 'student_ece' THEN j.value END) AS ece,
                   max(CASE WHEN j.metric = 'quality_retained' THEN j.value END) AS quality_retained,
                   max(CASE WHEN j.metric = 'size_ratio' THEN j.value END) AS times_smaller,
                   max(CASE WHEN j.metric = 'generation_speedup' THEN j.value END) AS times_faster,
                   r.strategy, r.divergence, r.alpha, r.temperature, r.beta, r.lr, r.steps, r.batch_size,
                   r.seq_len, r.seed, r.lora, r.teacher, r.student, r.baseline_of
            FROM runs r LEFT JOIN last l USING (run_id) LEFT JOIN judged j USING (run_id)
            WHERE list_contains(?, r.run_id)
            GROUP BY ALL ORDER BY r.run_id""", [list(run_ids)] * 3).df()

    def planned_steps(self, run_id: str) -> int | None:
        """The steps a run was configured for (train.max_steps), if the store knows the run."""
        found = self.cursor().execute("SELECT steps FROM runs WHERE run_id = ?", [run_id]).fetchone()
        return found[0] if found else None

    def baselines(self, run_ids: list[str]) -> list[str]:
        """CE-only baseline runs of these runs that are not among them."""
        return [r[0] for r in self.cursor().execute(
            "SELECT run_id FROM runs WHERE list_contains(?, baseline_of) AND NOT list_contains(?, run_id) "
            "ORDER BY run_id", [list(run_ids), list(run_ids)]).fetchall()]

    def query(self, sql: str, max_rows: int = QUERY_MAX_ROWS, timeout_s: float = QUERY_TIMEOUT_S) -> pd.DataFrame:
        """A user's query: exactly one SELECT (or WITH ... SELECT) statement, nothing that writes. At most
        max_rows rows and QUERY_MAX_BYTES come back (frame.attrs["truncated"] says whether there were more
        rows), and a query still running after timeout_s is interrupted, so none holds the shared connection
        for long. DuckDB checks for the interrupt between chunks of work: one huge expression (a list of
        10**8 items) can outrun the limit by its own duration."""
        if not isinstance(sql, str) or len(sql) > QUERY_MAX_CHARS:
            raise StoreError(f"query: give one SELECT statement of at most {QUERY_MAX_CHARS:,} characters")
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as err:
            raise StoreError(f"query: {err}") from err
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise StoreError("query: only a single SELECT statement is allowed")
        # New lines around it: a trailing -- comment must not swallow the closing parenthesis. The wrapper
        # also keeps out statements DuckDB classifies as SELECT but that write (WITH d AS (DELETE ...)).
        text = statements[0].query.strip().rstrip(";")
        text = f"SELECT * FROM (\n{text}\n) AS user_query LIMIT {int(max_rows) + 1}"
        cur = self.cursor()
        timer = threading.Timer(timeout_s, cur.interrupt)
        timer.start()
        try:
            frame = cur.execute(text).df()
        except duckdb.InterruptException:
            raise StoreError(f"query: stopped after {timeout_s:g} s (the time limit); narrow it down") from None
        except duckdb.Error as err:
            raise StoreError(f"query: {err}") from err
        finally:
            timer.cancel()
            cur.close()
        if frame.memory_usage(deep=True).sum() > QUERY_MAX_BYTES:
            raise StoreError(f"query: the result is over {QUERY_MAX_BYTES // 2**20} MiB; select fewer or smaller "
                             "values")
        truncated = len(frame) > max_rows
        if truncated:
            frame = frame.iloc[:max_rows]
        frame.attrs["truncated"] = truncated
        return frame


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def export_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """A DataFrame to .csv or .parquet, through a private in-memory DuckDB (no pyarrow needed; the main
    connection may not touch files)."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("csv", "parquet"):
        raise StoreError(f"export: the file must end in .csv or .parquet, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect() as scratch:
        scratch.register("result", frame)
        options = "(FORMAT csv, HEADER true)" if kind == "csv" else "(FORMAT parquet)"
        scratch.execute(f"COPY result TO '{_sql_string(path)}' {options}")
    return path


def _sql_string(path: Path) -> str:
    return str(path).replace("'", "''")


def _insert(cur, table: str, columns: dict, rows: list[dict], replace: bool = False) -> None:
    """Bulk insert through a DataFrame: one statement, not one per row."""
    if not rows:
        return
    frame = pd.DataFrame([{name: row.get(name) for name in columns} for row in rows], columns=list(columns))
    cur.register("_rows", frame)
    try:
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        cur.execute(f"{verb} INTO {table} SELECT {', '.join(columns)} FROM _rows")
    finally:
        cur.unregister("_rows")
