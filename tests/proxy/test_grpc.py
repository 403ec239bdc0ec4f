"""gRPC through fedproxy over real loopback sockets: grpcio client -> h2c listener -> h2c upstreams in two clusters."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from fedproxy.config import ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute
from fedproxy.model import ServiceKey

SERVICE = ServiceKey("demo", "web")


class GrpcPod:
    """A grpcio server with generic handlers (bytes in, bytes out): Unary, Stream (n replies), Fail (UNAVAILABLE)."""

    def __init__(self, name: str, unavailable: bool = False) -> None:
        self.name = name
        self.unavailable = unavailable
        self.calls = 0
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls += 1
            if self.unavailable:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "pod going away")
            return self.name.encode() + b":" + request

        async def stream(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
            self.calls += 1
            for i in range(int(request)):
                yield b"%s:%d:" % (self.name.encode(), i) + b"x" * 1000

        handler = grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "Stream": grpc.unary_stream_rpc_method_handler(stream),
            },
        )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


@pytest.fixture
async def grpc_pods():
    pods: list[GrpcPod] = []

    async def make(name: str, **kw: object) -> GrpcPod:
        pod = GrpcPod(name, **kw)  # type: ignore[arg-type]
        await pod.start()
        pods.append(pod)
        return pod

    yield make
    for pod in pods:
        await pod.stop()


def grpc_config() -> tuple[HttpListener, Config]:
    route = HttpRoute(SERVICE, upstream_protocol="h2c")
    lst = HttpListener(port=0, address="127.0.0.1", name="grpc", routes=(route,), h2c=True)
    clusters = (ClusterConfig("east", local=True, pods_reachable=True), ClusterConfig("west", pods_reachable=True))
    return lst, Config(clusters=clusters, http=HttpConfig(listeners=(lst,)))


async def test_unary_and_server_streaming_then_failover(grpc_pods, http_proxy, http_world) -> None:
    east = await grpc_pods("east")
    west = await grpc_pods("west")
    lst, cfg = grpc_config()
    state = http_world.state(cfg, {"east": [("127.0.0.1", east.port)], "west": [("127.0.0.1", west.port)]})
    px = await http_proxy(lst, cfg, state)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{px.port}") as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        stream = channel.unary_stream("/test.Echo/Stream")
        for i in range(5):  # local first: every call goes to east while it is healthy
            assert await unary(b"hi%d" % i, timeout=5) == b"east:hi%d" % i
        replies = [r async for r in stream(b"50", timeout=5)]
        assert len(replies) == 50 and all(r.startswith(b"east:") for r in replies)
        assert replies[7].startswith(b"east:7:") and len(replies[7]) == len(b"east:7:") + 1000
        # The local backend dies: the next call fails over to the other member.
        await east.stop()
        assert await unary(b"after", timeout=5) == b"west:after"
        replies = [r async for r in stream(b"3", timeout=5)]
        assert [r[:7] for r in replies] == [b"west:0:", b"west:1:", b"west:2:"]
    assert px.server.h2_upstreams.connects >= 2  # one multiplexed connection per endpoint, reused
    assert px.server.h2_upstreams.reuses >= 5
    east_reports = [ok for ep, ok in px.reports if ep.cluster == "east"]
    assert False in east_reports  # passive health heard about the dead endpoint
    assert all(ok for ep, ok in px.reports if ep.cluster == "west")


async def test_unavailable_is_retried_on_another_cluster(grpc_pods, http_proxy, http_world) -> None:
    east = await grpc_pods("east", unavailable=True)
    west = await grpc_pods("west")
    lst, cfg = grpc_config()
    state = http_world.state(cfg, {"east": [("127.0.0.1", east.port)], "west": [("127.0.0.1", west.port)]})
    px = await http_proxy(lst, cfg, state)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{px.port}") as channel:
        assert await channel.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"west:x"
    assert east.calls == 1 and west.calls == 1  # never the same endpoint twice
    assert tuple(ok for _, ok in px.reports) == (False, True)


async def test_unavailable_from_the_only_endpoint_is_passed_on(grpc_pods, http_proxy, http_world) -> None:
    east = await grpc_pods("east", unavailable=True)
    lst, cfg = grpc_config()
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", east.port)]}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{px.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    # No endpoint left to retry on: the backend's own status and message, not a proxy error in their place.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and info.value.details() == "pod going away"
    assert east.calls == 1


async def test_proxy_errors_reach_grpc_clients_as_status(grpc_pods, http_proxy, http_world) -> None:
    lst, cfg = grpc_config()
    refused = http_world.refused_port()
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", refused)]}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{px.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # 502 from the proxy, mapped per gRPC's table
    assert "failed: refused" in (info.value.details() or "")  # the one endpoint's failure is the answer
