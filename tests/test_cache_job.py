"""Building a teacher cache from the app: a cache-build job (queued, followed, cancelled, resumed, never
ingested as a training run), a run that builds its cache first if missing and a later run that reuses it, the
lock that keeps two builders of one folder apart, and bad inputs refused by field name."""
import dataclasses
import functools
import json
import os
import signal
import threading
import time

import pytest

from jobs.spec import JobSpec
from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.engine import cache_build
from workbench.engine.cache_build import LOCK, BuildReport, build_lock
from workbench.engine.cache_job import run_cache_job
from workbench.engine.stopping import Cancelled
from workbench.engine.teacher_cache import MANIFEST, build_cache
from workbench.store.rundir import CACHE_BUILD, RunDir


@pytest.fixture
def config(teacher_dir, student_dir, corpus_files, tmp_path) -> DistillConfig:
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
        "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1]), "max_examples": 120,
                 "max_eval_examples": 8},
        "loss": {"alpha": 0.2}, "evaluation": {"at_end": False},
        "train": {"max_steps": 4, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "logging_steps": 2},
        "output": {"runs_dir": str(tmp_path / "runs")}})


def manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def test_a_cancelled_build_resumes_without_recomputing_finished_shards(config, tmp_path, monkeypatch):
    """SIGTERM mid-build (as the job manager's cancel sends it) stops at once; shards the manifest names are
    kept, byte for byte, and the next build continues at the first missing one."""
    monkeypatch.setattr(cache_build, "build_cache", functools.partial(build_cache, shard_blocks=4))
    seen: list[int] = []
    original = BuildReport.blocks

    def cancel_in_the_second_shard(self, done, total, eta_s):
        seen.append(done)
        original(self, done, total, eta_s)
        if done >= 6 and len(seen) < 100:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(BuildReport, "blocks", cancel_in_the_second_shard)
    run, folder = RunDir(tmp_path / "job").create(), tmp_path / "cache"
    with pytest.raises(Cancelled):
        run_cache_job(config, run, folder, k=8)
    assert run.read_status()["state"] == "cancelled" and manifest(folder)["shards_done"] == [0]
    first = (folder / "logp-00000.npy").stat()
    seen.clear()
    monkeypatch.setattr(BuildReport, "blocks", lambda self, done, total, eta_s: seen.append(done) or original(
        self, done, total, eta_s))
    run_cache_job(config, run, folder, k=8)
    status, done = run.read_status(), manifest(folder)
    assert status["state"] == "succeeded" and status["phase_done"] == status["phase_total"] == done["blocks"]
    assert len(done["shards_done"]) == -(-done["blocks"] // 4)
    assert min(seen) > 4  # counted from the 4 blocks already built: the first shard was not run again
    again = (folder / "logp-00000.npy").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    # The same folder for other data, or a k the teacher's vocabulary does not have: errors naming the field.
    other = config.replace(data=config.data.__class__(**{**config.data.__dict__, "max_examples": 60}))
    with pytest.raises(ConfigError, match="cache.folder.*other data"):
        run_cache_job(other, run, folder, k=8)
    assert run.read_status()["state"] == "failed" and manifest(folder) == done
    with pytest.raises(ConfigError, match=r"cache.k: must be from 1 to \d+ \(the teacher's vocabulary\), got 1000"):
        run_cache_job(config, run, tmp_path / "wide", k=1000)


def test_a_second_builder_waits_for_the_first(tmp_path):
    folder, events = tmp_path / "cache", []

    class Report(BuildReport):
        def waiting(self, folder):
            events.append("waiting")

    def hold():
        with build_lock(folder, Report()):
            events.append("first holds")
            time.sleep(1.5)
            events.append("first done")

    first = threading.Thread(target=hold)
    first.start()
    while "first holds" not in events:
        time.sleep(0.01)
    with build_lock(folder, Report()):
        events.append("second holds")
    first.join()
    assert events == ["first holds", "waiting", "first done", "second holds"]
    assert (folder / LOCK).exists()


def test_bad_inputs_are_refused_by_field(services, tiny_form, tmp_path, config):
    from workbench.ui.cache_panel import start_build
    from workbench.ui.form import form_to_config
    form_config = form_to_config(tiny_form, services.gate, services.uploads_dir).config

    def problems(**kw):
        values = {"config": form_config, "folder": "c1", "k": 32, "fidelity_steps": 0, **kw}
        with pytest.raises(ConfigError) as err:
            services.build_cache(**values)
        return dict(err.value.problems)

    assert "from 1 to 1,024" in problems(k=0)["cache.k"] and "cache.k" in problems(k=5000)
    assert "cache.k" in problems(k=8.5) and "cache.k" in problems(k="32") and "cache.k" in problems(k=True)
    assert "cache.fidelity_steps" in problems(fidelity_steps=-1)
    assert "from 0 to 32" in problems(tail_samples=33)["cache.tail_samples"]
    assert "cache.tail_samples" in problems(tail_samples=-1) and "cache.tail_samples" in problems(tail_samples=1.5)
    assert "outside the folders" in problems(folder="/etc/dw-cache")["cache.folder"]
    # a path outside the roots is refused as such, whatever it holds: nothing tells what exists there
    assert "other files" not in problems(folder="/etc")["cache.folder"]
    assert "'..'" in problems(folder=str(services.caches_dir / ".." / ".." / "x"))["cache.folder"]
    assert "cache.folder" in problems(folder="") and "cache.folder" in problems(folder=None)
    (services.caches_dir / "model").mkdir(parents=True)
    (services.caches_dir / "model" / "weights.bin").write_text("x")
    assert "other files" in problems(folder="model")["cache.folder"]
    assert "strategy" in problems(config=form_config.replace(strategy="hidden_state"))
    assert not services.jobs.jobs()  # nothing was queued
    message = start_build(services, tiny_form, "c1", 0, True, 20, None)
    assert "not queued" in message and "cache.k" in message
    # The config field: only soft_label, and only with a folder to build in.
    with pytest.raises(ConfigError, match="loss.build_teacher_cache"):
        config.replace(loss=config.loss.__class__(build_teacher_cache=True))
    with pytest.raises(ConfigError, match="loss.build_teacher_cache"):
        DistillConfig.from_dict({**config.to_dict(), "strategy": "hidden_state",
                                 "loss": {"teacher_cache": str(tmp_path), "build_teacher_cache": True}})
    # A spec read back from disk is checked the same way.
    run = RunDir(tmp_path / "planted").create()
    spec = JobSpec(config=config, run_dir=str(run.path))
    spec.write()
    data = json.loads(run.file("spec.json").read_text())
    data.update(kind=CACHE_BUILD, cache_build={"folder": str(tmp_path / "c"), "k": "lots"})
    run.file("spec.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="cache.k"):
        JobSpec.read(run.path)


def test_study_runs_keep_or_drop_the_shared_cache_with_its_build(config, tmp_path):
    from jobs.study_plan import plan_study
    from workbench.config.study import StudySpec
    base = config.replace(loss=config.loss.__class__(alpha=0.2, teacher_cache=str(tmp_path / "c"),
                                                     build_teacher_cache=True))
    plan = plan_study(StudySpec(name="s", grid={"loss.alpha": [0.2, 0.5], "data.max_examples": [120, 60]},
                                baselines=True), base)
    for run in plan.runs:
        shared = run.setting["data.max_examples"] == 120
        assert (run.config.loss.teacher_cache is not None, run.config.loss.build_teacher_cache) == (shared, shared)
    assert all(not b.config.loss.teacher_cache and not b.config.loss.build_teacher_cache for b in plan.baselines)


@pytest.mark.slow
def test_a_run_builds_its_missing_cache_then_trains_and_the_next_run_reuses_it(config, tmp_path, monkeypatch):
    from workbench.engine.runner import run_training
    folder = tmp_path / "cache"
    building = config.replace(loss=config.loss.__class__(alpha=0.2, teacher_cache=str(folder),
                                                         build_teacher_cache=True))
    named = lambda name, c=building: c.replace(output=c.output.__class__(runs_dir=c.output.runs_dir,  # noqa: E731
                                                                          run_name=name))
    run_training(named("first"))
    first = RunDir(tmp_path / "runs" / "first")
    built = manifest(folder)
    assert built["shards_done"] and first.read_status()["state"] == "succeeded"

    def no_build(*args, **kwargs):
        raise AssertionError("the cache was built again")

    monkeypatch.setattr(cache_build, "_build", no_build)
    run_training(named("rerun"))
    assert RunDir(tmp_path / "runs" / "rerun").read_status()["state"] == "succeeded"
    assert manifest(folder)["created"] == built["created"]
    other = building.replace(data=building.data.__class__(**{**building.data.__dict__, "max_examples": 60}))
    with pytest.raises(ConfigError, match="loss.teacher_cache.*other data"):
        run_training(named("other", other))
    assert manifest(folder) == built  # refused, not overwritten


@pytest.mark.slow
def test_the_cache_build_job_from_the_panel_end_to_end(services, tiny_form):
    """Queued from the panel's handler, a real worker: waits while another builder holds the folder, is
    cancelled there, resumes and completes; shown in Runs as a cache build, never ingested as a run."""
    from workbench.ui.cache_panel import start_build
    from workbench.ui.runs_tab import jobs_table
    folder = services.caches_dir / "tiny-k8"
    report = BuildReport()
    with build_lock(folder, report):  # another builder holds the folder: the job must wait for it
        message = start_build(services, tiny_form, "tiny-k8", 8, False, 20, None)
        [job] = services.jobs.jobs()
        run_id = job["run_id"]
        assert run_id in message and job["kind"] == CACHE_BUILD
        run = RunDir(services.runs_dir / run_id)
        deadline = time.time() + 120
        while "waiting" not in str(run.read_status().get("phase")):
            assert time.time() < deadline and run.read_status().get("state") not in ("failed", "succeeded")
            time.sleep(0.1)
        assert services.cancel(run_id) == "cancelling"
        assert services.jobs.wait(run_id, timeout=60)["state"] == "cancelled"
    services.resume(run_id)
    status = services.jobs.wait(run_id, timeout=300)
    assert status["state"] == "succeeded", services.jobs.log(run_id)
    done = manifest(folder)
    assert done["k"] == 8 and len(done["shards_done"]) == -(-done["blocks"] // done["shard_blocks"])
    assert f"teacher cache: {done['blocks']}/{done['blocks']} blocks" in services.jobs.log(run_id)
    [row] = jobs_table(services).to_dict("records")
    assert row["name"] == "teacher cache → tiny-k8 (k=8)" and row["step"] == f"{done['blocks']}/{done['blocks']} blocks"
    services.ingest.ingestor.ingest_all()
    assert run_id not in set(services.store.runs().run_id)  # not a training run without metrics
    from workbench.ui.cache_panel import cache_choices
    assert str(folder) in [path for _, path in cache_choices(services)]


def test_a_shared_app_builds_caches_in_its_caches_folder_with_a_bounded_fidelity_run(services, config, tmp_path):
    from jobs.cache_spec import CacheBuild
    from workbench.config.gate import Gate
    gate = Gate.for_app(services.runs_dir, tmp_path / "defaults", public=True)
    bounded = config.replace(data=dataclasses.replace(config.data, max_examples=10))

    def problems(folder, steps=0):
        return dict(CacheBuild(folder=str(folder), fidelity_steps=steps).gate_problems(bounded, gate))

    assert problems(services.caches_dir / "mine") == {}
    assert "caches/ only" in problems(tmp_path / "defaults" / "mine")["cache.folder"]
    assert f"at most {gate.max_steps} steps" in problems(services.caches_dir / "mine", 10_000)["cache.fidelity_steps"]
