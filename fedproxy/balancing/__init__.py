"""Balancing: pure pools, tiers, pickers and health (no I/O, no clock: ``now`` is an argument).

Glossary:
- *tier*: the members at one locality distance from the local one (local, zone, region, rest).
- *priority load*: the percent of traffic a tier takes, from its health (Envoy priority levels).
- *panic*: a tier with too few healthy endpoints balances over all of them (brown-out beats black-out).
- *pool*: every endpoint of one service port in tiers, plus the picker state; rebuilt, never edited.
- *spill*: the load a degraded tier cannot take, spread over the following tiers by capacity (tiers.py).
- *ejection*: passive outlier detection takes an endpoint out for a while (health.py).
- *bounded load*: consistent hashing that skips an endpoint over factor x average active (hashing.py).
- *serving state*: config + catalog + health + overrides + pools, swapped as one reference.
"""

from .explain import explain
from .hashing import hash_key
from .health import ActiveHealth, Arrivals, HealthView, OutlierDetector
from .limits import CircuitBreaker, Limits, RetryBudget
from .pickers import PICKERS
from .pool import Overrides, Pool, PoolSpec, Tier, build_pool
from .serving import ServingState, build_state, pool_specs, route_spec, tcp_spec

__all__ = [
    "PICKERS",
    "ActiveHealth",
    "Arrivals",
    "CircuitBreaker",
    "Limits",
    "OutlierDetector",
    "RetryBudget",
    "explain",
    "hash_key",
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
