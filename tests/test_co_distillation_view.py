"""What a co-distillation run shows in Runs: the teacher's and the student's CE and the scheduled α on one
plot, the early phase (α's warm-up) shaded, the step from which the teacher is ahead found and said in the
caption; nothing of it for other strategies. Hand-built metrics and run folders; one short real run (slow)."""
from __future__ import annotations

import gradio as gr
import pandas as pd
import pytest

from workbench.config.schema import DistillConfig
from workbench.store.rundir import CONFIG, RunDir
from workbench.ui import runs_tab
from workbench.ui.app import DEFAULT_CONFIG
from workbench.ui.co_plots import (Schedule, co_caption, co_distillation_curves, schedule_of,
                                   teacher_ahead_from)
from workbench.ui.services import Services

SKIP = type(gr.skip())
# Five logs: the teacher's CE falls faster than the student's and drops below it at step 8.
STEPS = [2, 4, 6, 8, 10]
TEACHER_CE = [6.0, 5.0, 4.4, 3.0, 2.5]
STUDENT_CE = [5.5, 4.8, 4.3, 3.9, 3.6]
ALPHA = [1.0, 0.8, 0.6, 0.5, 0.5]


def frame(teacher=TEACHER_CE, student=STUDENT_CE, alpha=ALPHA) -> pd.DataFrame:
    data = {"step": STEPS, "ce": student, "alpha": alpha}
    if teacher is not None:
        data["teacher_ce"] = teacher
    return pd.DataFrame(data)


def traces(figure) -> dict:
    return {trace.name: trace for trace in figure.data}


def vrects(figure) -> list:
    return [shape for shape in figure.layout.shapes if shape.type == "rect"]


@pytest.fixture
def services(tmp_path):
    started = Services.start(tmp_path / "runs")
    yield started
    started.close()


def fake_run(services: Services, name: str, strategy: str, teacher: bool = True, warmup: int = 6,
             max_steps: int = 10) -> str:
    """A finished run folder as a job leaves it (training logs, two held-out evaluations), ingested."""
    data = DistillConfig.load(DEFAULT_CONFIG).to_dict()
    data["strategy"] = strategy
    data["train"]["max_steps"] = max_steps
    data["co_distillation"].update(alpha_start=1.0, alpha_end=0.5, alpha_warmup_steps=warmup)
    run = RunDir(services.runs_dir / name).create()
    DistillConfig.from_dict(data).save(run.file(CONFIG))
    run.append_metrics({"step": 0, "eval_loss": 12.0, "eval_ce": 6.0, "eval_kd": 0.5,
                        **({"eval_teacher_ce": 6.5} if teacher else {})})
    for step, t, s, a in zip(STEPS, TEACHER_CE, STUDENT_CE, ALPHA):
        run.append_metrics({"step": step, "loss": s + t, "ce": s, "kd": 0.4, "tokens_per_s": 100.0,
                            "learning_rate": 1e-3, "alpha": a, **({"teacher_ce": t} if teacher else {})})
    run.append_metrics({"step": 10, "eval_loss": 6.0, "eval_ce": 3.7, "eval_kd": 0.3,
                        **({"eval_teacher_ce": 2.6} if teacher else {})})
    run.write_status("succeeded", step=10, total_steps=max_steps)
    services.ingest.ingestor.ingest_all()
    return name


def test_the_figure_draws_both_learners_ce_and_alpha_on_its_own_axis():
    figure = co_distillation_curves(frame(), warmup=6, total_steps=10)
    drawn = traces(figure)
    assert list(drawn) == ["teacher CE", "student CE", "α (student's CE weight)"]
    assert list(drawn["teacher CE"].x) == STEPS and list(drawn["teacher CE"].y) == TEACHER_CE
    assert list(drawn["student CE"].y) == STUDENT_CE
    alpha = drawn["α (student's CE weight)"]
    assert list(alpha.y) == ALPHA and alpha.yaxis == "y2"
    assert drawn["teacher CE"].yaxis in (None, "y")  # the two CE lines share the left axis
    assert figure.layout.yaxis2.side == "right" and figure.layout.yaxis2.overlaying == "y"
    assert figure.layout.yaxis2.range[0] == 0 and 1 <= figure.layout.yaxis2.range[1] <= 1.1


def test_the_early_phase_is_shaded_from_step_0_to_the_warm_up():
    figure = co_distillation_curves(frame(), warmup=6, total_steps=10)
    (band,) = vrects(figure)
    assert (band.x0, band.x1) == (0, 6)
    assert any("early phase" in note.text for note in figure.layout.annotations)
    # A warm-up longer than the planned run ends with it; no warm-up, no band.
    (cut,) = vrects(co_distillation_curves(frame(), warmup=100, total_steps=10))
    assert (cut.x0, cut.x1) == (0, 10)
    assert vrects(co_distillation_curves(frame(), warmup=0, total_steps=10)) == []
    assert vrects(co_distillation_curves(frame(), warmup=4, total_steps=None))[0].x1 == 4


def test_the_step_the_teacher_gets_ahead_is_found_and_said():
    assert teacher_ahead_from(frame()) == 8
    figure = co_distillation_curves(frame(), warmup=6, total_steps=10)
    marks = [shape for shape in figure.layout.shapes if shape.type == "line"]
    assert [(mark.x0, mark.x1) for mark in marks] == [(8, 8)]
    caption = co_caption(frame(), Schedule(1.0, 0.5, 6))
    assert "step 8" in caption and "after the early phase ended" in caption
    assert "steps 0 to 6" in caption and "(1)" in caption and "(0.5)" in caption
    assert "within the early phase" in co_caption(frame(), Schedule(1.0, 0.5, 9))
    # A teacher that never gets below the student: not yet, and no mark.
    behind = frame(teacher=[s + 1 for s in STUDENT_CE])
    assert teacher_ahead_from(behind) is None
    assert "not yet" in co_caption(behind, Schedule(1.0, 0.5, 6))
    assert not [s for s in co_distillation_curves(behind, warmup=6).layout.shapes if s.type == "line"]
    # A teacher ahead from its first log (a trained checkpoint): said as such.
    ahead = frame(teacher=[s - 1 for s in STUDENT_CE])
    assert teacher_ahead_from(ahead) == 2 and "from the first logged step (2)" in co_caption(ahead, Schedule(1, .5, 6))
    # Equal is not ahead; missing values are skipped.
    assert teacher_ahead_from(frame(teacher=[None, 4.8, 4.0, None, None], student=STUDENT_CE)) == 6
    assert teacher_ahead_from(frame(teacher=STUDENT_CE)) is None
    assert "no early phase" in co_caption(frame(), Schedule(1.0, 0.5, 0))
    assert "the whole run" in co_caption(frame(), Schedule(1.0, 0.5, 100), total_steps=10)


def test_metrics_without_a_teacher_ce_draw_the_student_alone():
    old = frame(teacher=None)
    figure = co_distillation_curves(old, warmup=6, total_steps=10)
    assert list(traces(figure)) == ["student CE", "α (student's CE weight)"]
    assert teacher_ahead_from(old) is None
    assert "no teacher CE" in co_caption(old, Schedule(1.0, 0.5, 6))
    empty = pd.DataFrame(columns=["step", "ce"])
    assert "no training steps" in co_distillation_curves(empty, warmup=6).layout.annotations[0].text
    assert "No training steps" in co_caption(empty, Schedule(None, None, 6))
    # The store's frame: core terms as columns, the rest (teacher CE, α) in the terms JSON.
    stored = pd.DataFrame({"step": [1], "ce": [2.0], "terms": ['{"ce": 2.0, "teacher_ce": 1.5, "alpha": 1.0}']})
    assert list(traces(co_distillation_curves(stored, warmup=3))) == ["teacher CE", "student CE",
                                                                      "α (student's CE weight)"]


def test_a_damaged_schedule_reads_as_no_numbers():
    assert schedule_of({"co_distillation": {"alpha_start": 1, "alpha_end": 0.2, "alpha_warmup_steps": 50}}) == \
        Schedule(1.0, 0.2, 50)
    hostile = {"co_distillation": {"alpha_start": "<img src=x onerror=alert(1)>", "alpha_end": True,
                                   "alpha_warmup_steps": -5}}
    assert schedule_of(hostile) == Schedule(None, None, 0)
    assert schedule_of({"co_distillation": {"alpha_warmup_steps": 10**400}}).warmup == 0  # not a finite float
    assert schedule_of({"co_distillation": "x"}) == schedule_of([]) == Schedule(None, None, 0)
    caption = co_caption(frame(), schedule_of(hostile))
    assert "<img" not in caption and "no early phase" in caption


def test_a_co_run_shows_its_view_with_held_out_points_and_others_hide_it(services):
    co = fake_run(services, "co", "co_distillation")
    picked = runs_tab.pick(services, None, co)
    with gr.Blocks():
        view = runs_tab._layout(services)
    at = len(view.picked) - len(view.on_policy.outputs) - len(view.co.outputs)
    box, figure, caption = picked[at:at + 3]
    assert box["visible"] is True and picked[-5]["visible"] is False  # on-policy's box stays hidden
    drawn = traces(figure)
    assert list(drawn["teacher CE"].y) == TEACHER_CE and list(drawn["student CE"].y) == STUDENT_CE
    assert [y for y in drawn["held-out teacher CE"].y if y is not None] == [6.5, 2.6]
    assert [y for y in drawn["held-out student CE"].y if y is not None] == [6.0, 3.7]
    assert (vrects(figure)[0].x0, vrects(figure)[0].x1) == (0, 6)  # the run's alpha_warmup_steps
    assert "step 8" in caption and "steps 0 to 6" in caption
    assert view.co.box.visible is False and len(picked) == len(view.picked)

    soft = fake_run(services, "soft", "soft_label")
    hidden = runs_tab.pick(services, None, soft)[at:at + 3]
    assert hidden[0]["visible"] is False and all(isinstance(v, SKIP) for v in hidden[1:])
    # An unchanged poll sends nothing; a poll after new points redraws.
    _, _, key = runs_tab.run_details(services, co)
    polled = runs_tab.poll(services, None, co, key)
    start = len(view.polled) - len(view.on_policy.outputs) - len(view.co.outputs)
    assert len(polled) == len(view.polled) and all(isinstance(v, SKIP) for v in polled[start:start + 3])
    RunDir(services.runs_dir / co).append_metrics({"step": 12, "loss": 5.0, "ce": 3.5, "teacher_ce": 2.4,
                                                   "alpha": 0.5})
    services.ingest.ingestor.ingest_all()
    redrawn = runs_tab.poll(services, None, co, key)[start:start + 3]
    assert redrawn[0]["visible"] is True and list(traces(redrawn[1])["teacher CE"].x) == STEPS + [12]


def test_an_old_co_run_without_a_teacher_ce_does_not_crash(services):
    old = fake_run(services, "old", "co_distillation", teacher=False, warmup=0)
    box, figure, caption = runs_tab.co_outputs(services, old, changed=True)
    assert box["visible"] is True and "teacher CE" not in traces(figure)
    assert "held-out teacher CE" not in traces(figure) and "held-out student CE" in traces(figure)
    assert "no teacher CE" in caption and vrects(figure) == []
    assert services.stored_config(old)["co_distillation"]["alpha_warmup_steps"] == 0
    assert services.stored_config("no-such-run") == {}
    assert runs_tab.co_outputs(services, None, changed=True)[0]["visible"] is False


@pytest.mark.slow
def test_a_real_co_distillation_run_fills_the_view(tmp_path, teacher_dir, student_dir, corpus_files):
    from workbench.engine.runner import run_training
    from test_layer_strategies import co_config
    config = co_config(teacher_dir, student_dir, corpus_files, tmp_path / "runs", "co", alpha_warmup_steps=4)
    config = config.replace(train=config.train.__class__(**{**config.train.__dict__, "max_steps": 6}))
    run_training(config)
    with Services.start(tmp_path / "runs") as services:
        services.ingest.ingestor.ingest_all()
        box, figure, caption = runs_tab.co_outputs(services, "co", changed=True)
    drawn = traces(figure)
    assert box["visible"] is True and len(drawn["teacher CE"].y) == 6 and len(drawn["student CE"].y) == 6
    assert list(drawn["α (student's CE weight)"].y[:5]) == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert "held-out teacher CE" in drawn and (vrects(figure)[0].x0, vrects(figure)[0].x1) == (0, 4)
    assert "steps 0 to 4" in caption
