"""What the HTTP proxy reports per request: one access-log line and the Prometheus counters.

Per request only plain ints move: request counts in a dict keyed by (listener, service, cluster, code) (and
connection counts keyed by (listener, protocol, TLS version, certificate)) and
upstream latencies as per-bucket counts plus a sum in a list per (listener, service, cluster). ``flush``
moves them into the prometheus metrics (``inc(n)``, and the histogram's bucket values directly, since it has
no ``observe`` for n samples); it runs when the default registry is scraped (``_FlushHotCounts`` is
registered before the metrics) and every second from each listener (multiprocess mode: a worker's values
reach the control process's scrape through its files, so they must not wait for a scrape of the worker).
The access log goes to the ``fedproxy.access`` logger: logfmt by default, JSON on request, nothing when off.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Histogram

from ..metrics_flush import on_scrape

access_log = logging.getLogger("fedproxy.access")


on_scrape(lambda: flush())  # flush is defined below, after the metrics it writes to

REQUESTS = Counter(
    "fedproxy_http_requests_total",
    "HTTP requests answered, by listener, service, member cluster and status code",
    ["listener", "service", "cluster", "code"],
)
UPSTREAM_LATENCY = Histogram(
    "fedproxy_http_upstream_latency_seconds",
    "Time from sending the request upstream to the response head",
    ["listener", "service", "cluster"],
    buckets=(_BOUNDS := (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)),
)
RETRIES = Counter("fedproxy_http_retries_total", "Upstream retries, by listener and service", ["listener", "service"])
CONNECTIONS = Counter(
    "fedproxy_http_connections_total",
    "Client connections accepted, by listener, protocol (http/1.1, h2), TLS version and certificate served "
    "(its first name; 'default' when the client's server name matched none; '-' for both on cleartext)",
    ["listener", "protocol", "tls_version", "certificate"],
)

_requests: dict[tuple[str, str, str, int], Any] = {}
_latency: dict[tuple[str, str, str], Any] = {}
_retries: dict[tuple[str, str], Any] = {}
_connections: dict[tuple[str, str, str, str], Any] = {}
# Not yet flushed: request counts, and per latency key [sum, count in bucket 0, ..., count above the last bound].
_counts: dict[tuple[str, str, str, int], int] = {}
_conn_counts: dict[tuple[str, str, str, str], int] = {}
_latencies: dict[tuple[str, str, str], list[float]] = {}
_EMPTY_LATENCY = [0.0] * (len(_BOUNDS) + 2)


def count_request(listener: str, service: str, cluster: str, code: int) -> None:
    key = (listener, service, cluster, code)
    _counts[key] = _counts.get(key, 0) + 1


def observe_latency(listener: str, service: str, cluster: str, seconds: float) -> None:
    key = (listener, service, cluster)
    acc = _latencies.get(key)
    if acc is None:
        acc = _latencies[key] = _EMPTY_LATENCY.copy()
    acc[0] += seconds
    acc[bisect_left(_BOUNDS, seconds) + 1] += 1  # the first bucket whose bound is >= seconds, as observe() does


def flush() -> None:
    """Move the counts gathered since the last flush into the prometheus metrics."""
    global _counts, _latencies, _conn_counts
    counts, _counts = _counts, {}
    latencies, _latencies = _latencies, {}
    conn_counts, _conn_counts = _conn_counts, {}
    for ckey, n in conn_counts.items():
        conn = _connections.get(ckey)
        if conn is None:
            conn = _connections[ckey] = CONNECTIONS.labels(*ckey)
        conn.inc(n)
    for key, n in counts.items():
        child = _requests.get(key)
        if child is None:
            listener, service, cluster, code = key
            child = _requests[key] = REQUESTS.labels(listener, service, cluster, str(code))
        child.inc(n)
    for lkey, acc in latencies.items():
        hist = _latency.get(lkey)
        if hist is None:
            hist = _latency[lkey] = UPSTREAM_LATENCY.labels(*lkey)
        # prometheus_client keeps one value per bucket (not cumulative) and the sum: add to them directly.
        hist._sum.inc(acc[0])
        for value, n in zip(hist._buckets, acc[1:], strict=True):
            if n:
                value.inc(n)


def count_connection(listener: str, protocol: str, tls_version: str, certificate: str) -> None:
    key = (listener, protocol, tls_version, certificate)
    _conn_counts[key] = _conn_counts.get(key, 0) + 1


def count_retry(listener: str, service: str) -> None:
    key = (listener, service)
    child = _retries.get(key)
    if child is None:
        child = _retries[key] = RETRIES.labels(*key)
    child.inc()


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def log_access(fmt: str, fields: dict[str, object]) -> None:
    """One line per request; ``fmt`` is config.http.access_log ("logfmt", "json" or "off")."""
    if fmt == "off" or not access_log.isEnabledFor(logging.INFO):
        return
    if fmt == "json":
        access_log.info(json.dumps(fields, separators=(",", ":"), default=str))
    else:
        access_log.info(" ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items()))
