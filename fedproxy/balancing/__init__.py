"""Balancing: pure pools, tiers, pickers and health (no I/O, no clock: ``now`` is an argument).

Glossary:
- *tier*: the members at one locality distance from the local one (local, zone, region, rest).
- *priority load*: the percent of traffic a tier takes, from its health (Envoy priority levels).
- *panic*: a tier with too few healthy endpoints balances over all of them (brown-out beats black-out).
- *pool*: every endpoint of one service port in tiers, plus the picker state; rebuilt, never edited.
- *serving state*: config + catalog + health + overrides + pools, swapped as one reference.
"""

from .pool import HealthView, Overrides, Pool, PoolSpec, Tier, build_pool
from .serving import ServingState, build_state, pool_specs, route_spec, tcp_spec

__all__ = [
    "HealthView",
    "Overrides",
    "Pool",
    "PoolSpec",
    "ServingState",
    "Tier",
    "build_pool",
    "build_state",
    "pool_specs",
    "route_spec",
    "tcp_spec",
]
