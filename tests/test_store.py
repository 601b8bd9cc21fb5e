"""The DuckDB store and ingestion on synthetic run directories: idempotent, incremental, equal to a
rebuild, read-only user queries, export, schema versions, and the one-writer rule."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from workbench.config.schema import DistillConfig
from workbench.store.database import Store, StoreError, export_frame
from workbench.store.ingest import Ingestor, rebuild
from workbench.store.rundir import CONFIG, METRICS, RunDir, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def make_run(root: Path, name: str, steps: int, alpha: float = 0.5, state: str = "succeeded") -> RunDir:
    run = RunDir(root / name).create()
    config = DistillConfig.from_dict({"teacher": {"name_or_path": "org/teacher"},
                                      "student": {"name_or_path": "org/student"},
                                      "data": {"source": "corpus.txt"}, "loss": {"alpha": alpha}})
    config.save(run.file(CONFIG))
    run.append_metrics({"step": 0, "eval_loss": 3.0, "eval_ce": 4.0, "eval_kd": 2.0, "eval_runtime": 0.5})
    add_steps(run, 1, steps)
    run.write_status(state, step=steps, total_steps=steps, started=1.7e9)
    return run


def add_steps(run: RunDir, first: int, last: int, loss: float = 3.0) -> None:
    for step in range(first, last + 1):
        run.append_metrics({"step": step, "epoch": step / 100, "time": 1.7e9 + step, "loss": loss - step / 100,
                            "ce": 4.0, "kd": 2.0, "learning_rate": 1e-3, "grad_norm": 0.5, "tokens_per_s": 900.0})


def tables(store: Store) -> dict[str, pd.DataFrame]:
    return {"runs": store.cursor().execute("SELECT * FROM runs ORDER BY run_id").df(),
            "metrics": store.metrics(), "evals": store.evals(),
            "artifacts": store.cursor().execute("SELECT * FROM artifacts ORDER BY run_id, path").df()}


@pytest.fixture
def store(tmp_path):
    db = Store(tmp_path / "db" / "results.duckdb")
    yield db
    db.close()


def test_ingest_is_idempotent_and_flattens_the_config(tmp_path, store):
    make_run(tmp_path, "a", 5, alpha=0.25)
    make_run(tmp_path, "b", 3)
    ingestor = Ingestor(store, tmp_path)
    assert ingestor.ingest_all() == 5 + 3 + 2 * 3  # metric rows + 3 eval terms per run
    assert ingestor.ingest_all() == 0
    before = tables(store)
    os.utime(tmp_path / "a" / METRICS)  # touched, same content: re-read finds nothing new
    ingestor.ingest_all()
    for name, frame in tables(store).items():
        pd.testing.assert_frame_equal(frame, before[name])
    runs = store.runs().set_index("run_id")
    assert runs.loc["a", "alpha"] == 0.25 and runs.loc["a", "divergence"] == "forward_kl"
    assert runs.loc["a", "teacher"] == "org/teacher" and runs.loc["a", "status"] == "succeeded"
    assert set(store.evals(["b"]).metric) == {"loss", "ce", "kd"}  # eval_runtime is not a result


def test_only_complete_lines_are_ingested_and_each_once(tmp_path, store):
    run = make_run(tmp_path, "a", 2, state="running")
    ingestor = Ingestor(store, tmp_path)
    ingestor.ingest_all()
    with open(run.file(METRICS), "a") as fh:
        fh.write('{"step": 3, "loss": 1.5, "ce"')  # a line the worker is still writing
    ingestor.ingest_all()
    assert list(store.metrics().step) == [1, 2]
    with open(run.file(METRICS), "a") as fh:
        fh.write(': 1.0}\n')
    add_steps(run, 4, 4)
    ingestor.ingest_all()
    assert list(store.metrics().step) == [1, 2, 3, 4] and store.metrics().loss.iloc[2] == 1.5


def test_a_resumed_run_rewrites_its_metrics_and_the_store_follows(tmp_path, store):
    run = make_run(tmp_path, "a", 8, state="interrupted")
    ingestor = Ingestor(store, tmp_path)
    ingestor.ingest_all()
    run.truncate_metrics_after(5)  # what a resume from checkpoint-5 does
    add_steps(run, 6, 10, loss=2.0)  # the replayed steps log other values than the lost ones
    ingestor.ingest_all()
    assert list(store.metrics().step) == list(range(1, 11))
    assert store.metrics().loss.tolist() == [r["loss"] for r in run.read_metrics() if "loss" in r]


def test_rebuild_from_run_directories_equals_the_incremental_database(tmp_path, store):
    runs = tmp_path / "runs"
    ingestor = Ingestor(store, runs)
    a = make_run(runs, "a", 4, state="running")
    ingestor.ingest_all()
    add_steps(a, 5, 9)
    make_run(runs, "b", 6)
    (a.checkpoints / "checkpoint-5").mkdir(parents=True)
    (a.checkpoints / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (a.checkpoints / "checkpoint-10").mkdir()  # half-written (no trainer_state.json): not an artifact
    a.evaluations.mkdir()
    write_json_atomic(a.evaluation_file(5), {"step": 5, "metrics": {"top1_agreement": 0.5, "student_ce": 2.0}})
    ingestor.ingest_all()
    a.truncate_metrics_after(5)
    add_steps(a, 6, 12, loss=2.0)
    a.write_status("succeeded", step=12)
    with open(a.file(METRICS), "a") as fh:
        fh.write("not json\n")  # a damaged line is skipped the same way both times
    make_run(runs, "c", 2)
    ingestor.ingest_all()
    shutil.rmtree(runs / "c")  # deleted runs leave the index
    ingestor.ingest_all()

    path, _ = rebuild(runs, tmp_path / "rebuilt.duckdb")
    rebuilt = Store(path)
    try:
        fresh, incremental = tables(rebuilt), tables(store)
        for name in fresh:
            pd.testing.assert_frame_equal(fresh[name], incremental[name], obj=name)
        assert set(fresh["runs"].run_id) == {"a", "b"}
        checkpoints = fresh["artifacts"][fresh["artifacts"].kind == "checkpoint"].path
        assert [Path(p).name for p in checkpoints] == ["checkpoint-5"]
        judged = fresh["evals"][fresh["evals"].split == "evaluation"]
        assert dict(zip(judged.metric, judged.value)) == {"top1_agreement": 0.5, "student_ce": 2.0}
    finally:
        rebuilt.close()


def test_user_queries_are_read_only_and_export_to_csv_and_parquet(tmp_path, store):
    make_run(tmp_path, "a", 4)
    Ingestor(store, tmp_path).ingest_all()
    sql = "SELECT run_id, step, loss FROM metrics WHERE step > 1 ORDER BY step"
    result = store.query(sql)
    assert list(result.step) == [2, 3, 4]
    for bad, why in (("DROP TABLE metrics", "single SELECT"), ("SELECT 1; DELETE FROM runs", "single SELECT"),
                     ("INSERT INTO runs (run_id) VALUES ('x')", "single SELECT"),
                     (f"SELECT * FROM read_text('{tmp_path / 'a' / CONFIG}')", "disabled"),
                     ("SELEC nonsense", "query:")):
        with pytest.raises(StoreError, match=why):
            store.query(bad)
    assert len(store.metrics()) == 4  # nothing changed

    # the Compare tab's export: a query's result through export_frame
    csv = export_frame(result, tmp_path / "out" / "loss.csv")
    parquet = export_frame(result, tmp_path / "out" / "loss.parquet")
    pd.testing.assert_frame_equal(pd.read_csv(csv), result, check_dtype=False)
    with duckdb.connect() as con:
        pd.testing.assert_frame_equal(con.execute(f"SELECT * FROM read_parquet('{parquet}')").df(), result)
    with pytest.raises(StoreError, match=".csv or .parquet"):
        export_frame(result, tmp_path / "loss.xlsx")


def test_a_database_from_another_schema_version_is_rebuilt(tmp_path):
    make_run(tmp_path / "runs", "a", 3)
    db = tmp_path / "results.duckdb"
    store = Store(db)
    Ingestor(store, tmp_path / "runs").ingest_all()
    store.cursor().execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    store.close()
    store = Store(db)
    try:
        assert store.metrics().empty
        Ingestor(store, tmp_path / "runs").ingest_all()
        assert len(store.metrics()) == 3
    finally:
        store.close()


def test_rebuild_refuses_while_another_process_holds_the_database(tmp_path):
    make_run(tmp_path, "a", 3)
    db = tmp_path / "results.duckdb"
    Store(db).close()
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(db)!r}); "
                               "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match="Only one process may write it"):
            rebuild(tmp_path, db)
    finally:
        holder.kill()
        holder.wait()
    assert db.exists()


@pytest.mark.slow
def test_cli_ingest_rebuilds_the_store(tmp_path):
    make_run(tmp_path, "a", 3)
    make_run(tmp_path, "b", 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(2):  # twice: the second run replaces, never appends
        out = subprocess.run([sys.executable, "-m", "workbench", "ingest", str(tmp_path)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "2 runs, 11 metric and eval rows" in out.stdout
    store = Store(tmp_path / "workbench.duckdb")
    try:
        assert len(store.metrics()) == 5
    finally:
        store.close()
    missing = subprocess.run([sys.executable, "-m", "workbench", "ingest", str(tmp_path / "nope")], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "runs folder not found" in missing.stderr


def test_notes_are_ingested_followed_when_edited_and_queryable(tmp_path, store):
    run = make_run(tmp_path, "a", 3)
    ingestor = Ingestor(store, tmp_path)
    ingestor.ingest_all()
    assert store.runs().loc[0, ["name", "tags", "notes"]].tolist() == ["", "", ""]
    run.write_notes("First try", ["kd", "T=2"], "lr too high?")
    assert ingestor.ingest_all() == 0 and store.runs().loc[0, ["name", "tags", "notes"]].tolist() == \
        ["First try", "kd, T=2", "lr too high?"]  # notes.json is in the signature: an edit is ingested
    found = store.query("SELECT run_id FROM runs WHERE list_contains(string_split(tags, ', '), 'T=2')")
    assert found.run_id.tolist() == ["a"]
    (run.path / "notes.json").write_text('{"name": 7, "tags": "x"}')  # damaged: read as no notes, not an error
    ingestor.ingest_all()
    assert store.runs().loc[0, ["name", "status"]].tolist() == ["", "succeeded"]
    with pytest.raises(ValueError, match="tags"):
        run.write_notes("x", "a" * 41, "")
    with pytest.raises(ValueError, match="name"):
        run.write_notes(None, "", "")


def test_a_deleted_run_folder_is_never_ingested_back(tmp_path, store):
    """A pass that listed the folder just before it was deleted must not write its rows again."""
    run = make_run(tmp_path, "gone", 3)
    ingestor = Ingestor(store, tmp_path)
    ingestor.ingest_all()
    assert len(store.metrics(["gone"])) == 3
    shutil.rmtree(run.path)
    assert ingestor.ingest_run(run.path) == 0
    assert store.runs().empty and store.metrics().empty and store.run_ids() == []
    hidden = make_run(tmp_path, ".deleting-123", 2)  # the manager's name for a folder it is deleting
    ingestor.ingest_all()
    assert store.runs().empty and hidden.path.exists()
