"""One damaged file in one run directory affects that run only: with random bytes (or JSON of the wrong
shape) in each file of a finished run in turn, the app starts and re-attaches, every tab's listing works,
ingest goes on past the damaged runs, and `python -m workbench ingest` succeeds. And the results store
deleted under a running app is noticed and rebuilt."""
import json
import random
import shutil
import time

import pytest

from jobs.spec import JobSpec
from workbench.cli import main
from workbench.store.database import DB_NAME, Store
from workbench.store.ingest import Ingestor
from workbench.store.rundir import RunDir
from workbench.ui import compare_tab, inspect_tab, runs_tab
from workbench.ui.app import build_app
from workbench.ui.services import Services

pytestmark = pytest.mark.slow  # every test reads a trained run

SHAPES = {  # valid JSON that is not what the file should hold
    "status.json": ['[1, 2]', '"running"', '{"state": 5, "step": "x", "total_steps": [], "eta_s": "soon", '
                                           '"queued_at": "yesterday", "pid": -4}',
                    '{"state": "running", "pid": NaN, "step": Infinity, "eta_s": -Infinity}',
                    '{"state": "queued", "queued_at": 1' + "0" * 400 + ', "step": 1' + "0" * 400 + '}',
                    '{"state": "running", "pid": 1e400, "started": 1' + "0" * 400 + '}'],
    "config.json": ['{"teacher": "x", "student": {"lora": 3}, "train": {"lr": "fast", "max_steps": 1e300}}'],
    "metrics.jsonl": ['{"step": "abc", "loss": 1e999}\n[1]\n{"step": 99999999999, "loss": "x", "eval_ce": 10e400}\n'],
    "spec.json": ['{"config": 7}', '{"config": {"teacher": 1}, "num_processes": "many"}'],
    "worker.json": ['{"pid": 1e300, "started": "x"}'],
}


@pytest.fixture(scope="module")
def source_run(distilled_source, tmp_path_factory):
    """The finished tiny run with every file a job leaves (spec, worker record, log, teacher-written data)."""
    run, config, _ = distilled_source
    folder = tmp_path_factory.mktemp("source") / "run"
    shutil.copytree(run.path, folder)
    JobSpec(config=config, run_dir=str(folder)).write()
    (folder / "worker.json").write_text(json.dumps({"pid": 999_999, "started": 1.0, "argv": []}))
    (folder / "worker.log").write_text("step 30/30\n")
    generated = folder / "generated"
    generated.mkdir()
    (generated / "manifest.json").write_text(json.dumps({"settings": {"teacher": "t"}, "rows_total": 1,
                                                          "complete": True, "started": 1.0}))
    (generated / "completions.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    return folder


@pytest.fixture
def damaged(tmp_path, source_run):
    """A runs folder: the good run, then one copy per file of it with that file damaged."""
    runs = tmp_path / "runs"
    shutil.copytree(source_run, runs / "good")
    files = sorted(p.relative_to(source_run) for p in source_run.rglob("*") if p.is_file())
    rng, n = random.Random(0), 0
    cases = [(f, rng.randbytes(300)) for f in files]
    cases += [(f, text.encode()) for name, texts in SHAPES.items() for f in files if str(f) == name for text in texts]
    for relative, content in cases:
        n += 1
        shutil.copytree(source_run, runs / f"bad-{n:03d}")
        (runs / f"bad-{n:03d}" / relative).write_bytes(content)
    caches = runs / "caches" / "broken"
    caches.mkdir(parents=True)
    (caches / "manifest.json").write_bytes(rng.randbytes(100))
    assert len(files) > 20
    return runs, n


def test_damage_stays_in_its_run(damaged):
    runs, n = damaged
    services = Services.start(runs)  # re-attaching reads every run's status and worker record
    try:
        jobs = {job["run_id"]: job for job in services.jobs.jobs()}
        assert len(jobs) == n + 1 and jobs["good"]["state"] == "succeeded"
        unknown = [job for job in jobs.values() if job["state"] == "unknown"]
        assert unknown and all(job.get("error") for job in unknown)
        table = runs_tab.jobs_table(services)
        assert len(table) == n + 1

        Ingestor(services.store, runs).ingest_all()
        listed = services.store.runs()
        assert set(listed.run_id) == set(jobs)
        good_rows = len(services.store.metrics(["good"]))
        assert good_rows == len([r for r in RunDir(runs / "good").read_metrics() if "loss" in r]) > 0
        for run_id in jobs:
            runs_tab.run_details(services, run_id)
        compare_tab.compare(services, list(jobs), "loss")
        assert "good" in inspect_tab._runs(services)
        build_app(services)  # every tab's listing: datasets, caches, runs
        with pytest.raises(ValueError):
            services.jobs.resume(unknown[0]["run_id"])
    finally:
        services.close()
    assert main(["ingest", str(runs)]) == 0
    assert not (runs / f"{DB_NAME}.rebuild").exists()
    store = Store(runs / DB_NAME)
    try:
        assert len(store.runs()) == n + 1 and len(store.metrics(["good"])) == good_rows
    finally:
        store.close()


def test_a_deleted_store_is_noticed_and_rebuilt(tmp_path, source_run):
    runs = tmp_path / "runs"
    shutil.copytree(source_run, runs / "good")
    services = Services.start(runs)
    try:
        deadline = time.time() + 30
        while "good" not in set(services.store.runs().run_id) and time.time() < deadline:
            time.sleep(0.2)
        rows = len(services.store.metrics(["good"]))
        assert rows > 0
        (runs / DB_NAME).unlink()
        services.ingest.wake()
        deadline = time.time() + 30
        while time.time() < deadline:
            if (runs / DB_NAME).exists() and len(services.store.metrics(["good"])) == rows:
                break
            time.sleep(0.2)
        assert (runs / DB_NAME).exists() and len(services.store.metrics(["good"])) == rows
    finally:
        services.close()
    store = Store(runs / DB_NAME)  # what a later start sees: the rebuilt file, on disk
    try:
        assert len(store.metrics(["good"])) == rows
    finally:
        store.close()
