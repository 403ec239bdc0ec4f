"""Runtime reload end to end: listeners added and removed, DNS settings and routes replaced, atomically.

One in-process fedproxy (Server) over the emulated demo members; each reload goes through
Runtime.reload with a whole new YAML text, as POST /reload does.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from fedproxy.configload import parse_config
from fedproxy.serve import Server
from fedproxy.sim.demo import demo_config
from fedproxy.sim.topology import Topology
from tests.loopback import free_ports, until


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Server, str, list[int]]]:
    topology = Topology(port_offset=23000 + (os.getpid() % 50) * 10)
    await topology.start()
    ports = free_ports(5)
    text = demo_config(topology.write_kubeconfig(tmp_path / "kubeconfig.yaml"), *ports[:4])
    server = Server(parse_config(text))
    await server.startup()
    try:
        yield server, text, ports
    finally:
        await server.shutdown(1)
        await topology.stop()


async def _a(port: int, name: str) -> tuple[int, list[str]]:
    r = await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)
    return r.rcode(), [rr.address for rrset in r.answer for rr in rrset]


async def test_reload_replaces_dns_settings_and_listeners(world: tuple[Server, str, list[int]]) -> None:
    server, text, (http, _tcp, dns_port, _admin, http2) = world
    runtime = server.runtime
    pinned = "west-1.nginx.demo.svc.clusterset.local"

    async def west_answers() -> bool:
        return (await _a(dns_port, pinned))[1] == ["127.1.3.1"]

    await until(west_answers)

    # Strict spec mode by reload: the <cluster>. prefix is gone, the plain name still answers.
    strict = text.replace("dns:\n", "dns:\n  cluster_prefix: false\n")
    second = strict.replace(
        "tcp:\n",
        f"    - {{name: second, address: 127.0.0.1, port: {http2}, routes: [{{service: demo/web}}]}}\ntcp:\n",
    )
    result = await runtime.reload(second)
    assert result.ok, result.problems
    assert any("dns" in c for c in result.changes) and any("second" in c for c in result.changes)
    assert (await _a(dns_port, pinned))[0] == dns.rcode.NXDOMAIN
    assert (await _a(dns_port, "nginx.demo.svc.clusterset.local"))[1] == ["127.1.1.1"]

    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{http2}/") as r:
            assert r.status == 200 and json.loads(await r.text())["cluster"] == "east-1"

        # Back to the first text: the added listener is drained and closed, the first one still serves.
        result = await runtime.reload(text)
        assert result.ok, result.problems

        async def closed() -> bool:
            try:
                async with aiohttp.ClientSession() as fresh, fresh.get(f"http://127.0.0.1:{http2}/"):
                    return False
            except aiohttp.ClientConnectorError:
                return True

        await until(closed)
        async with s.get(f"http://127.0.0.1:{http}/") as r:
            assert r.status == 200
    assert (await _a(dns_port, pinned))[1] == ["127.1.3.1"]


async def test_reload_with_a_listener_that_cannot_bind_keeps_the_old_config(
    world: tuple[Server, str, list[int]],
) -> None:
    server, text, (http, _tcp, _dns, _admin, taken) = world
    runtime = server.runtime
    async with aiohttp.ClientSession() as s:

        async def serving() -> bool:
            async with s.get(f"http://127.0.0.1:{http}/") as r:
                return r.status == 200

        await until(serving)
        before = runtime.config
        # Someone else holds the port: validation cannot know, binding fails, the reload is undone.
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            broken = text.replace(
                "tcp:\n",
                f"    - {{name: clash, address: 127.0.0.1, port: {taken}, routes: [{{service: demo/web}}]}}\ntcp:\n",
            ).replace("grace_period: 5", "grace_period: 6")
            result = await runtime.reload(broken)
        finally:
            squatter.close()
        assert not result.ok and "cannot open a listener" in result.problems[0]
        assert runtime.config == before
        assert await serving()


async def test_concurrent_reloads_apply_in_order_and_a_failed_one_does_not_undo_the_next(
    world: tuple[Server, str, list[int]],
) -> None:
    server, text, (http, _tcp, _dns, _admin, taken) = world
    runtime = server.runtime
    (extra,) = free_ports(1)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", taken))
    squatter.listen()
    try:
        broken = text.replace(
            "tcp:\n",
            f"    - {{name: clash, address: 127.0.0.1, port: {taken}, routes: [{{service: demo/web}}]}}\ntcp:\n",
        )
        good = text.replace(
            "tcp:\n",
            f"    - {{name: second, address: 127.0.0.1, port: {extra}, routes: [{{service: demo/web}}]}}\ntcp:\n",
        )
        # SIGHUP and POST /reload can overlap: the second must not be rolled back by the first's failure.
        first, second = await asyncio.gather(runtime.reload(broken), runtime.reload(good))
    finally:
        squatter.close()
    assert not first.ok and "cannot open a listener" in first.problems[0]
    assert second.ok, second.problems
    assert runtime.config == parse_config(good)
    assert ("http", "127.0.0.1", extra) in runtime.http
    async with aiohttp.ClientSession() as s:

        async def serving() -> bool:
            async with s.get(f"http://127.0.0.1:{extra}/") as r:
                return r.status == 200

        await until(serving)  # the members may still be syncing: the listener is open, routes fill in
