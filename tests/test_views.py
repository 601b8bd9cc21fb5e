"""What the tables and curves show people: rounded numbers, held-out points joined only where they were
measured close together, one quantity per Compare axis (held-out CE by default)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench.ui.pickers import run_picker
from workbench.ui.plots import compare_heldout, gapped, run_curves
from workbench.ui.tables import for_people, rounded


def test_numbers_are_rounded_for_people_and_stay_numbers():
    assert rounded(102.39053047884875) == 102.39 and rounded(4652282.0123) == 4652282.01
    assert rounded(0.32231234) == 0.3223 and rounded(0.000512345) == 0.0005123 and rounded(-1.23456) == -1.23
    assert rounded(0.0) == 0.0 and math.isnan(rounded(float("nan"))) and rounded(7) == 7 and rounded("x") == "x"
    frame = pd.DataFrame({"run": ["a"], "ppl": [102.39053047884875], "steps": [200], "ok": [True]})
    shown = for_people(frame)
    assert shown.loc[0, "ppl"] == 102.39 and frame.loc[0, "ppl"] == 102.39053047884875  # the original is kept
    assert shown.loc[0, "steps"] == 200 and for_people(None) is None


def test_held_out_points_far_apart_are_not_joined():
    xs, ys = gapped(pd.Series([200, 0, 50, 100]), pd.Series([3.0, 9.0, 5.0, 4.0]), max_gap=50)
    assert xs == [0, 50, 100, None, 200] and ys == [9.0, 5.0, 4.0, None, 3.0]
    # Two evaluations only, step 0 and the end: markers, no line that would read as a measured trend.
    evals = pd.DataFrame({"run_id": ["kd", "kd"], "step": [0, 200], "split": ["validation"] * 2,
                          "metric": ["ce", "ce"], "value": [9.0, 4.6]})
    figure = compare_heldout(evals, {"kd": 200})
    assert list(figure.data[0].x) == [0, None, 200]
    metrics = pd.DataFrame({"run_id": "kd", "step": [10, 200], "loss": [5.0, 4.0], "ce": [5.0, 4.0],
                            "kd": [1.0, 0.5], "learning_rate": [1e-4, 0.0], "grad_norm": [1.0, 1.0],
                            "tokens_per_s": [100.0, 100.0]})
    heldout = [t for t in run_curves(metrics, evals, total_steps=200).data if t.name == "held-out ce"]
    assert list(heldout[0].x) == [0, None, 200]
    five = pd.concat([evals, evals.assign(step=[50, 100]), evals.assign(step=150).iloc[:1]])
    assert None not in list(compare_heldout(five, {"kd": 200}).data[0].x)


def test_compare_curves_say_what_they_plot():
    evals = pd.DataFrame({"run_id": ["kd", "kd-ce-baseline"], "step": [200, 200], "split": ["validation"] * 2,
                          "metric": ["ce", "ce"], "value": [4.6, 4.7]})
    figure = compare_heldout(evals, {"kd": 200, "kd-ce-baseline": 200})
    assert figure.layout.yaxis.title.text == "held-out ce" and "whatever its α" in figure.layout.title.text
    assert {t.name for t in figure.data} == {"kd", "kd-ce-baseline"}
    assert "no held-out evaluations" in compare_heldout(evals.iloc[:0], {}).layout.annotations[0].text


@pytest.mark.parametrize("bad", ["DROP", "glob('/*')"])
def test_sql_errors_are_shown_literally(bad):
    from workbench.ui.compare_tab import run_sql

    class Refusing:
        class store:
            @staticmethod
            def query(sql):
                from workbench.store.database import StoreError
                raise StoreError(f"query: Binder Error: no file matches {sql} *here*")

    frame, message = run_sql(Refusing, bad)
    assert frame is None and "*here*" not in message and "&#42;here&#42;" in message


def test_a_run_picker_keeps_only_choices_that_still_exist():
    """A run deleted while its tab was closed leaves the picker's value too: Gradio refuses (with an error
    toast) a value outside the choices."""
    assert run_picker(["a", "b"], "gone").value is None and run_picker(["a", "b"], "a").value == "a"
    assert run_picker(["a", "b"], ["b", "gone"]).value == ["b"] and run_picker([], None).value is None
