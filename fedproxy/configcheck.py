"""Checks of one settings value at a time, and how values read in messages: pure, no I/O.

Theory of operation: ``FIELD_CHECKS`` maps (dataclass, field) to a check of one converted value (ranges, formats)
that returns a message rather than raising; :mod:`fedproxy.configwalk` runs it as it builds each object, so the
message carries the exact key path and every problem of a file is reported at once. ``quote`` and ``suggest``
shape values and "did you mean" hints for every config message (walker, cross-field rules, diffs).
Rules across fields and sections are :mod:`fedproxy.configrules`.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .config import (
    AdminConfig,
    BalancingConfig,
    ClusterConfig,
    ClustersetConfig,
    DiscoveryConfig,
    DnsConfig,
    ExportConfig,
    HashConfig,
    HealthCheckConfig,
    HttpListener,
    HttpRoute,
    KarmadaConfig,
    NodePortConfig,
    OutlierConfig,
    RetryPolicy,
    ServiceBalancing,
    TcpListener,
    Timeouts,
    TlsConfig,
    UpstreamTls,
)
from .labels import parse_selector

Check = Callable[[Any], "str | None"]

RETRY_ON = ("connect-failure", "refused", "reset", "5xx", "gateway-error", "retriable-status")
LOCALITY_LEVELS = ("local", "zone", "region", "any")
NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")  # the NodeAddressType values that carry an IP

_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_DNS_LABEL_RE = re.compile(rf"^{_LABEL}$")
_DOMAIN_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$", re.IGNORECASE)
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token (header names)


def quote(value: object) -> str:
    """A value as it reads in a message: strings in double quotes, others as YAML would show them."""
    if isinstance(value, str):
        return '"' + (value if len(value) <= 80 else value[:77] + "...") + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return str(value)


def suggest(word: str, choices: Iterator[str] | list[str] | tuple[str, ...]) -> str:
    """' (did you mean "x"?)' when a choice is close to ``word``, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


# Field checks ------------------------------------------------------------------------------------------


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"  # ints may exceed float range


def at_least(lo: float, hi: float | None = None) -> Check:
    def check(v: Any) -> str | None:
        if hi is not None and not lo <= v <= hi:
            return f"must be {_num(lo)}..{_num(hi)}, got {_num(v)}"
        if v < lo:
            return f"must be >= {_num(lo)}, got {_num(v)}"
        return None

    return check


def positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {_num(v)}"


def port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else f"must be 1..65535, got {v}"


def bind_port(v: int) -> str | None:
    """A port fedproxy listens on: 0 asks the kernel for a free one (tests, sidecars); the state API shows it."""
    return None if 0 <= v <= 65535 else f"must be 0..65535 (0 = any free port), got {v}"


def dns_label(v: str) -> str | None:
    return None if _DNS_LABEL_RE.match(v) else f"{quote(v)} is not a DNS label (lowercase a-z, 0-9, '-')"


def domain(v: str) -> str | None:
    ok = len(v) <= 253 and _DOMAIN_RE.match(v)
    return None if ok else f'{quote(v)} is not a domain name like "clusterset.local"'


def non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def ip_address(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"{quote(v)} is not an IP address"
    return None


def bind_address(v: str) -> str | None:
    return None if v == "localhost" else ip_address(v)


def optional_ip(v: str) -> str | None:
    return None if v == "" else ip_address(v)


def host_pattern(v: str) -> str | None:
    name = v[2:] if v.startswith("*.") else v
    if v == "" or (len(name) <= 253 and _DOMAIN_RE.match(name)):
        return None
    return f'{quote(v)} is not "", a hostname or "*.suffix"'


def path_prefix(v: str) -> str | None:
    return None if v.startswith("/") else f'{quote(v)} must start with "/"'


def http_path(v: str) -> str | None:
    return None if v == "" or v.startswith("/") else f'{quote(v)} must be "" (TCP check) or start with "/"'


def header_name(v: str) -> str | None:
    return None if v == "" or _TOKEN_RE.match(v) else f"{quote(v)} is not a valid header name"


def header_names(v: Mapping[str, str]) -> str | None:
    bad = [k for k in v if not k or not _TOKEN_RE.match(k)]
    return f"{quote(bad[0])} is not a valid header name" if bad else None


def weights(v: Mapping[str, int]) -> str | None:
    for name, w in v.items():
        if w < 0:
            return f"weight of {quote(name)} must be >= 0, got {w}"
    if v and sum(v.values()) == 0:
        return "weights must not all be 0"
    return None


def one_of(allowed: tuple[str, ...]) -> Check:
    def check(values: tuple[str, ...]) -> str | None:
        for item in values:
            if item not in allowed:
                listed = ", ".join(quote(a) for a in allowed)
                return f"{quote(item)} is not one of {listed}{suggest(item, allowed)}"
        return None

    return check


def locality(v: tuple[str, ...]) -> str | None:
    if err := one_of(LOCALITY_LEVELS)(v):
        return err
    if len(set(v)) != len(v):
        return "levels must not repeat"
    return None if v else "must list at least one level"


def forward(v: tuple[str, ...]) -> str | None:
    for item in v:
        if parse_hostport(item) is None:
            return f'{quote(item)} is not "ip" or "ip:port" ("[v6]:port" for IPv6)'
    return None


def parse_hostport(text: str) -> tuple[str, int] | None:
    """``"ip"``, ``"ip:port"``, ``"v6"`` or ``"[v6]:port"`` -> (ip, port), None when malformed; port 53."""
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    if not port_text:
        return host, 53
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return None
    return host, int(port_text)


def label_selector(v: str) -> str | None:
    """Syntax of a Kubernetes label selector, checked by the parser that will use it at runtime."""
    try:
        parse_selector(v)
    except ValueError as e:
        return f"{quote(v)} is not a label selector: {e}"
    return None


def node_address_type(v: str) -> str | None:
    return None if v in NODE_ADDRESS_TYPES else f"must be one of {', '.join(map(quote, NODE_ADDRESS_TYPES))}"


def sni_names(v: Mapping[str, object]) -> str | None:
    """TLS passthrough keys: a hostname, "*.suffix", or "*" / "" for the default."""
    for name in v:
        if name not in ("*", "") and (message := host_pattern(name)):
            return message
    return None


def alpn_list(v: tuple[str, ...]) -> str | None:
    for p in v:
        if not 0 < len(p.encode()) <= 255:
            return f'{quote(p)} is not an ALPN protocol id (1..255 bytes, e.g. "h2", "http/1.1")'
    return None


def sni_name(v: str) -> str | None:
    return None if v == "" or not host_pattern(v) or not ip_address(v) else f"{quote(v)} is not a hostname"


FIELD_CHECKS: dict[tuple[type, str], Check] = {
    (ClusterConfig, "name"): dns_label,
    (ClusterConfig, "weight"): at_least(0),
    (ClusterConfig, "capacity"): at_least(0),
    (KarmadaConfig, "kubeconfig"): non_empty,
    (DiscoveryConfig, "grace_period"): at_least(0),
    (DiscoveryConfig, "debounce"): at_least(0),
    (DiscoveryConfig, "backoff_base"): positive,
    (DiscoveryConfig, "backoff_max"): positive,
    (DiscoveryConfig, "watch_timeout"): positive,
    (DiscoveryConfig, "request_timeout"): positive,
    (ClustersetConfig, "domain"): domain,
    (ExportConfig, "selector"): label_selector,
    (NodePortConfig, "node_selector"): label_selector,
    (NodePortConfig, "address_type"): node_address_type,
    (Timeouts, "connect"): positive,
    (Timeouts, "response_header"): positive,
    (Timeouts, "idle"): positive,
    (Timeouts, "total"): at_least(0),
    (RetryPolicy, "attempts"): at_least(0, 10),
    (RetryPolicy, "on"): one_of(RETRY_ON),
    (RetryPolicy, "backoff_base"): at_least(0),
    (RetryPolicy, "backoff_max"): at_least(0),
    (HashConfig, "name"): header_name,
    (HttpRoute, "host"): host_pattern,
    (HttpRoute, "path_prefix"): path_prefix,
    (HttpRoute, "service_port"): lambda v: port(v) if isinstance(v, int) else non_empty(v),
    (HttpRoute, "headers"): header_names,
    (HttpRoute, "clusters"): weights,
    (HttpRoute, "pin_header"): header_name,
    (HttpListener, "port"): bind_port,
    (HttpListener, "address"): bind_address,
    (HttpListener, "max_header_bytes"): at_least(1024),
    (HttpListener, "request_head_timeout"): positive,
    (HttpListener, "drain_timeout"): at_least(0),
    (TcpListener, "port"): bind_port,
    (TcpListener, "address"): bind_address,
    (TcpListener, "service_port"): lambda v: port(v) if isinstance(v, int) else non_empty(v),
    (TcpListener, "connect_timeout"): positive,
    (TcpListener, "connect_attempts"): at_least(1),
    (TcpListener, "idle_timeout"): positive,
    (TcpListener, "max_connections"): at_least(0),
    (TcpListener, "drain_timeout"): at_least(0),
    (TcpListener, "sni_routes"): sni_names,
    (TlsConfig, "alpn"): alpn_list,
    (UpstreamTls, "sni"): sni_name,
    (DnsConfig, "address"): bind_address,
    (DnsConfig, "port"): bind_port,
    (DnsConfig, "ttl"): at_least(0),
    (DnsConfig, "negative_ttl"): at_least(0),
    (DnsConfig, "advertise_address"): optional_ip,
    (DnsConfig, "forward"): forward,
    (DnsConfig, "max_udp_payload"): at_least(512, 65535),
    (AdminConfig, "address"): bind_address,
    (AdminConfig, "port"): bind_port,
    (AdminConfig, "drain_timeout"): at_least(0),
    (OutlierConfig, "consecutive_failures"): at_least(1),
    (OutlierConfig, "base_ejection_time"): positive,
    (OutlierConfig, "max_ejection_time"): positive,
    (OutlierConfig, "max_ejection_percent"): at_least(0, 100),
    (HealthCheckConfig, "path"): http_path,
    (HealthCheckConfig, "interval"): positive,
    (HealthCheckConfig, "timeout"): positive,
    (HealthCheckConfig, "rise"): at_least(1),
    (HealthCheckConfig, "fall"): at_least(1),
    (BalancingConfig, "locality"): locality,
    (BalancingConfig, "overprovisioning"): at_least(1),
    (BalancingConfig, "panic_threshold"): at_least(0, 100),
    (BalancingConfig, "slow_start"): at_least(0),
    (BalancingConfig, "tier_ramp"): at_least(0),
    (BalancingConfig, "local_min_healthy"): at_least(0, 100),
    (BalancingConfig, "retry_budget_percent"): at_least(0, 100),
    (ServiceBalancing, "panic_threshold"): at_least(0, 100),
    (ServiceBalancing, "local_min_healthy"): at_least(0, 100),
    (ServiceBalancing, "tier_ramp"): at_least(0),
}
