"""Run management in the Runs tab, without a browser: the queue's order, delete (refused for active runs,
then the folder and every store row, for good), name / tags / notes, the config cloned into Set up, the
buttons each state allows, public mode's owners, the resume line in worker.log, the machine monitor and
the numbers of the Runs table.

Jobs here start "workers" that only wait (fake_workers): the manager's queue and states are real, nothing
trains."""
import json
import subprocess
import sys

import gradio as gr
import pytest

import jobs.manager as manager_module
from jobs.manager import JobManager
from jobs.monitor import GpuUsage, ResourceMonitor
from jobs.process import WorkerProcess
from jobs.spec import JobSpec
from workbench.config.schema import DistillConfig
from workbench.store.database import TABLES
from workbench.store.rundir import CONFIG, LOG, RunDir, write_json_atomic
from workbench.ui import runs_actions, runs_tab
from workbench.ui.app import DEFAULT_CONFIG, build_app
from workbench.ui.form import DATA_UPLOAD, SetupForm, form_to_config, setup_fields
from workbench.ui.form_layout import elem_id
from workbench.ui.monitor import usage_markdown
from workbench.ui.runs_actions import allowed_actions
from workbench.ui.services import Services

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def fake_workers(monkeypatch):
    """Worker processes that only wait: a job starts and holds its slot until the test ends."""
    started = []

    def start(spec, grace_s):
        popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        started.append(popen)
        return popen

    monkeypatch.setattr(manager_module, "start_worker", start)
    yield started
    for popen in started:
        popen.kill()
        popen.wait()


@pytest.fixture
def services(tmp_path, fake_workers):
    started = Services.start(tmp_path / "runs")
    yield started
    started.close()


def config(**train) -> DistillConfig:
    data = DistillConfig.load(DEFAULT_CONFIG).to_dict()
    data["train"].update(max_steps=20, **train)
    return DistillConfig.from_dict(data)


def finished_run(runs, name: str, loss: float = 3.0) -> RunDir:
    """An ended run as a job leaves it: config, status, metrics with held-out points, a checkpoint, an
    evaluation, notes."""
    run = RunDir(runs / name).create()
    config().save(run.file(CONFIG))
    run.append_metrics({"step": 0, "eval_loss": 3.5, "eval_ce": 4.0})
    for step in (5, 10):
        run.append_metrics({"step": step, "loss": loss, "ce": 4.0, "kd": 2.0, "tokens_per_s": 912.6})
    (run.checkpoints / "checkpoint-10").mkdir(parents=True)
    (run.checkpoints / "checkpoint-10" / "trainer_state.json").write_text("{}")
    run.evaluations.mkdir()
    write_json_atomic(run.evaluation_file(10), {"step": 10, "metrics": {"top1_agreement": 0.5}})
    run.write_notes("finished", "kd", "")
    run.write_status("succeeded", step=10, total_steps=10)
    return run


def rows(services: Services, run_id: str) -> dict[str, int]:
    """The run's rows in every table keyed by run (a study's row outlives its runs: it is its own record)."""
    return {table: services.store.cursor().execute(f"SELECT count(*) FROM {table} WHERE run_id = ?",
                                                   [run_id]).fetchone()[0]
            for table, (columns, _) in TABLES.items() if "run_id" in columns}


def queue(manager: JobManager) -> list[str]:
    waiting = {j["queue_position"]: j["run_id"] for j in manager.jobs() if j["queue_position"]}
    return [waiting[position] for position in sorted(waiting)]


def test_queued_jobs_move_up_and_down_are_removed_and_keep_their_order_after_a_restart(tmp_path, fake_workers):
    manager = JobManager(tmp_path)
    for name in ("busy", "a", "b", "c"):
        manager.submit(config(), run_name=name)
    assert queue(manager) == ["a", "b", "c"]
    assert manager.move("c", -1) == 2 and queue(manager) == ["a", "c", "b"]
    assert manager.move("c", -5) == 1 and queue(manager) == ["c", "a", "b"]  # clamped at the front
    assert manager.move("a", 1) == 3 and queue(manager) == ["c", "b", "a"]
    for run_id, offset in (("busy", 1), ("nope", 1), ("a", True), ("a", "1"), ("a", 1.5)):
        with pytest.raises(ValueError):
            manager.move(run_id, offset)
    assert queue(JobManager(tmp_path)) == ["c", "b", "a"]  # a restarted app finds the order the user chose

    assert manager.cancel("b") == "cancelled"  # removing a queued job: no process ever starts for it
    assert queue(manager) == ["c", "a"] and not (tmp_path / "b" / LOG).exists()
    assert RunDir(tmp_path / "b").read_status()["state"] == "cancelled"


def test_delete_refuses_active_runs_then_removes_the_folder_and_every_row_for_good(services):
    runs = services.runs_dir
    busy = services.submit(config(), run_name="busy")
    waiting = services.submit(config(), run_name="waiting")
    finished_run(runs, "done")
    ingestor = services.ingest.ingestor
    ingestor.ingest_all()
    assert all(count > 0 for count in rows(services, "done").values()), rows(services, "done")
    polled = runs_tab.poll(services, None, None, ())
    assert "- busy: CPU" in polled[5 + len(runs_actions.ACTIONS)]  # the monitor follows the live worker
    for run_id in (busy, waiting):
        with pytest.raises(ValueError, match="only ended runs"):
            services.delete(run_id, confirmed=True)
        assert (runs / run_id).is_dir()
    for unconfirmed in (False, "yes", 1):  # the endpoint takes the box's value: only True confirms
        with pytest.raises(ValueError, match="tick the confirmation"):
            services.delete("done", confirmed=unconfirmed)
    assert (runs / "done").is_dir()

    services.delete("done", confirmed=True)
    assert not (runs / "done").exists() and not any(p.name.startswith(".") for p in runs.iterdir())
    assert set(rows(services, "done").values()) == {0}
    ingestor.ingest_run(runs / "done")  # as a pass that listed the folder just before it went
    ingestor.ingest_all()
    assert set(rows(services, "done").values()) == {0}
    assert "done" not in [job["run_id"] for job in services.jobs.jobs()]

    finished_run(runs, "target")
    (runs / "alias").symlink_to(runs / "target")  # a link would have "alias" delete another run
    for bad in ("done", "alias", "../target", "", ".", "target/checkpoints", None):
        with pytest.raises(KeyError):
            services.delete(bad, confirmed=True)
    assert (runs / "target" / CONFIG).exists()


def test_name_tags_and_notes_are_saved_checked_and_shown(services):
    finished_run(services.runs_dir, "named", loss=102.39053047884875)
    message = runs_actions.annotate(services, "named", None, f"  Nice {HOSTILE}\nrun ", "kd, T=2, kd,, ", "why")
    assert "saved" in message and "<img" not in message
    assert RunDir(services.runs_dir / "named").read_notes() == {"name": f"Nice {HOSTILE} run", "tags": ["kd", "T=2"],
                                                                "notes": "why"}
    too_many = ",".join(f"t{i}" for i in range(21))
    for name, tags, notes in ((1, "", ""), ("x" * 201, "", ""), ("a\x00b", "", ""), ("", too_many, ""),
                              ("", "x" * 41, ""), ("", ["a", 2], ""), ("", "", None)):
        assert "not saved" in runs_actions.annotate(services, "named", None, name, tags, notes)
    assert RunDir(services.runs_dir / "named").read_notes()["notes"] == "why"  # a refused edit changes nothing

    services.ingest.ingestor.ingest_all()  # what the ingest thread does within a second
    row = runs_tab.jobs_table(services).set_index("run").loc["named"]
    assert (row["name"], row["tags"]) == (f"Nice {HOSTILE} run", "kd, T=2")
    assert (row["loss"], row["tok/s"]) == (102.39, 913)  # rounded for people
    found = services.store.query("SELECT run_id, name, notes FROM runs "
                                 "WHERE list_contains(string_split(tags, ', '), 'T=2')")
    assert found.values.tolist() == [["named", f"Nice {HOSTILE} run", "why"]]


def test_clone_gives_back_the_config_the_run_was_launched_with(services):
    default = DistillConfig.load(DEFAULT_CONFIG)
    upload = services.runs_dir / "incoming.txt"
    upload.write_text("the cat sees the dog.\n" * 50)
    form = SetupForm.from_config(default).replace({
        "teacher.name_or_path": "org/teacher", "student.name_or_path": "org/student", "loss.divergence": "jsd",
        "loss.alpha": 0.3, "loss.beta": 0.3, "loss.temperature": 2.0, "train.max_steps": 40, "train.lr": 0.001,
        "train.bf16": "off", "train.on_nonfinite": "skip", "student.lora.enabled": True,
        "evaluation.at_end": False, "output.run_name": "original", "data_kind": DATA_UPLOAD,
        "data_upload": str(upload), "num_processes": 2})
    plan = form_to_config(form, services.gate, services.uploads_dir)
    run_id = services.submit(plan.config, num_processes=plan.processes)

    values, message = runs_actions.clone(services, run_id)
    assert values is not None, message
    cloned = form_to_config(SetupForm.from_list(default, values), services.gate, services.uploads_dir)
    launched = JobSpec.read(services.runs_dir / run_id).config.to_dict()
    for data in (launched, got := cloned.config.to_dict()):
        del data["output"]["run_name"], data["output"]["runs_dir"]
    assert got == launched and cloned.processes == 2

    planted = RunDir(services.runs_dir / "planted").create()
    data = plan.config.to_dict()
    data["teacher"]["trust_remote_code"] = True
    planted.file(CONFIG).write_text(json.dumps(data))
    damaged = RunDir(services.runs_dir / "damaged").create()
    damaged.file("spec.json").write_text("{not json")
    for run_id, reason in (("planted", "teacher.trust_remote_code"), ("damaged", "spec.json"),
                           ("../etc", "no run"), (None, "Pick a run")):
        values, message = runs_actions.clone(services, run_id)
        assert values is None and reason in message, message


def test_clone_fills_the_set_up_form_and_opens_its_tab(services):
    run_id = services.submit(config(), run_name="original")
    app = build_app(services)
    event = next(fn for fn in app.fns.values() if fn.api_name == "clone")
    form_keys = [f.key for f in setup_fields()]
    assert len(event.outputs) == len(form_keys) + 2 and isinstance(event.outputs[-2], gr.Tabs)
    assert [component.elem_id for component in event.outputs[:-2]] == [elem_id(key) for key in form_keys]
    *values, tabs, message = event.fn(run_id)
    assert values == runs_actions.clone(services, run_id)[0] and tabs.selected == "setup" and "Set up" in message
    *values, tabs, message = event.fn("no-such-run")  # the form and the tab stay as they are
    assert all(isinstance(value, type(gr.skip())) for value in (*values, tabs)) and "cannot be cloned" in message
    endpoints = {fn.api_name: fn for fn in app.fns.values()}
    assert {"runs", "cancel", "resume", "move_up", "move_down", "delete", "annotate", "clone"} <= set(endpoints)
    assert len(endpoints["delete"].inputs) == 2  # the run and the confirmation box


@pytest.mark.parametrize("job, queued, allowed", [
    (None, 0, set()),
    ({"state": "queued", "queue_position": 1}, 3, {"cancel", "down"}),
    ({"state": "queued", "queue_position": 2}, 3, {"cancel", "up", "down"}),
    ({"state": "queued", "queue_position": 3}, 3, {"cancel", "up"}),
    ({"state": "starting", "live": True}, 0, {"cancel"}),
    ({"state": "running", "live": True}, 0, {"cancel"}),
    ({"state": "running"}, 0, {"cancel"}),  # by its status alone; the manager answers for a worker it lacks
    ({"state": "cancelling", "live": True}, 0, set()),
    ({"state": "succeeded", "live": True}, 0, {"cancel"}),  # its worker still evaluating the student
    ({"state": "succeeded"}, 0, {"delete"}),
    ({"state": "failed"}, 0, {"resume", "delete"}),
    ({"state": "cancelled"}, 0, {"resume", "delete"}),
    ({"state": "interrupted"}, 0, {"resume", "delete"}),
    ({"state": "unknown"}, 0, {"delete"}),  # a damaged status: listed with its reason, may be removed
])
def test_the_buttons_a_state_allows(job, queued, allowed):
    assert {action for action, ok in allowed_actions(job, queued).items() if ok} == allowed
    # The same rule on the buttons, in ACTIONS' order; the jobs around fill the queue up to `queued`.
    others = [{"run_id": f"q{n}", "state": "queued", "queue_position": n} for n in range(1, queued + 1)
              if n != (job or {}).get("queue_position")]
    jobs = [{"run_id": "r", **job}, *others] if job else others
    shown = [button.interactive for button in runs_tab.buttons(jobs, "r", mine=True)]
    assert shown == [action in allowed for action in runs_actions.ACTIONS]
    assert not any(button.interactive for button in runs_tab.buttons(jobs, "r", mine=False))  # another's run


def test_in_public_mode_only_the_launching_session_changes_a_run(tmp_path, fake_workers):
    with Services.start(tmp_path / "runs", public=True) as services:
        busy = services.submit(config(), "alice", run_name="busy")
        mine = services.submit(config(), "alice", run_name="mine")
        for visitor in ("alice", "bob"):  # the queue is everyone's: nobody moves a job past another's
            with pytest.raises(PermissionError, match="keeps the order"):
                services.move(mine, -1, visitor)
        attempts = {"cancel": lambda who: services.cancel(mine, who),
                    "rename or annotate": lambda who: services.annotate(mine, who, "taken", "", ""),
                    "delete": lambda who: services.delete(busy, who, confirmed=True)}
        for what, attempt in attempts.items():
            for visitor in ("bob", None):
                with pytest.raises(PermissionError, match=f"only the browser session that launched .* may {what}"):
                    attempt(visitor)
        message = runs_actions.act(services, "cancel", busy, "bob")
        assert "only the browser session that launched" in message
        assert queue(services.jobs) == ["mine"] and services.jobs.workers().keys() == {"busy"}
        assert RunDir(services.runs_dir / "mine").read_notes()["name"] == ""

        assert services.cancel(mine, "alice") == "cancelled"
        with pytest.raises(PermissionError):
            services.delete(mine, "bob", confirmed=True)
        services.annotate(mine, "alice", "Mine", "a", "")
        services.delete(mine, "alice", confirmed=True)
        assert not (services.runs_dir / "mine").exists() and services.sessions["alice"] == ["busy"]


def test_the_log_shows_its_newest_lines(services):
    run = finished_run(services.runs_dir, "chatty")
    run.file(LOG).write_text("".join(f"line {i}\n" for i in range(1000)))
    _, log, _ = runs_tab.run_details(services, "chatty")
    lines = log.splitlines()
    assert lines[-1] == "line 999" and len(lines) == runs_tab.LOG_LINES


def test_the_monitor_reads_the_machine_each_worker_tree_and_the_gpus(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, "
                               "'-c', 'import time; time.sleep(600)']); print('ready', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        worker = WorkerProcess.from_popen(parent)
        child = worker.tree()[1].pid
        smi = tmp_path / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\ncase \"$1\" in\n  --query-gpu=*) echo '0, 10240, 81559, NVIDIA H100 80GB HBM3' ;;\n"
                       f"  --query-compute-apps=*) echo '{child}, 2048'; echo '99999999, [N/A]' ;;\nesac\n")
        smi.chmod(0o755)
        usage = ResourceMonitor(min_interval_s=0, gpu_tool=str(smi)).sample({HOSTILE: worker})
        assert usage.gpus == (GpuUsage(0, "NVIDIA H100 80GB HBM3", 10240.0, 81559.0),)
        (job,) = usage.jobs
        assert (job.run_id, job.processes, job.gpu_mib) == (HOSTILE, 2, 2048.0)
        assert job.rss_bytes > 2**20
        assert 0 <= usage.cpu_percent <= 100 and 0 < usage.ram_used <= usage.ram_total
        text = usage_markdown(usage)
        assert "GPU 0 (NVIDIA H100 80GB HBM3): 10.0 GiB of 79.6 GiB" in text and "2 processes, GPU 2.0 GiB" in text
        assert "<img" not in text

        assert ResourceMonitor(gpu_tool="no-such-tool").sample({}).gpus == ()  # no nvidia-smi: no GPU shown
        smi.write_text("#!/bin/sh\nexit 9\n")
        assert ResourceMonitor(gpu_tool=str(smi)).sample({}).gpus == ()  # a failing one neither
        shared = ResourceMonitor(min_interval_s=3600, gpu_tool="no-such-tool")
        assert shared.sample({}) is shared.sample({"job": worker})  # one reading serves every poll
    finally:
        for proc in WorkerProcess.from_popen(parent).tree()[::-1]:
            proc.kill()
        parent.wait()


def test_a_live_job_in_another_phase_says_which_and_how_far():
    job = {"state": "running", "live": True, "step": 0, "total_steps": 10}
    assert runs_tab._progress({**job, "phase": "held-out evaluation", "phase_done": 3, "phase_total": 8})["state"] \
        == "held-out evaluation (3/8)"
    assert runs_tab._progress({**job, "phase": "generating", "phase_done": 3, "phase_total": 8})["progress"] \
        == "38% of the data"
    assert runs_tab._progress({**job, "live": False, "phase": "held-out evaluation"})["state"] == "running"
