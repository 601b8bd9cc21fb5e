"""The run profile's clock: a phase inside another is taken out of the outer one's time, evaluation and io keep
what they call, and the split adds up to the time measured."""
import pytest

from workbench.engine import phase_clock
from workbench.engine.phase_clock import PhaseClock, describe


@pytest.fixture
def ticks(monkeypatch):
    """A clock that moves only when told: each phase's seconds are exact."""
    now = [0.0]
    monkeypatch.setattr(phase_clock, "now", lambda: now[0])

    def advance(seconds: float) -> None:
        now[0] += seconds
    return advance


def test_an_inner_phase_is_taken_out_of_the_outer_one(ticks):
    clock = PhaseClock()
    with clock.phase("student"):
        ticks(2)
        with clock.phase("teacher"):
            ticks(5)
        ticks(1)
        with clock.phase("loss"):
            ticks(3)
    assert clock.seconds["student"] == 3 and clock.seconds["teacher"] == 5 and clock.seconds["loss"] == 3
    split = clock.split()
    assert split["total_s"] == 11
    assert split["share"]["teacher"] == pytest.approx(5 / 11, abs=1e-4)
    assert describe(split).startswith("time 11 s: teacher 45%")


def test_evaluation_and_io_keep_what_they_call(ticks):
    clock = PhaseClock()
    with clock.phase("student"):
        ticks(1)
        with clock.phase("evaluation"):
            with clock.phase("teacher"):  # a held-out batch's teacher forward is evaluation time
                ticks(4)
            with clock.phase("loss"):
                ticks(2)
        with clock.phase("io"):
            with clock.phase("data"):
                ticks(3)
    assert clock.seconds["evaluation"] == 6 and clock.seconds["io"] == 3
    assert clock.seconds["teacher"] == clock.seconds["loss"] == clock.seconds["data"] == 0
    assert clock.seconds["student"] == 1


def test_a_phase_left_by_an_error_still_counts(ticks):
    clock = PhaseClock()
    with pytest.raises(RuntimeError):
        with clock.phase("teacher"):
            ticks(2)
            raise RuntimeError("out of memory")
    with clock.phase("loss"):
        ticks(1)
    assert clock.seconds["teacher"] == 2 and clock.seconds["loss"] == 1


def test_an_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown phase 'teacher_forward'"):
        with PhaseClock().phase("teacher_forward"):
            pass
