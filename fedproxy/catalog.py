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
    EMPTY,
    ClusterSnapshot,
    EndpointSlice,
    Locality,
    NsName,
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


def _slice_ports(sl: EndpointSlice) -> Mapping[str, int]:
    return MappingProxyType({p.name: p.port for p in sl.ports if p.port is not None})


def _pods(slices: tuple[EndpointSlice, ...]) -> tuple[Pod, ...]:
    """The pods of one service's slices (given in slice-key order), de-duplicated and sorted by address."""
    merged: dict[str, Pod] = {}
    for sl in slices:
        if sl.address_type not in ("IPv4", "IPv6"):
            continue
        ports = _slice_ports(sl)  # one mapping per slice shared by its pods, not one per pod
        for ep in sl.endpoints:
            for address in ep.addresses:
                old = merged.get(address)
                if old is None:
                    merged[address] = Pod(address, ports, ep.ready, ep.serving, ep.terminating, ep.hostname, ep.zone)
                else:
                    # The same pod in two slices (during a slice rotation): keep the readier view and all ports.
                    merged[address] = Pod(
                        address,
                        MappingProxyType({**old.ports, **ports}),
                        old.ready or ep.ready,
                        old.serving or ep.serving,
                        old.terminating and ep.terminating,
                        old.hostname or ep.hostname,
                        old.zone or ep.zone,
                    )
    return tuple(merged[a] for a in sorted(merged, key=_ip_sort_key))


def _ip_sort_key(address: str) -> tuple[int, int]:
    """(family, integer value); dotted quads parsed by hand (ipaddress was most of a cold build)."""
    if ":" not in address:
        parts = address.split(".")
        if len(parts) == 4:
            try:
                a, b, c, d = map(int, parts)
                return (4, (a << 24) | (b << 16) | (c << 8) | d)
            except ValueError:
                pass
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


def _node_addresses(snapshot: ClusterSnapshot, selector: Selector, address_type: str) -> tuple[str, ...]:
    out: list[str] = []
    for _, node in sorted(snapshot.nodes.items()):
        if node.ready and selector.matches(node.labels):
            out.extend(node.addresses.get(address_type, ()))
    return tuple(out)


def _changed_keys(old: Mapping, new: Mapping) -> set:
    """Keys whose value is not the same object in both mappings (unchanged objects keep their identity)."""
    changed = {k for k, v in new.items() if old.get(k) is not v}
    changed.update(k for k in old if k not in new)
    return changed


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True, slots=True)
class _Context:
    """The config a member's sides depend on."""

    label_mode: bool
    selector: Selector
    node_selector: Selector
    address_type: str


_KINDS = ("services", "endpointslices", "nodes", "serviceexports", "serviceimports")


class _MemberMemo:
    """One member's exported sides, kept between builds and updated from what changed in its snapshot."""

    __slots__ = ("seen", "slices", "by_service", "node_addresses", "sides")

    def __init__(self) -> None:
        self.seen: tuple[Mapping, ...] = (EMPTY,) * len(_KINDS)  # the snapshot mappings last built from
        self.slices: dict[NsName, dict[NsName, EndpointSlice]] = {}  # service -> slice key -> slice
        self.by_service: dict[NsName, tuple[EndpointSlice, ...]] = {}  # service -> its slices in key order
        self.node_addresses: tuple[str, ...] = ()
        self.sides: dict[NsName, tuple[tuple[EndpointSlice, ...], ClusterService]] = {}  # exported only

    def update(self, snap: ClusterSnapshot, ctx: _Context) -> set[NsName]:
        """Bring the sides up to date with ``snap``; returns the services whose side was added, replaced or removed."""
        now = tuple(getattr(snap, kind) for kind in _KINDS)
        if _same(now, self.seen):
            return set()
        services, slices, nodes, exports, imports = now
        old_services, old_slices, old_nodes, old_exports, old_imports = self.seen
        self.seen = now
        todo: set[NsName] = set()
        if slices is not old_slices:
            regroup: set[NsName] = set()
            for key in _changed_keys(old_slices, slices):
                before, after = old_slices.get(key), slices.get(key)
                if before is not None:
                    regroup.add((key[0], before.service))
                    self.slices.get((key[0], before.service), {}).pop(key, None)
                if after is not None:
                    regroup.add((key[0], after.service))
                    self.slices.setdefault((key[0], after.service), {})[key] = after
            for svc_key in regroup:
                group = self.slices.get(svc_key)
                if group:
                    self.by_service[svc_key] = tuple(group[k] for k in sorted(group))
                else:
                    self.slices.pop(svc_key, None)
                    self.by_service.pop(svc_key, None)
            todo |= regroup
        if nodes is not old_nodes:
            addresses = _node_addresses(snap, ctx.node_selector, ctx.address_type)
            if addresses != self.node_addresses:
                self.node_addresses = addresses
                todo.update(services)  # every side carries the node addresses (removed ones are in the diff below)
        for new, old in ((services, old_services), (exports, old_exports), (imports, old_imports)):
            if new is not old:
                todo |= _changed_keys(old, new)
        changed: set[NsName] = set()
        for key in todo:
            old_entry = self.sides.get(key)
            entry = self._side(snap, key, ctx, old_entry)
            if entry is old_entry:
                continue
            changed.add(key)
            if entry is None:
                del self.sides[key]
            else:
                self.sides[key] = entry
        return changed

    def _side(
        self,
        snap: ClusterSnapshot,
        key: NsName,
        ctx: _Context,
        old: tuple[tuple[EndpointSlice, ...], ClusterService] | None,
    ) -> tuple[tuple[EndpointSlice, ...], ClusterService] | None:
        svc = snap.services.get(key)
        if svc is None:
            return None
        export = snap.serviceexports.get(key)
        if ctx.label_mode:
            if not ctx.selector.matches(svc.labels):
                return None
        elif export is None:
            return None
        slices = self.by_service.get(key, ())
        imported = snap.serviceimports.get(key)
        if old is not None and old[0] is slices:
            side = old[1]
            inputs = (side.service, side.export, side.service_import, side.node_addresses)
            if _same(inputs, (svc, export, imported, self.node_addresses)):
                return old
            pods = side.pods
        else:
            pods = _pods(slices)
        return slices, ClusterService(snap.name, svc, export, pods, self.node_addresses, imported)


class CatalogMemo:
    """What :func:`build_catalog` keeps between builds so that a rebuild costs what changed (issue 9).

    Owned by the caller (one per stream of builds) and passed explicitly: builds stay pure functions of their
    arguments. Discovery replaces a snapshot's mappings on change and unchanged objects keep their identity,
    so a member's side of a service is rebuilt only when its Service, export, import, slices or node addresses
    are other objects, and a service is merged again only when one of its sides is another object (unchanged
    services keep their CatalogService object). Results equal a build without a memo.
    """

    __slots__ = ("context", "members", "merged")

    def __init__(self) -> None:
        self.context: tuple = ()  # the config the members' sides were built with
        self.members: dict[str, _MemberMemo] = {}
        self.merged: dict[ServiceKey, tuple[tuple[ClusterService, ...], CatalogService]] = {}  # sorted by key


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


def build_catalog(
    snapshots: Iterable[ClusterSnapshot], config: Config, version: int = 0, memo: CatalogMemo | None = None
) -> Catalog:
    """Every member's snapshot + the config -> the Catalog. Pure; a cold build is linear in the objects.

    ``memo``: the caller's :class:`CatalogMemo`, read and updated: a build then costs about what changed since
    the last one (plus an identity pass over the mappings that changed).
    """
    memo = memo if memo is not None else CatalogMemo()
    snaps = sorted(snapshots, key=lambda s: s.name)
    export, nodeports = config.clusterset.export, config.nodeports
    context = (export.mode, export.selector, nodeports.node_selector, nodeports.address_type)
    if memo.context != context:
        memo.context, memo.members, memo.merged = context, {}, {}
    ctx = _Context(
        export.mode == "label",
        parse_selector(export.selector) if export.selector else Selector(),
        parse_selector(nodeports.node_selector),
        nodeports.address_type,
    )
    infos: dict[str, ClusterInfo] = {}
    todo: set[NsName] = set()
    members: dict[str, _MemberMemo] = {}
    for snap in snaps:
        infos[snap.name] = cluster_info(snap, config.cluster(snap.name))
        member = memo.members.get(snap.name) or _MemberMemo()
        todo |= member.update(snap, ctx)
        members[snap.name] = member
    for name, gone in memo.members.items():
        if name not in members:
            todo.update(gone.sides)
    memo.members = members
    merged = memo.merged
    resort = False
    for ns, name in todo:
        key = ServiceKey(ns, name)
        group = tuple(m.sides[(ns, name)][1] for m in members.values() if (ns, name) in m.sides)
        old = merged.get(key)
        if not group:
            merged.pop(key, None)
        elif old is None or not _same(old[0], group):
            resort = resort or old is None
            merged[key] = (group, _merge(key, list(group)))
    if resort:
        memo.merged = merged = dict(sorted(merged.items()))
    local = next((n for n, i in infos.items() if i.local), config.local_cluster)
    return Catalog(
        version=version,
        clusters=MappingProxyType(infos),
        services=MappingProxyType({key: svc for key, (_, svc) in merged.items()}),
        domain=config.clusterset.domain,
        local=local,
    )
