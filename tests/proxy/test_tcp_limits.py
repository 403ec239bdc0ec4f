"""TCP proxy limits and lifecycle over loopback: idle timeout, connect timeout, max connections, drain."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from fedproxy.config import TcpListener
from fedproxy.model import Endpoint


def listener(world: object, **kwargs: object) -> TcpListener:
    kwargs.setdefault("port", 0)
    return TcpListener(service=world.service, address="127.0.0.1", name="t", **kwargs)  # type: ignore[attr-defined,arg-type]


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    """True when the proxy ended the connection (EOF or reset) within ``timeout`` s."""
    try:
        await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        pass
    return True


async def eventually(check, timeout: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return bool(check())


async def test_idle_timeout_closes_both_sides(tcp_pods, tcp_world, tcp_proxy) -> None:
    pod = await tcp_pods("east", "east/pod-0")
    lst = listener(tcp_world, idle_timeout=0.3)
    config = tcp_world.config(lst, {"east": 1})
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [(pod.host, pod.port)]}))
    busy_r, busy_w = await connect(proxy.port)
    idle_r, idle_w = await connect(proxy.port)
    assert await busy_r.readline() == b"east/pod-0\n"
    assert await idle_r.readline() == b"east/pod-0\n"
    # Traffic every 0.1 s keeps one connection alive past several idle periods.
    for i in range(8):
        busy_w.write(b"%d\n" % i)
        assert await busy_r.readline() == b"%d\n" % i
        await asyncio.sleep(0.1)
    assert idle_r.at_eof() or await closed(idle_r, 1)
    assert not busy_r.at_eof()
    busy_w.write(b"still\n")
    assert await busy_r.readline() == b"still\n"
    assert await closed(busy_r, 2)  # and it goes idle too once the traffic stops
    assert await eventually(lambda: not pod.connections)
    for w in (busy_w, idle_w):
        w.close()


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: a SYN to it gets no answer, so connects time out (Linux)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        srv.close()


async def test_connect_timeout_fails_over_to_another_member(tcp_pods, tcp_world, tcp_proxy) -> None:
    good = await tcp_pods("west", "west/pod-0")
    with blackhole() as port:
        lst = listener(tcp_world, connect_timeout=0.2, connect_attempts=2)
        config = tcp_world.config(lst, {"east": 5, "west": 1})
        state = tcp_world.state(config, {"east": [("127.0.0.1", port)], "west": [(good.host, good.port)]})
        proxy = await tcp_proxy(lst, config, state)
        reader, writer = await connect(proxy.port)
        writer.write(b"x\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"west/pod-0\n"
        assert await reader.readline() == b"x\n"
        writer.close()
    # east has 5x the weight, so the first pick is east: it must have timed out and been reported.
    assert (Endpoint("east", "127.0.0.1", port), False) in proxy.reports


async def test_max_connections_close(tcp_pods, tcp_world, tcp_proxy) -> None:
    pod = await tcp_pods("east", "east/pod-0")
    lst = listener(tcp_world, max_connections=2, on_max_connections="close")
    config = tcp_world.config(lst, {"east": 1})
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [(pod.host, pod.port)]}))
    held = [await connect(proxy.port) for _ in range(2)]
    for r, _ in held:
        assert await r.readline() == b"east/pod-0\n"
    extra_r, extra_w = await connect(proxy.port)
    assert await closed(extra_r)
    assert not extra_r._buffer  # type: ignore[attr-defined]  # closed before any upstream byte
    extra_w.close()
    assert proxy.server.stats()["rejected"] == 1 and pod.accepted == 2
    held[0][1].close()
    assert await eventually(lambda: proxy.server.stats()["active"] == 1)
    r, w = await connect(proxy.port)
    assert await r.readline() == b"east/pod-0\n"  # a freed slot is usable again
    for _, writer in [*held[1:], (r, w)]:
        writer.close()


async def test_max_connections_backlog_waits_for_a_slot(tcp_pods, tcp_world, tcp_proxy) -> None:
    pod = await tcp_pods("east", "east/pod-0")
    lst = listener(tcp_world, max_connections=1, on_max_connections="backlog")
    config = tcp_world.config(lst, {"east": 1})
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [(pod.host, pod.port)]}))
    first_r, first_w = await connect(proxy.port)
    assert await first_r.readline() == b"east/pod-0\n"
    second_r, second_w = await connect(proxy.port)
    second_w.write(b"queued\n")  # sent while waiting: delivered once the connection gets its upstream
    line = asyncio.ensure_future(second_r.readline())
    done, _ = await asyncio.wait({line}, timeout=0.3)
    assert not done, "a connection over the limit must not reach an upstream"
    assert proxy.server.stats()["waiting"] == 1 and pod.accepted == 1
    first_w.close()
    assert await asyncio.wait_for(line, 5) == b"east/pod-0\n"
    assert await second_r.readline() == b"queued\n"
    assert proxy.server.stats()["waiting"] == 0
    second_w.close()


async def test_drain_keeps_an_open_connection_across_a_reload(tcp_pods, tcp_world, tcp_proxy) -> None:
    pod = await tcp_pods("east", "east/pod-0")
    lst = listener(tcp_world)
    config = tcp_world.config(lst, {"east": 1})
    state = tcp_world.state(config, {"east": [(pod.host, pod.port)]})
    old = await tcp_proxy(lst, config, state, reuse_port=True)
    reader, writer = await connect(old.port)
    assert await reader.readline() == b"east/pod-0\n"

    # The reload: a new listener object on the same port (SO_REUSEPORT), the old one drains.
    new_lst = listener(tcp_world, port=old.port, proxy_protocol="v1")
    new_config = tcp_world.config(new_lst, {"east": 1})
    new = await tcp_proxy(
        new_lst, new_config, tcp_world.state(new_config, {"east": [(pod.host, pod.port)]}), reuse_port=True
    )
    new_port = new.server.port
    assert new_port == old.port
    drain = asyncio.ensure_future(old.server.drain(10.0))
    await asyncio.sleep(0.05)
    assert not drain.done()

    writer.write(b"during drain\n")  # the old connection still works, with the old settings
    assert await reader.readline() == b"during drain\n"
    r2, w2 = await connect(new_port)  # new connections reach the new listener
    assert await r2.readline() == b"east/pod-0\n"
    assert (await r2.readline()).startswith(b"PROXY TCP4 ")
    # Both servers share the listener's name: the gauge is their sum, not whichever wrote last.
    assert old.server.name == new.server.name
    assert REGISTRY.get_sample_value("fedproxy_tcp_active_connections", {"listener": old.server.name}) == 2
    w2.close()
    assert old.server.stats()["accepted"] == 1

    writer.close()  # the last connection ends: the drain finishes long before its deadline
    await asyncio.wait_for(drain, 2)
    assert old.server.stats()["active"] == 0


async def test_drain_deadline_closes_what_is_left(tcp_pods, tcp_world, tcp_proxy) -> None:
    pod = await tcp_pods("east", "east/pod-0")
    lst = listener(tcp_world)
    config = tcp_world.config(lst, {"east": 1})
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [(pod.host, pod.port)]}))
    reader, writer = await connect(proxy.port)
    assert await reader.readline() == b"east/pod-0\n"
    await asyncio.wait_for(proxy.server.drain(0.2), 2)
    assert await closed(reader, 2)
    assert await eventually(lambda: not pod.connections)
    with pytest.raises(OSError):
        await connect(proxy.port)  # no longer listening
    writer.close()


async def test_connection_ended_during_connect_releases_everything(tcp_world, tcp_proxy) -> None:
    with blackhole() as port:
        # The idle timer fires while the upstream connect still hangs: the attempt is cancelled.
        lst = listener(tcp_world, connect_timeout=5.0, idle_timeout=0.2)
        config = tcp_world.config(lst, {"east": 1})
        proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [("127.0.0.1", port)]}))
        reader, writer = await connect(proxy.port)
        assert await eventually(lambda: proxy.server.stats()["active"] == 1)
        pool = proxy.holder[0].pool(proxy.server._settings.spec)
        assert pool.active  # the attempt counts against the endpoint while it runs
        assert await closed(reader, 2)
        assert await eventually(lambda: proxy.server.stats()["active"] == 0)
        assert not pool.active  # started/finished balanced
        assert proxy.reports == []  # not the endpoint's fault
        writer.close()


async def test_client_leaving_during_connect_is_released_after_the_attempt(tcp_world, tcp_proxy) -> None:
    # The client is not read until an upstream answers, so its FIN is seen once the attempt ends.
    with blackhole() as port:
        lst = listener(tcp_world, connect_timeout=0.2, connect_attempts=1)
        config = tcp_world.config(lst, {"east": 1})
        proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [("127.0.0.1", port)]}))
        _, writer = await connect(proxy.port)
        writer.close()
        assert await eventually(lambda: proxy.server.stats()["active"] == 0)
        assert not proxy.holder[0].pool(proxy.server._settings.spec).active
