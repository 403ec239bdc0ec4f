"""Runtime-level Prometheus metrics, read from the runtime at scrape time.

The listeners, DNS and discovery modules define their own prometheus-client objects in the default registry.
What belongs to the runtime as a whole (reload counts, config hash, member status, ejections, overrides) is
already counted by the runtime, so a custom Collector reads it when scraped instead of keeping a second copy
that could drift. That collector lives in a registry of its own per admin server (two runtimes in one test
process would otherwise clash in the default registry); ``render`` concatenates both expositions.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``--workers N``), the default-registry part is the sum over every
worker (prometheus-client's MultiProcessCollector), and the runtime part comes from the control process.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from .state import status_field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def discovery_statuses(runtime: Any) -> dict[str, Any]:
    """``runtime.discovery.status()`` as a dict by member name ({} while discovery has no status yet)."""
    status = getattr(runtime.discovery, "status", None)
    if status is None:
        return {}
    result = status()
    if isinstance(result, dict):
        return result
    # A sequence of per-member entries that carry their own name.
    return {status_field(s, "name", ""): s for s in result}


class RuntimeCollector(Collector):
    """Collects the runtime-level series from one runtime at scrape time."""

    def __init__(self, runtime: Any, config_hash: Callable[[], str], clock: Callable[[], float] = time.monotonic):
        self.runtime = runtime
        self.config_hash = config_hash
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        state = rt.get_state()
        now = self.clock()
        reloads = CounterMetricFamily("fedproxy_config_reloads", "Config reloads by result", labels=["result"])
        reloads.add_metric(["ok"], rt.reloads_ok)
        reloads.add_metric(["failed"], rt.reloads_failed)
        yield reloads
        info = InfoMetricFamily("fedproxy_config", "The active config (hash of its normalized form)")
        info.add_metric([], {"hash": self.config_hash(), "source": str(rt.config_path or "")})
        yield info
        ready_ok, _ = rt.ready()
        yield GaugeMetricFamily("fedproxy_ready", "1 when the readiness probe passes", value=1 if ready_ok else 0)
        yield GaugeMetricFamily("fedproxy_serving_state_version", "Version of the serving state", value=state.version)

        statuses = discovery_statuses(rt)
        names = sorted({c.name for c in state.config.clusters} | set(state.catalog.clusters) | set(statuses))
        connected = GaugeMetricFamily("fedproxy_member_connected", "1 when the member is connected", labels=["cluster"])
        synced = GaugeMetricFamily("fedproxy_member_synced", "1 when every watched kind was listed", labels=["cluster"])
        age = GaugeMetricFamily(
            "fedproxy_member_last_event_age_seconds", "Seconds since the member's last watch event", labels=["cluster"]
        )
        resyncs = CounterMetricFamily("fedproxy_member_resyncs", "Relists of a member's resources", labels=["cluster"])
        errors = CounterMetricFamily("fedproxy_member_errors", "Discovery errors per member", labels=["cluster"])
        drained = GaugeMetricFamily("fedproxy_cluster_drained", "1 when the member is drained", labels=["cluster"])
        weight = GaugeMetricFamily(
            "fedproxy_cluster_weight_override", "Runtime weight override (absent when none)", labels=["cluster"]
        )
        for name in names:
            info_c = state.catalog.clusters.get(name)
            st = statuses.get(name)
            is_connected = info_c.connected if info_c is not None else bool(status_field(st, "connected", False))
            is_synced = info_c.synced if info_c is not None else bool(status_field(st, "synced", False))
            connected.add_metric([name], 1 if is_connected else 0)
            synced.add_metric([name], 1 if is_synced else 0)
            if info_c is not None and info_c.last_event:
                age.add_metric([name], max(0.0, now - info_c.last_event))
            elif status_field(st, "last_event_age") is not None:
                age.add_metric([name], float(status_field(st, "last_event_age")))
            resyncs.add_metric([name], float(status_field(st, "resyncs", 0) or 0))
            errors.add_metric([name], float(status_field(st, "errors", 0) or 0))
            drained.add_metric([name], 1 if name in state.overrides.drained else 0)
        for name, w in sorted(state.overrides.weights.items()):
            weight.add_metric([name], w)
        yield from (connected, synced, age, resyncs, errors, drained, weight)

        ejected = GaugeMetricFamily(
            "fedproxy_endpoints_ejected", "Endpoints ejected by outlier detection, per member", labels=["cluster"]
        )
        per_cluster = Counter(ep.cluster for ep in state.health.unhealthy)
        for name in sorted(set(names) | set(per_cluster)):
            ejected.add_metric([name], per_cluster.get(name, 0))
        yield ejected
        yield from _tls_secret_metrics(rt)


def _tls_secret_metrics(rt: Any) -> Iterator[Metric]:
    """Certificates from kubernetes.io/tls Secrets: whether each serves its Secret's current content, and until when."""
    book = getattr(rt, "tls_book", None)
    if book is None:
        return
    ok = GaugeMetricFamily(
        "fedproxy_tls_secret_ok",
        "1 when the certificate served is the Secret's current content (0: pending, missing or invalid)",
        labels=["secret"],
    )
    expiry = GaugeMetricFamily(
        "fedproxy_tls_secret_not_after_timestamp_seconds",
        "Unix time the certificate served from the Secret expires",
        labels=["secret"],
    )
    serving = book.serving()
    for ref, state in book.states().items():
        ok.add_metric([str(ref)], 1 if state == "ok" else 0)
        cert = serving.get(ref)
        if cert is not None:
            expiry.add_metric([str(ref)], cert.not_after.timestamp())
    yield from (ok, expiry)


def process_registry() -> CollectorRegistry:
    """The registry the module-level metrics are read from: every worker's when multi-process mode is on."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return DEFAULT_REGISTRY


def render(runtime_registry: CollectorRegistry) -> bytes:
    """The /metrics body: the default (or multi-process) registry, then the runtime collector's series."""
    return generate_latest(process_registry()) + generate_latest(runtime_registry)
