"""`Topology`: runs the demo federation (data in `layout`) with real API servers and real backends.

Per member: one `FakeApiServer` and, on loopback addresses, every backend kind a proxy may pick:
each pod's echo servers on its pod IP and target port, and backends standing in for kube-proxy on each
ClusterIP:port, nodeIP:nodePort and LoadBalancer IP:port, answering as that cluster. With `karmada=True`
one more server holds Karmada Cluster objects and their Secrets pointing at the members.

Ports: all service ports are shifted by `port_offset` (objects and listeners alike). The demo uses 0; test
runs pick another offset (e.g. 20000) so a running demo and the tests never collide. API servers always use
ephemeral ports on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.backends import HttpEcho, TcpEcho
from fedproxy.sim.grpc_backend import GrpcEcho
from fedproxy.sim.kubeconfig import write_kubeconfig
from fedproxy.sim.layout import (
    DEMO_CLUSTERS,
    DEMO_GRPC,
    DEMO_SERVICES,
    NAMESPACE,
    Addressing,
    ClusterSpec,
    PodState,
    ServiceSpec,
    cluster_objects,
    lb_index,
    slice_object,
)

__all__ = ["DEMO_CLUSTERS", "DEMO_GRPC", "DEMO_SERVICES", "NAMESPACE", "Member", "Topology"]

KARMADA_NAME = "karmada"
KARMADA_SECRET_NAMESPACE = "karmada-cluster"


class Backend(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class Pod:
    state: PodState
    backends: list[Backend] = field(default_factory=list)
    running: bool = False


@dataclass
class Member:
    """One running member cluster: its spec, API server, pods and kube-proxy stand-ins."""

    spec: ClusterSpec
    server: FakeApiServer
    pods: dict[str, Pod] = field(default_factory=dict)
    service_backends: list[Backend] = field(default_factory=list)
    next_pod: int = 1


def _backend(svc: ServiceSpec, host: str, port: int, cluster: str, who: str) -> Backend:
    if svc.protocol == "http":
        return HttpEcho(host, port, cluster=cluster, pod=who)
    if svc.protocol == "grpc":
        return GrpcEcho(host, port, cluster=cluster, pod=who)
    return TcpEcho(host, port, prefix=f"{cluster}/{who}\n".encode())


async def _start_all(backends: Iterable[Backend]) -> None:
    await asyncio.gather(*(b.start() for b in backends))


async def _stop_all(backends: Iterable[Backend]) -> None:
    await asyncio.gather(*(b.stop() for b in backends))


class Topology:
    """The demo federation. `start()` brings everything up; `stop()` takes it all down."""

    def __init__(
        self,
        clusters: tuple[ClusterSpec, ...] = DEMO_CLUSTERS,
        services: tuple[ServiceSpec, ...] = DEMO_SERVICES,
        port_offset: int = 0,
        tls: bool = False,
        karmada: bool = False,
        bookmark_interval: float = 60.0,
    ) -> None:
        self.clusters, self.services = clusters, services
        self.addr = Addressing(port_offset)
        self.members: dict[str, Member] = {
            c.name: Member(c, FakeApiServer(c.name, tls=tls, bookmark_interval=bookmark_interval)) for c in clusters
        }
        self.karmada: FakeApiServer | None = (
            FakeApiServer(KARMADA_NAME, tls=tls, bookmark_interval=bookmark_interval) if karmada else None
        )

    def member(self, name: str) -> Member:
        try:
            return self.members[name]
        except KeyError:
            raise KeyError(f"no member {name!r}; members are {sorted(self.members)}") from None

    @property
    def servers(self) -> list[FakeApiServer]:
        out = [m.server for m in self.members.values()]
        return out + ([self.karmada] if self.karmada else [])

    # Lifecycle

    async def start(self) -> None:
        """Start API servers, load objects, start every backend. On failure, undo what started."""
        try:
            for m in self.members.values():
                await m.server.start()
                for _ in range(m.spec.pods):
                    self._new_pod(m)
                m.server.apply_all(cluster_objects(m.spec, self.services, self._states(m), self.addr))
                m.service_backends = self._service_backends(m.spec)
                await _start_all(m.service_backends)
                for pod in m.pods.values():
                    await self._start_pod(pod)
            if self.karmada is not None:
                await self.karmada.start()
                self._load_karmada()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for m in self.members.values():
            await _stop_all(b for p in m.pods.values() for b in p.backends)
            for p in m.pods.values():
                p.running = False
            await _stop_all(m.service_backends)
            await m.server.stop()
        if self.karmada is not None:
            await self.karmada.stop()

    async def __aenter__(self) -> Topology:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def write_kubeconfig(self, path: str | os.PathLike[str], include_karmada: bool = True) -> Path:
        """One context per member (named after it), plus `karmada` when enabled; current = first member."""
        servers = [m.server for m in self.members.values()]
        if include_karmada and self.karmada is not None:
            servers.append(self.karmada)
        return write_kubeconfig(path, servers)

    # Pods

    async def kill_pods(self, cluster: str, pods: Iterable[str] | None = None, mark_not_ready: bool = True) -> None:
        """Stop pods' backends (default: all pods of `cluster`). With `mark_not_ready` their endpoints turn
        not ready, as the endpoint controller reports; without, the slices stay stale (a partitioned
        control plane). When no pod of the cluster runs any more, its kube-proxy stand-ins stop too."""
        m = self.member(cluster)
        for pod in self._select(m, pods):
            await _stop_all(pod.backends)
            pod.running = False
            if mark_not_ready:
                pod.state = PodState(pod.state.name, pod.state.index, ready=False)
        if not any(p.running for p in m.pods.values()):
            await _stop_all(m.service_backends)
        self._publish(m)

    async def restore_pods(self, cluster: str, pods: Iterable[str] | None = None) -> None:
        """Restart pods' backends and mark them ready again."""
        m = self.member(cluster)
        if not any(p.running for p in m.pods.values()):
            await _start_all(m.service_backends)
        for pod in self._select(m, pods):
            pod.state = PodState(pod.state.name, pod.state.index, ready=True)
            await self._start_pod(pod)
        self._publish(m)

    async def add_pod(self, cluster: str) -> str:
        """Start a new ready pod (next free index) and add it to every slice; returns its name."""
        m = self.member(cluster)
        pod = self._new_pod(m)
        if not any(p.running for p in m.pods.values()):
            await _start_all(m.service_backends)
        await self._start_pod(pod)
        self._publish(m)
        return pod.state.name

    async def remove_pod(self, cluster: str, pod: str) -> None:
        """Stop a pod and remove it from the slices (a scale-down)."""
        m = self.member(cluster)
        (victim,) = self._select(m, [pod])
        await _stop_all(victim.backends)
        del m.pods[pod]
        self._publish(m)

    def pod_ip(self, cluster: str, pod: str) -> str:
        m = self.member(cluster)
        return self.addr.pod_ip(m.spec, m.pods[pod].state.index)

    # Internals

    def _states(self, m: Member) -> list[PodState]:
        return [p.state for p in m.pods.values()]

    def _select(self, m: Member, names: Iterable[str] | None) -> list[Pod]:
        if names is None:
            return list(m.pods.values())
        missing = [n for n in names if n not in m.pods]
        if missing:
            raise KeyError(f"{m.spec.name} has no pods {missing}; pods are {sorted(m.pods)}")
        return [m.pods[n] for n in names]

    def _new_pod(self, m: Member) -> Pod:
        n, m.next_pod = m.next_pod, m.next_pod + 1
        if n > 254:
            raise ValueError(f"{m.spec.name}: pod addresses 127.0.{m.spec.index}.1-254 are exhausted")
        name = f"pod-{n}"
        ip = self.addr.pod_ip(m.spec, n)
        pod = Pod(PodState(name, n))
        pod.backends = [_backend(svc, ip, self.addr.port(svc.target_port), m.spec.name, name) for svc in self.services]
        m.pods[name] = pod
        return pod

    async def _start_pod(self, pod: Pod) -> None:
        if not pod.running:
            await _start_all(pod.backends)
            pod.running = True

    def _service_backends(self, c: ClusterSpec) -> list[Backend]:
        out: list[Backend] = []
        for i, svc in enumerate(self.services):
            port = self.addr.port(svc.port)
            out.append(_backend(svc, self.addr.cluster_ip(c, i), port, c.name, f"clusterip:{svc.name}"))
            if svc.node_port:
                node_port = self.addr.port(svc.node_port)
                for n in range(1, c.nodes + 1):
                    who = f"nodeport:{c.name}-node-{n}:{svc.name}"
                    out.append(_backend(svc, self.addr.node_ip(c, n), node_port, c.name, who))
            if svc.type == "LoadBalancer":
                ip = self.addr.lb_ip(c, lb_index(self.services, svc))
                out.append(_backend(svc, ip, port, c.name, f"lb:{svc.name}"))
        return out

    def _publish(self, m: Member) -> None:
        for svc in self.services:
            m.server.apply(slice_object(m.spec, svc, self._states(m), self.addr))

    def _load_karmada(self) -> None:
        assert self.karmada is not None
        for m in self.members.values():
            secret_name = f"{m.spec.name}-secret"
            data = {"token": m.server.token.encode()}
            if m.server.ca_pem is not None:
                data["caBundle"] = m.server.ca_pem
            self.karmada.apply(objects.secret(KARMADA_SECRET_NAMESPACE, secret_name, data))
            self.karmada.apply(
                objects.karmada_cluster(
                    m.spec.name,
                    m.server.url,
                    KARMADA_SECRET_NAMESPACE,
                    secret_name,
                    region=m.spec.region,
                    zone=m.spec.zone,
                )
            )
