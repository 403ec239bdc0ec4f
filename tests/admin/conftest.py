"""A real Runtime + AdminServer over two emulated members (east, west) whose pods are loopback echo servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.backends import HttpEcho
from tests.loopback import free_port
from tests.world import MEMBERS, Fedproxies, Fedproxy, clusters_yaml, emulated_members, eventually

__all__ = ["World", "eventually", "free_port"]  # what the tests import from here


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
    token_line = f"\n  token: {token}" if token else ""
    return f"""
clusters:{clusters_yaml(kubeconfig, local=local)}
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


@dataclass
class World:
    servers: dict[str, FakeApiServer]
    echoes: dict[str, HttpEcho]
    kubeconfig: Path
    session: aiohttp.ClientSession
    start: Callable[..., Awaitable[Fedproxy]]
    ports: tuple[int, int, int]

    def yaml(self, **kwargs: object) -> str:
        """The config of the first proxy (pass ``ports`` for another one)."""
        kwargs.setdefault("ports", self.ports)
        return config_yaml(self.kubeconfig, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    echoes = {n: HttpEcho("127.0.0.1", cluster=n, pod=f"{n}-pod") for n in MEMBERS}
    async with aiohttp.ClientSession() as session, emulated_members(tmp_path) as members:
        try:
            for e in echoes.values():
                await e.start()
            for n in MEMBERS:
                members.servers[n].apply_all(web_objects(echoes[n].port))
            async with Fedproxies(tmp_path) as fedproxies:

                async def start(text: str, *, wait_ready: bool = True) -> Fedproxy:
                    server = await fedproxies.start(text)
                    runtime = server.runtime
                    if wait_ready:
                        await eventually(lambda: runtime.ready()[0] and len(runtime.get_state().catalog.services) > 0)
                        await eventually(
                            lambda: all(s.synced for s in runtime.snapshots.values()) and len(runtime.snapshots) == 2
                        )
                    return Fedproxy(runtime, server.admin)

                ports = (free_port(), free_port(), free_port())
                yield World(members.servers, echoes, members.kubeconfig, session, start, ports)
        finally:
            for e in echoes.values():
                await e.stop()
