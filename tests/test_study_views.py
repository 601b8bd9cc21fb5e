"""A study's views: the per-setting table with mean and spread over seeds, KD's gain over CE-only and a verdict
that says "within noise" when the spread covers it, the equal-compute lines, the plots; and a study launched
from the Set-up panel through the services, refused whole when one setting is bad or a shared app is full."""
import dataclasses
import json
import math
import time

import pandas as pd
import plotly.graph_objects as go
import pytest

from workbench.eval.study_results import equal_compute, setting_table, verdict
from workbench.ui.app import build_app
from workbench.ui.studies_tab import act, show_study
from workbench.ui.study_panel import launch_study
from workbench.ui.study_plots import capacity_gap, heatmap, wall_clock
from workbench.ui.study_service import StudyService

RECORD = {"fields": ["student.init_from_teacher_layers", "train.seed"]}


def _runs(kd: dict, ce: dict) -> pd.DataFrame:
    """Two sizes x two seeds: KD runs and their baselines with the given perplexities {(layers, seed): ppl}."""
    rows = []
    for (layers, seed), ppl in kd.items():
        rows.append({"run_id": f"kd{layers}{seed}", "role": "distilled", "baseline": f"ce{layers}{seed}",
                     "student.init_from_teacher_layers": json.dumps(layers), "train.seed": json.dumps(seed),
                     "status": "succeeded", "ppl": ppl, "ood_ppl": 2 * ppl, "quality_kept": 50.0,
                     "ood_quality_kept": 20.0, "minutes": 10.0, "started": 1000.0, "params": layers * 1e6,
                     "teacher_ppl": 17.0, "untrained_ppl": 900.0})
    for (layers, seed), ppl in ce.items():
        rows.append({"run_id": f"ce{layers}{seed}", "role": "baseline", "baseline": None,
                     "student.init_from_teacher_layers": json.dumps(layers), "train.seed": json.dumps(seed),
                     "status": "succeeded", "ppl": ppl, "ood_ppl": 3 * ppl, "quality_kept": 40.0,
                     "ood_quality_kept": 10.0, "minutes": 4.0, "started": 1000.0, "params": layers * 1e6,
                     "teacher_ppl": 17.0, "untrained_ppl": 900.0})
    return pd.DataFrame(rows)


def test_the_table_averages_over_seeds_and_judges_the_gain_against_its_spread():
    runs = _runs({(3, 1): 90.0, (3, 2): 110.0, (6, 1): 80.0, (6, 2): 82.0},
                 {(3, 1): 100.0, (3, 2): 100.0, (6, 1): 100.0, (6, 2): 100.0})
    table = setting_table(runs, RECORD).set_index("student.init_from_teacher_layers")
    assert table.loc[3, "seeds"] == 2 and table.loc[3, "ppl"] == pytest.approx(100.0)
    assert table.loc[3, "ppl_sd"] == pytest.approx(math.sqrt(200))
    # gains +10% and -10%: the spread covers their mean of 0
    assert table.loc[3, "verdict"].startswith("within noise")
    assert table.loc[6, "gain_pct"] == pytest.approx(19.0) and table.loc[6, "verdict"].startswith("KD 19.0% lower")
    assert table.loc[6, "ce_ppl"] == 100.0 and table.loc[6, "ood_gain_pct"] == pytest.approx(100 * (300 - 162) / 300)


def test_a_baseline_measured_beside_the_run_is_preferred_to_its_own_evaluation():
    runs = _runs({(3, 1): 90.0}, {(3, 1): 100.0})
    runs.loc[runs.role == "baseline", "ood_ppl"] = float("nan")  # its own evaluation had no out-of-domain text
    runs["paired_ce_ppl"], runs["paired_ce_ood_ppl"] = 120.0, 360.0
    table = setting_table(runs, RECORD)
    assert table.gain_pct[0] == pytest.approx(25.0) and table.ood_gain_pct[0] == pytest.approx(50.0)
    assert table.ce_ood_ppl[0] == 360.0


@pytest.mark.parametrize("gains, words", [([], "waiting"), ([5.0], "one seed"), ([5.0, 6.0], "KD 5.5% lower"),
                                          ([-5.0, -6.0], "higher"), ([8.0, -6.0], "within noise")])
def test_verdict_edges(gains, words):
    assert words in verdict(pd.Series(gains, dtype=float))


def test_unfinished_baselines_give_no_gain_and_plots_say_what_they_need():
    runs = _runs({(3, 1): 90.0}, {(3, 1): 100.0})
    runs.loc[runs.role == "baseline", "status"] = "running"
    table = setting_table(runs, RECORD)
    assert table.verdict[0] == "waiting for finished pairs" and math.isnan(table.ce_ppl[0])
    assert "two sizes or more" in capacity_gap(runs).layout.annotations[0].text
    assert "two fields" in heatmap(table, RECORD).layout.annotations[0].text


def test_capacity_gap_heatmap_and_wall_clock_have_the_studys_points():
    runs = _runs({(3, 1): 90.0, (6, 1): 80.0}, {(3, 1): 100.0, (6, 1): 95.0})
    figure = capacity_gap(runs)
    kd = next(t for t in figure.data if t.name == "KD")
    assert list(kd.x) == [3.0, 6.0] and list(kd.y) == [90.0, 80.0]
    assert any(t.name == "untrained student" for t in figure.data)
    runs["untrained_ppl"] = 5e7  # a pruned student before training: written beside the curve, not drawn
    far = capacity_gap(runs)
    assert not any(t.name == "untrained student" for t in far.data)
    assert any("off this scale" in a.text for a in far.layout.annotations)
    two = {"fields": ["loss.alpha", "loss.temperature"]}
    table = pd.DataFrame({"loss.alpha": [0.2, 0.2, 0.5], "loss.temperature": [1, 2, 1], "ppl": [90.0, 95.0, 80.0]})
    cells = heatmap(table, two).data[0]
    assert list(cells.x) == ["0.2", "0.5"] and list(cells.y) == ["1", "2"]
    curves = pd.DataFrame({"run_id": ["kd31", "kd31"], "step": [0, 40], "time": [None, 1000.0 + 600],
                           "ce": [math.log(900), math.log(90)]})
    line = wall_clock(runs, curves).data[0]
    assert list(line.x) == [0.0, 10.0] and line.y[-1] == pytest.approx(90.0)


def test_equal_compute_says_where_ce_stood_after_kds_minutes():
    runs = _runs({(3, 1): 90.0}, {(3, 1): 100.0})
    assert "finished sooner" in equal_compute(runs, pd.DataFrame(columns=["run_id", "step", "time", "ce"]))[0]
    runs.loc[runs.role == "baseline", "minutes"] = 20.0
    curves = pd.DataFrame({"run_id": ["ce31"] * 3, "step": [0, 20, 40], "time": [None, 1000 + 300, 1000 + 1200],
                           "ce": [math.log(900), math.log(120), math.log(100)]})
    assert "had reached 120.0 by then" in equal_compute(runs, curves)[0]


@pytest.fixture
def study_form(tiny_form):
    return tiny_form.replace({"train.max_steps": 3, "data.max_eval_examples": 4, "evaluation.max_new_tokens": 0,
                              "evaluation.speed": False})


def test_a_study_from_the_panel_runs_and_its_views_fill(services, study_form):
    studies = StudyService(services)
    text = launch_study(studies, study_form, "panel", "loss.alpha: [0.0, 0.5]", "1", True, None)
    assert "panel launched" in text and "2 runs and 1 CE-only baselines" in text
    deadline = time.monotonic() + 300
    while studies.manager.progress("panel")["states"] != {"succeeded": 3}:
        assert time.monotonic() < deadline, studies.manager.progress("panel")
        time.sleep(0.5)
    services.ingest.ingestor.ingest_all()
    status, table, verdict_md, gap, grid, clock, runs = show_study(studies, "panel")
    assert "3 succeeded" in status and len(table) == 2 and set(runs.status) == {"succeeded"}
    assert "Did distillation beat plain fine-tuning?" in verdict_md and "one seed" in verdict_md
    assert all(isinstance(f, go.Figure) for f in (gap, grid, clock)) and len(clock.data) == 3
    assert studies.choices() == [("panel (3/3 finished)", "panel")]
    assert act(studies, "panel", "resume", None) == "Nothing left to resume."
    assert "no study" in act(studies, "../panel", "cancel", None)


def test_a_bad_setting_queues_nothing_and_a_full_shared_app_refuses_the_whole_study(services, study_form):
    studies = StudyService(services)
    text = launch_study(studies, study_form, "bad", "loss.alpha: [0.5, 7]", "", False, None)
    assert "not launched" in text and "setting loss.alpha=7: loss.alpha" in text
    assert not services.jobs.jobs() and not studies.choices()
    text = launch_study(studies, study_form, "bad", "loss.alpha: [0.5]\nnot_a_field: [1]", "", False, None)
    assert "not_a_field" in text and "not a config field" in text
    services.gate = dataclasses.replace(services.gate, max_active_jobs=10, max_jobs_per_session=2)
    text = launch_study(studies, study_form, "big", "loss.alpha: [0.1, 0.5]", "1, 2", False, "visitor")
    assert "not launched" in text and "4 more do not fit" in text and not services.jobs.jobs()


def test_the_app_has_the_studies_tab_and_the_study_panel(services):
    app = build_app(services)
    labels = {getattr(block, "label", None) for block in app.blocks.values()}
    assert {"Studies", "Grid", "Seeds (train.seed)", "Capacity gap"} <= labels
    names = {dep.get("api_name") for dep in app.config["dependencies"]}
    assert {"launch_study", "cancel_study", "resume_study", "study", "studies"} <= names


def test_in_a_shared_app_only_the_launching_session_may_cancel_or_resume_a_study(services, study_form):
    services.gate = dataclasses.replace(services.gate, public=True, max_active_jobs=10, max_jobs_per_session=5)
    studies = StudyService(services)
    assert "mine launched" in launch_study(studies, study_form, "mine", "loss.alpha: [0.5]", "1", False, "a")
    assert "only the browser session that launched study mine may cancel" in act(studies, "mine", "cancel", "b")
    assert "only the browser session" in act(studies, "mine", "resume", "b")
    assert services.sessions["a"] == ["mine-01"] and "b" not in services.sessions
    assert "Cancelling 1" in act(studies, "mine", "cancel", "a")
