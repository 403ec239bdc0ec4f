"""Rebuilds keep the pools whose inputs did not change (issue 9), and kept pools equal rebuilt ones."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from fedproxy.balancing import HealthView, Overrides, Pool, build_pool, build_state
from fedproxy.catalog import CatalogMemo, build_catalog
from fedproxy.config import BalancingConfig, ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute
from fedproxy.model import (
    ClusterSnapshot,
    Endpoint,
    EndpointSlice,
    Locality,
    Service,
    ServiceExport,
    ServiceKey,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)

MEMBERS = ("m0", "m1", "m2")
NAMES = ("a", "b", "c")
CONFIG = Config(
    clusters=tuple(
        ClusterConfig(m, kubeconfig="k", local=m == "m0", pods_reachable=True, region="r", zone=m) for m in MEMBERS
    ),
    http=HttpConfig(
        listeners=(HttpListener(port=8080, routes=tuple(HttpRoute(ServiceKey("ns", n), host=n) for n in NAMES)),)
    ),
    balancing=BalancingConfig(slow_start=10.0, tier_ramp=5.0),
)


def _address(member: int, pod: int) -> str:
    return f"10.{member}.0.{pod + 1}"


def _slice(name: str, member: int, pods: tuple[int, ...]) -> EndpointSlice:
    eps = tuple(SliceEndpoint((_address(member, p),)) for p in pods)
    return EndpointSlice("ns", f"{name}-1", name, ports=(SlicePort("http", 8080),), endpoints=eps)


def _snapshots() -> dict[str, ClusterSnapshot]:
    svc = {("ns", n): Service("ns", n, cluster_ips=("10.96.0.1",), ports=(ServicePort("http", 80),)) for n in NAMES}
    return {
        m: ClusterSnapshot(
            m,
            Locality("r", m),
            services=svc,
            endpointslices={("ns", f"{n}-1"): _slice(n, i, (0, 1, 2)) for n in NAMES},
            serviceexports={("ns", n): ServiceExport("ns", n) for n in NAMES},
        )
        for i, m in enumerate(MEMBERS)
    }


def shape(pool: Pool) -> tuple:
    """Everything a pool computed from its inputs (not the picker's position or the rng state)."""
    tiers = tuple(
        (t.rank, t.endpoints, t.weights, t.healthy, t.load, t.panic, t.health, t.capacity, t.clusters, type(t.picker))
        for t in pool.tiers
    )
    return (pool.spec, tiers, pool.reason, dict(pool.cluster_reasons), pool.refresh_at, pool.failed, pool.cum)


_EP = st.builds(lambda m, p: Endpoint(MEMBERS[m], _address(m, p), 8080), st.integers(0, 2), st.integers(0, 3))
_step = st.one_of(
    st.tuples(st.just("slice"), st.integers(0, 2), st.sampled_from(NAMES), st.sets(st.integers(0, 3), max_size=4)),
    st.tuples(st.just("down"), st.frozensets(_EP, max_size=3)),
    st.tuples(st.just("eject"), st.dictionaries(_EP, st.floats(0, 100), max_size=2)),
    st.tuples(st.just("since"), st.dictionaries(_EP, st.floats(0, 100), max_size=2)),
    st.tuples(st.just("drain"), st.frozensets(st.sampled_from(MEMBERS), max_size=1)),
    st.tuples(st.just("weight"), st.sampled_from(MEMBERS), st.integers(0, 3)),
    st.tuples(st.just("connected"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("settings"), st.sampled_from([0.0, 10.0])),
    st.tuples(st.just("time"), st.floats(0, 20)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_step, min_size=1, max_size=25))
def test_kept_pools_equal_rebuilt_pools_across_changes(steps):
    snaps, memo, config = _snapshots(), CatalogMemo(), CONFIG
    health, overrides, now = HealthView(), Overrides(), 100.0
    state = build_state(config, build_catalog(snaps.values(), config, memo=memo), now=now)
    fresh = dict(state.pools)
    for step in steps:
        kind = step[0]
        if kind == "slice":
            _, m, name, pods = step
            sl = _slice(name, m, tuple(sorted(pods)))
            snaps[MEMBERS[m]] = snaps[MEMBERS[m]].with_object("endpointslices", ("ns", f"{name}-1"), sl)
        elif kind == "down":
            health = replace(health, unhealthy=step[1] | frozenset(health.ejected))
        elif kind == "eject":
            health = replace(health, unhealthy=health.unhealthy | frozenset(step[1]), ejected=step[1])
        elif kind == "since":
            health = replace(health, since={ep: now - t / 10 for ep, t in step[1].items()})
        elif kind == "drain":
            overrides = replace(overrides, drained=step[1])
        elif kind == "weight":
            overrides = replace(overrides, weights={step[1]: step[2]})
        elif kind == "connected":
            _, m, up = step
            snaps[MEMBERS[m]] = replace(snaps[MEMBERS[m]], connected=up)
        elif kind == "settings":
            config = replace(config, balancing=replace(config.balancing, slow_start=step[1]))
        else:
            now += step[1]
        catalog = build_catalog(snaps.values(), config, memo=memo)
        state = build_state(config, catalog, health, overrides, now, previous=state)
        fresh = {
            spec: build_pool(spec, catalog, config.balancing, health, overrides, now, None, fresh.get(spec))
            for spec in state.pools
        }
        for spec, pool in state.pools.items():
            assert shape(pool) == shape(fresh[spec])


def test_one_slice_change_rebuilds_one_pool_and_keeps_the_others():
    snaps, memo = _snapshots(), CatalogMemo()
    state = build_state(CONFIG, build_catalog(snaps.values(), CONFIG, memo=memo), now=100.0)
    snaps["m1"] = snaps["m1"].with_object("endpointslices", ("ns", "b-1"), _slice("b", 1, (0,)))
    # A new HealthView equal to the old one and a new ClusterInfo (last_event moved) change nothing.
    snaps["m2"] = replace(snaps["m2"], last_event=5.0)
    after = build_state(
        CONFIG, build_catalog(snaps.values(), CONFIG, memo=memo), HealthView(), Overrides(), 101.0, previous=state
    )
    kept = {spec.service.name for spec, pool in after.pools.items() if pool is state.pools[spec]}
    assert kept == {"a", "c"}
    b = next(p for s, p in after.pools.items() if s.service.name == "b")
    assert b.load is next(p for s, p in state.pools.items() if s.service.name == "b").load  # counters carry over
    # Health of one endpoint rebuilds only the pools holding it.
    down = HealthView(unhealthy=frozenset({Endpoint("m2", _address(2, 0), 8080)}))
    later = build_state(CONFIG, after.catalog, down, Overrides(), 102.0, previous=after)
    assert all(later.pools[s] is not after.pools[s] for s in after.pools)  # every service has that pod address
    drained = build_state(CONFIG, after.catalog, down, Overrides(drained=frozenset({"m1"})), 103.0, previous=later)
    assert all(drained.pools[s] is not later.pools[s] for s in later.pools)
    same = build_state(CONFIG, after.catalog, down, Overrides(drained=frozenset({"m1"})), 104.0, previous=drained)
    assert all(same.pools[s] is drained.pools[s] for s in drained.pools)
