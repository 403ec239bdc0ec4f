"""Per-pool circuit breakers in the data paths over loopback: HTTP 503 with a reason, TCP close, counted."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp
from prometheus_client import REGISTRY

from fedproxy.config import BalancingConfig, ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute, TcpListener


def rejections(service: str, limit: str) -> float:
    labels = {"service": service, "limit": limit}
    return REGISTRY.get_sample_value("fedproxy_circuit_breaker_rejections_total", labels) or 0.0


async def test_http_requests_over_max_requests_get_503_with_the_reason(http_pods, http_world, http_proxy) -> None:
    pod = await http_pods("east", "pod-0")
    listener = HttpListener(0, address="127.0.0.1", routes=(HttpRoute(http_world.service),))
    config = Config(
        clusters=(ClusterConfig("east", pods_reachable=True),),
        http=HttpConfig((listener,), access_log="off"),
        balancing=BalancingConfig(max_requests=2),
    )
    proxy = await http_proxy(listener, config, http_world.state(config, {"east": [(pod.host, pod.port)]}))
    service = str(http_world.service)
    before = rejections(service, "max_requests")
    async with aiohttp.ClientSession() as session:

        async def get() -> tuple[int, str, str]:
            async with session.get(f"{proxy.url}/sleep?ms=400") as resp:
                return resp.status, resp.headers.get("x-fedproxy-reason", ""), await resp.text()

        slow = [asyncio.ensure_future(get()) for _ in range(2)]
        await asyncio.sleep(0.15)  # both slow requests hold their slots now
        refused = await asyncio.gather(*(get() for _ in range(3)))
        done = await asyncio.gather(*slow)
        assert [s for s, _, _ in done] == [200, 200]
        assert {(s, r) for s, r, _ in refused} == {(503, "circuit-breaker max_requests")}
        assert "circuit breaker" in refused[0][2]
        assert rejections(service, "max_requests") - before == 3
        # The slots are released: the pool serves again.
        assert (await get())[0] == 200
    pool = next(iter(proxy.holder[0].pools.values()))
    assert pool.breaker.counts["requests"] == 0 and pool.breaker.refused["requests"] == 3


async def test_tcp_connections_over_max_connections_are_closed(tcp_pods, tcp_world, tcp_proxy) -> None:
    pod = await tcp_pods("east", "east/pod-0")
    lst = TcpListener(service=tcp_world.service, port=0, address="127.0.0.1", name="t")
    config = replace(tcp_world.config(lst, {"east": 1}), balancing=BalancingConfig(max_connections=1))
    proxy = await tcp_proxy(lst, config, tcp_world.state(config, {"east": [(pod.host, pod.port)]}))
    before = rejections(str(tcp_world.service), "max_connections")
    first_r, first_w = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await first_r.readline() == b"east/pod-0\n"
    second_r, second_w = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        assert await asyncio.wait_for(second_r.read(), 5) == b""  # closed without reaching a backend
    except ConnectionResetError:
        pass
    assert pod.accepted == 1
    assert rejections(str(tcp_world.service), "max_connections") - before == 1
    first_w.close()
    second_w.close()
    for _ in range(100):  # the first connection's slot comes back once it is closed
        third_r, third_w = await asyncio.open_connection("127.0.0.1", proxy.port)
        line = await asyncio.wait_for(third_r.readline(), 5)
        third_w.close()
        if line == b"east/pod-0\n":
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the connection slot was never released")
