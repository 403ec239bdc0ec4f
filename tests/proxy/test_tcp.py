"""TCP proxy over real loopback sockets: balancing, failover, splice correctness, half-close, PROXY headers."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import struct
from collections import Counter

import pytest

from fedproxy.config import TcpListener
from fedproxy.model import Endpoint
from fedproxy.proxy.tcp import source_hash


def listener(world: object, **kwargs: object) -> TcpListener:
    kwargs.setdefault("name", "t")
    return TcpListener(port=0, service=world.service, address="127.0.0.1", **kwargs)  # type: ignore[attr-defined,arg-type]


async def talk(port: int, payload: bytes = b"ping\n") -> tuple[str, bytes]:
    """Connect through the proxy, send ``payload``, half-close; returns (backend name, everything echoed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    name, _, rest = data.partition(b"\n")
    return name.decode(), rest


async def test_distribution_follows_cluster_weights(tcp_pods, tcp_world, tcp_proxy) -> None:
    pods = {c: await tcp_pods(c, f"{c}/pod-0") for c in ("east", "west", "south")}
    lst = listener(tcp_world)
    config = tcp_world.config(lst, {"east": 1, "west": 2, "south": 3})
    state = tcp_world.state(config, {c: [(p.host, p.port)] for c, p in pods.items()})
    proxy = await tcp_proxy(lst, config, state)
    seen = Counter()
    for _ in range(60):
        name, rest = await talk(proxy.port)
        assert rest == b"ping\n"
        seen[name.split("/")[0]] += 1
    # Smooth weighted round-robin is exact over a full cycle; allow slack for pickers that randomise.
    assert 5 <= seen["east"] <= 15 and 15 <= seen["west"] <= 25 and 25 <= seen["south"] <= 35, seen
    assert all(ok for _, ok in proxy.reports) and len(proxy.reports) == 60
    stats = proxy.server.stats()
    assert stats["accepted"] == 60 and stats["active"] == 0


async def test_failover_when_an_endpoint_refuses(tcp_pods, tcp_world, tcp_proxy) -> None:
    good = await tcp_pods("west", "west/pod-0")
    dead_port = tcp_world.refused_port()
    lst = listener(tcp_world, connect_attempts=3)
    config = tcp_world.config(lst, {"east": 1, "west": 1})
    state = tcp_world.state(config, {"east": [("127.0.0.1", dead_port)], "west": [(good.host, good.port)]})
    proxy = await tcp_proxy(lst, config, state)
    for _ in range(6):
        name, rest = await talk(proxy.port, b"hello")
        assert (name, rest) == ("west/pod-0", b"hello")
    dead = Endpoint("east", "127.0.0.1", dead_port)
    assert (dead, False) in proxy.reports
    assert all(ok for ep, ok in proxy.reports if ep != dead)


async def test_all_endpoints_down_closes_the_client(tcp_world, tcp_proxy) -> None:
    ports = [tcp_world.refused_port() for _ in range(2)]
    lst = listener(tcp_world, connect_attempts=5)
    config = tcp_world.config(lst, {"east": 1})
    state = tcp_world.state(config, {"east": [("127.0.0.1", ports[0]), ("127.0.0.2", ports[1])]})
    proxy = await tcp_proxy(lst, config, state)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"lost")
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        pass  # a reset is an acceptable way to refuse the client as well
    writer.close()
    # Each endpoint is tried once (never twice), then the pool has nothing left.
    assert sorted(ep.port for ep, ok in proxy.reports if not ok) == sorted(ports)
    assert proxy.server.stats()["connect_failed"] == 1


async def test_no_upstream_closes_the_client(tcp_world, tcp_proxy) -> None:
    lst = listener(tcp_world)
    config = tcp_world.config(lst, {"east": 1})
    state = tcp_world.state(config, {})  # nobody exports the service
    proxy = await tcp_proxy(lst, config, state)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert proxy.server.stats()["no_upstream"] == 1


async def test_half_close_delivers_the_rest_and_eof(tcp_pods, tcp_world, tcp_proxy) -> None:
    pod = await tcp_pods("east", "east/pod-0")
    lst = listener(tcp_world)
    config = tcp_world.config(lst, {"east": 1})
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [(pod.host, pod.port)]}))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await reader.readline() == b"east/pod-0\n"
    payload = os.urandom(3 * 1024 * 1024)
    writer.write(payload)
    writer.write_eof()  # our side is done; the echo of everything must still arrive, then EOF
    got = await asyncio.wait_for(reader.read(), 10)
    assert reader.at_eof()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    writer.close()
    await writer.wait_closed()
    for _ in range(50):
        if not pod.connections and proxy.server.stats()["active"] == 0:
            break
        await asyncio.sleep(0.02)
    assert not pod.connections and proxy.server.stats()["active"] == 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
async def test_large_transfer_bounded_memory(tcp_pods, tcp_world, tcp_proxy) -> None:
    # The pod reads slower than the client writes: only back-pressure keeps the proxy from buffering it all.
    pod = await tcp_pods("east", "east/pod-0", mode="hash", pause_every=8 * 1024 * 1024, pause_for=0.01)
    lst = listener(tcp_world)
    config = tcp_world.config(lst, {"east": 1})
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [(pod.host, pod.port)]}))
    block = os.urandom(1024 * 1024)
    total_blocks = 256  # 256 MiB
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    expected = hashlib.sha256()
    base = peak = _rss()
    for i in range(total_blocks):
        chunk = block[i % 7 :] + block[: i % 7]  # not the same bytes each time
        expected.update(chunk)
        writer.write(chunk)
        await writer.drain()
        if i % 16 == 0:
            peak = max(peak, _rss())
    writer.write_eof()
    digest = await asyncio.wait_for(reader.read(), 30)
    peak = max(peak, _rss())
    writer.close()
    assert digest.decode() == expected.hexdigest()
    assert pod.received == total_blocks * len(block)
    assert peak - base < 48 * 1024 * 1024, f"RSS grew by {(peak - base) >> 20} MiB"
    for _ in range(50):
        if proxy.server.stats()["active"] == 0:
            break
        await asyncio.sleep(0.02)
    stats = proxy.server.stats()
    assert stats["bytes_in"] == total_blocks * len(block) and stats["bytes_out"] == 64


def _parse_v2(data: bytes) -> tuple[str, int, str, int, int]:
    """An independent reading of a v2 header (section 2.2): (src, sport, dst, dport, header length)."""
    assert data[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and data[12] == 0x21
    length = struct.unpack("!H", data[14:16])[0]
    body = data[16 : 16 + length]
    assert data[13] == 0x11 and length == 12
    src, dst = ipaddress.IPv4Address(body[:4]), ipaddress.IPv4Address(body[4:8])
    sport, dport = struct.unpack("!HH", body[8:12])
    return str(src), sport, str(dst), dport, 16 + length


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_proxy_protocol_header_reaches_the_backend(tcp_pods, tcp_world, tcp_proxy, version) -> None:
    pod = await tcp_pods("east", "east/pod-0")
    lst = listener(tcp_world, proxy_protocol=version)
    config = tcp_world.config(lst, {"east": 1})
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [(pod.host, pod.port)]}))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    cport = writer.get_extra_info("sockname")[1]
    writer.write(b"after-header")
    writer.write_eof()
    await asyncio.wait_for(reader.read(), 5)
    writer.close()
    if version == "v1":
        line, _, rest = pod.head.partition(b"\r\n")
        assert line == f"PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {proxy.port}".encode()
    else:
        src, sport, dst, dport, n = _parse_v2(pod.head)
        assert (src, sport, dst, dport) == ("127.0.0.1", cport, "127.0.0.1", proxy.port)
        rest = pod.head[n:]
    assert rest == b"after-header"


async def test_update_changes_new_connections_only(tcp_pods, tcp_world, tcp_proxy) -> None:
    pod = await tcp_pods("east", "east/pod-0")
    lst = listener(tcp_world)
    config = tcp_world.config(lst, {"east": 1})
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [(pod.host, pod.port)]}))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await reader.readline() == b"east/pod-0\n"
    new = listener(tcp_world, proxy_protocol="v1")
    proxy.server.update(new, tcp_world.config(new, {"east": 1}))
    writer.write(b"old\n")
    assert await reader.readline() == b"old\n"  # no header injected into an open connection
    _, echoed = await talk(proxy.port, b"new")
    assert echoed.startswith(b"PROXY TCP4 ") and echoed.endswith(b"\r\nnew")
    writer.close()


def test_source_hash_is_stable() -> None:
    assert source_hash("10.0.0.1") == source_hash("10.0.0.1")
    assert source_hash("10.0.0.1") != source_hash("10.0.0.2")
    assert 0 <= source_hash("::1") < 2**64


async def test_access_log_and_metrics(tcp_pods, tcp_world, tcp_proxy, caplog) -> None:
    from prometheus_client import REGISTRY

    pod = await tcp_pods("east", "east/pod-0")
    lst = listener(tcp_world, name="logged")
    config = tcp_world.config(lst, {"east": 1})
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [(pod.host, pod.port)]}))
    labels = {"listener": "logged", "cluster": "east", "result": "ok"}
    before = REGISTRY.get_sample_value("fedproxy_tcp_connections_total", labels) or 0.0
    bytes_labels = {"listener": "logged", "cluster": "east"}
    bytes_before = REGISTRY.get_sample_value("fedproxy_tcp_received_bytes_total", bytes_labels) or 0.0
    caplog.set_level("INFO", logger="fedproxy.access")
    await talk(proxy.port, b"12345")
    for _ in range(50):
        if proxy.server.stats()["active"] == 0 and caplog.records:
            break
        await asyncio.sleep(0.02)
    line = next(r.getMessage() for r in caplog.records if r.name == "fedproxy.access")
    fields = dict(f.split("=", 1) for f in line.split())
    assert fields["event"] == "tcp_connection" and fields["listener"] == "logged"
    assert fields["service"] == "demo/echo" and fields["cluster"] == "east" and fields["result"] == "ok"
    assert fields["endpoint"] == f"127.0.0.1:{pod.port}" and fields["client"].startswith("127.0.0.1:")
    assert fields["bytes_in"] == "5" and fields["bytes_out"] == str(len(b"east/pod-0\n12345"))
    assert REGISTRY.get_sample_value("fedproxy_tcp_connections_total", labels) == before + 1
    received = REGISTRY.get_sample_value("fedproxy_tcp_received_bytes_total", bytes_labels)
    assert received == bytes_before + 5
    assert REGISTRY.get_sample_value("fedproxy_tcp_active_connections", {"listener": "logged"}) == 0


async def test_hash_source_ip_keeps_a_client_on_one_endpoint(tcp_pods, tcp_world, tcp_proxy) -> None:
    pods = {c: await tcp_pods(c, f"{c}/pod-0") for c in ("east", "west", "south")}
    lst = listener(tcp_world, hash_source_ip=True)
    config = tcp_world.config(lst, {"east": 1, "west": 1, "south": 1})
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {c: [(p.host, p.port)] for c, p in pods.items()}))

    async def via(source: str) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, local_addr=(source, 0))
        name = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
        writer.close()
        await writer.wait_closed()
        # Hashing has bounded load: a connection the proxy still counts as open would steer the next pick.
        while proxy.server.stats()["active"]:
            await asyncio.sleep(0.005)
        return name

    chosen = {}
    for i in range(2, 14):  # each source address is its own client (127.0.0.0/8 is all loopback)
        source = f"127.0.0.{i}"
        names = {await via(source) for _ in range(4)}
        assert len(names) == 1, (source, names)
        chosen[source] = names.pop()
    assert len(set(chosen.values())) > 1  # different clients do spread
