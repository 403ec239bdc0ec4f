"""The reliability suite's world: two emulated members with real loopback pods, and fedproxy in front of them.

Members ``east`` (local) and ``west`` each export ``demo/web`` (HTTP echo pods) and ``demo/echo`` (TCP echo
pods). Pod IPs are loopback addresses (``127.0.11.N`` for east, ``127.0.12.N`` for west), every pod of a kind
listens on the same port, as in Kubernetes. ClusterIPs (``10.1.0.10``/``10.2.0.10``) are data only: DNS
answers them and nothing connects to them. fedproxy listens on port 0 everywhere.

Every test that starts fedproxy gets it stopped in teardown and fails when an asyncio task outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.backends import HttpEcho, TcpEcho
from tests.world import MEMBERS, Fedproxies, Fedproxy, clusters_yaml, emulated_members
from tests.world import eventually as _eventually

POD_NET = {"east": "127.0.11", "west": "127.0.12"}
CLUSTER_IP = {"east": "10.1.0.10", "west": "10.2.0.10"}
DOMAIN = "clusterset.local"
WEB_NAME = f"web.demo.svc.{DOMAIN}"
ADMIN_TOKEN = "s3cret-admin-token-4711"


def common_port(hosts: list[str]) -> int:
    """A TCP port free on every one of ``hosts`` right now (all pods of one kind share their target port)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = first.getsockname()[1]
            held = []
            try:
                for h in hosts[1:]:
                    s = socket.socket()
                    held.append(s)
                    s.bind((h, port))
            except OSError:
                continue
            finally:
                for s in held:
                    s.close()
            return port
    raise RuntimeError("no common free port")


@dataclass
class Member:
    """One emulated member: its API server and its pods (name -> echo server)."""

    name: str
    server: FakeApiServer
    web_pods: dict[str, HttpEcho] = field(default_factory=dict)
    tcp_pods: dict[str, TcpEcho] = field(default_factory=dict)


@dataclass
class Fleet:
    """The members and their pods; ``publish`` writes the pods' EndpointSlices into the member's API server."""

    members: dict[str, Member]
    web_port: int
    tcp_port: int
    next_ip: dict[str, int] = field(default_factory=dict)

    def ip(self, member: str, n: int) -> str:
        return f"{POD_NET[member]}.{n}"

    def base_objects(self, member: str) -> list[dict[str, Any]]:
        cip = CLUSTER_IP[member]
        return [
            objects.service(
                "demo",
                "web",
                cluster_ip=cip,
                ports=[{"name": "http", "port": 80, "targetPort": self.web_port}],
            ),
            objects.service_export("demo", "web"),
            objects.service(
                "demo",
                "echo",
                cluster_ip=cip.replace(".10", ".11"),
                ports=[{"name": "tcp", "port": 7000, "targetPort": self.tcp_port}],
            ),
            objects.service_export("demo", "echo"),
        ]

    def publish(self, member: str) -> None:
        """EndpointSlices listing every pod of ``member``, ready when its server runs."""
        m = self.members[member]
        for svc, pods, port_name, port in (
            ("web", m.web_pods, "http", self.web_port),
            ("echo", m.tcp_pods, "tcp", self.tcp_port),
        ):
            m.server.apply(
                objects.endpoint_slice(
                    "demo",
                    f"{svc}-1",
                    svc,
                    ports=[{"name": port_name, "port": port}],
                    endpoints=[objects.endpoint([p.host], ready=p.running) for p in pods.values()],
                )
            )

    async def add_pod(self, member: str, *, publish: bool = True, ip: str = "") -> str:
        """One more web + tcp pod on ``ip`` or the next pod IP of ``member``; returns its IP."""
        if not ip:
            n = self.next_ip.get(member, 1)
            self.next_ip[member] = n + 1
            ip = self.ip(member, n)
        m = self.members[member]
        web = HttpEcho(ip, self.web_port, cluster=member, pod=ip)
        tcp = TcpEcho(ip, self.tcp_port, prefix=f"{member}/{ip}\n".encode())
        await web.start()
        await tcp.start()
        m.web_pods[ip], m.tcp_pods[ip] = web, tcp
        if publish:
            self.publish(member)
        return ip

    async def remove_pod(self, member: str, ip: str, *, publish: bool = True) -> None:
        m = self.members[member]
        await m.web_pods.pop(ip).stop()
        await m.tcp_pods.pop(ip).stop()
        if publish:
            self.publish(member)

    def all_pods(self) -> list[HttpEcho | TcpEcho]:
        return [p for m in self.members.values() for p in (*m.web_pods.values(), *m.tcp_pods.values())]

    def web_requests(self) -> int:
        """Requests that reached any HTTP pod so far (smuggling tests count what got through)."""
        return sum(p.requests for m in self.members.values() for p in m.web_pods.values())


def config_yaml(
    fleet: Fleet,
    kubeconfig: Path,
    *,
    token: str = "",
    dns_extra: str = "",
    http_extra: str = "",
    route_extra: str = "",
    grace: float = 1.5,
    west_weight: int = 1,
    members: tuple[str, ...] = MEMBERS,
    extra: str = "",
) -> str:
    """fedproxy's config for the fleet: port 0 listeners on 127.0.0.1, short discovery timings.

    ``extra``: more top-level YAML appended as is (e.g. a ``balancing:`` section).
    """
    clusters = clusters_yaml(kubeconfig, members, weights={"west": west_weight})
    token_line = f"\n  token: {token}" if token else ""
    return f"""
clusters:{clusters}
discovery:
  grace_period: {grace}
  debounce: 0.01
  backoff_base: 0.05
  backoff_max: 0.5
  request_timeout: 1
http:
  access_log: "off"
  listeners:
    - name: web
      address: 127.0.0.1
      port: 0
      drain_timeout: 1{http_extra}
      routes:
        - service: demo/web{route_extra}
tcp:
  listeners:
    - name: echo
      address: 127.0.0.1
      port: 0
      service: demo/echo
      connect_timeout: 1
      drain_timeout: 1
dns:
  address: 127.0.0.1
  port: 0
  policy: spread{dns_extra}
admin:
  address: 127.0.0.1
  port: 0
  drain_timeout: 1{token_line}
{extra}"""


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``check`` (sync or async) until truthy; connection and DNS errors count as "not yet" here, where
    members and pods come and go."""
    await _eventually(check, timeout, what, retry_on=(OSError, aiohttp.ClientError, dns.exception.DNSException))


@dataclass
class Proxy(Fedproxy):
    """A running fedproxy (runtime + admin) and ways to talk to it."""

    session: aiohttp.ClientSession
    token: str = ""

    @property
    def tcp_port(self) -> int:
        (srv,) = self.runtime.tcp.values()
        return srv.port

    @property
    def dns_port(self) -> int:
        assert self.runtime.dns is not None
        return self.runtime.dns.port

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Admin /metrics parsed: (sample name, sorted labels) -> value."""
        async with self.session.get(f"{self.admin_url}/metrics", headers=self.auth()) as r:
            assert r.status == 200
            text = await r.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            v for (n, lab), v in (await self.metrics()).items() if n == name and labels.items() <= dict(lab).items()
        )

    async def dns_a(self, name: str = WEB_NAME) -> tuple[int, set[str]]:
        """(rcode, A addresses) of a UDP query."""
        q = dns.message.make_query(name, "A")
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=self.dns_port, timeout=2)
        addrs = {rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset}
        return r.rcode(), addrs

    def pool_clusters(self) -> set[str]:
        """Members with an endpoint in any serving pool right now."""
        return {ep.cluster for p in self.runtime.get_state().pools.values() for ep in p.endpoints}

    def pool_addresses(self, member: str) -> set[str]:
        return {
            ep.address for p in self.runtime.get_state().pools.values() for ep in p.endpoints if ep.cluster == member
        }

    def connected(self, member: str) -> bool:
        return self.runtime.get_state().catalog.connected(member)

    async def get(self, path: str = "/") -> tuple[int, str]:
        """One request on a fresh connection: (status, x-backend)."""
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{self.http_url}{path}", timeout=aiohttp.ClientTimeout(total=5)) as r,
        ):
            await r.read()
            return r.status, r.headers.get("x-backend", "")


@dataclass
class World:
    fleet: Fleet
    kubeconfig: Path
    session: aiohttp.ClientSession
    tmp_path: Path
    start: Callable[..., Awaitable[Proxy]]

    def yaml(self, **kwargs: Any) -> str:
        return config_yaml(self.fleet, self.kubeconfig, **kwargs)

    def server(self, member: str) -> FakeApiServer:
        return self.fleet.members[member].server


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """Two members with two pods each; ``world.start(yaml)`` runs fedproxy and waits until both are synced."""
    tasks_before = asyncio.all_tasks()
    hosts = [f"{POD_NET[m]}.{n}" for m in MEMBERS for n in range(1, 9)]
    web_port, tcp_port = common_port(hosts), common_port(hosts)
    async with aiohttp.ClientSession() as session, emulated_members(tmp_path) as emulated:
        fleet = Fleet({n: Member(n, s) for n, s in emulated.servers.items()}, web_port=web_port, tcp_port=tcp_port)
        try:
            for m in fleet.members.values():
                m.server.apply_all(fleet.base_objects(m.name))
                for _ in range(2):
                    await fleet.add_pod(m.name)
            async with Fedproxies(tmp_path) as fedproxies:

                async def start(text: str, *, token: str = "", members: tuple[str, ...] = MEMBERS) -> Proxy:
                    server = await fedproxies.start(text)
                    runtime = server.runtime
                    proxy = Proxy(runtime, server.admin, session, token)
                    await eventually(
                        lambda: all(
                            (s := runtime.snapshots.get(n)) is not None and s.synced and s.connected for n in members
                        ),
                        what="members synced",
                    )
                    await eventually(lambda: members and proxy.pool_clusters() >= set(members), what="pools filled")
                    return proxy

                yield World(fleet, emulated.kubeconfig, session, tmp_path, start)
        finally:
            for pod in fleet.all_pods():
                await pod.stop()
    await asyncio.sleep(0.05)
    leaked = [t for t in asyncio.all_tasks() - tasks_before if not t.done() and t is not asyncio.current_task()]
    assert not leaked, f"tasks left running after the test: {leaked}"


class LogCapture(logging.Handler):
    """Every record of the ``fedproxy`` loggers (any level), formatted, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def fedproxy_logs() -> Any:
    """Capture every fedproxy log line (DEBUG up) during the test."""
    cap = LogCapture()
    logger = logging.getLogger("fedproxy")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(cap)
    yield cap
    logger.removeHandler(cap)
    logger.setLevel(old)
