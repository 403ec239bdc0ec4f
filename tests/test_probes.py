"""Active health checks: real probes over loopback sockets, and the probe set following the serving state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fedproxy.balancing import ServingState, build_state
from fedproxy.catalog import build_catalog
from fedproxy.config import HealthCheckConfig
from fedproxy.configload import parse_config
from fedproxy.model import Endpoint
from fedproxy.probes import Prober, probe_once
from tests.dns.dns_world import member

CONFIG = """
clusters: [{name: east-1, kubeconfig: unused.yaml}]
http:
  listeners: [{address: 127.0.0.1, port: 0, routes: [{service: demo/web, service_port: 80, backend: pod}]}]
balancing:
  health_checks: {demo/web: {path: "", interval: 60}}
"""


def state_with(*pods: str) -> ServingState:
    config = parse_config(CONFIG)
    return build_state(config, build_catalog([member("east-1", "127.0.9.1", pods)], config, 1))


def probed(prober: Prober) -> set[str]:
    return {name.split("|")[1] for name in prober.tasks.names()}


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    p = Prober(lambda: None)
    try:
        yield p
    finally:
        await p.close()


async def test_overlapping_reconciles_end_with_the_newest_state(prober: Prober) -> None:
    await prober.reconcile(state_with("127.0.9.2", "127.0.9.3"))
    assert len(probed(prober)) == 2
    # Every state swap spawns a reconcile; an older one still stopping tasks must not resurrect its own set.
    await asyncio.gather(prober.reconcile(state_with("127.0.9.4")), prober.reconcile(state_with("127.0.9.2")))
    assert len(probed(prober)) == 1 and "127.0.9.2" in next(iter(probed(prober)))


async def test_tcp_probe_is_up_only_while_something_listens() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ep = Endpoint("east-1", "127.0.0.1", port)
    check = HealthCheckConfig(path="", timeout=2)
    assert await probe_once(ep, check)
    server.close()
    await server.wait_closed()
    assert not await probe_once(ep, check)


async def test_http_probe_reads_the_status_line() -> None:
    statuses = iter([b"200 OK", b"503 Service Unavailable"])

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 " + next(statuses) + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ep = Endpoint("east-1", "127.0.0.1", port)
    try:
        assert await probe_once(ep, HealthCheckConfig(path="/healthz", timeout=2))
        assert not await probe_once(ep, HealthCheckConfig(path="/healthz", timeout=2))
    finally:
        server.close()
        await server.wait_closed()
