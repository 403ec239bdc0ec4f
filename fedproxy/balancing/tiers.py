"""Locality tiers, priority load, panic and capacity-aware spill (pure; shared/BALANCING.md).

Tiers: a member's tier relative to the local one is 0 local, 1 same zone, 2 same region, 3 the rest; the
configured ``balancing.locality`` order decides which of those tiers exist (a level left out folds into the
next wider one that is listed, and "any" is always there).

Priority load (Envoy priority levels). For tier i with h_i healthy of t_i endpoints:

    health_i = min(100, overprovisioning x 100 x h_i / t_i)          (overprovisioning 1.4)
    T        = sum(health_i);  N = min(100, T)                       ("normalized total health")
    scaled_i = health_i x 100 / N                                    (only grows, when T < 100)

Panic: tier i panics when ``100 x h_i / t_i < panic_threshold`` and ``T < 100`` (Envoy: no tier panics while
the tiers together are healthy enough); a panicking tier balances over all its endpoints. ``T == 0`` is total
panic: every tier panics and load follows the endpoint counts t_i (Envoy's recalculateLoadInTotalPanic).

Capacity-aware spill (beyond Envoy). Envoy hands tier 1 ``min(health_1, left)`` before tier 2 gets anything,
assuming the next tier absorbs any spill; a failover can then stampede a small zone-local member. Here the first
tier with endpoints keeps ``L_0 = min(100, scaled_0)``; the spill ``S = 100 - L_0`` is spread over the
following tiers by water-filling in proportion to their capacity c_j (healthy endpoints, or the sum of the
members' declared ``capacity``), each capped by what its own health allows:

    L_j = min(scaled_j, x x c_j)   with x chosen so that sum_j L_j = S

So a tier gets exactly its capacity share ``S x c_j / sum c`` unless that exceeds its cap, and only then does
the excess go to the others, again by capacity: no small tier ever gets more than its capacity share while
another tier still has room. ``sum scaled_j >= S`` always holds, so all traffic is placed. Real-valued loads
become integer percents summing to exactly 100 by the largest-remainder method (ties to the nearer tier).

Tier ramp (``ramp_loads``): a change of these loads is applied gradually, from the old split to the new one
over a window, except that a tier left with no healthy endpoint drops to its new load at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..catalog import ClusterInfo

RANKS = {"local": 0, "zone": 1, "region": 2, "any": 3}
RANK_NAMES = ("local", "zone", "region", "any")


def tier_of(
    local: ClusterInfo | None, other: ClusterInfo, order: Sequence[str] = ("local", "zone", "region", "any")
) -> int:
    """Tier rank of ``other`` as seen from ``local`` (no local member: everything is one tier)."""
    if local is None:
        return RANKS["any"]
    if other.name == local.name and "local" in order:
        return RANKS["local"]
    same_region = bool(local.locality.region) and other.locality.region == local.locality.region
    same_zone = same_region and bool(local.locality.zone) and other.locality.zone == local.locality.zone
    if other.name == local.name:
        same_zone = same_region = True  # the local member, "local" not listed: it is at least in its own zone
    if "zone" in order and same_zone:
        return RANKS["zone"]
    if "region" in order and same_region:
        return RANKS["region"]
    return RANKS["any"]


def tier_health(healthy: int, total: int, overprovisioning: float = 1.4) -> float:
    """``min(100, overprovisioning x healthy%)``; 0 for an empty tier."""
    return min(100.0, overprovisioning * 100.0 * healthy / total) if total else 0.0


def largest_remainder(values: Sequence[float], total: int = 100) -> list[int]:
    """Integers summing to ``total`` nearest to ``values`` (which sum to ``total``), earlier first on ties."""
    floors = [math.floor(v + 1e-9) for v in values]
    short = total - sum(floors)
    order = sorted(range(len(values)), key=lambda i: (-(values[i] - floors[i]), i))
    for i in order[: max(0, short)]:
        floors[i] += 1
    return floors


def spill(amount: float, caps: Sequence[float], capacities: Sequence[float]) -> list[float]:
    """Water-fill ``amount`` over receivers in proportion to ``capacities``, none above its cap.

    Receivers with no capacity get a share only when the others are all full (then by cap, in order).
    """
    out = [0.0] * len(caps)
    open_ = [j for j in range(len(caps)) if caps[j] > 0 and capacities[j] > 0]
    left = amount
    while left > 1e-12 and open_:
        weight = sum(capacities[j] for j in open_)
        full = [j for j in open_ if left * capacities[j] / weight >= caps[j] - out[j]]
        if not full:
            for j in open_:
                out[j] += left * capacities[j] / weight
            return out
        for j in full:
            left -= caps[j] - out[j]
            out[j] = caps[j]
        open_ = [j for j in open_ if j not in full]
    for j in range(len(caps)):  # capacity-less tiers take what is left, nearer first
        if left <= 1e-12:
            break
        take = min(left, caps[j] - out[j])
        if take > 0:
            out[j] += take
            left -= take
    return out


def priority_loads(
    tiers: Sequence[tuple[int, int]],
    overprovisioning: float | Sequence[float] = 1.4,
    panic_threshold: float = 50.0,
    capacities: Sequence[float] | None = None,
) -> tuple[list[int], list[bool]]:
    """(healthy, total) per tier, in order -> (percent load per tier summing to 100, panic flag per tier).

    ``capacities``: per tier, what spill is shared by (default: the healthy counts). ``overprovisioning``: one
    factor, or one per tier (``local_min_healthy`` gives the local tier its own). See the module docstring.
    """
    if not tiers:
        return [], []
    ops = [overprovisioning] * len(tiers) if isinstance(overprovisioning, int | float) else list(overprovisioning)
    health = [tier_health(h, t, op) for (h, t), op in zip(tiers, ops, strict=True)]
    total = sum(health)
    if total <= 0:
        counts = [float(t) for _, t in tiers]
        all_eps = sum(counts)
        if all_eps <= 0:
            return [100] + [0] * (len(tiers) - 1), [False] * len(tiers)
        return largest_remainder([100.0 * c / all_eps for c in counts]), [t > 0 for _, t in tiers]
    norm = min(100.0, total)
    scaled = [min(100.0, hv * 100.0 / norm) for hv in health]
    caps = [float(h) for h, _ in tiers] if capacities is None else [float(c) for c in capacities]
    first = next(i for i, hv in enumerate(scaled) if hv > 0)
    loads = [0.0] * len(tiers)
    loads[first] = min(100.0, scaled[first])
    rest = range(first + 1, len(tiers))
    shares = spill(100.0 - loads[first], [scaled[j] for j in rest], [caps[j] for j in rest])
    for j, share in zip(rest, shares, strict=True):
        loads[j] = share
    panics = [t > 0 and 100.0 * h / t < panic_threshold and total < 100.0 for h, t in tiers]
    return largest_remainder(loads), panics


def ramp_loads(
    old: Sequence[float], new: Sequence[int], since: float, now: float, window: float, live: Sequence[bool]
) -> list[int]:
    """Tier loads ``now - since`` s into a ``window`` s move from ``old`` to ``new`` (same tiers, in order).

    Failover and fail-back ramp ("slow start across tiers", beyond Envoy, which jumps): each tier's load moves
    linearly from old to new. A tier that is not ``live`` (no healthy endpoint) takes its new load at once, so a
    dead tier never keeps traffic; the live tiers share what is left in proportion to their interpolated loads
    (old loads of tiers that are gone are spread that way too). Integer percents summing to 100; ``new`` once
    the window is over, and ``new`` when the live tiers had no old load (nothing to ramp from).
    """
    if window <= 0 or now - since >= window or not new:
        return list(new)
    f = max(0.0, now - since) / window
    fixed = sum(n for n, ok in zip(new, live, strict=True) if not ok)
    mid = [o + (n - o) * f if ok else 0.0 for o, n, ok in zip(old, new, live, strict=True)]
    total = sum(mid)
    if total <= 1e-9:
        return list(new)
    share = (100.0 - fixed) / total
    return largest_remainder([m * share if ok else float(n) for m, n, ok in zip(mid, new, live, strict=True)])
