"""Tier failover / fail-back ramp, local_min_healthy, per-service overrides, retry limits (pure)."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given
from hypothesis import strategies as st

from fedproxy.balancing import CircuitBreaker, Limits, PoolSpec, build_pool, build_state
from fedproxy.balancing.health import HealthView
from fedproxy.balancing.metrics import pool_series
from fedproxy.balancing.tiers import ramp_loads
from fedproxy.config import BalancingConfig, Config, ServiceBalancing, TcpConfig, TcpListener
from fedproxy.configload import parse_config

from .conftest import KEY

CFG = BalancingConfig(maglev_table_size=1031, tier_ramp=10.0)


def loads(pool) -> list[int]:
    return [t.load for t in pool.tiers]


# -- ramp_loads ---------------------------------------------------------------------------------------------


def test_ramp_moves_linearly_from_old_to_new():
    old, new, live = [100, 0], [70, 30], [True, True]
    assert ramp_loads(old, new, 0.0, 0.0, 10.0, live) == [100, 0]
    assert ramp_loads(old, new, 0.0, 5.0, 10.0, live) == [85, 15]
    assert ramp_loads(old, new, 0.0, 10.0, 10.0, live) == [70, 30]
    assert ramp_loads(old, new, 0.0, 3.0, 0.0, live) == [70, 30]  # window 0: jump


def test_a_dead_tier_loses_its_traffic_at_once():
    # The local tier has no healthy endpoint left: nothing may stay there, whatever the ramp.
    assert ramp_loads([100, 0, 0], [0, 60, 40], 0.0, 0.1, 10.0, [False, True, True]) == [0, 60, 40]


@given(
    st.lists(st.integers(0, 100), min_size=1, max_size=4),
    st.lists(st.integers(0, 100), min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.floats(0, 20),
)
def test_ramp_sums_to_100_and_never_feeds_a_dead_tier(a, b, live, t):
    n = min(len(a), len(b))
    old = [float(x) for x in a[:n]]
    new = [x * 100 // max(1, sum(b[:n])) for x in b[:n]]
    new[0] += 100 - sum(new)
    alive = live[:n]
    got = ramp_loads(old, new, 0.0, t, 10.0, alive)
    assert sum(got) == 100
    for g, nw, ok in zip(got, new, alive, strict=True):
        if not ok:
            assert g == nw
    if t >= 10.0:
        assert got == new


# -- tier ramp in pools ---------------------------------------------------------------------------------------


def test_degraded_local_tier_spills_over_the_ramp_and_fails_back_the_same_way(catalog):
    cat = catalog({"east-1": 4, "west-1": 4})
    spec = PoolSpec(KEY)
    healthy = build_pool(spec, cat, CFG, now=0.0)
    assert loads(healthy) == [100, 0]
    down = HealthView(frozenset(healthy.tiers[0].endpoints[:2]))  # 50 % healthy: health 70
    p1 = build_pool(spec, cat, CFG, down, now=100.0, previous=healthy)
    assert loads(p1) == [100, 0] and p1.refresh_at == 101.0  # the move starts from the old split
    p2 = build_pool(spec, cat, CFG, down, now=105.0, previous=p1)
    assert loads(p2) == [85, 15]
    p3 = build_pool(spec, cat, CFG, down, now=110.0, previous=p2)
    assert loads(p3) == [70, 30] and p3.refresh_at is None and p3.ramp_since is None
    # Fail-back halfway through a new ramp, then recovered: from wherever the loads are now.
    back = build_pool(spec, cat, CFG, now=200.0, previous=p3)
    assert loads(back) == [70, 30]
    assert loads(build_pool(spec, cat, CFG, now=205.0, previous=back)) == [85, 15]


def test_dead_local_tier_fails_over_at_once(catalog):
    cat = catalog({"east-1": 2, "west-1": 4})
    spec = PoolSpec(KEY)
    healthy = build_pool(spec, cat, CFG, now=0.0)
    dead = HealthView(frozenset(healthy.tiers[0].endpoints))
    pool = build_pool(spec, cat, CFG, dead, now=1.0, previous=healthy, seed=1)
    assert loads(pool) == [0, 100]
    assert {pool.pick().cluster for _ in range(200)} == {"west-1"}


def test_tier_ramp_zero_jumps_and_members_joining_do_not_ramp(catalog):
    spec = PoolSpec(KEY)
    cat = catalog({"east-1": 4, "west-1": 4})
    healthy = build_pool(spec, cat, CFG, now=0.0)
    down = HealthView(frozenset(healthy.tiers[0].endpoints[:2]))
    off = BalancingConfig(tier_ramp=0.0)
    assert loads(build_pool(spec, cat, off, down, now=1.0, previous=healthy)) == [70, 30]
    # The local member syncs after the remote one: a new tier, no fail-back ramp (startup is not a failover).
    remote_only = build_pool(spec, catalog({"west-1": 4}), CFG, now=0.0)
    assert loads(build_pool(spec, cat, CFG, now=1.0, previous=remote_only)) == [100, 0]


# -- local_min_healthy -------------------------------------------------------------------------------------


def test_local_min_healthy_keeps_local_until_the_threshold_then_spills_gradually(catalog):
    cat = catalog({"east-1": 10, "west-1": 10})
    spec = PoolSpec(KEY)
    eps = build_pool(spec, cat, CFG).tiers[0].endpoints
    cfg = BalancingConfig(local_min_healthy=50.0)
    for down_count, expect in ((0, 100), (5, 100), (6, 80), (8, 40)):
        pool = build_pool(spec, cat, cfg, HealthView(frozenset(eps[:down_count])))
        assert loads(pool)[0] == expect, down_count
    # Without it the overprovisioning factor decides: 1.4 x 50 % = 70.
    assert loads(build_pool(spec, cat, BalancingConfig(), HealthView(frozenset(eps[:5]))))[0] == 70


# -- per-service overrides -----------------------------------------------------------------------------------


def test_service_overrides_change_panic_algorithm_and_weights(catalog):
    cat = catalog({"east-2": 2, "west-1": 8}, local="")
    own = ServiceBalancing(panic_threshold=80.0, fail_on_panic=True, algorithm="least_request", clusters={"east-2": 3})
    cfg = BalancingConfig(services=MappingProxyType({KEY: own}))
    config = Config(tcp=TcpConfig(listeners=(TcpListener(7000, KEY),)), balancing=cfg)
    state = build_state(config, cat)
    (spec, pool) = next(iter(state.pools.items()))
    assert spec.algorithm == "least_request" and spec.cluster_weights == (("east-2", 3),)
    assert {pool.pick().cluster for _ in range(100)} == {"east-2"}  # unnamed members get nothing
    # 7 of 10 healthy is below this service's 80 % panic threshold, and it fails on panic.
    down = HealthView(frozenset(pool.tiers[0].endpoints[:3]))
    panicked = build_state(config, cat, down).pools[spec]
    assert panicked.failed and panicked.pick() is None
    assert not build_state(Config(tcp=config.tcp), cat, down).pool(spec.__class__(KEY, port=None)).failed


def test_services_section_is_validated_by_the_loader():
    cfg = parse_config(
        "balancing:\n  services:\n    demo/web: {panic_threshold: 30, clusters: {east-1: 9}, tier_ramp: 2}\n"
    )
    assert cfg.balancing.services[KEY].clusters == {"east-1": 9}
    try:
        parse_config("balancing:\n  tier_ramp: -1\n  services:\n    web: {panic: 1}\n")
    except ValueError as exc:
        text = str(exc)
    else:
        raise AssertionError("invalid services section accepted")
    assert "balancing.tier_ramp" in text and "balancing.services.web" in text


# -- retry limits and metrics -------------------------------------------------------------------------------


def test_retry_budget_allows_20_percent_of_active_and_pending_with_a_floor():
    br = CircuitBreaker(Limits())
    assert [br.try_retry() for _ in range(4)] == [None, None, None, "retry_budget"]  # floor 3
    br.counts["requests"] = 40  # 20 % of 40 = 8
    assert [br.try_retry() for _ in range(6)] == [None] * 5 + ["retry_budget"]
    br.release("retries")
    assert br.try_retry() is None
    off = CircuitBreaker(Limits(retry_budget_percent=0, max_retries=1))
    off.counts["requests"] = 1000
    assert [off.try_retry(), off.try_retry()] == [None, "max_retries"]


def test_breaker_limits_follow_a_reload(catalog):
    cat = catalog({"east-1": 1})
    first = build_pool(PoolSpec(KEY), cat, BalancingConfig(max_requests=2))
    assert first.breaker.try_acquire("requests") is None
    second = build_pool(PoolSpec(KEY), cat, BalancingConfig(max_requests=1), previous=first)
    assert second.breaker is first.breaker and second.breaker.try_acquire("requests") is not None


def test_slow_start_ratios_and_tier_loads_as_metric_rows(catalog):
    cat = catalog({"east-1": 2, "west-1": 2})
    cfg = BalancingConfig(slow_start=10.0)
    config = Config(tcp=TcpConfig(listeners=(TcpListener(7000, KEY),)), balancing=cfg)
    eps = build_state(config, cat).pools[next(iter(build_state(config, cat).pools))].tiers[0].endpoints
    state = build_state(config, cat, HealthView(since=MappingProxyType({eps[0]: 0.0})), now=5.0)
    ratios, tiers = pool_series(state)
    assert ratios == [((str(KEY), "east-1", f"{eps[0].address}:{eps[0].port}"), 0.55)]
    assert tiers == [((str(KEY), "any"), 0.0), ((str(KEY), "local"), 100.0)]
