"""What the HTTP proxy reports per request: one access-log line and the Prometheus counters.

The metric objects are defined once here; labelled children are cached in dicts keyed by label tuples,
because ``labels()`` costs a lock and a tuple build per call, which is most of a request's metric budget.
The access log goes to the ``fedproxy.access`` logger: logfmt by default, JSON on request, nothing when off.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from prometheus_client import Counter, Histogram

access_log = logging.getLogger("fedproxy.access")

REQUESTS = Counter(
    "fedproxy_http_requests_total",
    "HTTP requests answered, by listener, service, member cluster and status code",
    ["listener", "service", "cluster", "code"],
)
UPSTREAM_LATENCY = Histogram(
    "fedproxy_http_upstream_latency_seconds",
    "Time from sending the request upstream to the response head",
    ["listener", "service", "cluster"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RETRIES = Counter("fedproxy_http_retries_total", "Upstream retries, by listener and service", ["listener", "service"])

_requests: dict[tuple[str, str, str, int], Any] = {}
_latency: dict[tuple[str, str, str], Any] = {}
_retries: dict[tuple[str, str], Any] = {}


def count_request(listener: str, service: str, cluster: str, code: int) -> None:
    key = (listener, service, cluster, code)
    child = _requests.get(key)
    if child is None:
        child = _requests[key] = REQUESTS.labels(listener, service, cluster, str(code))
    child.inc()


def observe_latency(listener: str, service: str, cluster: str, seconds: float) -> None:
    key = (listener, service, cluster)
    child = _latency.get(key)
    if child is None:
        child = _latency[key] = UPSTREAM_LATENCY.labels(*key)
    child.observe(seconds)


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
