"""HTTP proxy over real loopback sockets: routing, balancing, failover, errors, protocol edge cases."""

from __future__ import annotations

import asyncio
import collections

import aiohttp
import pytest

from fedproxy.config import ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute, RetryPolicy, Timeouts
from fedproxy.model import ServiceKey

SERVICE = ServiceKey("demo", "web")


def make_config(routes: tuple[HttpRoute, ...] = (), clusters: dict[str, dict] | None = None, **listener: object):
    clusters = clusters or {"east": {"local": True}}
    routes = routes or (HttpRoute(SERVICE),)
    lst = HttpListener(port=0, address="127.0.0.1", name="web", routes=routes, **listener)  # type: ignore[arg-type]
    cfg = Config(
        clusters=tuple(ClusterConfig(n, pods_reachable=True, **kw) for n, kw in clusters.items()),
        http=HttpConfig(listeners=(lst,)),
    )
    return lst, cfg


async def raw(port: int, data: bytes, read_until_close: bool = True, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(timeout):
            out = await reader.read() if read_until_close else await reader.read(65536)
    finally:
        writer.close()
    return out


async def test_basic_get_and_headers(http_pods, http_proxy, http_world) -> None:
    pod = await http_pods("east", "p1")
    lst, cfg = make_config()
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(px.url + "/hello?x=1", headers={"X-Forwarded-For": "10.1.1.1"}) as r:
                assert r.status == 200
                info = await r.json()
                assert r.headers["x-backend"] == "east/p1"
                assert "fedproxy" in r.headers["Via"]
    hdrs = {k.lower(): v for k, v in info["headers"].items()}
    assert info["path"] == "/hello" and info["query"] == {"x": "1"}
    assert hdrs["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert hdrs["x-forwarded-proto"] == "http"
    assert hdrs["x-forwarded-host"] == f"127.0.0.1:{px.port}"
    assert "for=127.0.0.1" in hdrs["forwarded"]
    assert hdrs["via"] == "1.1 fedproxy"
    assert len(hdrs["x-request-id"]) == 16
    assert px.server.stats()["upstream_reuses"] >= 2
    assert [ok for _, ok in px.reports] == [True, True, True]


async def test_weighted_share_and_local_first(http_pods, http_proxy, http_world) -> None:
    east = [await http_pods("east", f"e{i}") for i in range(2)]
    west = [await http_pods("west", f"w{i}") for i in range(2)]
    pods = {"east": [("127.0.0.1", p.port) for p in east], "west": [("127.0.0.1", p.port) for p in west]}
    # Same tier (no local member): weights 3:1 between members.
    lst, cfg = make_config(clusters={"east": {"weight": 3}, "west": {"weight": 1}})
    px = await http_proxy(lst, cfg, http_world.state(cfg, pods))
    seen: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            async with s.get(px.url + "/") as r:
                assert r.status == 200
                seen[r.headers["x-backend"].split("/")[0]] += 1
    assert 130 <= seen["east"] <= 170, seen
    # A local member takes everything while healthy.
    lst, cfg = make_config(clusters={"east": {"local": True}, "west": {}})
    px.holder[0] = http_world.state(cfg, pods)
    px.server.update(lst, cfg)
    seen.clear()
    async with aiohttp.ClientSession() as s:
        for _ in range(50):
            async with s.get(px.url + "/") as r:
                seen[r.headers["x-backend"].split("/")[0]] += 1
    assert seen == {"east": 50}


async def test_killing_local_backends_fails_over_without_errors(http_pods, http_proxy, http_world) -> None:
    from fedproxy.balancing import build_state
    from fedproxy.balancing.health import OutlierDetector
    from fedproxy.catalog import build_catalog

    east = [await http_pods("east", f"e{i}") for i in range(2)]
    west = [await http_pods("west", "w0")]
    pods = {"east": [("127.0.0.1", p.port) for p in east], "west": [("127.0.0.1", west[0].port)]}
    lst, cfg = make_config(clusters={"east": {"local": True}, "west": {}})
    catalog = build_catalog([http_world.snapshot(c, eps) for c, eps in pods.items()], cfg, 1)
    detector = OutlierDetector(cfg.balancing.outlier, seed=1)
    loop = asyncio.get_running_loop()
    holder: list = []

    def report(ep, ok) -> None:  # what the runtime does: feed the detector, rebuild the state on ejection
        if ok:
            detector.success(ep, loop.time())
        elif detector.failure(ep, loop.time()):
            holder[0][0] = build_state(cfg, catalog, detector.view(loop.time()), version=2)

    px = await http_proxy(lst, cfg, build_state(cfg, catalog, version=1), report=report)
    holder.append(px.holder)
    statuses: collections.Counter[int] = collections.Counter()
    clusters: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession() as s:
        for i in range(60):
            if i == 10:
                for p in east:
                    await p.stop()
            async with s.get(px.url + "/") as r:
                statuses[r.status] += 1
                if i >= 10:
                    clusters[r.headers["x-backend"].split("/")[0]] += 1
    assert statuses == {200: 60}
    assert clusters == {"west": 50}
    assert px.holder[0].health.unhealthy  # the dead local pods were ejected
    assert px.server.stats()["responses"] == {"2xx": 60}


async def test_no_route_404_no_endpoint_503_unreachable_502(http_proxy, http_world) -> None:
    refused = http_world.refused_port()
    routes = (HttpRoute(SERVICE, host="app.example.com"), HttpRoute(ServiceKey("demo", "missing"), path_prefix="/m"))
    lst, cfg = make_config(routes=routes)
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", refused)]}))
    async with aiohttp.ClientSession() as s:
        async with s.get(px.url + "/", headers={"Host": "other.example.com"}) as r:
            assert r.status == 404
            assert "no route" in await r.text()
        async with s.get(px.url + "/m/x", headers={"Host": "other.example.com"}) as r:
            assert r.status == 503
            assert "demo/missing" in await r.text()
        async with s.get(px.url + "/", headers={"Host": "APP.example.com:80"}) as r:
            assert r.status == 502
        async with s.get(px.url + "/", headers={"Host": "app.example.com", "x-fedproxy-cluster": "west"}) as r:
            assert r.status == 503
            assert "west" in await r.text()
    assert [ok for _, ok in px.reports] == [False]


async def test_upstream_timeout_504(http_pods, http_proxy, http_world) -> None:
    pod = await http_pods("east", "p1")
    lst, cfg = make_config(routes=(HttpRoute(SERVICE, timeouts=Timeouts(response_header=0.2)),))
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    async with aiohttp.ClientSession() as s, s.get(px.url + "/sleep?ms=2000") as r:
        assert r.status == 504


async def test_5xx_retry_opt_in_goes_to_another_endpoint(http_proxy, http_world) -> None:
    from aiohttp import web

    hits: collections.Counter[str] = collections.Counter()

    async def bad(request: web.Request) -> web.Response:
        hits["bad"] += 1
        return web.Response(status=503, text="down")

    async def good(request: web.Request) -> web.Response:
        hits["good"] += 1
        return web.Response(text="ok")

    runners = []
    ports = []
    for handler in (bad, good):
        app = web.Application()
        app.router.add_route("*", "/{t:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports.append(runner.addresses[0][1])
    try:
        route = HttpRoute(SERVICE, retries=RetryPolicy(on=("5xx",)))
        lst, cfg = make_config(routes=(route,), clusters={"east": {"local": True}, "west": {}})
        pods = {"east": [("127.0.0.1", ports[0])], "west": [("127.0.0.1", ports[1])]}
        px = await http_proxy(lst, cfg, http_world.state(cfg, pods))
        async with aiohttp.ClientSession() as s:
            for _ in range(6):
                async with s.get(px.url + "/") as r:
                    assert r.status == 200
        assert hits["good"] == 6 and hits["bad"] == 6  # local first, then the retry to the other member
        # Without the opt-in the 503 is passed on as it is.
        lst, cfg = make_config()
        px.server.update(lst, cfg)
        px.holder[0] = http_world.state(cfg, {"east": [("127.0.0.1", ports[0])]})
        async with aiohttp.ClientSession() as s, s.get(px.url + "/") as r:
            assert r.status == 503 and await r.text() == "down"
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 5000 + b"\r\n\r\n", 431),
    ],
)
async def test_bad_requests_are_rejected_not_forwarded(http_pods, http_proxy, http_world, request_bytes, status):
    pod = await http_pods("east", "p1")
    lst, cfg = make_config(max_header_bytes=4096)
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    out = await raw(px.port, request_bytes)
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:100]
    assert pod.requests == 0


async def test_slow_client_gets_408(http_proxy, http_world) -> None:
    lst, cfg = make_config(request_head_timeout=0.2)
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": []}))
    out = await raw(px.port, b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert out.startswith(b"HTTP/1.1 408 ")
