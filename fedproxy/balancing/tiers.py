"""Locality tiers and priority load (pure; Envoy's priority levels, shared/BALANCING.md).

A member's tier relative to the local one: 0 local, 1 same zone, 2 same region, 3 the rest (with the
configured ``locality`` order deciding which of those tiers exist). A tier's health is
``min(100, overprovisioning x healthy%)``; tiers take traffic in order, each ``min(health, what is left)``;
when the health of all tiers sums under 100 the loads are scaled up so all traffic is placed.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..catalog import ClusterInfo

RANKS = {"local": 0, "zone": 1, "region": 2, "any": 3}


def tier_of(
    local: ClusterInfo | None, other: ClusterInfo, order: Sequence[str] = ("local", "zone", "region", "any")
) -> int:
    """Tier rank of ``other`` as seen from ``local`` (no local member: everything is one tier)."""
    if local is None:
        return RANKS["any"]
    if other.name == local.name and "local" in order:
        return RANKS["local"]
    same_region = bool(local.locality.region) and other.locality.region == local.locality.region
    if "zone" in order and same_region and local.locality.zone and other.locality.zone == local.locality.zone:
        return RANKS["zone"]
    if "region" in order and same_region:
        return RANKS["region"]
    return RANKS["any"]


def priority_loads(
    tiers: Sequence[tuple[int, int]], overprovisioning: float = 1.4, panic_threshold: float = 50.0
) -> tuple[list[int], list[bool]]:
    """(healthy, total) per tier -> (percent load per tier summing to 100, panic flag per tier)."""
    if not tiers:
        return [], []
    health = [min(100.0, overprovisioning * 100.0 * h / t) if t else 0.0 for h, t in tiers]
    total = sum(health)
    if total <= 0:
        # Nothing healthy anywhere: send everything to the first tier, which panics.
        return [100] + [0] * (len(tiers) - 1), [True] + [False] * (len(tiers) - 1)
    scale = 100.0 / total if total < 100 else 1.0
    loads: list[int] = []
    left = 100
    for i, hv in enumerate(health):
        share = min(left, round(hv * scale)) if i < len(health) - 1 else left
        loads.append(max(0, share))
        left -= loads[-1]
    panics = [t > 0 and 100.0 * h / t < panic_threshold and total < 100 for h, t in tiers]
    return loads, panics
