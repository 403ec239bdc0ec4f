"""The upstream HTTP/2 pool under concurrent gRPC load: streams share few connections, none is abandoned."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio

from fedproxy.config import ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute
from fedproxy.model import ServiceKey

SERVICE = ServiceKey("demo", "web")
BACKEND_STREAMS = 40  # the backend's SETTINGS_MAX_CONCURRENT_STREAMS (nginx: 128)


async def test_concurrent_unary_calls_share_few_upstream_connections(http_proxy, http_world) -> None:
    release = asyncio.Event()
    arrived = 0

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal arrived
        arrived += 1
        await release.wait()
        return b"ok:" + request

    handler = grpc.method_handlers_generic_handler("test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})
    backend = grpc.aio.server(options=(("grpc.max_concurrent_streams", BACKEND_STREAMS),))
    backend.add_generic_rpc_handlers((handler,))
    port = backend.add_insecure_port("127.0.0.1:0")
    await backend.start()
    try:
        route = HttpRoute(SERVICE, upstream_protocol="h2c")
        lst = HttpListener(port=0, address="127.0.0.1", name="grpc", routes=(route,), h2c=True)
        cfg = Config(clusters=(ClusterConfig("east", local=True),), http=HttpConfig(listeners=(lst,)))
        px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", port)]}))
        pool = px.server.h2_upstreams
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{px.port}") for _ in range(4)]
        try:
            # No warm-up: the first burst meets a fresh pool, and no stream may exceed the backend's limit
            # (a refused stream could not be retried: the service has one endpoint).
            for _round in range(3):
                release.clear()
                arrived = 0
                calls = [
                    asyncio.ensure_future(channels[i % 4].unary_unary("/test.Echo/Unary")(b"%d" % i, timeout=10))
                    for i in range(BACKEND_STREAMS + 20)
                ]
                # All of them reach the backend at once: the pool must have opened a second connection.
                async with asyncio.timeout(5):
                    while arrived < len(calls):
                        await asyncio.sleep(0.01)
                release.set()
                results = await asyncio.gather(*calls)
                assert results == [b"ok:%d" % i for i in range(len(calls))]
            assert pool.connects == 2  # one per BACKEND_STREAMS streams, reused round after round
            assert pool.open_count() == 2
        finally:
            for ch in channels:
                await ch.close()
    finally:
        await backend.stop(None)
