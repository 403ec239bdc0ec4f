"""DNS test world: a small clusterset built from model values, and a DnsServer running on port 0.

Addresses are DATA only (answers); the server binds 127.0.0.1 and nothing ever connects to an answered address.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest

from fedproxy.balancing import Overrides, ServingState, build_state
from fedproxy.catalog import build_catalog
from fedproxy.config import ClusterConfig, Config, DnsConfig
from fedproxy.dns.server import DnsServer
from fedproxy.model import (
    ClusterSnapshot,
    EndpointSlice,
    Locality,
    Service,
    ServiceExport,
    ServiceImport,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)

PORTS = (ServicePort("http", 80, "TCP", 8080), ServicePort("", 9000, "TCP", 9000))


def member(
    name: str,
    cluster_ip: str,
    pods: tuple[str, ...] = (),
    *,
    region: str = "",
    zone: str = "",
    connected: bool = True,
    ready: bool = True,
    headless: bool = False,
    svc: str = "web",
    ns: str = "demo",
    hostnames: tuple[str | None, ...] = (),
    publish_not_ready: bool = False,
    clusterset_ips: tuple[str, ...] = (),
    lb: tuple[str, ...] = (),
    extra: tuple[ClusterSnapshot, ...] = (),
) -> ClusterSnapshot:
    """One member exporting ``ns/svc`` with a ClusterIP and pods (all ready unless ``ready`` is False)."""
    service = Service(
        ns,
        svc,
        type="LoadBalancer" if lb else "ClusterIP",
        cluster_ips=() if headless else (cluster_ip,),
        headless=headless,
        ports=PORTS,
        lb_ingress=lb,
        publish_not_ready=publish_not_ready,
        created="2024-01-01T00:00:00Z",
    )
    v4 = [p for p in pods if ":" not in p]
    v6 = [p for p in pods if ":" in p]
    host = dict(zip(pods, hostnames, strict=False))
    slices = {}
    for fam, addrs in (("IPv4", v4), ("IPv6", v6)):
        if addrs:
            slices[(ns, f"{svc}-{fam.lower()}")] = EndpointSlice(
                ns,
                f"{svc}-{fam.lower()}",
                svc,
                fam,
                (SlicePort("http", 8080), SlicePort("", 9000)),
                tuple(SliceEndpoint((a,), ready=ready, serving=ready, hostname=host.get(a)) for a in addrs),
            )
    imports = {(ns, svc): ServiceImport(ns, svc, ips=clusterset_ips)} if clusterset_ips else {}
    return ClusterSnapshot(
        name,
        Locality(region, zone),
        connected=connected,
        services=MappingProxyType({(ns, svc): service}),
        endpointslices=MappingProxyType(slices),
        serviceexports=MappingProxyType({(ns, svc): ServiceExport(ns, svc, "2024-01-01T00:00:00Z")}),
        serviceimports=MappingProxyType(imports),
    )


def make_state(
    snapshots: list[ClusterSnapshot],
    *,
    local: str = "",
    weights: dict[str, int] | None = None,
    dns_cfg: DnsConfig | None = None,
    drained: frozenset[str] = frozenset(),
    version: int = 1,
    **config_kwargs: object,
) -> ServingState:
    weights = weights or {}
    clusters = tuple(
        ClusterConfig(s.name, weight=weights.get(s.name, 1), local=s.name == local, region=s.locality.region)
        for s in snapshots
    )
    config = Config(clusters=clusters, dns=dns_cfg or DnsConfig(address="127.0.0.1", port=0), **config_kwargs)
    catalog = build_catalog(snapshots, config, version)
    return build_state(config, catalog, overrides=Overrides(drained=drained), version=version)


@dataclass
class Running:
    """A started DnsServer and helpers to query it with dnspython over real sockets."""

    server: DnsServer
    state: ServingState
    seen: list[str] = field(default_factory=list)

    def set(self, state: ServingState) -> None:
        self.state = state
        self.server.update(state)

    async def udp(self, name: str, rdtype: str | int = "A", **kw: object) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
        return await dns.asyncquery.udp(q, "127.0.0.1", port=self.server.port, timeout=2)

    async def tcp(self, name: str, rdtype: str | int = "A", **kw: object) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
        return await dns.asyncquery.tcp(q, "127.0.0.1", port=self.server.port, timeout=2)

    async def raw_udp(self, data: bytes) -> bytes | None:
        """Send raw bytes; the reply, or None when the server stays silent for 0.3 s."""
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                if not got.done():
                    got.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", self.server.port))
        try:
            transport.sendto(data)
            return await asyncio.wait_for(got, 0.3)
        except TimeoutError:
            return None
        finally:
            transport.close()


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.address for rs in msg.answer if rs.rdtype in (1, 28) for rd in rs)


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """``await start(state, dns_cfg?, rr_seed=?)`` -> Running; every server it started is closed after the test."""
    servers: list[DnsServer] = []

    async def run(state: ServingState, cfg: DnsConfig | None = None, rr_seed: int | None = None) -> Running:
        cfg = cfg or replace(state.config.dns, address="127.0.0.1", port=0)
        server = DnsServer(cfg, lambda: state, rr_seed=rr_seed)
        await server.start()
        servers.append(server)
        return Running(server, state)

    yield run
    for server in servers:
        await server.close()
