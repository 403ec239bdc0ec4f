"""Slow start's in-service set, followed from membership before the state is built (pure, no event loop).

InService must give the arrivals that observing every built pool's endpoints gives (the runtime did that,
building the state twice), while looking only at what changed.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from fedproxy.balancing import Arrivals, HealthView, Overrides, build_state
from fedproxy.balancing.inservice import InService
from fedproxy.catalog import CatalogMemo, build_catalog
from fedproxy.config import HttpConfig, HttpListener, HttpRoute
from fedproxy.model import Endpoint, ServiceKey

from .test_rebuild import _EP, CONFIG, MEMBERS, NAMES, _address, _slice, _snapshots

WINDOW = 10.0
# Another config: a route naming members (members it does not name add nothing), one service left out.
OTHER = replace(
    CONFIG,
    http=HttpConfig(
        listeners=(
            HttpListener(
                port=8080,
                routes=(
                    HttpRoute(ServiceKey("ns", "a"), host="a", clusters=MappingProxyType({"m1": 1})),
                    HttpRoute(ServiceKey("ns", "b"), host="b"),
                ),
            ),
        )
    ),
)

_step = st.one_of(
    st.tuples(st.just("slice"), st.integers(0, 2), st.sampled_from(NAMES), st.sets(st.integers(0, 3), max_size=4)),
    st.tuples(st.just("down"), st.frozensets(_EP, max_size=3)),
    st.tuples(st.just("drain"), st.frozensets(st.sampled_from(MEMBERS), max_size=1)),
    st.tuples(st.just("weight"), st.sampled_from(MEMBERS), st.integers(0, 3)),
    st.tuples(st.just("connected"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("config"), st.booleans()),
    st.tuples(st.just("time"), st.floats(0, 8)),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(_step, min_size=1, max_size=30))
def test_arrivals_equal_observing_every_built_pool(steps):
    snaps, memo, config = _snapshots(), CatalogMemo(), CONFIG
    unhealthy: frozenset[Endpoint] = frozenset()
    overrides, now = Overrides(), 100.0
    tracked, reference = InService(), Arrivals()
    state = None
    for step in [("time", 0.0), *steps]:
        kind = step[0]
        if kind == "slice":
            _, m, name, pods = step
            sl = _slice(name, m, tuple(sorted(pods)))
            snaps[MEMBERS[m]] = snaps[MEMBERS[m]].with_object("endpointslices", ("ns", f"{name}-1"), sl)
        elif kind == "down":
            unhealthy = step[1]
        elif kind == "drain":
            overrides = replace(overrides, drained=step[1])
        elif kind == "weight":
            overrides = replace(overrides, weights={step[1]: step[2]})
        elif kind == "connected":
            _, m, up = step
            snaps[MEMBERS[m]] = replace(snaps[MEMBERS[m]], connected=up)
        elif kind == "config":
            config = OTHER if step[1] else CONFIG
        else:
            now += step[1]
        catalog = build_catalog(snaps.values(), config, memo=memo)
        health = HealthView(unhealthy)
        state = build_state(config, catalog, health, overrides, now, previous=state)
        reference.observe((ep for p in state.pools.values() for ep in p.endpoints if ep not in unhealthy), now, WINDOW)
        assert tracked.observe(config, catalog, overrides, unhealthy, now, WINDOW).since == reference.view().since


def test_a_rebuild_looks_only_at_what_changed():
    snaps, memo = _snapshots(), CatalogMemo()
    tracked = InService()
    catalog = build_catalog(snaps.values(), CONFIG, memo=memo)
    tracked.observe(CONFIG, catalog, Overrides(), frozenset(), 100.0, WINDOW)  # the baseline: nothing ramps
    assert tracked.recomputed == len(NAMES) and tracked.examined == 3 * 3  # every service: the same 9 pods
    assert tracked.arrivals.view().since == {}

    # Nothing changed (a new catalog object with the same services, new equal overrides): no endpoint looked at.
    catalog = build_catalog(snaps.values(), CONFIG, memo=memo)
    view = tracked.observe(CONFIG, catalog, Overrides(), frozenset(), 101.0, WINDOW)
    assert (tracked.recomputed, tracked.examined, view.since) == (0, 0, {})

    # A fourth pod in service b of m1: only b's pool is computed again, only that pod looked at, and it ramps.
    snaps["m1"] = snaps["m1"].with_object("endpointslices", ("ns", "b-1"), _slice("b", 1, (0, 1, 2, 3)))
    catalog = build_catalog(snaps.values(), CONFIG, memo=memo)
    view = tracked.observe(CONFIG, catalog, Overrides(), frozenset(), 102.0, WINDOW)
    new = Endpoint("m1", _address(1, 3), 8080)
    assert (tracked.recomputed, tracked.examined) == (1, 1)
    assert view.since == {new: 102.0}

    # One pod down then up: only it is looked at; it ramps again from when it came back.
    down = Endpoint("m2", _address(2, 0), 8080)
    assert tracked.observe(CONFIG, catalog, Overrides(), frozenset({down}), 103.0, WINDOW).since == {new: 102.0}
    assert (tracked.recomputed, tracked.examined) == (0, 1)
    view = tracked.observe(CONFIG, catalog, Overrides(), frozenset(), 104.0, WINDOW)
    assert (tracked.recomputed, tracked.examined) == (0, 1)
    assert view.since == {new: 102.0, down: 104.0}

    # The window over: the ramps expire without any endpoint being looked at again.
    view = tracked.observe(CONFIG, catalog, Overrides(), frozenset(), 114.5, WINDOW)
    assert (tracked.recomputed, tracked.examined, view.since) == (0, 0, {})
