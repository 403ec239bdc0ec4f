"""The catalog's incremental memo: each member's exported sides, kept between builds (pure; issue 9).

Theory of operation. Discovery replaces a snapshot's mappings on change and unchanged objects keep their
identity. :class:`MemberMemo` remembers, per member, the snapshot mappings it last built from, the
EndpointSlices grouped by service, the selected node addresses and every exported side; on the next build it
looks only at the keys whose objects are other objects (:func:`changed_keys`) and rebuilds only those sides
(a side keeps its pods when its slices are the same objects). :class:`CatalogMemo` holds the members and the
merged services; :func:`.catalog.build_catalog` merges a service again only when one of its sides is another
object, so results equal a build without a memo.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .catalog_model import CatalogService, ClusterService, Pod
from .labels import Selector
from .model import EMPTY, ClusterSnapshot, EndpointSlice, NsName, ServiceKey

__all__ = ["CatalogMemo", "MemberContext", "MemberMemo", "changed_keys", "same_objects"]


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


def changed_keys(old: Mapping, new: Mapping) -> set:
    """Keys whose value is not the same object in both mappings (unchanged objects keep their identity)."""
    changed = {k for k, v in new.items() if old.get(k) is not v}
    changed.update(k for k in old if k not in new)
    return changed


def same_objects(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True, slots=True)
class MemberContext:
    """The config a member's sides depend on."""

    label_mode: bool
    selector: Selector
    node_selector: Selector
    address_type: str


_KINDS = ("services", "endpointslices", "nodes", "serviceexports", "serviceimports")


class MemberMemo:
    """One member's exported sides, kept between builds and updated from what changed in its snapshot."""

    __slots__ = ("seen", "slices", "by_service", "node_addresses", "sides")

    def __init__(self) -> None:
        self.seen: tuple[Mapping, ...] = (EMPTY,) * len(_KINDS)  # the snapshot mappings last built from
        self.slices: dict[NsName, dict[NsName, EndpointSlice]] = {}  # service -> slice key -> slice
        self.by_service: dict[NsName, tuple[EndpointSlice, ...]] = {}  # service -> its slices in key order
        self.node_addresses: tuple[str, ...] = ()
        self.sides: dict[NsName, tuple[tuple[EndpointSlice, ...], ClusterService]] = {}  # exported only

    def update(self, snap: ClusterSnapshot, ctx: MemberContext) -> set[NsName]:
        """Bring the sides up to date with ``snap``; returns the services whose side was added, replaced or removed."""
        now = tuple(getattr(snap, kind) for kind in _KINDS)
        if same_objects(now, self.seen):
            return set()
        services, slices, nodes, exports, imports = now
        old_services, old_slices, old_nodes, old_exports, old_imports = self.seen
        self.seen = now
        todo: set[NsName] = set()
        if slices is not old_slices:
            regroup: set[NsName] = set()
            for key in changed_keys(old_slices, slices):
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
                todo |= changed_keys(old, new)
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
        ctx: MemberContext,
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
            if same_objects(inputs, (svc, export, imported, self.node_addresses)):
                return old
            pods = side.pods
        else:
            pods = _pods(slices)
        return slices, ClusterService(snap.name, svc, export, pods, self.node_addresses, imported)


class CatalogMemo:
    """What :func:`.catalog.build_catalog` keeps between builds so that a rebuild costs what changed (issue 9).

    Owned by the caller (one per stream of builds) and passed explicitly: builds stay pure functions of their
    arguments. Discovery replaces a snapshot's mappings on change and unchanged objects keep their identity,
    so a member's side of a service is rebuilt only when its Service, export, import, slices or node addresses
    are other objects, and a service is merged again only when one of its sides is another object (unchanged
    services keep their CatalogService object). Results equal a build without a memo.
    """

    __slots__ = ("context", "members", "merged")

    def __init__(self) -> None:
        self.context: tuple = ()  # the config the members' sides were built with
        self.members: dict[str, MemberMemo] = {}
        self.merged: dict[ServiceKey, tuple[tuple[ClusterService, ...], CatalogService]] = {}  # sorted by key
