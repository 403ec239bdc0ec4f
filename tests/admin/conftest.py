"""A real Runtime + AdminServer over two emulated members (east, west) whose pods are loopback echo servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from fedproxy.admin.server import AdminServer
from fedproxy.configload import parse_config
from fedproxy.runtime import Runtime
from fedproxy.serve import Server
from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.backends import HttpEcho
from fedproxy.sim.kubeconfig import write_kubeconfig
from tests.loopback import free_port

MEMBERS = ("east", "west")


def web_objects(port: int) -> list[dict]:
    """demo/web exported, one ready pod at 127.0.0.1:``port``."""
    return [
        objects.service(
            "demo", "web", cluster_ip="10.0.0.10", ports=[{"name": "http", "port": 80, "targetPort": port}]
        ),
        objects.endpoint_slice(
            "demo",
            "web-1",
            "web",
            ports=[{"name": "http", "port": port}],
            endpoints=[objects.endpoint(["127.0.0.1"])],
        ),
        objects.service_export("demo", "web"),
    ]


def config_yaml(
    kubeconfig: Path,
    *,
    local: str = "east",
    token: str = "",
    ports: tuple[int, int, int],
    extra_admin: str = "",
    route_extra: str = "",
) -> str:
    """The whole config as YAML: both members (pods reachable), one HTTP listener routing / to demo/web.

    ``ports``: (http, dns, admin).
    """
    http_port, dns_port, admin_port = ports
    clusters = "".join(
        f"""
  - name: {name}
    kubeconfig: {kubeconfig}
    context: {name}
    region: {"r1" if name == "east" else "r2"}
    local: {"true" if name == local else "false"}
    pods_reachable: true"""
        for name in MEMBERS
    )
    token_line = f"\n  token: {token}" if token else ""
    return f"""
clusters:{clusters}
discovery:
  grace_period: 2
  backoff_base: 0.05
  backoff_max: 0.5
  request_timeout: 2
http:
  access_log: "off"
  listeners:
    - name: web
      address: 127.0.0.1
      port: {http_port}
      drain_timeout: 5
      routes:
        - service: demo/web{route_extra}
dns:
  address: 127.0.0.1
  port: {dns_port}
admin:
  address: 127.0.0.1
  port: {admin_port}
  drain_timeout: 2{token_line}{extra_admin}
"""


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``check`` until it is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}")
        await asyncio.sleep(0.05)


@dataclass
class Proxy:
    runtime: Runtime
    admin: AdminServer

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin.port}"

    @property
    def http_url(self) -> str:
        (srv,) = self.runtime.http.values()
        return f"http://127.0.0.1:{srv.port}"


@dataclass
class World:
    servers: dict[str, FakeApiServer]
    echoes: dict[str, HttpEcho]
    kubeconfig: Path
    session: aiohttp.ClientSession
    start: Callable[..., Awaitable[Proxy]]
    ports: tuple[int, int, int]

    def yaml(self, **kwargs: object) -> str:
        """The config of the first proxy (pass ``ports`` for another one)."""
        kwargs.setdefault("ports", self.ports)
        return config_yaml(self.kubeconfig, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    servers = {n: FakeApiServer(n, bookmark_interval=0.2) for n in MEMBERS}
    echoes = {n: HttpEcho("127.0.0.1", cluster=n, pod=f"{n}-pod") for n in MEMBERS}
    proxies: list[Proxy] = []
    for s in servers.values():
        await s.start()
    for e in echoes.values():
        await e.start()
    for n in MEMBERS:
        servers[n].apply_all(web_objects(echoes[n].port))
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", list(servers.values()))

    async def start(text: str, *, wait_ready: bool = True) -> Proxy:
        path = tmp_path / f"fedproxy-{len(proxies)}.yaml"
        path.write_text(text)
        server = Server(parse_config(text, source=str(path)), config_path=str(path))
        await server.startup()
        runtime = server.runtime
        proxy = Proxy(runtime, server.admin)
        proxies.append(proxy)
        if wait_ready:
            await eventually(lambda: runtime.ready()[0] and len(runtime.get_state().catalog.services) > 0)
            await eventually(lambda: all(s.synced for s in runtime.snapshots.values()) and len(runtime.snapshots) == 2)
        return proxy

    async with aiohttp.ClientSession() as session:
        try:
            yield World(servers, echoes, kubeconfig, session, start, (free_port(), free_port(), free_port()))
        finally:
            for p in proxies:
                await p.admin.close()
                if p.runtime.listening:
                    await p.runtime.shutdown(0.5)
            for e in echoes.values():
                await e.stop()
            for s in servers.values():
                await s.stop()
