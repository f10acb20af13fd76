"""The ProVQ schedule: alpha(t) and the VQ-loss ramp w(t) at the points that define them."""

from __future__ import annotations

import itertools
import math

import pytest

from provq.train.errors import ProvqError
from provq.train.schedule import Schedule


def test_cosine_values_at_start_middle_end() -> None:
    s = Schedule(kind="provq", warmup_steps=100, transition_steps=200, lam=0.5)
    assert s.alpha(100) == 1.0 and s.loss_weight(100) == 0.5
    assert s.alpha(200) == pytest.approx(0.5) and s.loss_weight(200) == pytest.approx(0.75)
    assert s.alpha(300) == 0.0 and s.loss_weight(300) == 1.0
    assert s.alpha(150) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def test_phases_and_warm_up() -> None:
    s = Schedule(kind="provq", warmup_steps=10, transition_steps=20)
    assert [s.phase(t) for t in (0, 9, 10, 29, 30, 10_000)] == [
        "warmup",
        "warmup",
        "transition",
        "transition",
        "hard",
        "hard",
    ]
    assert s.alpha(0) == 1.0 and s.loss_weight(0) == 0.0
    assert s.kmeans_step == 10 and s.hard_from == 30


@pytest.mark.parametrize(("curve", "mid"), [("linear", 0.5), ("exponential", math.exp(-2.5)), ("cosine", 0.5)])
def test_other_curves(curve: str, mid: float) -> None:
    s = Schedule(kind="provq", warmup_steps=0, transition_steps=100, curve=curve, lam=0.2)
    assert s.alpha(0) == 1.0
    assert s.alpha(50) == pytest.approx(mid)
    assert s.loss_weight(50) == pytest.approx(0.2 + 0.8 * (1 - mid))
    assert s.alpha(100) == 0.0


def test_alpha_decreases_monotonically() -> None:
    s = Schedule(kind="provq", warmup_steps=5, transition_steps=50)
    values = [s.alpha(t) for t in range(0, 70)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_hard_baseline_is_hard_from_step_zero() -> None:
    s = Schedule(kind="hard")
    assert s.alpha(0) == 0.0 and s.loss_weight(0) == 1.0 and s.kmeans_step is None


def test_round_trip_through_dict() -> None:
    s = Schedule(kind="provq", warmup_steps=3, transition_steps=7, curve="linear", lam=0.3)
    assert Schedule.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "soft"},
        {"curve": "sigmoid"},
        {"lam": 1.5},
        {"warmup_steps": -1},
        {"kind": "hard", "warmup_steps": 5},
    ],
)
def test_bad_values_are_user_errors(kwargs: dict) -> None:
    with pytest.raises(ProvqError):
        Schedule(**kwargs)
