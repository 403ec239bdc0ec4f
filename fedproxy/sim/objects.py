"""Builders for Kubernetes objects as a real API server returns them (JSON dicts).

Pure. Only the fields fedproxy (and the real controllers it stands in for) read are filled in; server-owned
metadata (uid, resourceVersion, creationTimestamp, generation) is stamped by the store on write. Shapes
follow core/v1, discovery.k8s.io/v1, multicluster.x-k8s.io/v1alpha1 (KEP-1645) and cluster.karmada.io.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, Literal

Obj = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
# The value the in-tree EndpointSlice controller writes.
MANAGED_BY_CONTROLLER = "endpointslice-controller.k8s.io"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"


def _meta(namespace: str | None, name: str, labels: Mapping[str, str] | None = None, **extra: Any) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    meta.update({k: v for k, v in extra.items() if v})
    return meta


def _ip_family(ip: str) -> str:
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def service(
    namespace: str,
    name: str,
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP",
    cluster_ip: str | None = None,
    ports: Sequence[Mapping[str, Any]] = (),
    lb_ingress: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    selector: Mapping[str, str] | None = None,
    publish_not_ready: bool = False,
    headless: bool = False,
    ip_families: Sequence[str] | None = None,
    annotations: Mapping[str, str] | None = None,
    external_name: str | None = None,
) -> Obj:
    """A v1 Service. `ports` items: name, port, targetPort (default port), protocol (default TCP), nodePort.

    Headless services get clusterIP "None"; NodePort and LoadBalancer ports need a nodePort.
    """
    cluster_ips = ["None"] if headless else ([cluster_ip] if cluster_ip else [])
    spec: Obj = {"type": type, "sessionAffinity": "None", "internalTrafficPolicy": "Cluster"}
    if type != "ExternalName":
        spec["clusterIP"] = cluster_ips[0] if cluster_ips else ""
        spec["clusterIPs"] = cluster_ips
        families = list(ip_families) if ip_families else [_ip_family(cluster_ip or "0.0.0.0")]
        spec["ipFamilies"] = families
        spec["ipFamilyPolicy"] = "SingleStack" if len(families) == 1 else "PreferDualStack"
    else:
        spec["externalName"] = external_name or ""
    out_ports = []
    for p in ports:
        port: Obj = {
            "protocol": p.get("protocol", "TCP"),
            "port": int(p["port"]),
            "targetPort": p.get("targetPort", p["port"]),
        }
        if p.get("name"):
            port["name"] = p["name"]
        if p.get("appProtocol"):
            port["appProtocol"] = p["appProtocol"]
        if type in ("NodePort", "LoadBalancer"):
            if not p.get("nodePort"):
                raise ValueError(f"service {namespace}/{name}: {type} port {p['port']} needs a nodePort")
            port["nodePort"] = int(p["nodePort"])
        out_ports.append(port)
    if out_ports:
        spec["ports"] = out_ports
    if selector:
        spec["selector"] = dict(selector)
    if publish_not_ready:
        spec["publishNotReadyAddresses"] = True
    if type in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = "Cluster"
    status: Obj = {"loadBalancer": {}}
    if lb_ingress:
        status["loadBalancer"]["ingress"] = [{"ip": ip, "ipMode": "VIP"} for ip in lb_ingress]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(namespace, name, labels, annotations=dict(annotations or {})),
        "spec": spec,
        "status": status,
    }


def endpoint(
    addresses: Sequence[str],
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    hostname: str | None = None,
    node_name: str | None = None,
    zone: str | None = None,
    pod_name: str | None = None,
    namespace: str | None = None,
) -> Obj:
    """One EndpointSlice endpoint; `serving` defaults to `ready` as the controller sets it."""
    ep: Obj = {
        "addresses": list(addresses),
        "conditions": {
            "ready": ready,
            "serving": ready if serving is None else serving,
            "terminating": terminating,
        },
    }
    if hostname:
        ep["hostname"] = hostname
    if node_name:
        ep["nodeName"] = node_name
    if zone:
        ep["zone"] = zone
    if pod_name:
        ep["targetRef"] = {"kind": "Pod", "name": pod_name, "namespace": namespace}
    return ep


def endpoint_slice(
    namespace: str,
    name: str,
    service_name: str,
    address_type: Literal["IPv4", "IPv6", "FQDN"] = "IPv4",
    ports: Sequence[Mapping[str, Any]] = (),
    endpoints: Sequence[Mapping[str, Any]] = (),
    labels: Mapping[str, str] | None = None,
    managed_by: str = MANAGED_BY_CONTROLLER,
) -> Obj:
    """A discovery.k8s.io/v1 EndpointSlice. `ports` items: name, port, protocol (TCP), appProtocol.

    `endpoints` items are dicts as `endpoint()` builds; missing conditions default to ready/serving.
    """
    all_labels = {SERVICE_NAME_LABEL: service_name, MANAGED_BY_LABEL: managed_by, **(labels or {})}
    eps = []
    for e in endpoints:
        ep = dict(e)
        cond = dict(ep.get("conditions") or {})
        cond.setdefault("ready", True)
        cond.setdefault("serving", cond["ready"])
        cond.setdefault("terminating", False)
        ep["conditions"] = cond
        eps.append(ep)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _meta(namespace, name, all_labels),
        "addressType": address_type,
        "endpoints": eps,
        "ports": [
            {
                k: v
                for k, v in {
                    "name": p.get("name", ""),
                    "port": int(p["port"]),
                    "protocol": p.get("protocol", "TCP"),
                    "appProtocol": p.get("appProtocol"),
                }.items()
                if v is not None
            }
            for p in ports
        ],
    }


def node(
    name: str,
    internal_ip: str,
    external_ip: str | None = None,
    ready: bool = True,
    region: str | None = None,
    zone: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Obj:
    """A v1 Node with addresses, a Ready condition and topology labels."""
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if region:
        all_labels[REGION_LABEL] = region
    if zone:
        all_labels[ZONE_LABEL] = zone
    all_labels.update(labels or {})
    addresses = [{"type": "InternalIP", "address": internal_ip}]
    if external_ip:
        addresses.append({"type": "ExternalIP", "address": external_ip})
    addresses.append({"type": "Hostname", "address": name})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _meta(None, name, all_labels),
        "spec": {},
        "status": {
            "addresses": addresses,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "KubeletReady" if ready else "KubeletNotReady",
                    "message": "kubelet is posting ready status" if ready else "kubelet stopped posting",
                    "lastHeartbeatTime": "2024-01-01T00:00:00Z",
                    "lastTransitionTime": "2024-01-01T00:00:00Z",
                }
            ],
        },
    }


def _condition(type_: str, ok: bool, reason: str, message: str = "") -> Obj:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2024-01-01T00:00:00Z",
    }


def service_export(
    namespace: str,
    name: str,
    conditions: Sequence[Mapping[str, Any]] | None = None,
    valid: bool = True,
    conflict: bool = False,
) -> Obj:
    """A multicluster.x-k8s.io/v1alpha1 ServiceExport; default conditions Valid (and Conflict) per KEP-1645."""
    if conditions is None:
        conditions = [
            _condition("Valid", valid, "ServiceExported" if valid else "ServiceNotFound"),
            _condition("Conflict", conflict, "ConflictDetected" if conflict else "NoConflicts"),
        ]
    return {
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceExport",
        "metadata": _meta(namespace, name),
        "status": {"conditions": [dict(c) for c in conditions]},
    }


def service_import(
    namespace: str,
    name: str,
    ips: Sequence[str] = (),
    type: Literal["ClusterSetIP", "Headless"] = "ClusterSetIP",
    ports: Sequence[Mapping[str, Any]] = (),
    clusters: Sequence[str] = (),
) -> Obj:
    """A multicluster.x-k8s.io/v1alpha1 ServiceImport; `clusters` fills status.clusters."""
    spec: Obj = {
        "type": type,
        "ports": [
            {"name": p.get("name", ""), "port": int(p["port"]), "protocol": p.get("protocol", "TCP")} for p in ports
        ],
    }
    if ips:
        spec["ips"] = list(ips)
    obj: Obj = {
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": _meta(namespace, name),
        "spec": spec,
    }
    if clusters:
        obj["status"] = {"clusters": [{"cluster": c} for c in clusters]}
    return obj


def karmada_cluster(
    name: str,
    api_endpoint: str,
    secret_ns: str,
    secret_name: str,
    region: str | None = None,
    zone: str | None = None,
    ready: bool = True,
    insecure_skip_tls_verification: bool = False,
) -> Obj:
    """A cluster.karmada.io/v1alpha1 Cluster in Push mode; the secret holds `token` and `caBundle`."""
    spec: Obj = {
        "apiEndpoint": api_endpoint,
        "secretRef": {"namespace": secret_ns, "name": secret_name},
        "syncMode": "Push",
        "insecureSkipTLSVerification": insecure_skip_tls_verification,
    }
    if region:
        spec["region"] = region
    if zone:
        spec["zone"] = zone
    return {
        "apiVersion": "cluster.karmada.io/v1alpha1",
        "kind": "Cluster",
        "metadata": _meta(None, name),
        "spec": spec,
        "status": {
            "kubernetesVersion": "v1.30.0",
            "conditions": [
                _condition(
                    "Ready",
                    ready,
                    "ClusterReady" if ready else "ClusterNotReachable",
                    "cluster is healthy and ready to accept workloads" if ready else "cluster is not reachable",
                )
            ],
        },
    }


def secret(namespace: str, name: str, data: Mapping[str, bytes], type: str = "Opaque") -> Obj:
    """A v1 Secret; values are base64-encoded into `data` as the API returns them."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(namespace, name),
        "type": type,
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def tls_secret(namespace: str, name: str, cert_pem: bytes, key_pem: bytes) -> Obj:
    """A kubernetes.io/tls Secret (what cert-manager writes): the PEM chain in `tls.crt`, the key in `tls.key`."""
    return secret(namespace, name, {"tls.crt": cert_pem, "tls.key": key_pem}, type="kubernetes.io/tls")


def configmap(namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str] | None = None) -> Obj:
    """A v1 ConfigMap."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(namespace, name, labels),
        "data": dict(data),
    }


def namespace(name: str, labels: Mapping[str, str] | None = None) -> Obj:
    """A v1 Namespace (Active)."""
    all_labels = {"kubernetes.io/metadata.name": name, **(labels or {})}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": _meta(None, name, all_labels),
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }
