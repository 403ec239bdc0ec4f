"""What the catalog holds: members as the serving side sees them, and each exported service's sides (pure).

Plain frozen values, built by :func:`.catalog.build_catalog` and read by balancing, DNS and the admin view.
A ``Catalog`` is replaced, never edited; a rebuild keeps the ``CatalogService`` objects of the services that
did not change (:class:`.catalog_memo.CatalogMemo`), so readers can tell what changed by identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .model import Locality, Service, ServiceExport, ServiceImport, ServiceKey, ServicePort, empty_map

__all__ = ["Catalog", "CatalogService", "ClusterInfo", "ClusterService", "Pod"]


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
