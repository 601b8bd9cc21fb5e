"""Studies: a grid or list over config fields planned into validated runs (baselines shared where they would
train the same config), queued through the job manager, cancelled and resumed as a whole, and stored in
DuckDB from the run folders alone."""
import dataclasses
import json
import time

import pytest

from jobs.manager import JobManager
from jobs.study import StudyManager
from jobs.study_plan import plan_study
from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.config.study import MAX_RUNS, StudySpec, load_study
from workbench.store.database import Store
from workbench.store.ingest import Ingestor, rebuild
from workbench.store.studies import read_study, study_file, write_study


@pytest.fixture
def base(teacher_dir, student_dir, corpus_files):
    train_set, val_set = corpus_files
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
        "data": {"source": str(train_set), "validation_source": str(val_set), "max_eval_examples": 4},
        "evaluation": {"at_end": False},
        "train": {"max_steps": 3, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "logging_steps": 1,
                  "save_steps": 1000}})


def test_a_grid_over_alpha_t_and_seed_shares_one_baseline_per_seed(base):
    spec = StudySpec("at", grid={"loss.alpha": [0.2, 0.5], "loss.temperature": [1.0, 2.0], "train.seed": [1, 2]},
                     baselines=True)
    plan = plan_study(spec, base)
    assert len(plan.runs) == 8 and len(plan.baselines) == 2 and plan.size == 10
    # the first field varies slowest, and each setting's config carries exactly its values
    assert [r.setting for r in plan.runs[:2]] == [{"loss.alpha": 0.2, "loss.temperature": 1.0, "train.seed": 1},
                                                  {"loss.alpha": 0.2, "loss.temperature": 1.0, "train.seed": 2}]
    assert all((r.config.loss.alpha, r.config.loss.temperature, r.config.train.seed) == tuple(r.setting.values())
               for r in plan.runs)
    for run in plan.runs:
        baseline = plan.baselines[run.baseline]
        assert baseline.config.loss.alpha == 1.0 and baseline.config.train.seed == run.config.train.seed


def test_a_ce_only_setting_gets_no_baseline_and_a_list_adds_runs(base):
    plan = plan_study(StudySpec("a", grid={"loss.alpha": [0.5, 1.0]}, settings=[{"train.lr": 1e-4}],
                                baselines=True), base)
    assert [r.baseline for r in plan.runs] == [0, None, 1]  # another lr: another baseline
    assert plan.runs[2].config.train.lr == 1e-4 and plan.fields() == ["loss.alpha", "train.lr"]


@pytest.mark.parametrize("spec, field, words", [
    (StudySpec("x", grid={"loss.alpah": [0.1]}), "study.grid.'loss.alpah'", "did you mean loss.alpha"),
    (StudySpec("x", grid={"output.run_name": ["a"]}), "study.grid.'output.run_name'", "where its runs go"),
    (StudySpec("x", grid={"loss.alpha": 0.5}), "study.grid.loss.alpha", "list of 1 to 32"),
    (StudySpec("x", grid={"loss.alpha": [0.5, 2.0]}), "setting loss.alpha=2.0: loss.alpha", "in [0, 1]"),
    (StudySpec("../x", grid={"loss.alpha": [0.5]}), "study.name", "not a study name"),
    (StudySpec("x", grid={}), "study.grid", "at least one field"),
    (StudySpec("x", grid={"loss.alpha": [0.5]}, baselines="yes"), "study.baselines", "true or false"),
    (StudySpec("x", grid={f: list(range(1, 33)) for f in ("train.seed", "train.max_steps", "train.batch_size")}),
     "study.grid", f"at most {MAX_RUNS} runs"),
])
def test_bad_studies_are_refused_naming_the_field(base, spec, field, words):
    with pytest.raises(ConfigError) as err:
        plan_study(spec, base)
    assert err.value.field == field and words in str(err.value)


def test_a_study_file_reads_its_base_relative_to_itself_and_refuses_unknown_keys(tmp_path, base):
    base.save(tmp_path / "base.yaml")
    (tmp_path / "s.yaml").write_text("name: gap\nbase: base.yaml\ngrid:\n  student.init_from_teacher_layers: [1, 2]\n"
                                     "baselines: true\n")
    spec, config = load_study(tmp_path / "s.yaml", ["train.max_steps=5"])
    assert spec.grid == {"student.init_from_teacher_layers": [1, 2]} and spec.baselines
    assert config.train.max_steps == 5 and config.teacher.name_or_path == base.teacher.name_or_path
    (tmp_path / "t.yaml").write_text("name: gap\nbase: base.yaml\ngrids: {}\n")
    with pytest.raises(ConfigError, match="not a study key"):
        load_study(tmp_path / "t.yaml")


def _wait(condition, timeout=240, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_a_study_runs_through_the_queue_and_is_rebuilt_into_the_store(tmp_path, base):
    manager = JobManager(tmp_path / "runs", max_concurrent=2)
    studies = StudyManager(manager)
    plan = plan_study(StudySpec("s", grid={"loss.alpha": [0.0, 0.5]}, baselines=True), base)
    study_id = studies.create(plan)
    record = read_study(manager.runs_dir, study_id)
    assert [(r["run_id"], r["role"], r["baseline"]) for r in record["runs"]] == [
        ("s-01", "distilled", "s-ce01"), ("s-02", "distilled", "s-ce01"), ("s-ce01", "baseline", None)]
    # --max-jobs holds for a study too; each baseline is queued right after its first distilled run
    assert set(manager._live) == {"s-01", "s-ce01"} and manager._queue == ["s-02"]
    _wait(lambda: manager.poll() or all(s == "succeeded" for s in studies.states(record).values()),
          what="the study's runs")
    progress = studies.progress(study_id)
    assert progress["states"] == {"succeeded": 3} and progress["steps_done"] == progress["steps_planned"] == 9
    store = Store(tmp_path / "db.duckdb")
    Ingestor(store, manager.runs_dir).ingest_all()
    row = store.studies().iloc[0]
    assert (row.study_id, row.planned, row.finished) == ("s", 3, 3)
    runs = store.cursor().execute("SELECT run_id, study, baseline_of, alpha FROM runs ORDER BY run_id").fetchall()
    assert runs == [("s-01", "s", None, 0.0), ("s-02", "s", None, 0.5), ("s-ce01", "s", "s-01", 1.0)]
    store.close()
    db, _ = rebuild(manager.runs_dir)  # from the run folders alone
    rebuilt = Store(db)
    assert rebuilt.study("s")["runs"] == record["runs"] and rebuilt.studies().finished.tolist() == [3]
    rebuilt.close()


def test_a_study_cancels_and_resumes_as_a_whole(tmp_path, base):
    manager = JobManager(tmp_path / "runs", max_concurrent=1)
    studies = StudyManager(manager)
    study_id = studies.create(plan_study(StudySpec("c", grid={"train.seed": [1, 2, 3]}), base.replace(
        train=base.train.__class__(**{**base.train.__dict__, "max_steps": 400}))))
    _wait(lambda: manager.poll() or manager.jobs() and any(j.get("step", 0) >= 1 for j in manager.jobs()),
          what="the first run's first step")
    after = studies.cancel(study_id)
    assert after == {"c-01": "cancelling", "c-02": "cancelled", "c-03": "cancelled"}
    _wait(lambda: manager.poll() or studies.states(read_study(manager.runs_dir, study_id))["c-01"] == "cancelled",
          what="the running run to stop")
    assert read_study(manager.runs_dir, study_id)["cancelled"] is not None
    assert sorted(studies.resume(study_id)) == ["c-01", "c-02", "c-03"]
    states = studies.states(read_study(manager.runs_dir, study_id))
    assert set(states.values()) <= {"queued", "starting", "running"}
    studies.cancel(study_id)
    _wait(lambda: manager.poll() or "cancelling" not in studies.states(read_study(manager.runs_dir, study_id)).values()
          and not manager._live, what="the second cancel")


def test_a_study_cut_off_while_queuing_is_finished_by_resume(tmp_path, base, monkeypatch):
    manager = JobManager(tmp_path / "runs", max_concurrent=1)
    studies = StudyManager(manager)
    submit, calls = manager.submit, []

    def dies_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # the app stopped while the study was being queued
        calls.append(1)
        return submit(*args, **kwargs)
    monkeypatch.setattr(manager, "submit", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        studies.create(plan_study(StudySpec("cut", grid={"train.seed": [1, 2]}), base))
    record = read_study(manager.runs_dir, "cut")
    states = studies.states(record)
    assert states["cut-01"] in ("queued", "starting", "running") and states["cut-02"] == "not queued"
    monkeypatch.setattr(manager, "submit", submit)
    assert studies.resume("cut") == ["cut-02"]
    assert json.loads((manager.runs_dir / "cut-02" / "spec.json").read_text())["config"]["output"]["study"] == "cut"


def test_a_second_study_of_the_same_name_gets_its_own_id_and_ids_from_requests_stay_inside(tmp_path, base):
    manager = JobManager(tmp_path / "runs", max_concurrent=1)
    studies = StudyManager(manager)
    plan = plan_study(StudySpec("twice", grid={"train.seed": [1]}), base)
    assert [studies.create(plan), studies.create(plan)] == ["twice", "twice-2"]
    # a run of its own named like a study's run: the study takes another name, never that run
    manager.submit(base, run_name="mine-01")
    assert studies.create(plan_study(StudySpec("mine", grid={"train.seed": [1]}), base)) == "mine-2"
    (manager.runs_dir / ".studies" / "mine-2.json").rename(manager.runs_dir / ".studies" / "mine.json")
    record = read_study(manager.runs_dir, "mine")
    record["study_id"], record["runs"][0]["run_id"] = "mine", "mine-01"  # as if "mine-01" were taken after planning
    write_study(manager.runs_dir, record)
    with pytest.raises(ValueError, match="mine-01 is a run of its own, not of study mine"):
        studies.resume("mine")
    for run_id in ("mine-01", "mine-2-01"):
        manager.cancel(run_id)
    for bad in ("../twice", "a/b", "", ".studies", None):
        with pytest.raises(KeyError):
            study_file(manager.runs_dir, bad)
    studies.cancel("twice")
    studies.cancel("twice-2")


def test_the_study_command_runs_a_study_file_and_prints_its_table(tmp_path, base, capsys):
    from workbench.cli import main
    base.save(tmp_path / "base.yaml")
    (tmp_path / "s.yaml").write_text("name: cli\nbase: base.yaml\nset: [train.max_steps=2]\n"
                                     "grid:\n  loss.alpha: [0.0]\n  train.seed: [1, 2]\nbaselines: true\n")
    assert main(["study", str(tmp_path / "s.yaml"), "--runs-dir", str(tmp_path / "runs"), "--max-jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "study cli: 2 runs and 2 CE-only baselines queued" in out and "4 succeeded" in out
    table = out[out.index("loss.alpha"):]
    assert "seeds" in table and "gain_pct" in table and "over 2 seeds" in table
    assert main(["study", "--resume", "cli", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "nothing left to queue" in capsys.readouterr().out
    assert main(["study"]) == 2 and "give a study file, or --resume" in capsys.readouterr().err
    assert main(["study", "--resume", "../x", "--runs-dir", str(tmp_path / "runs")]) == 1


def test_the_shipped_capacity_study_plans_six_runs_and_six_baselines():
    from pathlib import Path
    spec, config = load_study(Path(__file__).resolve().parents[1] / "assets" / "configs" / "study_capacity.yaml")
    plan = plan_study(spec, config)
    assert (len(plan.runs), len(plan.baselines)) == (6, 6)
    assert sorted({r.config.student.init_from_teacher_layers for r in plan.runs}) == [3, 6, 10]
    assert config.evaluation.max_new_tokens == 0 and config.train.max_steps == 40


def test_a_teacher_cache_is_shared_where_the_data_allows(base, tmp_path):
    cached = base.replace(loss=dataclasses.replace(base.loss, teacher_cache=str(tmp_path / "cache")))
    plan = plan_study(StudySpec("c", grid={"strategy": ["soft_label", "co_distillation"],
                                           "train.seed": [cached.train.seed, 7]}, baselines=True), cached)
    uses = {(r.config.strategy, r.config.train.seed): r.config.loss.teacher_cache for r in plan.runs}
    # the base's seed reads the same blocks; another seed, or a strategy that needs the live teacher, does not
    assert uses == {("soft_label", cached.train.seed): str(tmp_path / "cache"), ("soft_label", 7): None,
                    ("co_distillation", cached.train.seed): None, ("co_distillation", 7): None}
    assert all(b.config.loss.teacher_cache is None for b in plan.baselines)  # CE-only needs no teacher
