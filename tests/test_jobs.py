"""The job manager with real worker processes on tiny models: queue, cancel, kill -9, resume,
re-attach after a restart, concurrent jobs under a polling reader, and a 2-process accelerate job."""
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from jobs.launcher import thread_budget, worker_argv, worker_env
from jobs.manager import JobManager
from jobs.process import WorkerProcess
from jobs.spec import JobSpec
from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.store.database import Store
from workbench.store.ingest import IngestLoop, Ingestor
from workbench.store.rundir import WORKER, RunDir


@pytest.fixture
def make_config(teacher_dir, student_dir, corpus_files):
    def make(max_steps=10, **train):
        train_set, val_set = corpus_files
        return DistillConfig.from_dict({
            "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
            "data": {"source": str(train_set), "validation_source": str(val_set)},
            "train": {"max_steps": max_steps, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "logging_steps": 1,
                      "save_steps": 1000, **train}})
    return make


def wait_for_step(manager: JobManager, run_id: str, step: int, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        manager.poll()
        status = RunDir(manager.runs_dir / run_id).read_status()
        if status.get("state") == "running" and status.get("step", 0) >= step:
            return status
        assert status.get("state") not in ("succeeded", "failed"), status
        time.sleep(0.05)
    raise TimeoutError(f"{run_id} never reached step {step}")


def wait_until(condition, timeout: float = 60, what: str = "the condition") -> None:
    """Poll condition() until it is true; a loaded machine only makes this slower, never wrong."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)


def logged_steps(run: RunDir) -> list[int]:
    return [r["step"] for r in run.read_metrics() if "loss" in r]


def assert_store_matches_files(store: Store, run: RunDir) -> None:
    """Every complete metrics line of the run is in DuckDB exactly once, with its values."""
    records = [r for r in run.read_metrics() if "loss" in r]
    rows = store.metrics([run.path.name])
    assert list(rows.step) == [r["step"] for r in records]
    assert rows.loss.tolist() == pytest.approx([r["loss"] for r in records])


def store_matches_files(store: Store, run: RunDir) -> bool:
    try:
        assert_store_matches_files(store, run)
    except AssertionError:
        return False
    return True


@pytest.mark.slow
def test_a_second_job_waits_for_the_first_then_both_succeed(tmp_path, make_config):
    manager = JobManager(tmp_path, max_concurrent=1)
    first = manager.submit(make_config(max_steps=8), run_name="first")
    second = manager.submit(make_config(max_steps=6), run_name="second")
    queued = {j["run_id"]: j for j in manager.jobs()}
    assert queued["second"]["state"] == "queued" and queued["second"]["queue_position"] == 1
    assert queued["first"]["live"]

    done = [manager.wait(first), manager.wait(second)]
    assert [s["state"] for s in done] == ["succeeded", "succeeded"]
    assert done[1]["started"] >= done[0]["updated"]  # the second started only after the first ended
    assert "step 8/8 (100%)" in (tmp_path / first / "worker.log").read_text()

    store = Store(tmp_path / "results.duckdb")
    Ingestor(store, tmp_path).ingest_all()
    for run_id, steps in ((first, 8), (second, 6)):
        assert logged_steps(RunDir(tmp_path / run_id)) == list(range(1, steps + 1))
        assert_store_matches_files(store, RunDir(tmp_path / run_id))
    assert set(store.runs().status) == {"succeeded"}


@pytest.mark.slow
def test_cancel_saves_a_checkpoint_and_resume_finishes_the_planned_steps(tmp_path, make_config):
    manager = JobManager(tmp_path, grace_s=60)
    run_id = manager.submit(make_config(max_steps=600), run_name="cancel-me")
    run = RunDir(tmp_path / run_id)
    wait_for_step(manager, run_id, 3)
    assert manager.cancel(run_id) == "cancelling"
    status = manager.wait(run_id)
    assert status["state"] == "cancelled" and 3 <= status["step"] < 600
    assert run.last_checkpoint().name == f"checkpoint-{status['step']}"
    assert not run.student.exists()  # a cancelled run is not a finished student

    manager.resume(run_id)
    assert manager.wait(run_id)["state"] == "succeeded"
    assert f"resumed from checkpoint {status['step']}" in run.file("worker.log").read_text()
    assert logged_steps(run) == list(range(1, 601))  # each step once, none missing
    assert sum(1 for r in run.read_metrics() if "eval_loss" in r and r["step"] == 0) == 1


@pytest.mark.slow
def test_a_killed_worker_is_interrupted_its_flushed_metrics_are_stored_and_resume_completes(tmp_path, make_config):
    manager = JobManager(tmp_path)
    run_id = manager.submit(make_config(max_steps=500, save_steps=40), run_name="killed")
    run = RunDir(tmp_path / run_id)
    wait_for_step(manager, run_id, 45)
    os.kill(WorkerProcess.read(run).pid, signal.SIGKILL)
    status = manager.wait(run_id)
    assert status["state"] == "interrupted" and "SIGKILL" in status["error"]
    assert not run.file(WORKER).exists()

    store = Store(tmp_path / "results.duckdb")
    ingestor = Ingestor(store, tmp_path)
    ingestor.ingest_all()
    assert len(logged_steps(run)) >= 45
    assert_store_matches_files(store, run)

    manager.resume(run_id)
    assert manager.wait(run_id)["state"] == "succeeded"
    assert logged_steps(run) == list(range(1, 501))
    ingestor.ingest_all()  # the resume rewrote metrics.jsonl: the store follows, no stale rows
    assert_store_matches_files(store, run)


@pytest.mark.slow
def test_three_concurrent_jobs_while_a_reader_polls_the_store(tmp_path, make_config):
    store = Store(tmp_path / "results.duckdb")
    loop = IngestLoop(Ingestor(store, tmp_path), interval=0.1).start()
    errors, reads = [], []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                reads.append(len(store.metrics()) + len(store.runs()) + len(store.evals()))
            except Exception as err:  # noqa: BLE001 - the test collects any error the reader sees
                errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    manager = JobManager(tmp_path, max_concurrent=3)
    ids = [manager.submit(make_config(max_steps=40), run_name=f"job{i}") for i in range(3)]
    assert sum(j["live"] for j in manager.jobs()) == 3
    assert [manager.wait(i)["state"] for i in ids] == ["succeeded"] * 3
    loop.wake()  # the loop ingests the finished runs; wait for that rather than for a fixed time
    wait_until(lambda: all(store_matches_files(store, RunDir(tmp_path / i)) for i in ids), timeout=120,
               what="ingesting the finished runs")
    stop.set()
    thread.join()
    loop.close()
    assert errors == [] and loop.last_error is None
    assert len(reads) > 10 and reads[-1] > reads[0]  # the reader really ran alongside the writes
    for run_id in ids:
        assert_store_matches_files(store, RunDir(tmp_path / run_id))


@pytest.mark.slow
def test_a_restarted_manager_reattaches_to_a_running_job_and_sees_it_finish(tmp_path, make_config):
    first = JobManager(tmp_path)
    run_id = first.submit(make_config(max_steps=300), run_name="survivor")
    wait_for_step(first, run_id, 2)
    pid = WorkerProcess.read(RunDir(tmp_path / run_id)).pid
    del first  # the app went away; the worker did not

    second = JobManager(tmp_path)
    job = next(j for j in second.jobs() if j["run_id"] == run_id)
    assert job["live"] and job["state"] == "running" and psutil.pid_exists(pid)
    assert second.wait(run_id)["state"] == "succeeded"


def test_on_start_a_dead_worker_is_marked_interrupted_and_a_reused_pid_is_not_mistaken_for_it(tmp_path):
    run = RunDir(tmp_path / "orphan").create()
    (run.path / "config.json").write_text("{}")
    run.write_status("running", step=7, total_steps=100)
    # Our own pid, but a start time that is not ours: a pid reused by an unrelated process.
    WorkerProcess(os.getpid(), psutil.Process().create_time() - 1000).write(run)
    manager = JobManager(tmp_path)
    status = run.read_status()
    assert status["state"] == "interrupted" and status["step"] == 7
    assert not any(j["live"] for j in manager.jobs())


@pytest.mark.slow
def test_two_process_accelerate_job_cancels_in_step_resumes_and_logs_each_step_once(tmp_path, make_config):
    """Both ranks get SIGTERM at different moments; they must agree on one step to stop after (the
    flag is all-reduced), or one would wait forever for the other."""
    manager = JobManager(tmp_path, grace_s=60)
    run_id = manager.submit(make_config(max_steps=300, batch_size=2), run_name="ddp", num_processes=2)
    wait_for_step(manager, run_id, 3)
    manager.cancel(run_id)
    status = manager.wait(run_id, timeout=120)
    run = RunDir(tmp_path / run_id)
    assert status["state"] == "cancelled", (run.path / "worker.log").read_text()[-3000:]
    assert status["processes"] == 2 and run.last_checkpoint().name == f"checkpoint-{status['step']}"

    manager.resume(run_id)
    assert manager.wait(run_id, timeout=300)["state"] == "succeeded"
    assert logged_steps(run) == list(range(1, 301))
    assert (run.path / "worker.log").read_text().count("step 300/300 (100%)") == 1  # rank 0 alone reports


@pytest.mark.slow
def test_a_queued_job_cancels_without_a_process_and_only_ended_jobs_resume(tmp_path, make_config):
    manager = JobManager(tmp_path)
    running = manager.submit(make_config(max_steps=400), run_name="busy")
    waiting = manager.submit(make_config(), run_name="waiting")
    assert manager.cancel(waiting) == "cancelled"
    assert not (tmp_path / waiting / "worker.log").exists()
    with pytest.raises(ValueError, match="only cancelled, failed, interrupted"):
        manager.resume(running)
    manager.cancel(running)
    assert manager.wait(running)["state"] == "cancelled"
    assert manager.submit(make_config(), run_name="busy") == "busy-2"  # never reuses a run directory


def test_job_spec_validation_names_the_field(tmp_path, make_config):
    with pytest.raises(ConfigError) as err:
        JobSpec(make_config(), str(tmp_path), num_processes=0).validate()
    assert err.value.field == "num_processes"
    with pytest.raises(ConfigError) as err:
        JobManager(tmp_path).submit(make_config(), accelerate_config=str(tmp_path / "nope.yaml"))
    assert err.value.field == "accelerate_config" and not any(tmp_path.iterdir())


def test_launcher_argv_and_thread_policy(tmp_path, make_config):
    assert [thread_budget(1, cores=2), thread_budget(1, cores=16), thread_budget(2, cores=16),
            thread_budget(8, cores=4)] == [1, 15, 7, 1]
    single = JobSpec(make_config(), str(tmp_path / "a"))
    assert worker_argv(single) == [sys.executable, "-m", "jobs.worker", str(tmp_path / "a")]
    double = JobSpec(make_config(), str(tmp_path / "b"), num_processes=2)
    argv = worker_argv(double)
    assert argv[1:3] == ["-m", "accelerate.commands.launch"] and argv[argv.index("--num_processes") + 1] == "2"
    assert argv[-3:] == ["-m", "jobs.worker", str(tmp_path / "b")]
    assert worker_env(single, 30, base={})["OMP_NUM_THREADS"] == str(thread_budget(1))
    assert worker_env(single, 30, base={"OMP_NUM_THREADS": "5"})["OMP_NUM_THREADS"] == "5"


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    """Cancel through a re-attached worker (known only by worker.json) that ignores SIGTERM."""
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert stubborn.stdout.readline().strip() == "ready"
    run = RunDir(tmp_path / "stubborn").create()
    (run.path / "config.json").write_text("{}")
    run.write_status("running", step=3, total_steps=100)
    WorkerProcess(stubborn.pid, psutil.Process(stubborn.pid).create_time()).write(run)
    # A grace period no loaded machine outlasts while the test looks inside it ...
    manager = JobManager(tmp_path, grace_s=600)
    assert manager.cancel("stubborn") == "cancelling"
    time.sleep(0.5)  # time for SIGTERM to act, were it not ignored
    manager.poll()
    assert stubborn.poll() is None  # SIGTERM ignored, still inside the grace period
    # ... then one that has run out: the next poll escalates to SIGKILL.
    manager.grace_s = 0.0
    manager.poll()
    assert stubborn.wait(timeout=60) == -signal.SIGKILL
    status = manager.wait("stubborn", timeout=60)
    assert status["state"] == "cancelled" and status["step"] == 3
