"""HTTP proxy streaming and protocol behaviour: large bodies in bounded memory, chunked, websocket,
HEAD/204, HTTP/1.0, 100-continue, route hot swap and drain with requests in flight."""

from __future__ import annotations

import asyncio
import hashlib
import resource

import aiohttp
from aiohttp import web

from fedproxy.config import ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute
from fedproxy.model import ServiceKey

SERVICE = ServiceKey("demo", "web")
OTHER = ServiceKey("demo", "other")


def make_config(routes: tuple[HttpRoute, ...] = (), **listener: object) -> tuple[HttpListener, Config]:
    lst = HttpListener(port=0, address="127.0.0.1", name="web", routes=routes or (HttpRoute(SERVICE),), **listener)  # type: ignore[arg-type]
    return lst, Config(clusters=(ClusterConfig("east", local=True, pods_reachable=True),), http=HttpConfig((lst,)))


async def start_one(http_pods, http_proxy, http_world, **listener: object):
    pod = await http_pods("east", "p1")
    lst, cfg = make_config(**listener)
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    return pod, px


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_large_upload_and_download_stream_in_bounded_memory(http_pods, http_proxy, http_world) -> None:
    _pod, px = await start_one(http_pods, http_proxy, http_world)
    total = 256 * 1024 * 1024
    block = b"z" * (256 * 1024)

    async def body():
        for _ in range(total // len(block)):
            yield block

    digest = hashlib.sha256()
    for _ in range(total // len(block)):
        digest.update(block)
    before = rss_peak_mb()
    async with aiohttp.ClientSession() as s:
        async with s.post(px.url + "/upload", data=body(), headers={"Content-Length": str(total)}) as r:
            assert r.status == 200
            info = await r.json()
        assert info["body_length"] == total
        assert info["body_sha256"] == digest.hexdigest()
        async with s.get(px.url + f"/stream?bytes={total}") as r:
            got = 0
            async for part in r.content.iter_chunked(1 << 20):
                got += len(part)
        assert got == total
    # Everything (client, proxy, backend) runs in this process: a buffering proxy would add >= 256 MiB.
    assert rss_peak_mb() - before < 100


async def test_chunked_both_ways(http_pods, http_proxy, http_world) -> None:
    _pod, px = await start_one(http_pods, http_proxy, http_world)

    async def body():
        for i in range(50):
            yield b"chunk-%d;" % i

    expected = b"".join(b"chunk-%d;" % i for i in range(50))
    async with aiohttp.ClientSession() as s, s.post(px.url + "/echo", data=body()) as r:
        assert r.status == 200
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert await r.read() == expected


async def test_websocket_echo(http_proxy, http_world) -> None:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        lst, cfg = make_config()
        px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", runner.addresses[0][1])]}))
        async with aiohttp.ClientSession() as s, s.ws_connect(px.url + "/ws") as ws:
            for i in range(5):
                await ws.send_str(f"hello {i}")
                assert (await ws.receive_str()) == f"hello {i}"
            await ws.send_bytes(b"\x00" * 100_000)
            assert (await ws.receive_bytes()) == b"\x00" * 100_000
    finally:
        await runner.cleanup()


async def test_head_204_and_http10(http_pods, http_proxy, http_world) -> None:
    _pod, px = await start_one(http_pods, http_proxy, http_world)
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        # HEAD and 204 on one keep-alive connection: neither has a body, the next response parses cleanly.
        writer.write(b"HEAD /stream?bytes=1000 HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 1000" in head
        writer.write(b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 204 ")
        writer.write(b"GET /stream?bytes=10 HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await reader.readexactly(10) == b"x" * 10
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        writer.write(b"GET /echo-info HTTP/1.0\r\nHost: a\r\n\r\n")
        out = await asyncio.wait_for(reader.read(), 5)  # HTTP/1.0 without keep-alive: the proxy closes
        assert out.startswith(b"HTTP/1.1 200 ") and b'"cluster": "east"' in out.replace(b'":"', b'": "')
    finally:
        writer.close()


async def test_expect_100_continue(http_pods, http_proxy, http_world) -> None:
    _pod, px = await start_one(http_pods, http_proxy, http_world)
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()


async def test_route_hot_swap_with_request_in_flight(http_pods, http_proxy, http_world) -> None:
    old = await http_pods("east", "old")
    new = await http_pods("east", "new")
    lst, cfg = make_config()
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", old.port)]}))
    async with aiohttp.ClientSession() as s:
        slow = asyncio.ensure_future(s.get(px.url + "/sleep?ms=400"))
        await asyncio.sleep(0.15)
        # The runtime's swap: new state and new routes in one synchronous step.
        px.holder[0] = http_world.state(cfg, {"east": [("127.0.0.1", new.port)]}, version=2)
        px.server.update(lst, cfg)
        async with s.get(px.url + "/") as r:
            assert r.headers["x-backend"] == "east/new"
        r = await slow
        assert r.status == 200 and r.headers["x-backend"] == "east/old"
        r.release()


async def test_drain_lets_in_flight_request_finish(http_pods, http_proxy, http_world) -> None:
    _pod, px = await start_one(http_pods, http_proxy, http_world)
    async with aiohttp.ClientSession() as s:
        async with s.get(px.url + "/") as r:  # an idle keep-alive connection, closed by the drain
            assert r.status == 200
        slow = asyncio.ensure_future(s.get(px.url + "/sleep?ms=300"))
        await asyncio.sleep(0.1)
        await px.server.drain(5.0)
        r = await slow
        assert r.status == 200 and r.headers.get("Connection") == "close"
        r.release()
    assert not px.server.connections
    try:
        await asyncio.open_connection("127.0.0.1", px.port)
        raise AssertionError("still accepting after drain")
    except OSError:
        pass


async def test_header_and_cookie_routes_and_pinning(http_pods, http_proxy, http_world) -> None:
    east = await http_pods("east", "e1")
    west = await http_pods("west", "w1")
    routes = (
        HttpRoute(SERVICE, headers={"x-canary": "1"}, clusters={"west": 1}),
        HttpRoute(SERVICE, cookies={"beta": "yes"}, clusters={"west": 1}),
        HttpRoute(SERVICE),
    )
    lst = HttpListener(port=0, address="127.0.0.1", name="web", routes=routes)
    cfg = Config(
        clusters=(ClusterConfig("east", local=True, pods_reachable=True), ClusterConfig("west", pods_reachable=True)),
        http=HttpConfig((lst,)),
    )
    pods = {"east": [("127.0.0.1", east.port)], "west": [("127.0.0.1", west.port)]}
    px = await http_proxy(lst, cfg, http_world.state(cfg, pods))
    async with aiohttp.ClientSession() as s:

        async def who(**kw: object) -> str:
            async with s.get(px.url + "/", **kw) as r:  # type: ignore[arg-type]
                assert r.status == 200
                return r.headers["x-backend"]

        assert await who() == "east/e1"
        assert await who(headers={"X-Canary": "1"}) == "west/w1"
        assert await who(headers={"Cookie": "a=b; beta=yes"}) == "west/w1"
        assert await who(headers={"x-fedproxy-cluster": "west"}) == "west/w1"
