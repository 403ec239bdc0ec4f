"""Priority load, panic and capacity-aware spill (pure; no event loop)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fedproxy.balancing.tiers import largest_remainder, priority_loads, spill, tier_health, tier_of
from fedproxy.catalog import ClusterInfo
from fedproxy.model import Locality

tier_lists = st.lists(
    st.integers(0, 40).flatmap(lambda t: st.tuples(st.integers(0, t), st.just(t))), min_size=1, max_size=5
)


@given(tier_lists, st.floats(1.0, 2.0), st.floats(0.0, 100.0))
def test_loads_always_sum_to_100_and_are_non_negative(tiers, op, threshold):
    loads, panics = priority_loads(tiers, op, threshold)
    assert sum(loads) == 100
    assert all(x >= 0 for x in loads)
    assert len(panics) == len(tiers)


@given(tier_lists)
def test_tiers_without_healthy_endpoints_get_no_load_unless_everything_is_down(tiers):
    loads, _ = priority_loads(tiers)
    if any(h for h, _ in tiers):
        assert all(load == 0 for load, (h, _) in zip(loads, tiers, strict=True) if h == 0)


def test_local_tier_takes_everything_while_healthy_enough():
    # 8/10 healthy: health = min(100, 1.4 x 80) = 100: no spill at all (Envoy's overprovisioning).
    assert priority_loads([(8, 10), (5, 5), (50, 50)])[0] == [100, 0, 0]
    assert priority_loads([(10, 10), (1, 1)])[0] == [100, 0]


def test_degraded_local_tier_spills_by_capacity_per_the_formula():
    # Local 1/2 healthy: health 70, spill 30 shared 1:3 by healthy counts (10 and 30 endpoints).
    loads, panics = priority_loads([(1, 2), (10, 10), (30, 30)])
    assert loads == [70, 8, 22]  # 7.5 and 22.5: largest remainder, ties to the nearer tier
    assert panics == [False, False, False]  # total health >= 100: nobody panics
    # Envoy would give all 30 to the next tier; a declared capacity changes the split.
    assert priority_loads([(1, 2), (10, 10), (30, 30)], capacities=[0, 30, 30])[0] == [70, 15, 15]


def test_receiver_full_hands_its_excess_to_the_others_by_capacity():
    # Receiver 0 may take 14 (1 of 10 healthy x 1.4) although its capacity share would be 50 of 90.
    out = spill(90.0, [14.0, 100.0, 100.0], [10.0, 5.0, 5.0])
    assert out[0] == 14.0
    assert abs(out[1] - 38.0) < 1e-9 and abs(out[2] - 38.0) < 1e-9


@given(
    st.floats(0.0, 100.0),
    st.lists(st.tuples(st.floats(0.0, 100.0), st.integers(0, 50)), min_size=1, max_size=5),
)
def test_spill_never_exceeds_capacity_share_while_another_has_room(amount, receivers):
    caps = [c for c, _ in receivers]
    capacities = [k for _, k in receivers]
    if sum(caps) < amount:
        amount = sum(caps)
    out = spill(amount, caps, capacities)
    assert abs(sum(out) - amount) < 1e-6
    assert all(-1e-9 <= o <= c + 1e-9 for o, c in zip(out, caps, strict=True))
    # Water-filling: a receiver with room left has the highest load per unit of capacity of all, i.e. no
    # receiver got more per unit of capacity than one that could still take more.
    open_ = [j for j in range(len(caps)) if capacities[j] > 0 and caps[j] > 0]
    for j in open_:
        if out[j] < caps[j] - 1e-6:
            level = out[j] / capacities[j]
            assert all(out[k] / capacities[k] <= level + 1e-6 for k in open_)


@given(st.integers(1, 60), st.floats(1.0, 99.0))
def test_panic_engages_exactly_below_the_threshold(total, threshold):
    for healthy in range(total + 1):
        _, panics = priority_loads([(healthy, total)], 1.4, threshold)
        pct = 100.0 * healthy / total
        expected = pct < threshold and tier_health(healthy, total) < 100
        assert panics[0] == expected


def test_panic_boundary_at_the_default_threshold():
    assert priority_loads([(5, 10)])[1] == [False]  # 50 % is not below 50 %
    assert priority_loads([(4, 10)])[1] == [True]
    # A healthy second tier keeps total health at 100: no panic anywhere (Envoy).
    assert priority_loads([(4, 10), (10, 10)])[1] == [False, False]


def test_total_panic_spreads_by_endpoint_count():
    loads, panics = priority_loads([(0, 1), (0, 3)])
    assert loads == [25, 75] and panics == [True, True]


def test_normalized_total_health_scales_up():
    # Health 28 + 28 = 56 < 100: both scaled to 50, and both tiers (20 % healthy) panic.
    loads, panics = priority_loads([(2, 10), (2, 10)])
    assert loads == [50, 50] and panics == [True, True]


def test_largest_remainder_sums_exactly():
    assert largest_remainder([33.3, 33.3, 33.4]) == [33, 33, 34]
    assert sum(largest_remainder([100 / 7] * 7)) == 100


def test_tier_of_follows_the_locality_order():
    local = ClusterInfo("a", Locality("r1", "z1"), local=True)
    same_zone = ClusterInfo("b", Locality("r1", "z1"))
    same_region = ClusterInfo("c", Locality("r1", "z2"))
    other = ClusterInfo("d", Locality("r2", "z1"))
    assert [tier_of(local, c) for c in (local, same_zone, same_region, other)] == [0, 1, 2, 3]
    assert tier_of(local, same_zone, ("local", "region", "any")) == 2
    assert tier_of(local, local, ("zone", "any")) == 1
    assert tier_of(None, local) == 3
