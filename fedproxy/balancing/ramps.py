"""Ramps: what changes a pool's weights with time, slow start and the tier ramp (pure; ``now`` is an argument).

Theory of operation. Pools are immutable, so anything that moves with time is fixed when a pool is built and
the pool says when it should be rebuilt to move on (``Pool.refresh_at``); the runtime arms one timer for the
earliest of those. Each ramp takes :data:`SLOW_START_STEPS` rebuilds per window at most.

- Slow start (``balancing.slow_start`` = window s, 0 = off; Envoy slow start, aggression 1.0): an endpoint in
  ``HealthView.since`` less than a window ago weighs ``w x (0.1 + 0.9 x elapsed / window)``
  (:func:`slow_start_ratio`; 10 % is Envoy's ``min_weight_percent`` default).
- Tier ramp (``balancing.tier_ramp`` s, beyond Envoy): when health moves the priority loads, the pool rebuilt
  with ``previous`` keeps the old split and moves to the new one linearly over the window (failover and
  fail-back, :func:`tier_ramp`). Only a health change of the same tiers ramps: tiers appearing or leaving
  (members joining, leaving, first sync) jump, and a tier with no healthy endpoint drops out at once
  (:func:`.tiers.ramp_loads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..model import Endpoint
from .health import HealthView
from .tiers import ramp_loads

if TYPE_CHECKING:
    from .pool import Pool, Tier

SLOW_START_MIN = 0.1  # Envoy's min_weight_percent default (10 %)
SLOW_START_STEPS = 10  # rebuilds per slow-start (or tier-ramp) window

TierLoads = tuple[tuple[int, int], ...]  # (tier rank, percent) for each tier of a pool
RampFrom = tuple[tuple[int, float], ...]  # (tier rank, percent) a tier ramp started from


def slow_start_ratio(ep: Endpoint, health: HealthView, window: float, now: float) -> float:
    """The share of its weight ``ep`` gets at ``now``: 1.0 unless it came into service less than ``window`` ago."""
    since = health.since.get(ep)
    if window <= 0 or since is None or now - since >= window:
        return 1.0
    return SLOW_START_MIN + (1.0 - SLOW_START_MIN) * max(0.0, now - since) / window


def slow_start_step(since: float, now: float, window: float) -> float:
    """When a pool with an endpoint ramping since ``since`` should be rebuilt next."""
    return min(since + window, now + window / SLOW_START_STEPS)


def loads_now(pool: Pool, now: float, window: float) -> dict[int, float]:
    """The tier loads ``pool`` applies at ``now`` (its ramp moved on to ``now``), by rank."""
    if pool.ramp_since is None:
        return {t.rank: float(t.load) for t in pool.tiers}
    old = dict(pool.ramp_from)
    ranks = [r for r, _ in pool.target]
    live = [t.healthy_count > 0 for t in pool.tiers]
    mid = ramp_loads([old.get(r, 0.0) for r in ranks], [n for _, n in pool.target], pool.ramp_since, now, window, live)
    return dict(zip(ranks, map(float, mid), strict=True))


def tier_ramp(
    tiers: Sequence[Tier],
    target: TierLoads,
    loads: list[int],
    previous: Pool | None,
    now: float,
    window: float,
) -> tuple[list[int], RampFrom, float | None, float | None]:
    """The tier loads to apply now for a pool whose health asks for ``loads`` (``target`` by rank).

    Returns (loads, ramp_from, ramp_since, next step) where ``ramp_since`` is None and the next step None when
    no ramp is in progress (the loads are then ``loads`` as given).
    """
    ramp_from: RampFrom = ()
    ramp_since: float | None = None
    if window > 0 and previous is not None and previous.tiers:
        if previous.target == target and previous.ramp_since is not None:
            ramp_from, ramp_since = previous.ramp_from, previous.ramp_since  # the same move, further on
        elif previous.target != target and [r for r, _ in previous.target] == [r for r, _ in target]:
            # Health moved the split: ramp from what applies now. Tiers appearing or going (members joining,
            # leaving, first sync) jump: only a health change of the same tiers ramps.
            ramp_from, ramp_since = tuple(loads_now(previous, now, window).items()), now
        if ramp_since is not None:
            old = dict(ramp_from)
            live = [t.healthy_count > 0 for t in tiers]
            ramped = ramp_loads([old.get(t.rank, 0.0) for t in tiers], loads, ramp_since, now, window, live)
            if ramped == loads:
                return loads, (), None, None
            return ramped, ramp_from, ramp_since, min(ramp_since + window, now + window / SLOW_START_STEPS)
    return loads, ramp_from, ramp_since, None
