"""Pickers inside one tier: weights, exclude, pins, least-request steering, determinism (pure)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedproxy.balancing.pickers import PICKERS, Load, PickerOptions
from fedproxy.model import Endpoint

EPS = [Endpoint("east-1" if i < 3 else "west-1", f"10.0.0.{i}", 8080) for i in range(5)]
SMALL = PickerOptions(table_size=1031)


def make(name: str, weights, eligible=None, seed: int = 7, load: Load | None = None):
    eligible = eligible or [True] * len(weights)
    return PICKERS[name](EPS[: len(weights)], weights, eligible, random.Random(seed), load or Load(), SMALL)


@pytest.mark.parametrize("name", ["round_robin", "least_request", "random"])
def test_shares_converge_to_weights(name):
    """Tolerance: within 2 percentage points of the weight share after 20,000 picks (round robin is exact)."""
    weights = [5.0, 3.0, 1.0, 1.0, 0.0]
    p = make(name, weights)
    n = 20000
    counts = Counter(p.pick() for _ in range(n))
    assert counts[EPS[4]] == 0  # weight 0 is never picked
    for ep, w in zip(EPS, weights, strict=True):
        assert abs(counts[ep] / n - w / sum(weights)) < 0.02


def test_smooth_wrr_is_smooth_and_exact():
    p = make("round_robin", [5.0, 1.0, 1.0])
    seq = [p.pick() for _ in range(7)]
    assert Counter(seq) == {EPS[0]: 5, EPS[1]: 1, EPS[2]: 1}
    assert seq[0] == EPS[0] and seq[1] == EPS[0] and EPS[1] in seq[2:5]  # nginx interleaving: a a b a c a a


@pytest.mark.parametrize("name", sorted(PICKERS))
def test_ineligible_never_picked(name):
    p = make(name, [1.0] * 5, [True, False, True, False, True])
    picked = {p.pick(key=i) for i in range(500)}
    assert picked <= {EPS[0], EPS[2], EPS[4]} and len(picked) >= 2


@pytest.mark.parametrize("name", sorted(PICKERS))
@pytest.mark.parametrize("weights", [[1.0] * 5, [3.0, 1.0, 2.0, 1.0, 1.0]])
def test_exclude_and_pin_are_honoured(name, weights):
    p = make(name, weights)
    for i in range(300):
        tried = set(EPS[: i % 5])
        ep = p.pick(key=i * 7919, exclude=tried)
        assert ep is not None and ep not in tried
        pinned = p.pick(key=i, exclude={EPS[0]}, cluster="east-1")
        assert pinned in (EPS[1], EPS[2])
    assert p.pick(exclude=set(EPS)) is None
    assert p.pick(cluster="nowhere") is None


@pytest.mark.parametrize("name", sorted(PICKERS))
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_every_picker_is_deterministic_under_a_seed(name, seed):
    a, b = make(name, [2.0, 1.0, 1.0, 3.0], seed=seed), make(name, [2.0, 1.0, 1.0, 3.0], seed=seed)
    assert [a.pick() for _ in range(50)] == [b.pick() for _ in range(50)]


def test_least_request_steers_away_from_busy_endpoints():
    load = Load()
    p = make("least_request", [1.0, 1.0, 1.0], load=load)
    for _ in range(10):
        load.started(EPS[0])
    counts = Counter(p.pick() for _ in range(3000))
    # Two uniform candidates: the busy one wins only when drawn twice, 1/9 of the time.
    assert counts[EPS[0]] / 3000 < 0.16
    for _ in range(10):
        load.finished(EPS[0])
    assert load.active == {} and load.by_cluster == {}
    load.finished(EPS[0])  # an unpaired finish never goes negative
    assert load.active == {}


def test_hash_picker_peek_matches_pick_and_does_not_change_state():
    load = Load()
    p = make("hash", [1.0] * 5, load=load)
    for k in range(200):
        ep, _why = p.peek(k * 104729)
        assert p.pick(k * 104729) == ep
    assert load.active == {}


def test_hash_picker_bounded_load_moves_a_hot_key():
    load = Load()
    p = make("hash", [1.0] * 4, load=load)
    hot = 123456789
    first = p.pick(hot)
    load.started(first)
    load.started(first)  # 2 active, average (2 + 1) / 4: one more would exceed 1.25 x average
    assert p.pick(hot) != first
