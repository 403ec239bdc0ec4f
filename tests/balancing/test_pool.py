"""Pools end to end on a small federation: tiers, weights, health, panic, slow start, explain (pure)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from types import MappingProxyType

import pytest

from fedproxy.balancing import Overrides, PoolSpec, build_pool, build_state, explain, hash_key
from fedproxy.balancing.health import HealthView
from fedproxy.config import BalancingConfig, Config, HttpListener, HttpRoute, OutlierConfig

from .conftest import KEY

CFG = BalancingConfig(maglev_table_size=1031)


def shares(pool, n=20000, **kw) -> Counter:
    return Counter(pool.pick(**kw).cluster for _ in range(n))


def test_local_tier_takes_all_traffic_while_healthy(catalog):
    pool = build_pool(PoolSpec(KEY), catalog({"east-1": 3, "east-2": 4, "west-1": 10}), CFG, seed=1)
    assert [(t.rank, t.load) for t in pool.tiers] == [(0, 100), (2, 0), (3, 0)]
    assert shares(pool, 2000) == {"east-1": 2000}


def test_degraded_local_tier_spills_by_capacity(catalog):
    cat = catalog({"east-1": 2, "east-2": 10, "west-1": 30})
    down = HealthView(frozenset(build_pool(PoolSpec(KEY), cat, CFG).tiers[0].endpoints[:1]))
    pool = build_pool(PoolSpec(KEY), cat, CFG, down, seed=1)
    assert [t.load for t in pool.tiers] == [70, 8, 22]
    got = shares(pool)
    # Tolerance: 1.5 percentage points of the tier loads over 20,000 picks.
    for cluster, load in (("east-1", 70), ("east-2", 8), ("west-1", 22)):
        assert abs(got[cluster] / 20000 - load / 100) < 0.015


def test_default_weights_give_each_pod_a_fair_share_in_a_tier(catalog):
    # No local member: one tier; 1 pod vs 3 pods, equal member weights: 25 % / 75 %.
    pool = build_pool(PoolSpec(KEY), catalog({"east-2": 1, "west-1": 3}, local=""), CFG, seed=2)
    got = shares(pool)
    assert abs(got["east-2"] / 20000 - 0.25) < 0.02


def test_route_percentages_hold_whatever_the_pod_counts(catalog):
    spec = PoolSpec(KEY, cluster_weights=(("east-2", 90), ("west-1", 10)))
    pool = build_pool(spec, catalog({"east-2": 1, "west-1": 9}, local=""), CFG, seed=3)
    got = shares(pool)
    assert abs(got["east-2"] / 20000 - 0.9) < 0.02


def test_overrides_drain_and_zero_weight_remove_members(catalog):
    cat = catalog({"east-1": 2, "west-1": 2})
    pool = build_pool(PoolSpec(KEY), cat, CFG, overrides=Overrides(drained=frozenset({"east-1"})), seed=1)
    assert shares(pool, 500) == {"west-1": 500}
    assert pool.cluster_reasons["east-1"] == "member drained"
    pool = build_pool(PoolSpec(KEY), cat, CFG, overrides=Overrides(weights=MappingProxyType({"west-1": 0})))
    assert "west-1" not in pool.clusters and pool.cluster_reasons["west-1"] == "weight 0"
    pool = build_pool(
        PoolSpec(KEY),
        catalog({"east-2": 1, "west-1": 1}, local=""),
        CFG,
        overrides=Overrides(weights=MappingProxyType({"west-1": 3})),
        seed=4,
    )
    assert abs(shares(pool)["west-1"] / 20000 - 0.75) < 0.02


def test_disconnected_member_and_unknown_service_have_reasons(catalog):
    pool = build_pool(PoolSpec(KEY), catalog({"east-1": 1}, connected={"east-1": False}), CFG)
    assert pool.pick() is None and "member disconnected" in pool.reason
    other = build_pool(PoolSpec(replace(KEY, name="nope")), catalog({"east-1": 1}), CFG)
    assert other.pick() is None and "not exported" in other.reason


@pytest.mark.parametrize("algorithm", ["round_robin", "least_request", "random", "hash"])
def test_no_unhealthy_endpoint_is_picked_while_a_healthy_one_exists(catalog, algorithm):
    cat = catalog({"east-1": 4, "west-1": 4})
    eps = build_pool(PoolSpec(KEY), cat, CFG).endpoints
    down = frozenset(eps[:2] + eps[4:5])  # east-1 at 50 %: health 70, no panic (total >= 100)
    pool = build_pool(PoolSpec(KEY, algorithm=algorithm), cat, CFG, HealthView(down), seed=5)
    assert not any(t.panic for t in pool.tiers)
    picked = {pool.pick(hash_key(str(i))) for i in range(3000)}
    assert not picked & down and len(picked) == 5


def test_panic_balances_over_all_endpoints_and_fail_on_panic_refuses(catalog):
    cat = catalog({"east-1": 10})
    eps = build_pool(PoolSpec(KEY), cat, CFG).endpoints
    down = HealthView(frozenset(eps[:6]))  # 40 % healthy < 50 %
    pool = build_pool(PoolSpec(KEY), cat, CFG, down, seed=6)
    assert pool.tiers[0].panic
    assert {pool.pick() for _ in range(200)} == set(eps)
    failing = build_pool(PoolSpec(KEY), cat, replace(CFG, fail_on_panic=True), down)
    assert failing.pick() is None and failing.reason.startswith("panic")
    at_threshold = build_pool(PoolSpec(KEY), cat, CFG, HealthView(frozenset(eps[:5])))
    assert not at_threshold.tiers[0].panic


def test_exclude_redispatches_to_the_next_tier(catalog):
    pool = build_pool(PoolSpec(KEY), catalog({"east-1": 2, "west-1": 2}), CFG, seed=7)
    local = set(pool.tiers[0].endpoints)
    ep = pool.pick(exclude=local)
    assert ep is not None and ep.cluster == "west-1"
    assert pool.pick(exclude=set(pool.endpoints)) is None
    assert pool.pick(cluster="west-1").cluster == "west-1"
    assert pool.pick(cluster="west-1", exclude=set(pool.tiers[1].endpoints)) is None


def test_ejection_cap_applies_per_pool(catalog):
    cat = catalog({"east-1": 10})
    eps = build_pool(PoolSpec(KEY), cat, CFG).endpoints
    ejected = {ep: float(i) for i, ep in enumerate(eps[:3])}
    view = HealthView(frozenset(ejected), MappingProxyType(ejected))
    pool = build_pool(PoolSpec(KEY), cat, replace(CFG, outlier=OutlierConfig(max_ejection_percent=10)), view)
    # 10 % of 10 = 1 may be ejected: the earliest ejected stays out, the two others keep serving here.
    assert pool.tiers[0].healthy_count == 9 and not pool.tiers[0].healthy[0]


def test_slow_start_ramps_from_ten_percent_to_full_weight(catalog):
    cat = catalog({"east-1": 2}, local="")
    eps = build_pool(PoolSpec(KEY), cat, CFG).endpoints
    cfg = replace(CFG, slow_start=30.0)
    view = HealthView(since=MappingProxyType({eps[0]: 100.0}))
    weights = [build_pool(PoolSpec(KEY), cat, cfg, view, now=100.0 + t).tiers[0].weights for t in (0, 15, 30, 60)]
    assert [round(w[0] / w[1], 3) for w in weights] == [0.1, 0.55, 1.0, 1.0]
    assert build_pool(PoolSpec(KEY), cat, cfg, view, now=100.0).refresh_at == pytest.approx(103.0)
    assert build_pool(PoolSpec(KEY), cat, cfg, view, now=130.0).refresh_at is None


def test_hash_pool_keeps_keys_and_explain_matches_pick(catalog):
    cat = catalog({"east-1": 3, "east-2": 3, "west-1": 3})
    eps = build_pool(PoolSpec(KEY), cat, CFG).endpoints
    pool = build_pool(PoolSpec(KEY, algorithm="hash"), cat, CFG, HealthView(frozenset(eps[:2])), seed=8)
    assert len({t.load for t in pool.tiers}) > 1  # traffic split over tiers: the key decides the tier too
    for i in range(300):
        k = hash_key(f"user-{i}")
        decision = explain(pool, k)["decision"]
        ep = pool.pick(k)
        assert decision["endpoint"] == str(ep) and pool.pick(k) == ep


def test_explain_is_json_able_and_describes_tiers(catalog):
    import json

    pool = build_pool(PoolSpec(KEY), catalog({"east-1": 1, "west-1": 2}), CFG)
    out = json.loads(json.dumps(explain(pool, 42)))
    assert [t["load"] for t in out["tiers"]] == [100, 0]
    assert out["tiers"][1]["endpoints"][0]["weight"] > 0 and "depends on picker state" in out["decision"]["why"]


def test_rebuilt_state_keeps_active_counts_and_breakers(catalog):
    route = HttpRoute(service=KEY)
    config = Config(http=replace(Config().http, listeners=(HttpListener(port=8080, routes=(route,)),)))
    first = build_state(config, catalog({"east-1": 2}))
    (pool,) = first.pools.values()
    ep = pool.pick()
    pool.started(ep)
    assert pool.breaker.try_acquire("requests") is None
    second = build_state(config, catalog({"east-1": 3}), previous=first)
    (new,) = second.pools.values()
    assert new.active == {ep: 1} and new.breaker.counts["requests"] == 1
    pool.finished(ep)  # the request that started on the old pool finishes there
    assert new.active == {}
