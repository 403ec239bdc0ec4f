"""Fixtures for the proxy tests. Shared between the HTTP and TCP proxy tests: only add fixtures here."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import pytest

from fedproxy.balancing import ServingState, build_state
from fedproxy.catalog import build_catalog
from fedproxy.config import ClusterConfig, Config, TcpConfig, TcpListener
from fedproxy.model import (
    ClusterSnapshot,
    EndpointSlice,
    Service,
    ServiceExport,
    ServiceKey,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)

# --- TCP proxy fixtures -------------------------------------------------------------------------------------

TCP_SERVICE = ServiceKey("demo", "echo")
TcpMode = Literal["echo", "hash"]


class _TcpPodProtocol(asyncio.Protocol):
    """A pod for the TCP tests. ``echo``: sends ``<name>\\n`` then echoes, passing EOF on once the echo is
    written. ``hash``: reads until EOF (optionally slowly) and answers the SHA-256 of what it read."""

    def __init__(self, pod: TcpPod) -> None:
        self.pod = pod
        self.transport: asyncio.Transport | None = None
        self.digest = hashlib.sha256()
        self.unread_budget = pod.pause_every

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pod.connections.add(self.transport)  # type: ignore[arg-type]
        self.pod.accepted += 1
        if self.pod.mode == "echo":
            self.transport.write(self.pod.name.encode() + b"\n")  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if len(self.pod.head) < 256:
            self.pod.head += data[: 256 - len(self.pod.head)]
        if self.pod.mode == "echo":
            self.transport.write(data)
            return
        self.digest.update(data)
        self.pod.received += len(data)
        if self.pod.pause_every:
            # A slow consumer: without back-pressure in the proxy, the proxy would buffer what we do not read.
            self.unread_budget -= len(data)
            if self.unread_budget <= 0:
                self.unread_budget = self.pod.pause_every
                self.transport.pause_reading()
                asyncio.get_running_loop().call_later(self.pod.pause_for, self._resume)

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # an echo must not buffer more than the peer takes

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        assert self.transport is not None
        if self.pod.mode == "hash":
            self.transport.write(self.digest.hexdigest().encode())
        return False  # close once the buffered echo is sent: the peer sees it all, then FIN

    def connection_lost(self, exc: Exception | None) -> None:
        self.pod.connections.discard(self.transport)  # type: ignore[arg-type]


@dataclass(eq=False)
class TcpPod:
    """One backend standing for a pod of cluster ``cluster`` at ``host:port``."""

    cluster: str
    name: str
    host: str = "127.0.0.1"
    mode: TcpMode = "echo"
    pause_every: int = 0  # hash mode: bytes read between pauses (0 = never pause)
    pause_for: float = 0.0  # s per pause
    port: int = 0
    accepted: int = 0
    received: int = 0
    head: bytes = b""  # the first bytes any connection sent (PROXY headers)
    connections: set[asyncio.Transport] = field(default_factory=set)
    server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _TcpPodProtocol(self), self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self.connections):
                t.abort()
            await self.server.wait_closed()
            self.server = None


TcpPodFactory = Callable[..., Awaitable[TcpPod]]


@pytest.fixture
async def tcp_pods() -> AsyncIterator[TcpPodFactory]:
    """``await tcp_pods(cluster, name, host=..., mode=...)``: a started TcpPod, stopped after the test."""
    pods: list[TcpPod] = []

    async def make(cluster: str, name: str, **kwargs: object) -> TcpPod:
        pod = TcpPod(cluster, name, **kwargs)  # type: ignore[arg-type]
        await pod.start()
        pods.append(pod)
        return pod

    yield make
    for pod in pods:
        await pod.stop()


def tcp_refused_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound, never listened, closed): connects to it are refused."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def service_snapshot(
    cluster: str, name: str, port_name: str, port: int, cluster_ip: str, pods: Sequence[tuple[str, int]]
) -> ClusterSnapshot:
    """A member exporting ``demo/<name>`` (one service port) with one ready pod per (address, port)."""
    svc = Service("demo", name, cluster_ips=(cluster_ip,), ports=(ServicePort(port_name, port, target_port=port),))
    slices = {
        ("demo", f"{name}-{i}"): EndpointSlice(
            "demo", f"{name}-{i}", name, ports=(SlicePort(port_name, p),), endpoints=(SliceEndpoint((address,)),)
        )
        for i, (address, p) in enumerate(pods)
    }
    return ClusterSnapshot(
        cluster,
        services=MappingProxyType({("demo", name): svc}),
        endpointslices=MappingProxyType(slices),
        serviceexports=MappingProxyType({("demo", name): ServiceExport("demo", name)}),
    )


def tcp_snapshot(cluster: str, pods: Sequence[tuple[str, int]]) -> ClusterSnapshot:
    """A member exporting ``demo/echo`` (port "tcp" 7000) with one ready pod per (address, port)."""
    return service_snapshot(cluster, "echo", "tcp", 7000, "127.1.0.10", pods)


def tcp_config(listener: TcpListener, weights: Mapping[str, int]) -> Config:
    clusters = tuple(ClusterConfig(name, pods_reachable=True, weight=w) for name, w in weights.items())
    return Config(clusters=clusters, tcp=TcpConfig(listeners=(listener,)))


def tcp_state(config: Config, pods: Mapping[str, Sequence[tuple[str, int]]], version: int = 1) -> ServingState:
    """The ServingState the runtime would build: model values -> build_catalog -> build_state."""
    catalog = build_catalog([tcp_snapshot(c, eps) for c, eps in pods.items()], config, version)
    return build_state(config, catalog, version=version)


@pytest.fixture
def tcp_world() -> object:
    """The helpers above as one object (conftest modules are not imported by tests)."""

    class World:
        service = TCP_SERVICE
        refused_port = staticmethod(tcp_refused_port)
        config = staticmethod(tcp_config)
        state = staticmethod(tcp_state)

    return World


@dataclass(eq=False)
class TcpProxyHarness:
    """A running proxy server with a swappable state and the health reports it made."""

    server: object
    holder: list[ServingState]
    reports: list[tuple[object, bool]]

    @property
    def port(self) -> int:
        return self.server.port  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
async def tcp_proxy() -> AsyncIterator[Callable[..., Awaitable[TcpProxyHarness]]]:
    """``await tcp_proxy(listener, config, state, reuse_port=False)``: a started proxy, closed after the test."""
    from fedproxy.proxy.tcp import TcpProxyServer

    started: list[TcpProxyServer] = []

    async def make(
        listener: TcpListener, config: Config, state: ServingState, *, reuse_port: bool = False
    ) -> TcpProxyHarness:
        holder = [state]
        reports: list[tuple[object, bool]] = []
        server = TcpProxyServer(
            listener, config, lambda: holder[0], lambda ep, ok: reports.append((ep, ok)), reuse_port=reuse_port
        )
        await server.start()
        started.append(server)
        return TcpProxyHarness(server, holder, reports)

    yield make
    for server in started:
        await server.close()


# --- HTTP proxy fixtures ------------------------------------------------------------------------------------

HTTP_SERVICE = ServiceKey("demo", "web")


def http_snapshot(cluster: str, pods: Sequence[tuple[str, int]]) -> ClusterSnapshot:
    """A member exporting ``demo/web`` (port "http" 80) with one ready pod per (address, port)."""
    return service_snapshot(cluster, "web", "http", 80, "127.1.0.20", pods)


def http_state(
    config: Config, pods: Mapping[str, Sequence[tuple[str, int]]], version: int = 1, health: object = None
) -> ServingState:
    """The ServingState the runtime would build for ``demo/web``: snapshots -> build_catalog -> build_state."""
    catalog = build_catalog([http_snapshot(c, eps) for c, eps in pods.items()], config, version)
    if health is None:
        return build_state(config, catalog, version=version)
    return build_state(config, catalog, health, version=version)  # type: ignore[arg-type]


class HttpProxyHarness(TcpProxyHarness):
    """A running HttpProxyServer with a swappable state and the health reports it made."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def http_proxy() -> AsyncIterator[Callable[..., Awaitable[HttpProxyHarness]]]:
    """``await http_proxy(listener, config, state, report=None)``: a started HTTP proxy, closed after the test."""
    from fedproxy.proxy.http import HttpProxyServer

    started: list[HttpProxyServer] = []

    async def make(
        listener: object, config: Config, state: ServingState, report: Callable[..., None] | None = None
    ) -> HttpProxyHarness:
        holder = [state]
        reports: list[tuple[object, bool]] = []

        def on_report(ep: object, ok: bool) -> None:
            reports.append((ep, ok))
            if report is not None:
                report(ep, ok)

        server = HttpProxyServer(listener, config, lambda: holder[0], on_report)  # type: ignore[arg-type]
        await server.start()
        started.append(server)
        return HttpProxyHarness(server, holder, reports)

    yield make
    for server in started:
        await server.close()


@pytest.fixture
async def http_pods() -> AsyncIterator[Callable[..., Awaitable[object]]]:
    """``await http_pods(cluster, pod)``: a started fedproxy.sim HttpEcho on 127.0.0.1, stopped after the test."""
    from fedproxy.sim.backends import HttpEcho

    pods: list[HttpEcho] = []

    async def make(cluster: str, pod: str) -> HttpEcho:
        echo = HttpEcho("127.0.0.1", 0, cluster=cluster, pod=pod)
        await echo.start()
        pods.append(echo)
        return echo

    yield make
    for echo in pods:
        await echo.stop()


@pytest.fixture
def http_world() -> object:
    """The HTTP helpers above as one object (conftest modules are not imported by tests)."""

    class World:
        service = HTTP_SERVICE
        snapshot = staticmethod(http_snapshot)
        state = staticmethod(http_state)
        refused_port = staticmethod(tcp_refused_port)

    return World
