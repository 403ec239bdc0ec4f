"""The HTTP proxy's express lane (whole body-less request, whole Content-Length response) and every way out of it.

The backend here answers with exact bytes in exact writes, so the responses the lane serves (one read,
plain head) and those it must hand to the fast path (split, chunked, 5xx to retry, Connection: close,
malformed, never answered, dropped) are all exercised on the same keep-alive client connections; the pool's
counters must come back to zero whichever path served a request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct

from fedproxy.config import ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute, RetryPolicy, Timeouts
from fedproxy.model import ServiceKey

SERVICE = ServiceKey("demo", "web")

PLAIN = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-Pod: %b\r\n\r\nplain"


def make_config(routes: tuple[HttpRoute, ...] = (), clusters: dict[str, dict] | None = None):
    clusters = clusters or {"east": {"local": True}}
    lst = HttpListener(port=0, address="127.0.0.1", name="web", routes=routes or (HttpRoute(SERVICE),))
    cfg = Config(
        clusters=tuple(ClusterConfig(n, pods_reachable=True, **kw) for n, kw in clusters.items()),
        http=HttpConfig(listeners=(lst,)),
    )
    return lst, cfg


class _RawPod(asyncio.Protocol):
    """Answers by path: the response bytes and how they are written are the test's subject."""

    def __init__(self, pod: RawPod) -> None:
        self.pod = pod
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pod.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            size = int(m.group(1)) if m else 0
            if len(rest) < size:
                return
            self.buf = rest[size:]
            self.pod.heads.append(head)
            self.answer(head.split(b" ")[1], head.startswith(b"HEAD "))

    def answer(self, path: bytes, head_only: bool) -> None:
        t = self.transport
        assert t is not None
        name = self.pod.name
        if path.startswith(b"/plain") or path.startswith(b"/echo"):
            t.write(PLAIN % name if not head_only else (PLAIN % name)[:-5])
        elif path == b"/split":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
            asyncio.get_running_loop().call_later(0.02, t.write, b"X-Pod: %b\r\n\r\nsplit" % name)
        elif path == b"/chunked":
            t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n0\r\n\r\n")
        elif path == b"/close":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nclose")
            t.close()
        elif path == b"/503":
            t.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nX-Pod: %b\r\n\r\ndown" % name)
        elif path == b"/bad":  # two different Content-Lengths: llhttp refuses it
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")
        elif path == b"/drop":
            t.close()
        elif path == b"/hang":
            pass
        elif path == b"/slow":  # in flight long enough for the client to send more
            asyncio.get_running_loop().call_later(0.2, t.write, PLAIN % name)
        else:
            t.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


class RawPod:
    def __init__(self, name: bytes) -> None:
        self.name = name
        self.heads: list[bytes] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> RawPod:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _RawPod(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if head_only:
        return status, headers, b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:  # chunked (the only other framing the proxy sends a keep-alive client here)
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return status, headers, body


async def get(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, path: str, extra: str = ""):
    writer.write(f"GET {path} HTTP/1.1\r\nHost: app\r\n{extra}\r\n".encode())
    return await read_response(reader)


def idle(px) -> None:
    """Every request finished: no breaker slot, no active count left behind, whichever path served it."""
    pool = px.holder[0].pool(px.server.router.routes[0].spec)
    assert pool.breaker.counts["requests"] == 0, pool.breaker.counts
    assert not pool.load.active, pool.load.active


# (path, status the client gets, body; None: an error page of the proxy's)
MIX = [("/plain", 200, b"plain"), ("/split", 200, b"split"), ("/chunked", 200, b"chunk"), ("/plain?q=1", 200, b"plain"),
       ("/close", 200, b"close"), ("/503", 503, b"down"), ("/bad", 502, None), ("/drop", 502, None),
       ("/hang", 504, None), ("/plain", 200, b"plain")]  # fmt: skip


async def test_keep_alive_mix_of_responses_on_one_connection(http_proxy, http_world) -> None:
    pod = await RawPod(b"a").start()
    lst, cfg = make_config(routes=(HttpRoute(SERVICE, timeouts=Timeouts(response_header=0.3)),))
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        for round_ in range(3):
            for path, status, body in MIX:
                got_status, headers, got_body = await get(writer, reader, path)
                assert got_status == status, (round_, path, got_status, got_body)
                if body is not None:
                    assert got_body == body, (path, got_body)
                    assert headers["via"] == "1.1 fedproxy"
                assert headers.get("connection", "keep-alive") != "close", (path, headers)
    finally:
        writer.close()
    # What the backend saw of every request: forwarding lines and a request id added, nothing else changed.
    plain = [h for h in pod.heads if h.startswith(b"GET /plain ")]
    assert plain and all(b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in h and b"\r\nX-Request-Id: " in h for h in plain)
    assert all(h.count(b"\r\nHost: app") == 1 for h in pod.heads)
    assert pod.connections < 20  # kept-alive upstreams were reused (closed only by /close, /bad, /drop, /hang)
    idle(px)
    await pod.stop()


async def test_pipelined_and_split_requests_keep_their_order(http_proxy, http_world) -> None:
    pod = await RawPod(b"a").start()
    lst, cfg = make_config()
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        assert (await get(writer, reader, "/plain"))[0] == 200  # an idle upstream for what follows
        writer.write(b"GET /plain?n=1 HTTP/1.1\r\nHost: app\r\n\r\nGET /split HTTP/1.1\r\nHost: app\r\n\r\n"
                     b"GET /plain?n=3 HTTP/1.1\r\nHost: app\r\n\r\n")  # fmt: skip
        bodies = [(await read_response(reader))[2] for _ in range(3)]
        assert bodies == [b"plain", b"split", b"plain"]
        for part in (b"GET /plain?n=4 HT", b"TP/1.1\r\nHo", b"st: app\r\n", b"\r\n"):
            writer.write(part)
            await asyncio.sleep(0.02)
        assert (await read_response(reader))[2] == b"plain"
        status, headers, _ = await get(writer, reader, "/plain", "X-Request-Id: given-id\r\n")
        assert status == 200
        writer.write(b"HEAD /plain HTTP/1.1\r\nHost: app\r\n\r\n")
        status, headers, _ = await read_response(reader, head_only=True)
        assert status == 200 and headers["content-length"] == "5"
        assert (await get(writer, reader, "/plain"))[2] == b"plain"  # the HEAD left no body behind
        status, headers, body = await get(writer, reader, "/plain?last", "Connection: keep-alive\r\n")
        assert (status, body) == (200, b"plain") and "connection" not in headers
        status, headers, body = await get(writer, reader, "/plain?last", "Connection: close\r\n")
        assert (status, body, headers["connection"]) == (200, b"plain", "close")
        assert await reader.read() == b""  # closed after the response it asked to be the last
    finally:
        writer.close()
    assert [h.split(b"\r\n")[0] for h in pod.heads[1:4]] == [
        b"GET /plain?n=1 HTTP/1.1", b"GET /split HTTP/1.1", b"GET /plain?n=3 HTTP/1.1"]  # fmt: skip
    assert not any(b"onnection" in h for h in pod.heads)  # hop-by-hop: never forwarded
    given = [h for h in pod.heads if b"given-id" in h]
    assert len(given) == 1 and given[0].count(b"X-Request-Id") + given[0].count(b"x-request-id") == 1
    idle(px)
    await pod.stop()


async def test_retry_pin_and_bad_requests_still_apply(http_proxy, http_world) -> None:
    east, west = await RawPod(b"east").start(), await RawPod(b"west").start()
    route = HttpRoute(SERVICE, retries=RetryPolicy(on=("5xx",)))
    lst, cfg = make_config(routes=(route,), clusters={"east": {"local": True}, "west": {}})
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", east.port)],
                                                           "west": [("127.0.0.1", west.port)]}))  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        for _ in range(3):
            assert (await get(writer, reader, "/plain"))[1]["x-pod"] == "east"  # local first
        # A 503 from the local member is retried on the other one (east answers /503, west too: both tried).
        status, headers, _ = await get(writer, reader, "/503")
        assert status == 503 and len([h for h in east.heads + west.heads if b"/503" in h]) == 2
        status, headers, _ = await get(writer, reader, "/plain", "X-Fedproxy-Cluster: west\r\n")
        assert status == 200 and headers["x-pod"] == "west"
        writer.write(b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n")  # not a tunnel we open
        status, _, _ = await read_response(reader)
        assert status >= 400, status
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        writer.write(b"GET /plain HTTP/1.1\r\nHost: app\r\nBad Header: x\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")  # and the connection is closed
    finally:
        writer.close()
    assert not any(b"Bad Header" in h for h in east.heads + west.heads)
    idle(px)
    await east.stop()
    await west.stop()


async def test_client_gone_mid_request_leaves_nothing_behind(http_proxy, http_world) -> None:
    pod = await RawPod(b"a").start()
    lst, cfg = make_config()
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    assert (await get(writer, reader, "/plain"))[0] == 200
    writer.write(b"GET /hang HTTP/1.1\r\nHost: app\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # a reset, not a half-close (after which the response would still be awaited)
    pool = px.holder[0].pool(px.server.router.routes[0].spec)
    for _ in range(100):  # the upstream is closed, its loss handed on and the request's task ends
        await asyncio.sleep(0.02)
        if not px.server.connections and pool.breaker.counts["requests"] == 0:
            break
    idle(px)
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    assert (await get(writer, reader, "/plain"))[2] == b"plain"
    writer.close()
    await pod.stop()


async def test_each_response_counted_and_logged_once(http_proxy, http_world, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fedproxy.access")  # before the proxy is built: it decides per config
    pod = await RawPod(b"a").start()
    lst, cfg = make_config()
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    assert px.server.log_on
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        for path in ("/plain", "/plain", "/split", "/503", "/plain"):
            await get(writer, reader, path)
    finally:
        writer.close()
    assert px.server.stats()["responses"] == {"2xx": 4, "5xx": 1}
    lines = [r.getMessage() for r in caplog.records if r.name == "fedproxy.access"]
    assert len(lines) == 5 and sum("status=200" in line for line in lines) == 4, lines
    assert all("request_id=" in line and "bytes_out=" in line for line in lines)
    await pod.stop()


async def test_pipelined_upgrade_behind_an_express_request_gets_that_response_first(http_proxy, http_world) -> None:
    pod = await RawPod(b"a").start()
    lst, cfg = make_config()
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    for second in (b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                   b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n"):  # fmt: skip
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        assert (await get(writer, reader, "/plain"))[0] == 200  # an idle upstream: /slow takes the lane
        writer.write(b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
        await asyncio.sleep(0.05)
        writer.write(second)  # the full parser meets an upgrade while the express exchange is in flight
        status, _, body = await asyncio.wait_for(read_response(reader), 2)
        assert (status, body) == (200, b"plain")
        writer.close()
    await asyncio.sleep(0.1)
    idle(px)
    await pod.stop()


async def test_missing_or_repeated_host_is_400_on_either_path(http_proxy, http_world) -> None:
    pod = await RawPod(b"a").start()
    lst, cfg = make_config()
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    bad = (b"GET /plain HTTP/1.1\r\n\r\n", b"GET /plain HTTP/1.1\r\nAccept: */*\r\n\r\n",
           b"GET /plain HTTP/1.1\r\nHost: app\r\nHost: admin.internal\r\n\r\n")  # fmt: skip
    for warm in (False, True):  # first on the connection, or with an idle upstream (the lane would take it)
        for request in bad:
            reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
            if warm:
                assert (await get(writer, reader, "/plain"))[0] == 200
            writer.write(request)
            status, headers, _ = await asyncio.wait_for(read_response(reader), 2)
            assert (status, headers.get("connection")) == (400, "close"), request
            writer.close()
    # RFC 9112 3.2: which Host would the upstream route by? Neither reached it; HTTP/1.0 needs none.
    assert all(h.count(b"\nHost:") == 1 for h in pod.heads) and len(pod.heads) == 3
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    writer.write(b"GET /plain HTTP/1.0\r\n\r\n")
    assert (await asyncio.wait_for(read_response(reader), 2))[0] == 200
    writer.close()
    idle(px)
    await pod.stop()


async def test_the_proxys_own_error_answer_to_head_has_no_body(http_proxy, http_world) -> None:
    pod = await RawPod(b"a").start()
    lst, cfg = make_config(routes=(HttpRoute(SERVICE, timeouts=Timeouts(response_header=0.1)),))
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    writer.write(b"HEAD /hang HTTP/1.1\r\nHost: app\r\n\r\n")
    status, headers, _ = await asyncio.wait_for(read_response(reader, head_only=True), 2)
    assert status == 504 and headers.get("connection") != "close"
    # The connection is still in step: the next response is read as a response, not after a stray body.
    status, _, body = await asyncio.wait_for(get(writer, reader, "/plain"), 2)
    assert (status, body) == (200, b"plain")
    writer.close()
    await pod.stop()


async def test_a_5xx_with_no_endpoint_left_to_retry_on_is_passed_on(http_proxy, http_world) -> None:
    pod = await RawPod(b"a").start()
    lst, cfg = make_config(routes=(HttpRoute(SERVICE, retries=RetryPolicy(on=("5xx",))),))
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", pod.port)]}))
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    for _ in range(2):  # the first on a new upstream connection (task path), the second on the lane
        status, headers, body = await asyncio.wait_for(get(writer, reader, "/503"), 2)
        # Retries never reuse an endpoint: with none left, the backend's answer is the answer (not a 502).
        assert (status, body, headers.get("x-pod")) == (503, b"down", "a")
    writer.close()
    assert len(pod.heads) == 2
    idle(px)
    await pod.stop()
