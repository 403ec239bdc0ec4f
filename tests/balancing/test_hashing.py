"""Consistent hashing: stability, minimal remapping, weights and bounded load (pure)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedproxy.balancing.hashing import Maglev, Ring, bounded_lookup, hash_key

KEYS = [hash_key(f"client-{i}") for i in range(4000)]


def names(n: int) -> list[bytes]:
    return [f"east-1/10.0.0.{i}/8080/pod".encode() for i in range(n)]


def owners(table, eps: list[bytes], all_names: list[bytes]) -> dict[int, bytes]:
    return {k: eps[table.start(k)] for k in KEYS}


def test_hash_key_is_stable_across_processes():
    # A fixed value: BLAKE2b-64, never Python's per-process randomized hash().
    assert hash_key("10.1.2.3") == hash_key(b"10.1.2.3")
    assert hash_key("10.1.2.3") == int.from_bytes(__import__("hashlib").blake2b(b"10.1.2.3", digest_size=8).digest())
    assert 0 <= hash_key("x") < 2**64


@pytest.mark.parametrize("kind,slack", [("maglev", 2.5), ("ring", 1.6)])
@pytest.mark.parametrize("n", [5, 10])
def test_one_endpoint_leaving_remaps_about_one_nth(kind, slack, n):
    """Keys that move when one of n endpoints leaves: its own 1/n, plus at most (slack-1)/n of the others
    (the paper: Maglev moves about twice what a ring does)."""
    before_names = names(n)
    after_names = before_names[:2] + before_names[3:]
    make = (
        (lambda ns: Maglev(ns, [1.0] * len(ns), 4099)) if kind == "maglev" else (lambda ns: Ring(ns, [1.0] * len(ns)))
    )
    before, after = make(before_names), make(after_names)
    moved = sum(1 for k in KEYS if before_names[before.start(k)] != after_names[after.start(k)])
    assert moved / len(KEYS) <= slack / n + 0.03


def test_maglev_weights_shape_the_table():
    t = Maglev(names(3), [2.0, 1.0, 1.0], 4099)
    share = Counter(t.table)[0] / 4099
    assert abs(share - 0.5) < 0.02


def test_ring_weights_shape_the_points():
    r = Ring(names(2), [3.0, 1.0])
    counts = Counter(r.start(k) for k in KEYS)
    assert 0.6 < counts[0] / len(KEYS) < 0.9


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.sampled_from([1.25, 1.5, 2.0]), st.sampled_from(["maglev", "ring"]))
def test_bounded_load_keeps_every_endpoint_under_factor_times_average(n, factor, kind):
    # The worst case: every request carries the same hot key, and none finishes.
    table = Maglev(names(n), [1.0] * n, 1031) if kind == "maglev" else Ring(names(n), [1.0] * n)
    active = [0] * n
    hot = hash_key("hot")
    for _ in range(20 * n):
        total = sum(active)
        i, _why = bounded_lookup(table, hot, lambda i: True, lambda i: active[i], total, n, factor)
        active[i] += 1
        average = sum(active) / n
        assert max(active) <= factor * average + 1  # +1: the bound admits the request that reaches it


def test_bounded_lookup_skips_ineligible_and_reports_why():
    table = Maglev(names(4), [1.0] * 4, 1031)
    k = KEYS[0]
    first = table.start(k)
    i, why = bounded_lookup(table, k, lambda i: i != first, lambda i: 0, 0, 3, 1.25)
    assert i != first and "1 not eligible" in why
    assert bounded_lookup(table, k, lambda i: False, lambda i: 0, 0, 0, 1.25) is None


def test_same_key_same_endpoint_without_load():
    t = Maglev(names(7), [1.0] * 7, 1031)
    assert all(bounded_lookup(t, k, lambda i: True, lambda i: 0, 0, 7, 1.25)[0] == t.start(k) for k in KEYS[:200])
