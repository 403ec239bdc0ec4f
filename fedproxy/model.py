"""Plain frozen values that flow from the member watches to the listeners.

Glossary:
- *member* / *cluster*: one Kubernetes cluster fedproxy watches (``ClusterSnapshot`` holds what it knows).
- *service*: ``namespace/name``; exported when a ServiceExport of that name exists in the member
  (or when it matches the configured label selector).
- *backend kind*: how fedproxy reaches a service in a member: ``pod`` (pod IP x target port),
  ``nodeport`` (node IP x nodePort), ``loadbalancer`` (ingress IP x port), ``clusterip`` (ClusterIP x port).
- *endpoint*: one address:port of one backend kind in one member: what pools pick and health tracks.

Everything here is immutable; a change builds a new value (``dataclasses.replace``). Mappings held in these
values are never mutated after construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

BackendKind = Literal["pod", "nodeport", "loadbalancer", "clusterip"]
BackendChoice = Literal["auto", "pod", "nodeport", "loadbalancer", "clusterip"]
BACKEND_KINDS: tuple[BackendKind, ...] = ("pod", "nodeport", "loadbalancer", "clusterip")

EMPTY: Mapping = MappingProxyType({})


def empty_map() -> Mapping:
    """The shared empty read-only mapping, as a dataclass default_factory."""
    return EMPTY


# Object kinds a ClusterSnapshot holds, by the name discovery and the catalog use.
ObjectKind = Literal["services", "endpointslices", "nodes", "serviceexports", "serviceimports"]
OBJECT_KINDS: tuple[ObjectKind, ...] = ("services", "endpointslices", "nodes", "serviceexports", "serviceimports")


@dataclass(frozen=True, slots=True)
class Locality:
    """Where a member runs (Karmada Cluster spec.region / spec.zone, or the config)."""

    region: str = ""
    zone: str = ""


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> ServiceKey:
        """``"ns/name"`` -> ServiceKey; ValueError when it is not of that form."""
        ns, sep, name = text.partition("/")
        if not sep or not ns or not name or "/" in name:
            raise ValueError(f'"{text}" is not "namespace/name"')
        return cls(ns, name)


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str  # "" when the port is unnamed
    port: int
    protocol: str = "TCP"
    target_port: int | str | None = None
    node_port: int | None = None
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ips: tuple[str, ...] = ()  # empty for headless ("None") and ExternalName
    headless: bool = False
    ports: tuple[ServicePort, ...] = ()
    lb_ingress: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip (hostname-only ingress is ignored)
    labels: Mapping[str, str] = field(default_factory=empty_map)
    annotations: Mapping[str, str] = field(default_factory=empty_map)
    publish_not_ready: bool = False
    created: str = ""  # metadata.creationTimestamp, RFC 3339
    uid: str = ""

    @property
    def key(self) -> ServiceKey:
        return ServiceKey(self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str  # "" when unnamed
    port: int | None
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One entry of EndpointSlice.endpoints (conditions per discovery.k8s.io/v1)."""

    addresses: tuple[str, ...]
    ready: bool = True  # nil means ready, per the API
    serving: bool = True  # nil means "same as ready"
    terminating: bool = False
    hostname: str | None = None
    node_name: str | None = None
    zone: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str  # label kubernetes.io/service-name
    address_type: str = "IPv4"  # IPv4 | IPv6 | FQDN
    ports: tuple[SlicePort, ...] = ()
    endpoints: tuple[SliceEndpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: Mapping[str, tuple[str, ...]] = field(
        default_factory=empty_map
    )  # address type (InternalIP, ExternalIP...) -> addresses
    ready: bool = True
    labels: Mapping[str, str] = field(default_factory=empty_map)


@dataclass(frozen=True, slots=True)
class ServiceExport:
    namespace: str
    name: str
    created: str = ""
    valid: bool = True  # False when the Valid condition is False (e.g. ExternalName service)
    reason: str = ""  # the condition's reason/message when not valid


@dataclass(frozen=True, slots=True)
class ServiceImport:
    namespace: str
    name: str
    type: str = "ClusterSetIP"  # ClusterSetIP | Headless
    ips: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()


NsName = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What fedproxy knows of one member at one moment. Built by discovery, read by the catalog.

    ``connected`` is False once the member's watches have been unhealthy for longer than the grace period;
    ``synced`` is True once every resource kind was listed at least once.
    """

    name: str
    locality: Locality = Locality()
    connected: bool = True
    synced: bool = True
    version: int = 0
    services: Mapping[NsName, Service] = field(default_factory=empty_map)
    endpointslices: Mapping[NsName, EndpointSlice] = field(default_factory=empty_map)
    nodes: Mapping[str, Node] = field(default_factory=empty_map)
    serviceexports: Mapping[NsName, ServiceExport] = field(default_factory=empty_map)
    serviceimports: Mapping[NsName, ServiceImport] = field(default_factory=empty_map)
    error: str = ""  # the last discovery error, for the state view
    last_event: float = 0.0  # monotonic seconds of the last watch event (0 = never)

    def with_objects(self, kind: ObjectKind, objects: Mapping) -> ClusterSnapshot:
        """A copy with the whole mapping of ``kind`` replaced (a relist), version bumped."""
        changes: dict[str, Any] = {kind: MappingProxyType(dict(objects)), "version": self.version + 1}
        return replace(self, **changes)

    def with_object(self, kind: ObjectKind, key: object, obj: object | None) -> ClusterSnapshot:
        """A copy with one object of ``kind`` set (or removed when ``obj`` is None), version bumped."""
        current = dict(getattr(self, kind))
        if obj is None:
            current.pop(key, None)
        else:
            current[key] = obj
        changes: dict[str, Any] = {kind: MappingProxyType(current), "version": self.version + 1}
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address:port of one member that a pool can pick; identity for health is the whole value."""

    cluster: str
    address: str
    port: int
    kind: BackendKind = "pod"
    hostname: str | None = field(default=None, compare=False)
    zone: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.cluster}/{host}:{self.port}"
