"""The demo topology as data, and the objects each member's API server holds for it.

Pure (the runner that starts servers is `fedproxy.sim.topology.Topology`). Every address is loopback, so the whole
federation runs on one machine with real sockets:

    pods            127.0.<c>.<n>     c = cluster index from 1, n = pod index from 1
    ClusterIPs      127.1.<c>.<n>     n = service index from 1
    node IPs        127.2.<c>.<n>     n = node index from 1
    LoadBalancer    127.3.<c>.<n>     n = index among LoadBalancer services, from 1

All service, target and node ports are shifted by `port_offset`, in the objects and in the listeners alike,
so two topologies (the demo and a test run) can coexist on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fedproxy.sim import objects

NAMESPACE = "demo"


@dataclass(frozen=True)
class ServiceSpec:
    """One demo Service; `protocol` says which echo backend the pods run for it."""

    name: str
    protocol: Literal["http", "tcp", "grpc"]
    port: int
    port_name: str
    target_port: int
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    node_port: int | None = None
    exported: bool = True


@dataclass(frozen=True)
class ClusterSpec:
    """One member cluster; `local` marks the member fedproxy runs in (prefers it in locality tiers)."""

    name: str
    index: int
    region: str
    zone: str
    pods: int
    nodes: int = 2
    local: bool = False


DEMO_CLUSTERS: tuple[ClusterSpec, ...] = (
    ClusterSpec("east-1", 1, "us-east", "us-east-1a", pods=2, local=True),
    ClusterSpec("east-2", 2, "us-east", "us-east-1b", pods=2),
    ClusterSpec("west-1", 3, "us-west", "us-west-1a", pods=3),
)

DEMO_SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("nginx", "http", 80, "http", 8080, type="NodePort", node_port=30080),
    ServiceSpec("echo", "tcp", 7, "tcp-echo", 7007),
    ServiceSpec("web", "http", 80, "http", 8081, type="LoadBalancer", node_port=30081),
)
# The demo's gRPC service (h2c pods, fedproxy.sim.grpc_backend); `fedproxy demo` adds it to DEMO_SERVICES.
DEMO_GRPC = ServiceSpec("grpc", "grpc", 9090, "grpc", 9091)


@dataclass(frozen=True)
class Addressing:
    """The loopback address plan and port offset of one topology instance."""

    port_offset: int = 0

    def port(self, port: int) -> int:
        shifted = port + self.port_offset
        if not 0 < shifted < 65536:
            raise ValueError(f"port {port} + offset {self.port_offset} is outside 1..65535")
        return shifted

    @staticmethod
    def pod_ip(cluster: ClusterSpec, n: int) -> str:
        return f"127.0.{cluster.index}.{n}"

    @staticmethod
    def cluster_ip(cluster: ClusterSpec, service_index: int) -> str:
        return f"127.1.{cluster.index}.{service_index + 1}"

    @staticmethod
    def node_ip(cluster: ClusterSpec, n: int) -> str:
        return f"127.2.{cluster.index}.{n}"

    @staticmethod
    def lb_ip(cluster: ClusterSpec, lb_index: int) -> str:
        return f"127.3.{cluster.index}.{lb_index + 1}"


def node_name(cluster: ClusterSpec, n: int) -> str:
    return f"{cluster.name}-node-{n}"


def pod_node(cluster: ClusterSpec, pod_index: int) -> int:
    """Pods are spread round-robin over the nodes, as a scheduler with spreading would."""
    return (pod_index - 1) % cluster.nodes + 1


def lb_index(services: tuple[ServiceSpec, ...], svc: ServiceSpec) -> int:
    return [s.name for s in services if s.type == "LoadBalancer"].index(svc.name)


@dataclass(frozen=True)
class PodState:
    """What the EndpointSlices say about one pod."""

    name: str
    index: int
    ready: bool = True


def service_object(
    cluster: ClusterSpec, services: tuple[ServiceSpec, ...], svc: ServiceSpec, addr: Addressing
) -> dict[str, Any]:
    i = services.index(svc)
    port: dict[str, Any] = {
        "name": svc.port_name,
        "port": addr.port(svc.port),
        "targetPort": addr.port(svc.target_port),
    }
    if svc.node_port:
        port["nodePort"] = addr.port(svc.node_port)
    if svc.protocol == "grpc":
        port["appProtocol"] = "kubernetes.io/h2c"
    lb = [addr.lb_ip(cluster, lb_index(services, svc))] if svc.type == "LoadBalancer" else []
    return objects.service(
        NAMESPACE,
        svc.name,
        type=svc.type,
        cluster_ip=addr.cluster_ip(cluster, i),
        ports=[port],
        lb_ingress=lb,
        labels={"app": svc.name},
        selector={"app": svc.name},
    )


def slice_object(cluster: ClusterSpec, svc: ServiceSpec, pods: list[PodState], addr: Addressing) -> dict[str, Any]:
    """The one EndpointSlice of `svc` in `cluster`, listing every pod with its readiness."""
    endpoints = [
        objects.endpoint(
            [addr.pod_ip(cluster, p.index)],
            ready=p.ready,
            node_name=node_name(cluster, pod_node(cluster, p.index)),
            zone=cluster.zone,
            pod_name=f"{svc.name}-{p.name}",
            namespace=NAMESPACE,
        )
        for p in sorted(pods, key=lambda p: p.index)
    ]
    return objects.endpoint_slice(
        NAMESPACE,
        f"{svc.name}-{cluster.name}",
        svc.name,
        ports=[{"name": svc.port_name, "port": addr.port(svc.target_port)}],
        endpoints=endpoints,
    )


def cluster_objects(
    cluster: ClusterSpec, services: tuple[ServiceSpec, ...], pods: list[PodState], addr: Addressing
) -> list[dict[str, Any]]:
    """Everything a member's API server holds at start: namespace, nodes, services, slices, exports."""
    out: list[dict[str, Any]] = [objects.namespace(NAMESPACE)]
    for n in range(1, cluster.nodes + 1):
        out.append(
            objects.node(
                node_name(cluster, n),
                addr.node_ip(cluster, n),
                region=cluster.region,
                zone=cluster.zone,
            )
        )
    for svc in services:
        out.append(service_object(cluster, services, svc, addr))
        out.append(slice_object(cluster, svc, pods, addr))
        if svc.exported:
            out.append(objects.service_export(NAMESPACE, svc.name))
    return out
