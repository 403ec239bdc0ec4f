"""Snapshots of every member -> one Catalog of exported services (pure).

Theory of operation: a service ``ns/name`` is exported by a member when that member has the Service and a
ServiceExport of the same name (or, with ``clusterset.export.mode: label``, when the Service matches the
selector). For each exported service the catalog keeps, per member, the Service, its ready pods (EndpointSlice
entries de-duplicated by address), and the addresses of the member's selected Ready nodes, so that every backend
kind (pod, nodeport, loadbalancer, clusterip) can be derived without looking at the snapshots again.

MCS conflict rules (KEP-1645, "Constraints and Conflict Resolution"): when members disagree on the service
type (headless or not) the export created first wins and the others are left out with a reason; ports are the
union by name, and a port whose definition differs keeps the oldest export's definition. Every conflict is
reported in ``CatalogService.conflicts``; nothing is silently merged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .config import ClusterConfig, Config
from .labels import Selector, parse_selector
from .model import (
    BackendChoice,
    BackendKind,
    ClusterSnapshot,
    Endpoint,
    Locality,
    Service,
    ServiceExport,
    ServiceImport,
    ServiceKey,
    ServicePort,
    empty_map,
)


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """A member as the serving side sees it: settings from the config + state from discovery."""

    name: str
    locality: Locality = Locality()
    connected: bool = True
    synced: bool = True
    local: bool = False
    weight: int = 1
    pods_reachable: bool = False
    capacity: int | None = None
    error: str = ""
    last_event: float = 0.0


@dataclass(frozen=True, slots=True)
class Pod:
    """One pod address of a service in one member (merged across EndpointSlices)."""

    address: str
    ports: Mapping[str, int] = field(default_factory=empty_map)  # slice port name ("" when unnamed) -> port
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    hostname: str | None = None
    zone: str | None = None

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


@dataclass(frozen=True, slots=True)
class ClusterService:
    """One member's side of an exported service."""

    cluster: str
    service: Service
    export: ServiceExport | None = None  # None in label-export mode
    pods: tuple[Pod, ...] = ()
    node_addresses: tuple[str, ...] = ()  # selected, Ready nodes, configured address type
    service_import: ServiceImport | None = None

    @property
    def ready_pods(self) -> tuple[Pod, ...]:
        return tuple(p for p in self.pods if p.ready)

    @property
    def created(self) -> str:
        return self.export.created if self.export and self.export.created else self.service.created


@dataclass(frozen=True, slots=True)
class CatalogService:
    key: ServiceKey
    headless: bool = False
    ports: tuple[ServicePort, ...] = ()  # the union across members (MCS)
    clusters: Mapping[str, ClusterService] = field(
        default_factory=empty_map
    )  # members serving it (connected or not: see ClusterInfo)
    excluded: Mapping[str, str] = field(default_factory=empty_map)  # member -> why it exports the name but is left out
    conflicts: tuple[str, ...] = ()
    clusterset_ips: tuple[str, ...] = ()  # ServiceImport spec.ips, when a member has one


@dataclass(frozen=True, slots=True)
class Catalog:
    version: int = 0
    clusters: Mapping[str, ClusterInfo] = field(default_factory=empty_map)
    services: Mapping[ServiceKey, CatalogService] = field(default_factory=empty_map)
    domain: str = "clusterset.local"
    local: str = ""  # name of the local member, "" when none

    def connected(self, name: str) -> bool:
        info = self.clusters.get(name)
        return info is not None and info.connected


@dataclass(frozen=True, slots=True)
class Backends:
    """What one member contributes to a pool for one service port, and why when it is nothing."""

    cluster: str
    kind: BackendKind | None
    endpoints: tuple[Endpoint, ...] = ()
    reason: str = ""
    port: ServicePort | None = field(default=None, compare=False)


def cluster_info(snapshot: ClusterSnapshot, cfg: ClusterConfig | None) -> ClusterInfo:
    """Config wins over what discovery found for locality (the operator knows best)."""
    region = (cfg.region if cfg and cfg.region else "") or snapshot.locality.region
    zone = (cfg.zone if cfg and cfg.zone else "") or snapshot.locality.zone
    local = bool(cfg and cfg.local)
    return ClusterInfo(
        name=snapshot.name,
        locality=Locality(region, zone),
        connected=snapshot.connected,
        synced=snapshot.synced,
        local=local,
        weight=cfg.weight if cfg else 1,
        pods_reachable=cfg.reaches_pods if cfg else False,
        capacity=cfg.capacity if cfg else None,
        error=snapshot.error,
        last_event=snapshot.last_event,
    )


def _pods(snapshot: ClusterSnapshot, ns: str, name: str) -> tuple[Pod, ...]:
    merged: dict[str, Pod] = {}
    for (slice_ns, _), sl in sorted(snapshot.endpointslices.items()):
        if slice_ns != ns or sl.service != name or sl.address_type not in ("IPv4", "IPv6"):
            continue
        ports = {p.name: p.port for p in sl.ports if p.port is not None}
        for ep in sl.endpoints:
            for address in ep.addresses:
                old = merged.get(address)
                if old is not None:
                    # The same pod in two slices (during a slice rotation): keep the readier view and all ports.
                    ports_all = {**old.ports, **ports}
                    ready = old.ready or ep.ready
                    serving = old.serving or ep.serving
                    merged[address] = Pod(
                        address,
                        MappingProxyType(ports_all),
                        ready,
                        serving,
                        old.terminating and ep.terminating,
                        old.hostname or ep.hostname,
                        old.zone or ep.zone,
                    )
                else:
                    merged[address] = Pod(
                        address,
                        MappingProxyType(dict(ports)),
                        ep.ready,
                        ep.serving,
                        ep.terminating,
                        ep.hostname,
                        ep.zone,
                    )
    return tuple(merged[a] for a in sorted(merged, key=_ip_sort_key))


def _ip_sort_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


def _node_addresses(snapshot: ClusterSnapshot, selector: Selector, address_type: str) -> tuple[str, ...]:
    out: list[str] = []
    for _, node in sorted(snapshot.nodes.items()):
        if node.ready and selector.matches(node.labels):
            out.extend(node.addresses.get(address_type, ()))
    return tuple(out)


def _exported(snapshot: ClusterSnapshot, config: Config, selector: Selector) -> Iterable[ClusterService]:
    label_mode = config.clusterset.export.mode == "label"
    node_selector = parse_selector(config.nodeports.node_selector)
    node_addresses = _node_addresses(snapshot, node_selector, config.nodeports.address_type)
    for (ns, name), svc in sorted(snapshot.services.items()):
        export = snapshot.serviceexports.get((ns, name))
        if label_mode:
            if not selector.matches(svc.labels):
                continue
        elif export is None:
            continue
        yield ClusterService(
            cluster=snapshot.name,
            service=svc,
            export=export,
            pods=_pods(snapshot, ns, name),
            node_addresses=node_addresses,
            service_import=snapshot.serviceimports.get((ns, name)),
        )


def _merge(key: ServiceKey, sides: list[ClusterService]) -> CatalogService:
    """Apply the MCS conflict rules to every member's side of one service."""
    sides.sort(key=lambda s: (s.created or "~", s.cluster))  # oldest export first; no timestamp sorts last
    excluded: dict[str, str] = {}
    conflicts: list[str] = []
    kept: list[ClusterService] = []
    for side in sides:
        if side.export is not None and not side.export.valid:
            excluded[side.cluster] = f"export not valid: {side.export.reason}"
            continue
        if side.service.type == "ExternalName":
            excluded[side.cluster] = "ExternalName services cannot be exported"
            continue
        kept.append(side)
    if not kept:
        return CatalogService(key=key, excluded=MappingProxyType(excluded))
    headless = kept[0].service.headless
    winner = kept[0].cluster
    serving = []
    for side in kept:
        if side.service.headless != headless:
            kind = "Headless" if side.service.headless else "ClusterSetIP"
            excluded[side.cluster] = f"type conflict: {kind} here, oldest export ({winner}) decides"
            conflicts.append(f"type: {side.cluster} is {kind}, {winner} (oldest export) wins")
        else:
            serving.append(side)
    ports: dict[tuple[str, str, int], ServicePort] = {}
    by_name: dict[str, ServicePort] = {}
    for side in serving:
        for p in side.service.ports:
            if p.name:
                first = by_name.get(p.name)
                if first is None:
                    by_name[p.name] = p
                    ports[(p.name, p.protocol, p.port)] = p
                elif (first.port, first.protocol) != (p.port, p.protocol):
                    conflicts.append(
                        f"port {p.name}: {side.cluster} has {p.port}/{p.protocol}, "
                        f"oldest export has {first.port}/{first.protocol}"
                    )
            else:
                ports.setdefault(("", p.protocol, p.port), p)
    for p in ports.values():  # a port only some members expose is served only from those: say so (MCS)
        have = [s.cluster for s in serving if any(_same_port(p, q) for q in s.service.ports)]
        if len(have) < len(serving):
            conflicts.append(f"port {p.name or p.port}/{p.protocol}: only exposed by {', '.join(have)}")
    clusterset_ips: tuple[str, ...] = ()
    for side in serving:
        if side.service_import is not None and side.service_import.ips:
            clusterset_ips = side.service_import.ips
            break
    return CatalogService(
        key=key,
        headless=headless,
        ports=tuple(ports.values()),
        clusters=MappingProxyType({s.cluster: s for s in serving}),
        excluded=MappingProxyType(excluded),
        conflicts=tuple(conflicts),
        clusterset_ips=clusterset_ips,
    )


def _same_port(a: ServicePort, b: ServicePort) -> bool:
    """The MCS port identity: the name when named, else protocol and port."""
    return a.name == b.name if a.name else (not b.name and (a.protocol, a.port) == (b.protocol, b.port))


def build_catalog(snapshots: Iterable[ClusterSnapshot], config: Config, version: int = 0) -> Catalog:
    """Every member's snapshot + the config -> the Catalog. Pure; cost is linear in the objects."""
    snaps = sorted(snapshots, key=lambda s: s.name)
    selector = parse_selector(config.clusterset.export.selector) if config.clusterset.export.selector else Selector()
    infos: dict[str, ClusterInfo] = {}
    sides: dict[ServiceKey, list[ClusterService]] = {}
    for snap in snaps:
        infos[snap.name] = cluster_info(snap, config.cluster(snap.name))
        for side in _exported(snap, config, selector):
            sides.setdefault(side.service.key, []).append(side)
    services = {key: _merge(key, group) for key, group in sorted(sides.items())}
    local = next((n for n, i in infos.items() if i.local), config.local_cluster)
    return Catalog(
        version=version,
        clusters=MappingProxyType(infos),
        services=MappingProxyType(services),
        domain=config.clusterset.domain,
        local=local,
    )


def select_port(service: Service, want: str | int | None) -> ServicePort | None:
    """The service port a route or listener means: its only port, a name, or a number."""
    if want is None or want == "":
        return service.ports[0] if len(service.ports) == 1 else None
    for p in service.ports:
        if (isinstance(want, int) and p.port == want) or (isinstance(want, str) and p.name == want):
            return p
    if isinstance(want, str) and want.isdigit():
        return select_port(service, int(want))
    return None


def _pod_port(pod: Pod, port: ServicePort) -> int | None:
    if port.name in pod.ports:
        return pod.ports[port.name]
    if len(pod.ports) == 1:
        return next(iter(pod.ports.values()))
    return port.target_port if isinstance(port.target_port, int) else None


def usable_pods(side: ClusterService) -> tuple[Pod, ...]:
    """Ready pods; else serving-but-terminating ones (kube-proxy's ProxyTerminatingEndpoints fallback)."""
    ready = tuple(p for p in side.pods if p.ready)
    if ready:
        return ready
    return tuple(p for p in side.pods if p.serving and p.terminating)


def cluster_backends(
    side: ClusterService, info: ClusterInfo, want_port: str | int | None, choice: BackendChoice
) -> Backends:
    """One member's endpoints for one service port and backend choice (``auto`` per the issue's rules)."""
    svc = side.service
    port = select_port(svc, want_port)
    if port is None:
        names = ", ".join(p.name or str(p.port) for p in svc.ports) or "none"
        return Backends(side.cluster, None, reason=f"no port {want_port!r} (ports: {names})")
    kind: BackendKind
    if choice == "auto":
        if info.pods_reachable:
            kind = "pod"
        elif svc.lb_ingress:
            kind = "loadbalancer"
        elif port.node_port:
            kind = "nodeport"
        else:
            return Backends(
                side.cluster, None, reason="pods not reachable and no LoadBalancer IP or NodePort", port=port
            )
    else:
        kind = choice
    eps: tuple[Endpoint, ...]
    if kind == "pod":
        eps = tuple(
            Endpoint(side.cluster, p.address, n, "pod", p.hostname, p.zone)
            for p in usable_pods(side)
            if (n := _pod_port(p, port)) is not None
        )
        reason = "" if eps else "no ready pod endpoints"
    elif kind == "nodeport":
        if not port.node_port:
            return Backends(side.cluster, kind, reason="service has no nodePort", port=port)
        eps = tuple(Endpoint(side.cluster, a, port.node_port, "nodeport") for a in side.node_addresses)
        reason = "" if eps else "no Ready node with a matching address"
    elif kind == "loadbalancer":
        eps = tuple(Endpoint(side.cluster, a, port.port, "loadbalancer") for a in svc.lb_ingress)
        reason = "" if eps else "no LoadBalancer ingress IP"
    else:
        eps = tuple(Endpoint(side.cluster, a, port.port, "clusterip") for a in svc.cluster_ips)
        reason = "" if eps else "headless service has no ClusterIP"
    return Backends(side.cluster, kind, eps, reason, port)
