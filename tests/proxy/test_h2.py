"""HTTP/2 through fedproxy over real loopback sockets, with small raw h2 peers built on the h2 package:
flow control in bounded memory, GOAWAY on malformed frames, h2 client to an HTTP/1.1 backend."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from prometheus_client import REGISTRY

from fedproxy.config import BalancingConfig, ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute
from fedproxy.model import ServiceKey

SERVICE = ServiceKey("demo", "web")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def rejections(service: str, limit: str) -> float:
    labels = {"service": service, "limit": limit}
    return REGISTRY.get_sample_value("fedproxy_circuit_breaker_rejections_total", labels) or 0.0


def make_config(upstream_protocol: str = "h2c") -> tuple[HttpListener, Config]:
    route = HttpRoute(SERVICE, upstream_protocol=upstream_protocol)  # type: ignore[arg-type]
    lst = HttpListener(port=0, address="127.0.0.1", name="h2", routes=(route,), h2c=True)
    return lst, Config(clusters=(ClusterConfig("east", local=True, pods_reachable=True),), http=HttpConfig((lst,)))


class RawClient:
    """A minimal HTTP/2 client: one connection, requests sent within the proxy's windows, events read on demand."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.events: list[h2.events.Event] = []

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.conn.initiate_connection()
        await self.flush()

    async def flush(self) -> None:
        assert self.writer is not None
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def recv(self, timeout: float = 5.0) -> bool:
        """Read once; False on EOF."""
        assert self.reader is not None
        async with asyncio.timeout(timeout):
            data = await self.reader.read(65536)
        if not data:
            return False
        self.events += self.conn.receive_data(data)
        await self.flush()
        return True

    async def send_body(self, sid: int, total: int, piece: int = 16384) -> bytes:
        """Send ``total`` pseudo-random bytes within the flow-control windows; returns their sha256."""
        digest = hashlib.sha256()
        block = bytes(range(256)) * (piece // 256)
        sent = 0
        while sent < total:
            window = min(self.conn.local_flow_control_window(sid), piece, total - sent)
            if window <= 0:
                await self.recv()
                continue
            data = block[:window]
            self.conn.send_data(sid, data)
            digest.update(data)
            sent += window
            self.sent = sent
            await self.flush()
        self.conn.end_stream(sid)
        await self.flush()
        return digest.digest()

    async def response(self, sid: int, timeout: float = 10.0) -> tuple[dict[bytes, bytes], bytes]:
        """Read until stream ``sid`` ends; acknowledges data as it reads (an unbounded reader)."""
        headers: dict[bytes, bytes] = {}
        body = b""
        async with asyncio.timeout(timeout):
            while True:
                events, self.events = self.events, []
                for i, ev in enumerate(events):
                    if getattr(ev, "stream_id", None) != sid:
                        self.events.append(ev)  # another stream's: kept for its reader
                    elif isinstance(ev, h2.events.ResponseReceived):
                        headers = dict(ev.headers)  # type: ignore[arg-type]
                    elif isinstance(ev, h2.events.DataReceived):
                        body += ev.data  # type: ignore[operator]
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)  # type: ignore[arg-type]
                    elif isinstance(ev, h2.events.StreamEnded):
                        self.events += events[i + 1 :]
                        await self.flush()
                        return headers, body
                    elif isinstance(ev, h2.events.StreamReset):
                        raise ConnectionResetError(f"stream reset {ev.error_code}")
                await self.flush()
                assert await self.recv(timeout), "connection closed"

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def request(client: RawClient, path: str, method: str = "GET", end: bool = True) -> int:
    sid = client.conn.get_next_available_stream_id()
    hdrs = [(":method", method), (":scheme", "http"), (":authority", "svc.example"), (":path", path)]
    client.conn.send_headers(sid, hdrs, end_stream=end)
    return sid


class SlowUpstream:
    """An h2c backend that hashes request bodies; while ``holding`` it acknowledges nothing (a stalled reader)."""

    def __init__(self) -> None:
        self.holding = True
        self.received = 0
        self.protocols: list[asyncio.Protocol] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        outer = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport
                self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
                self.c.initiate_connection()
                self.digests: dict[int, object] = {}
                self.held: list[tuple[int, int]] = []
                outer.protocols.append(self)
                self.t.write(self.c.data_to_send())  # type: ignore[attr-defined]

            def data_received(self, data: bytes) -> None:
                for ev in self.c.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        self.digests[ev.stream_id] = hashlib.sha256()  # type: ignore[index]
                    elif isinstance(ev, h2.events.DataReceived):
                        self.digests[ev.stream_id].update(ev.data)  # type: ignore[attr-defined,index]
                        outer.received += len(ev.data)  # type: ignore[arg-type]
                        if outer.holding:
                            self.held.append((ev.stream_id, ev.flow_controlled_length))  # type: ignore[arg-type]
                        else:
                            self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)  # type: ignore[arg-type]
                    elif isinstance(ev, h2.events.StreamEnded):
                        body = self.digests.pop(ev.stream_id).hexdigest().encode()  # type: ignore[attr-defined,arg-type]
                        self.c.send_headers(ev.stream_id, [(":status", "200"), ("content-length", str(len(body)))])  # type: ignore[arg-type]
                        self.c.send_data(ev.stream_id, body, end_stream=True)  # type: ignore[arg-type]
                self.t.write(self.c.data_to_send())  # type: ignore[attr-defined]

            def release(self) -> None:
                for sid, n in self.held:
                    self.c.acknowledge_received_data(n, sid)
                self.held = []
                self.t.write(self.c.data_to_send())  # type: ignore[attr-defined]

        self.server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def release(self) -> None:
        self.holding = False
        for p in self.protocols:
            p.release()  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for p in self.protocols:
                p.t.abort()  # type: ignore[attr-defined]
            await self.server.wait_closed()


@pytest.fixture
async def slow_upstream():
    up = SlowUpstream()
    await up.start()
    yield up
    await up.stop()


@pytest.fixture
async def client():
    c = RawClient()
    yield c
    c.close()


async def test_large_upload_in_bounded_memory(slow_upstream, client, http_proxy, http_world) -> None:
    lst, cfg = make_config("h2c")
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", slow_upstream.port)]}))
    await client.connect(px.port)
    sid = request(client, "/upload", "POST", end=False)
    await client.flush()
    total = 64 * 1024 * 1024
    client.sent = 0
    sender = asyncio.ensure_future(client.send_body(sid, total))
    try:
        # The backend acknowledges nothing: the proxy may only hold what the windows allow, so the client stalls
        # after the backend's window (64 KiB) plus the proxy's stream window (256 KiB), not after 64 MiB.
        await asyncio.sleep(0.5)
        stalled_at = client.sent
        await asyncio.sleep(0.3)
        assert client.sent == stalled_at, "the client kept sending: something buffers without flow control"
        assert 64 * 1024 <= stalled_at <= 1024 * 1024, stalled_at
        assert slow_upstream.received <= 65535
        slow_upstream.release()
        expected = await asyncio.wait_for(sender, 60)
    finally:
        if not sender.done():
            sender.cancel()
    headers, body = await client.response(sid, timeout=30)
    assert headers[b":status"] == b"200"
    assert body == expected.hex().encode()
    assert slow_upstream.received == total


async def test_malformed_frames_get_goaway_not_a_crash(http_pods, http_proxy, http_world) -> None:
    pod = await http_pods("east", "p1")
    lst, cfg = make_config("http1")
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    bad_frames = [
        b"\x00\x00\x04\x00\x00\x00\x00\x00\x00" + b"oops",  # DATA on stream 0 (PROTOCOL_ERROR)
        b"\x00\x00\x03\x04\x00\x00\x00\x00\x00" + b"abc",  # SETTINGS with a length not a multiple of 6
        b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"x" * 8,  # PING on a stream
    ]
    for frame in bad_frames:
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        writer.write(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + frame)
        async with asyncio.timeout(5):
            data = await reader.read()  # the proxy closes after its GOAWAY
        writer.close()
        parser = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        parser.initiate_connection()
        events = parser.receive_data(data)
        goaways = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaways and goaways[0].error_code != h2.errors.ErrorCodes.NO_ERROR, events
    # Still serving.
    c = RawClient()
    await c.connect(px.port)
    sid = request(c, "/after")
    await c.flush()
    headers, _ = await c.response(sid)
    c.close()
    assert headers[b":status"] == b"200"


async def test_h2_client_to_http1_backend(http_pods, http_proxy, http_world, client) -> None:
    pod = await http_pods("east", "p1")
    lst, cfg = make_config("http1")
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    await client.connect(px.port)
    # Several streams at once on one connection.
    sids = [request(client, f"/hello/{i}?x={i}") for i in range(4)]
    await client.flush()
    for i, sid in enumerate(sids):
        headers, body = await client.response(sid)
        assert headers[b":status"] == b"200"
        assert headers[b"x-backend"] == b"east/p1"
        assert b"connection" not in headers and b"transfer-encoding" not in headers
        info = json.loads(body)
        assert info["path"] == f"/hello/{i}" and info["query"] == {"x": str(i)}
        hdrs = {k.lower(): v for k, v in info["headers"].items()}
        assert hdrs["host"] == "svc.example" and hdrs["x-forwarded-for"] == "127.0.0.1"
    # A body without content-length goes chunked to HTTP/1.1 and streams back.
    sid = request(client, "/echo", "POST", end=False)
    await client.flush()
    digest = await client.send_body(sid, 3 * 1024 * 1024 + 5)
    headers, body = await client.response(sid, timeout=30)
    assert headers[b":status"] == b"200"
    assert hashlib.sha256(body).digest() == digest
    # Routing errors are answered on the stream, the connection stays.
    cfg_none = make_config("http1")[1]
    px.holder[0] = http_world.state(cfg_none, {})
    sid = request(client, "/gone")
    await client.flush()
    headers, body = await client.response(sid)
    assert headers[b":status"] == b"503" and b"no healthy endpoint" in body
    assert px.server.stats()["connections"] == 1


async def test_streams_over_max_requests_get_503_with_the_reason(http_pods, http_proxy, http_world, client) -> None:
    pod = await http_pods("east", "p1")
    lst, cfg = make_config("http1")
    cfg = replace(cfg, balancing=BalancingConfig(max_requests=2))
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    service = str(SERVICE)
    before = rejections(service, "max_requests")
    await client.connect(px.port)
    slow = [request(client, "/sleep?ms=400") for _ in range(2)]
    await client.flush()
    await asyncio.sleep(0.15)  # both slow streams hold their slots now
    refused = [request(client, f"/hello/{i}") for i in range(3)]
    await client.flush()
    for sid in refused:
        headers, body = await client.response(sid)
        assert headers[b":status"] == b"503", headers
        assert headers[b"x-fedproxy-reason"] == b"circuit-breaker max_requests"
        assert b"circuit breaker" in body
    for sid in slow:
        headers, _ = await client.response(sid)
        assert headers[b":status"] == b"200"
    assert rejections(service, "max_requests") - before == 3
    # The slots are released: the pool serves again.
    sid = request(client, "/after")
    await client.flush()
    assert (await client.response(sid))[0][b":status"] == b"200"
    pool = next(iter(px.holder[0].pools.values()))
    assert pool.breaker.counts["requests"] == 0 and pool.breaker.refused["requests"] == 3
    assert pool.breaker.counts["retries"] == 0


class RefusingUpstream:
    """An h2c backend whose first connection refuses the first request (``mode``: "goaway" sends
    GOAWAY(last_stream_id=0), "refuse" sends RST_STREAM(REFUSED_STREAM)); later connections answer 200."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self.served: list[int] = []  # connection number of each request answered
        self.transports: list[asyncio.Transport] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        outer = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                outer.connections += 1
                self.n = outer.connections
                self.t = transport
                outer.transports.append(transport)  # type: ignore[arg-type]
                self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
                self.c.initiate_connection()
                self.t.write(self.c.data_to_send())  # type: ignore[attr-defined]

            def data_received(self, data: bytes) -> None:
                for ev in self.c.receive_data(data):
                    if not isinstance(ev, h2.events.RequestReceived):
                        continue
                    sid = ev.stream_id
                    if self.n == 1 and outer.mode == "goaway":
                        self.c.close_connection(last_stream_id=0)
                    elif self.n == 1:
                        self.c.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)  # type: ignore[arg-type]
                    else:
                        outer.served.append(self.n)
                        self.c.send_headers(sid, [(":status", "200"), ("content-length", "2")])  # type: ignore[arg-type]
                        self.c.send_data(sid, b"ok", end_stream=True)  # type: ignore[arg-type]
                self.t.write(self.c.data_to_send())  # type: ignore[attr-defined]

        self.server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in self.transports:
                t.abort()
            await self.server.wait_closed()


@pytest.mark.parametrize("mode", ["goaway", "refuse"])
async def test_refused_stream_is_retried_on_a_fresh_connection_to_the_same_endpoint(
    mode, http_proxy, http_world, client
) -> None:
    up = RefusingUpstream(mode)
    await up.start()
    try:
        lst, cfg = make_config("h2c")
        px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", up.port)]}))
        await client.connect(px.port)
        sid = request(client, "/once", "POST")  # not idempotent: safe to resend because it was never processed
        await client.flush()
        headers, body = await client.response(sid)
        assert headers[b":status"] == b"200" and body == b"ok"
        assert up.connections == 2 and up.served == [2]
        pool = next(iter(px.holder[0].pools.values()))
        assert pool.breaker.counts["requests"] == 0 and pool.breaker.counts["retries"] == 0
    finally:
        await up.stop()
