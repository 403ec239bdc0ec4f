"""What balancing decisions look like in Prometheus: limit refusals as counters, ramps as scrape-time gauges.

The counters are incremented by the data paths (HTTP and TCP) when a pool's circuit breaker or retry budget
says no; they are defined here, once, because both data paths share them. The gauges are not stored: a
``PoolCollector`` reads the current serving state's pools when scraped (``pool_series``, a pure function of
the pools), so there is nothing to keep in sync with rebuilds. Cardinality stays small: endpoint series only
exist for endpoints in a slow-start ramp, tier series only per service and tier.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .serving import ServingState
from .tiers import RANK_NAMES

BREAKER_REJECTIONS = Counter(
    "fedproxy_circuit_breaker_rejections_total",
    "Requests or connections refused by a pool's circuit breaker, by service and limit",
    ["service", "limit"],
)
BUDGET_EXHAUSTED = Counter(
    "fedproxy_retries_budget_exhausted_total",
    "Retries not made because the pool's retry budget (or retry breaker) was spent, by service",
    ["service"],
)

_rejections: dict[tuple[str, str], Any] = {}
_exhausted: dict[str, Any] = {}


def count_rejection(service: str, limit: str) -> None:
    """One refusal by the breaker of ``service``'s pool; ``limit`` is e.g. "max_requests"."""
    key = (service, limit)
    child = _rejections.get(key)
    if child is None:
        child = _rejections[key] = BREAKER_REJECTIONS.labels(service, limit)
    child.inc()


def count_budget_exhausted(service: str) -> None:
    """One retry skipped because the budget of ``service``'s pool was spent."""
    child = _exhausted.get(service)
    if child is None:
        child = _exhausted[service] = BUDGET_EXHAUSTED.labels(service)
    child.inc()


def pool_series(
    state: ServingState,
) -> tuple[list[tuple[tuple[str, str, str], float]], list[tuple[tuple[str, str], float]]]:
    """(endpoint weight ratios of ramping endpoints, tier loads) as ((labels), value) rows (pure).

    Several pools of one service (routes with different ports or weights) report the lowest ratio of an
    endpoint and the loads of the first pool, so one service is one series per endpoint or tier.
    """
    ratios: dict[tuple[str, str, str], float] = {}
    loads: dict[tuple[str, str], float] = {}
    for spec, pool in state.pools.items():
        service = str(spec.service)
        for ep, ratio in pool.ramps.items():
            key = (service, ep.cluster, f"{ep.address}:{ep.port}")
            ratios[key] = min(ratio, ratios.get(key, 1.0))
        for t in pool.tiers:
            name = RANK_NAMES[t.rank] if 0 <= t.rank < len(RANK_NAMES) else str(t.rank)
            loads.setdefault((service, name), float(t.load))
    return sorted(ratios.items()), sorted(loads.items())


class PoolCollector(Collector):
    """Scrape-time gauges from the serving state ``get_state`` returns (register it in the admin registry)."""

    def __init__(self, get_state: Callable[[], ServingState]) -> None:
        self.get_state = get_state

    def collect(self) -> Iterator[Metric]:
        ratios, loads = pool_series(self.get_state())
        ratio = GaugeMetricFamily(
            "fedproxy_endpoint_weight_ratio",
            "Slow start: effective / full weight of endpoints still ramping (absent when at full weight)",
            labels=["service", "cluster", "endpoint"],
        )
        for labels, value in ratios:
            ratio.add_metric(list(labels), value)
        yield ratio
        tier = GaugeMetricFamily(
            "fedproxy_tier_load_percent",
            "Percent of a service's traffic its locality tier takes now (failover ramp included)",
            labels=["service", "tier"],
        )
        for labels2, value in loads:
            tier.add_metric(list(labels2), value)
        yield tier
