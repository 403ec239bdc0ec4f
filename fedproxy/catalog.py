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

Modules: the values are in :mod:`.catalog_model`, the memo that makes a rebuild cost what changed (issue 9) in
:mod:`.catalog_memo`; this one applies the export and MCS rules and builds. Import from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from .catalog_memo import CatalogMemo, MemberContext, MemberMemo, same_objects
from .catalog_model import Catalog, CatalogService, ClusterInfo, ClusterService, Pod
from .config import ClusterConfig, Config
from .labels import Selector, parse_selector
from .model import ClusterSnapshot, Locality, NsName, ServiceKey, ServicePort

__all__ = [
    "Catalog",
    "CatalogMemo",
    "CatalogService",
    "ClusterInfo",
    "ClusterService",
    "Pod",
    "build_catalog",
    "cluster_info",
]


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
    ctx = MemberContext(
        export.mode == "label",
        parse_selector(export.selector) if export.selector else Selector(),
        parse_selector(nodeports.node_selector),
        nodeports.address_type,
    )
    infos: dict[str, ClusterInfo] = {}
    todo: set[NsName] = set()
    members: dict[str, MemberMemo] = {}
    for snap in snaps:
        infos[snap.name] = cluster_info(snap, config.cluster(snap.name))
        member = memo.members.get(snap.name) or MemberMemo()
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
        elif old is None or not same_objects(old[0], group):
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
