"""Schedules: the levels each cut reaches, against the formulas they come from."""

from __future__ import annotations

import math

import pytest

from slimnet.errors import SlimnetError
from slimnet.train.schedules import Schedule, agp


def test_agp_levels_match_zhu_and_gupta_formula() -> None:
    s = Schedule("agp", steps=5, start=300, every=60)
    assert s.cut_steps == [300, 360, 420, 480, 540]
    s_f, s_i, n, dt, t0 = 0.5, 0.0, 5, 60, 240  # the origin lies one interval before the first cut
    for t, level in zip(s.cut_steps, s.levels(s_f)):
        expected = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert level == pytest.approx(expected, abs=1e-15)
    # by hand: 1 - (4/5)^3 = 0.488 of the way at the first cut, all of it at the last
    assert s.levels(0.5) == pytest.approx([0.244, 0.392, 0.468, 0.496, 0.5])


def test_agp_from_an_initial_level_and_clamped_outside_its_span() -> None:
    s = Schedule("agp", steps=4, start=10, every=5, initial=0.2)
    assert s.level(0, 0.8) == 0.2
    assert s.levels(0.8) == pytest.approx([0.8 - 0.6 * (1 - k / 4) ** 3 for k in range(1, 5)])
    assert agp(0, 5, 4, 5, 0.8, 0.2) == pytest.approx(0.2) and agp(1000, 5, 4, 5, 0.8, 0.2) == 0.8


def test_exponential_removes_the_same_share_of_what_is_left_at_every_cut() -> None:
    levels = Schedule("exponential", steps=4, start=0, every=1).levels(0.75)
    kept = [1 - x for x in [0.0, *levels]]
    ratios = [b / a for a, b in zip(kept, kept[1:])]
    assert ratios == pytest.approx([0.25 ** (1 / 4)] * 4)  # NNCF: 1 - P = a exp(-k e) through (0,1) and (4,0.25)
    assert levels[-1] == pytest.approx(0.75)


def test_linear_and_one_shot() -> None:
    assert Schedule("linear", steps=4, start=0, every=10).levels(0.4) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    one = Schedule("one-shot", steps=7, start=50, every=3)
    assert one.cut_steps == [50] and one.levels(0.6) == [0.6]


def test_due_counts_every_cut_reached_even_when_steps_are_skipped() -> None:
    s = Schedule("agp", steps=3, start=10, every=10)
    assert [s.due(t, 0) for t in (0, 9, 10, 19, 20, 35)] == [0, 0, 1, 1, 2, 3]
    assert s.due(12, 2) == 2  # never goes back


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "cosine"}, "unknown schedule"),
        ({"steps": 0}, "steps=0"),
        ({"every": 0}, "every=0"),
        ({"start": -1}, "start=-1"),
        ({"initial": math.nan}, "initial=nan"),
    ],
)
def test_bad_schedules_are_refused_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(SlimnetError, match=message):
        Schedule(**kwargs)
