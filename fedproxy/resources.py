"""Kubernetes API objects (the JSON a real API server returns) -> model values (pure).

This is where API objects enter: anything missing or odd is either defaulted as the API defines it
(``conditions.ready`` nil means ready) or rejected with a ``ValueError`` naming the field, which discovery
logs and skips; one bad object never stops the others.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from .model import (
    EndpointSlice,
    Node,
    NsName,
    ObjectKind,
    Service,
    ServiceExport,
    ServiceImport,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PUBLISH_NOT_READY_ANNOTATION = "lighthouse.submariner.io/publish-not-ready-addresses"


def _map(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _str_map(value: Any, where: str) -> Mapping[str, str]:
    return MappingProxyType({str(k): str(v) for k, v in _map(value, where).items()})


def _meta(obj: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    meta = _map(obj.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("metadata.name: missing")
    ns = meta.get("namespace") or ""
    if not isinstance(ns, str):
        raise ValueError("metadata.namespace: not a string")
    return ns, name, meta


def _ip(text: Any) -> str | None:
    """A canonical IP string, or None for anything that is not an IP (hostnames, garbage)."""
    if not isinstance(text, str):
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _port_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{where}: not a port number: {value!r}")
    return value


def _service_ports(items: Any, where: str) -> tuple[ServicePort, ...]:
    ports = []
    for i, p in enumerate(_list(items, where)):
        p = _map(p, f"{where}[{i}]")
        node_port = p.get("nodePort")
        ports.append(
            ServicePort(
                name=str(p.get("name") or ""),
                port=_port_number(p.get("port"), f"{where}[{i}].port"),
                protocol=str(p.get("protocol") or "TCP"),
                target_port=p.get("targetPort"),
                node_port=node_port if isinstance(node_port, int) and 0 < node_port < 65536 else None,
                app_protocol=p.get("appProtocol"),
            )
        )
    return tuple(ports)


def parse_service(obj: Mapping[str, Any]) -> Service:
    ns, name, meta = _meta(obj)
    spec = _map(obj.get("spec"), "spec")
    status = _map(obj.get("status"), "status")
    raw_ips = _list(spec.get("clusterIPs"), "spec.clusterIPs") or [spec.get("clusterIP")]
    headless = any(ip == "None" for ip in raw_ips)
    ips = tuple(ip for ip in (_ip(x) for x in raw_ips) if ip)
    lb = _map(status.get("loadBalancer"), "status.loadBalancer")
    ingress = tuple(
        ip
        for ip in (_ip(_map(i, "status.loadBalancer.ingress[]").get("ip")) for i in _list(lb.get("ingress"), ""))
        if ip
    )
    annotations = _str_map(meta.get("annotations"), "metadata.annotations")
    return Service(
        namespace=ns,
        name=name,
        type=str(spec.get("type") or "ClusterIP"),
        cluster_ips=() if headless else ips,
        headless=headless,
        ports=_service_ports(spec.get("ports"), "spec.ports"),
        lb_ingress=ingress,
        labels=_str_map(meta.get("labels"), "metadata.labels"),
        annotations=annotations,
        publish_not_ready=bool(spec.get("publishNotReadyAddresses"))
        or annotations.get(PUBLISH_NOT_READY_ANNOTATION) == "true",
        created=str(meta.get("creationTimestamp") or ""),
        uid=str(meta.get("uid") or ""),
    )


def _condition(conds: Mapping[str, Any], key: str, default: bool) -> bool:
    value = conds.get(key)
    return default if value is None else bool(value)


def parse_endpointslice(obj: Mapping[str, Any]) -> EndpointSlice:
    ns, name, meta = _meta(obj)
    labels = _map(meta.get("labels"), "metadata.labels")
    address_type = str(obj.get("addressType") or "IPv4")
    ports = []
    for i, p in enumerate(_list(obj.get("ports"), "ports")):
        p = _map(p, f"ports[{i}]")
        number = p.get("port")
        ports.append(
            SlicePort(
                name=str(p.get("name") or ""),
                port=number if isinstance(number, int) and 0 < number < 65536 else None,
                protocol=str(p.get("protocol") or "TCP"),
            )
        )
    endpoints = []
    for i, e in enumerate(_list(obj.get("endpoints"), "endpoints")):
        e = _map(e, f"endpoints[{i}]")
        conds = _map(e.get("conditions"), f"endpoints[{i}].conditions")
        ready = _condition(conds, "ready", True)
        addresses = tuple(a for a in (_ip(x) for x in _list(e.get("addresses"), f"endpoints[{i}].addresses")) if a)
        if address_type == "FQDN" or not addresses:
            continue
        endpoints.append(
            SliceEndpoint(
                addresses=addresses,
                ready=ready,
                serving=_condition(conds, "serving", ready),
                terminating=_condition(conds, "terminating", False),
                hostname=e.get("hostname") if isinstance(e.get("hostname"), str) else None,
                node_name=e.get("nodeName") if isinstance(e.get("nodeName"), str) else None,
                zone=e.get("zone") if isinstance(e.get("zone"), str) else None,
            )
        )
    return EndpointSlice(
        namespace=ns,
        name=name,
        service=str(labels.get(SERVICE_NAME_LABEL) or ""),
        address_type=address_type,
        ports=tuple(ports),
        endpoints=tuple(endpoints),
    )


def parse_node(obj: Mapping[str, Any]) -> Node:
    _, name, meta = _meta(obj)
    status = _map(obj.get("status"), "status")
    addresses: dict[str, list[str]] = {}
    for a in _list(status.get("addresses"), "status.addresses"):
        a = _map(a, "status.addresses[]")
        ip = _ip(a.get("address"))
        if ip:
            addresses.setdefault(str(a.get("type") or ""), []).append(ip)
    ready = False
    for c in _list(status.get("conditions"), "status.conditions"):
        c = _map(c, "status.conditions[]")
        if c.get("type") == "Ready":
            ready = c.get("status") == "True"
    return Node(
        name=name,
        addresses=MappingProxyType({k: tuple(v) for k, v in addresses.items()}),
        ready=ready,
        labels=_str_map(meta.get("labels"), "metadata.labels"),
    )


def parse_serviceexport(obj: Mapping[str, Any]) -> ServiceExport:
    ns, name, meta = _meta(obj)
    status = _map(obj.get("status"), "status")
    valid, reason = True, ""
    for c in _list(status.get("conditions"), "status.conditions"):
        c = _map(c, "status.conditions[]")
        if c.get("type") == "Valid" and c.get("status") == "False":
            valid, reason = False, str(c.get("message") or c.get("reason") or "export is not valid")
    return ServiceExport(
        namespace=ns, name=name, created=str(meta.get("creationTimestamp") or ""), valid=valid, reason=reason
    )


def parse_serviceimport(obj: Mapping[str, Any]) -> ServiceImport:
    ns, name, _ = _meta(obj)
    spec = _map(obj.get("spec"), "spec")
    ips = tuple(ip for ip in (_ip(x) for x in _list(spec.get("ips"), "spec.ips")) if ip)
    return ServiceImport(
        namespace=ns,
        name=name,
        type=str(spec.get("type") or "ClusterSetIP"),
        ips=ips,
        ports=_service_ports(spec.get("ports"), "spec.ports"),
    )


PARSERS: Mapping[ObjectKind, Callable[[Mapping[str, Any]], Any]] = {
    "services": parse_service,
    "endpointslices": parse_endpointslice,
    "nodes": parse_node,
    "serviceexports": parse_serviceexport,
    "serviceimports": parse_serviceimport,
}


def object_key(kind: ObjectKind, value: Any) -> NsName | str:
    """The key a ClusterSnapshot stores a parsed object under."""
    if kind == "nodes":
        return value.name
    return (value.namespace, value.name)


def parse(kind: ObjectKind, obj: Any) -> tuple[NsName | str, Any]:
    """Parse one API object of ``kind``; ValueError (naming the field) when it cannot be used."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{kind}: expected an object, got {type(obj).__name__}")
    try:
        value = PARSERS[kind](obj)
    except (TypeError, AttributeError) as exc:  # odd shapes deep inside: still a clear, bounded error
        raise ValueError(f"{kind}: malformed object: {exc}") from None
    return object_key(kind, value), value
