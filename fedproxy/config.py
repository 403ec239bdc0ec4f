"""Typed, frozen settings: the tree of dataclasses one YAML file becomes.

Each field states its unit and where its default comes from. Loading and validation (every error with
its key path, all at once, "did you mean" for unknown keys) are in :mod:`fedproxy.configload`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .model import BackendChoice, ServiceKey, empty_map

Algorithm = Literal["round_robin", "least_request", "random", "hash"]
HashOn = Literal["source_ip", "header", "cookie"]
DnsPolicy = Literal["local_first", "locality", "spread"]
DnsAnswer = Literal["cluster", "proxy"]


@dataclass(frozen=True)
class ClusterConfig:
    name: str  # a DNS label, unique
    kubeconfig: str = ""  # path; "" with in_cluster or for a member discovered through karmada
    context: str = ""  # kubeconfig context; "" = the file's current-context
    in_cluster: bool = False  # use the pod's service account
    region: str = ""
    zone: str = ""
    weight: int = 1  # relative share inside a locality tier; 0 = no new traffic
    local: bool = False  # the member this proxy runs in; at most one
    pods_reachable: bool | None = None  # None: True for the local member, False otherwise
    capacity: int | None = None  # declared capacity for spill (default: healthy endpoint count)

    @property
    def reaches_pods(self) -> bool:
        return self.local if self.pods_reachable is None else self.pods_reachable


@dataclass(frozen=True)
class KarmadaConfig:
    kubeconfig: str
    context: str = ""


@dataclass(frozen=True)
class DiscoveryConfig:
    grace_period: float = 10.0  # s without a healthy watch before a member is disconnected (issue 3)
    debounce: float = 0.02  # s to gather watch events into one catalog rebuild (keeps <100 ms latency)
    backoff_base: float = 0.5  # s, first retry delay after a watch error; doubles, jittered
    backoff_max: float = 30.0  # s, retry delay cap
    watch_timeout: int = 300  # s, timeoutSeconds asked of the API server per watch request
    request_timeout: float = 10.0  # s, per list request and per read on a watch stream


@dataclass(frozen=True)
class ExportConfig:
    mode: Literal["serviceexport", "label"] = "serviceexport"
    selector: str = ""  # label selector when mode is "label" (the Karmada + Pipy setup used app=flask)


@dataclass(frozen=True)
class ClustersetConfig:
    domain: str = "clusterset.local"
    export: ExportConfig = ExportConfig()


@dataclass(frozen=True)
class NodePortConfig:
    node_selector: str = ""  # label selector; "" = every Ready node
    address_type: str = "InternalIP"


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0  # s, Envoy's connect_timeout default
    response_header: float = 15.0  # s, Envoy's route timeout default
    idle: float = 60.0  # s an idle upstream or downstream keep-alive connection is kept
    total: float = 0.0  # s for the whole request, 0 = none


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 1  # retries after the first try (BALANCING.md: one by default)
    on: tuple[str, ...] = ("connect-failure", "refused", "reset")  # add "5xx", "gateway-error" to opt in
    backoff_base: float = 0.025  # s, Envoy's 25 ms
    backoff_max: float = 0.25  # s, Envoy's 250 ms


@dataclass(frozen=True)
class HashConfig:
    on: HashOn = "source_ip"
    name: str = ""  # header or cookie name when on is header/cookie


# TLS (issue 13; docs/tls.md) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsCertificate:
    """One certificate + key pair a TLS listener serves; the names it serves come from its SANs (and CN)."""

    cert_file: str = ""  # PEM path: the leaf first, then intermediates
    key_file: str = ""  # PEM path of the private key (unencrypted)
    secret: ServiceKey | None = None  # a kubernetes.io/tls Secret "ns/name", watched (instead of the files)
    cluster: str = ""  # the member holding ``secret`` (required with it)


@dataclass(frozen=True)
class TlsConfig:
    """TLS termination on an HTTP listener. The first certificate is the default (no SNI, or no name matches)."""

    certificates: tuple[TlsCertificate, ...] = ()
    min_version: Literal["TLS1.2", "TLS1.3"] = "TLS1.2"  # TLS 1.2 is Mozilla's "intermediate" floor
    # ALPN offered, in preference order; only protocols the listener can serve are announced (h2 needs the
    # HTTP/2 protocol module, see docs/tls.md).
    alpn: tuple[str, ...] = ("h2", "http/1.1")


@dataclass(frozen=True)
class UpstreamTls:
    """TLS from fedproxy to a route's backends."""

    verify: bool = True  # check the backend's certificate chain and name
    ca_file: str = ""  # PEM bundle to verify against; "" = the system store
    sni: str = ""  # server name sent and verified; "" = the endpoint's address (IP SAN)


@dataclass(frozen=True)
class HttpRoute:
    service: ServiceKey
    host: str = ""  # "" = any; exact or "*.example.com"
    path_prefix: str = "/"
    service_port: str | int | None = None  # None: the service's only port
    backend: BackendChoice = "auto"
    headers: Mapping[str, str] = field(
        default_factory=empty_map
    )  # request header matches that select this route (all must match)
    cookies: Mapping[str, str] = field(default_factory=empty_map)  # cookie matches that select this route
    clusters: Mapping[str, int] = field(
        default_factory=empty_map
    )  # per-route cluster weight overrides (traffic shifting)
    pin_header: str = "x-fedproxy-cluster"  # a request header naming one member pins the request to it
    timeouts: Timeouts = Timeouts()
    retries: RetryPolicy = RetryPolicy()
    hash: HashConfig | None = None  # sticky sessions; overrides balancing.hash for this route
    # How requests reach the backends: HTTP/1.1, cleartext HTTP/2 with prior knowledge (gRPC services), or
    # HTTP/2 over TLS ("h2": needs upstream TLS, see docs/http2.md). One multiplexed connection per endpoint.
    upstream_protocol: Literal["http1", "h2c", "h2"] = "http1"
    upstream_tls: UpstreamTls | None = None  # None: plain TCP to the backends (docs/tls.md)


@dataclass(frozen=True)
class HttpListener:
    port: int
    address: str = "0.0.0.0"
    name: str = ""  # "" -> "http-<port>"
    routes: tuple[HttpRoute, ...] = ()
    max_header_bytes: int = 65536  # larger request heads get 431
    request_head_timeout: float = 10.0  # s a client has to send a request head (slowloris bound)
    drain_timeout: float = 30.0  # s in-flight requests get on reload/shutdown
    # Accept cleartext HTTP/2 with prior knowledge (RFC 9113 3.3): a connection opening with the HTTP/2
    # preface is served as HTTP/2, any other as HTTP/1.1. Off by default: HTTP/1.1-only listeners stay as they were.
    h2c: bool = False
    tls: TlsConfig | None = None  # terminate TLS on this listener (docs/tls.md); None = cleartext


@dataclass(frozen=True)
class HttpConfig:
    listeners: tuple[HttpListener, ...] = ()
    access_log: Literal["off", "logfmt", "json"] = "logfmt"


@dataclass(frozen=True)
class TcpListener:
    port: int
    service: ServiceKey
    address: str = "0.0.0.0"
    name: str = ""  # "" -> "tcp-<port>"
    service_port: str | int | None = None
    backend: BackendChoice = "auto"
    connect_timeout: float = 5.0  # s, Envoy's connect_timeout default
    connect_attempts: int = 3  # upstream connect tries per client connection
    idle_timeout: float = 3600.0  # s, Envoy's tcp_proxy idle_timeout default (1 h)
    max_connections: int = 10000  # 0 = unlimited
    on_max_connections: Literal["close", "backlog"] = "close"
    proxy_protocol: Literal["", "v1", "v2"] = ""
    hash_source_ip: bool = False
    drain_timeout: float = 30.0  # s open connections get on reload/shutdown
    # TLS passthrough: route by the ClientHello's server name without terminating (docs/tls.md). Keys are exact
    # names or "*.example.com"; "*" (or "") is the default; without one, unmatched names go to ``service``.
    sni_routes: Mapping[str, ServiceKey] = field(default_factory=empty_map)


@dataclass(frozen=True)
class TcpConfig:
    listeners: tuple[TcpListener, ...] = ()


@dataclass(frozen=True)
class DnsConfig:
    enabled: bool = True
    address: str = "0.0.0.0"
    port: int = 53
    ttl: int = 5  # s, Lighthouse's answer TTL
    negative_ttl: int = 5  # s, SOA minimum in negative answers
    policy: DnsPolicy = "local_first"  # Lighthouse's default behaviour
    locality: bool = False  # shorthand for policy "locality"
    cluster_prefix: bool = True  # answer <cluster>.<svc>.<ns>.svc.<domain> (Lighthouse); False = strict spec
    answer: DnsAnswer = "cluster"  # "proxy": answer fedproxy's own listener for services it fronts
    advertise_address: str = ""  # what "proxy" answers; "" = the listener's address
    backend: BackendChoice = "clusterip"  # which address a member contributes (MCS: ClusterIP)
    forward: tuple[str, ...] = ()  # upstream resolvers for names outside the domain; () = REFUSED
    max_udp_payload: int = 1232  # bytes, the DNS flag day 2020 EDNS buffer size


@dataclass(frozen=True)
class OverridesConfig:
    configmap: ServiceKey  # namespace/name of the ConfigMap holding drains and weights
    cluster: str  # the member whose API holds it


@dataclass(frozen=True)
class AdminConfig:
    address: str = "127.0.0.1"
    port: int = 9901
    token: str = field(default="", repr=False)
    token_file: str = ""
    overrides: OverridesConfig | None = None
    drain_timeout: float = 30.0  # s, listeners drain on SIGTERM


@dataclass(frozen=True)
class OutlierConfig:
    consecutive_failures: int = 5  # 5xx / connect failures in a row that eject (Envoy consecutive_5xx)
    base_ejection_time: float = 30.0  # s, x times ejected in a row (Envoy)
    max_ejection_time: float = 300.0  # s (Envoy)
    max_ejection_percent: int = 10  # % of a pool that may be ejected, at least one endpoint (Envoy)


@dataclass(frozen=True)
class HealthCheckConfig:
    path: str = "/healthz"  # HTTP path; "" = TCP connect check
    interval: float = 2.0  # s (HAProxy inter)
    timeout: float = 1.0  # s
    rise: int = 2  # successes to come up (HAProxy)
    fall: int = 3  # failures to go down (HAProxy)


@dataclass(frozen=True)
class ServiceBalancing:
    """Per-service balancing overrides (docs/balancing.md); None / empty = the ``balancing`` section's value."""

    panic_threshold: float | None = None  # % healthy below which a tier panics (Envoy's 50 % by default)
    fail_on_panic: bool | None = None  # 503 instead of panic routing for this service
    algorithm: Algorithm | None = None  # picker for this service's pools (a route's hash still wins)
    # Member weights inside a tier for every route and listener of this service (a route's own ``clusters``
    # win); same meaning as a route's: shares follow the numbers whatever the pod counts, unnamed members get 0.
    clusters: Mapping[str, int] = field(default_factory=empty_map)
    local_min_healthy: float | None = None  # see BalancingConfig.local_min_healthy
    tier_ramp: float | None = None  # see BalancingConfig.tier_ramp


@dataclass(frozen=True)
class BalancingConfig:
    algorithm: Algorithm = "round_robin"
    hash: HashConfig = HashConfig()
    locality: tuple[str, ...] = ("local", "zone", "region", "any")
    overprovisioning: float = 1.4  # Envoy's overprovisioning factor
    panic_threshold: float = 50.0  # % healthy below which a tier balances over all its endpoints (Envoy)
    fail_on_panic: bool = False  # 503 instead of panic routing
    slow_start: float = 0.0  # s over which a new or readmitted endpoint ramps from 10 % to full weight
    outlier: OutlierConfig = OutlierConfig()
    health_checks: Mapping[ServiceKey, HealthCheckConfig] = field(default_factory=empty_map)
    hash_algorithm: Literal["maglev", "ring"] = "maglev"  # Maglev: O(1) lookups, ~2x a ring's remapping
    maglev_table_size: int = 65537  # slots, a prime (Envoy's default); >= 100 x endpoints for an even spread
    balance_factor: float = 1.25  # bounded-load hashing: max active per endpoint / average (HAProxy 125); 0 = off
    max_connections: int = 1024  # per pool, upstream connections (Envoy circuit breaker default)
    max_pending: int = 1024  # per pool, requests waiting for a connection (Envoy)
    max_requests: int = 1024  # per pool, requests in flight (Envoy)
    max_retries: int = 3  # per pool, retries in flight (Envoy)
    retry_budget_percent: float = 20.0  # % of active + pending requests that may be retries (Envoy retry budget)
    retry_budget_min: int = 3  # retries always allowed whatever the budget says (Envoy min_retry_concurrency)
    # s over which tier loads move from the old split to the new one when health changes (failover and
    # fail-back ramp, "slow start across tiers"); a tier left with no healthy endpoint drops out at once.
    # 5 s: a few rebuilds, short next to the 30 s ejection time. 0 = jump as Envoy does.
    tier_ramp: float = 5.0
    # % healthy the local tier needs to keep all traffic ("prefer local", gradual): below it the local tier's
    # health is 100 x healthy% / local_min_healthy, so it spills in proportion. 0 = the overprovisioning
    # factor decides (1.4: keep all down to ~71 %), as Envoy does.
    local_min_healthy: float = 0.0
    services: Mapping[ServiceKey, ServiceBalancing] = field(default_factory=empty_map)  # per-service overrides


@dataclass(frozen=True)
class Config:
    clusters: tuple[ClusterConfig, ...] = ()
    karmada: KarmadaConfig | None = None
    discovery: DiscoveryConfig = DiscoveryConfig()
    clusterset: ClustersetConfig = ClustersetConfig()
    nodeports: NodePortConfig = NodePortConfig()
    http: HttpConfig = HttpConfig()
    tcp: TcpConfig = TcpConfig()
    dns: DnsConfig = DnsConfig()
    admin: AdminConfig = AdminConfig()
    balancing: BalancingConfig = BalancingConfig()
    source: str = field(default="", compare=False)  # the file it was loaded from

    def cluster(self, name: str) -> ClusterConfig | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None

    @property
    def local_cluster(self) -> str:
        for c in self.clusters:
            if c.local:
                return c.name
        return ""
