"""Response heads through the HTTP proxy from a scripted upstream: forwarded as received when plain, rebuilt
when hop-by-hop headers or Via must change, 1xx before the final head, heads split over reads, and HEAD
followed by GET on one kept-alive upstream connection (its parser is reused between responses)."""

from __future__ import annotations

import asyncio

import pytest

from fedproxy.config import ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute
from fedproxy.model import ServiceKey

SERVICE = ServiceKey("demo", "web")  # the service http_world.state exports

# path -> response pieces written with a pause between them (the proxy sees separate reads)
SCRIPT: dict[bytes, list[bytes]] = {
    b"/plain": [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nConnection: keep-alive\r\n\r\nok"],
    b"/hop": [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\nVia: 1.0 other\r\nX-B: 2\r\n\r\nok"
    ],
    b"/early": [
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-C: 3\r\n\r\nabc"
    ],
    b"/split": [b"HTTP/1.1 201 Created\r\nX-D: ", b"4\r\nContent-Length: 4\r\n\r", b"\nabcd"],
    b"/head": [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-E: 5\r\n\r\n"],  # a HEAD response: no body
}


class ScriptedUpstream:
    """Answers each request on a connection from SCRIPT by its path; counts connections."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                for i, piece in enumerate(SCRIPT[path]):
                    if i:
                        await asyncio.sleep(0.02)
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def upstream():
    up = ScriptedUpstream()
    port = await up.start()
    yield up, port
    await up.stop()


Response = tuple[bytes, dict[str, str], bytes]  # status line, headers by lowercase name, body


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:-2]:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"duplicate {name}"
        headers[name.lower()] = value.strip()
    n = 0 if head_request else int(headers.get("content-length", "0"))
    body = await reader.readexactly(n)
    return lines[0].encode(), headers, body


async def test_response_heads_forwarded_or_rebuilt(upstream, http_proxy, http_world) -> None:
    up, port = upstream
    lst = HttpListener(port=0, address="127.0.0.1", name="heads", routes=(HttpRoute(SERVICE),))
    cfg = Config(clusters=(ClusterConfig("east", pods_reachable=True),), http=HttpConfig(listeners=(lst,)))
    px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", port)]}))
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:

        async def get(path: str, method: str = "GET") -> Response:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            async with asyncio.timeout(5):
                return await read_response(reader, head_request=method == "HEAD")

        for _ in range(2):  # the second round runs on the kept-alive upstream connection and its parser
            status, h, body = await get("/plain")
            assert (status, body, h["x-a"], h["via"]) == (b"HTTP/1.1 200 OK", b"ok", "1", "1.1 fedproxy")
            assert "connection" not in h
            status, h, body = await get("/hop")
            assert (status, body, h["x-b"], h["via"]) == (b"HTTP/1.1 200 OK", b"ok", "2", "1.0 other, 1.1 fedproxy")
            assert "x-hop" not in h and "keep-alive" not in h and "connection" not in h
            status, h, body = await get("/early")  # the 103 is dropped, the final head read after it
            assert (status, body, h["x-c"]) == (b"HTTP/1.1 200 OK", b"abc", "3")
            assert "link" not in h
            status, h, body = await get("/split")
            assert (status, body, h["x-d"], h["content-length"]) == (b"HTTP/1.1 201 Created", b"abcd", "4", "4")
            status, h, body = await get("/head", "HEAD")
            assert (status, body, h["x-e"], h["content-length"]) == (b"HTTP/1.1 200 OK", b"", "5", "5")
            status, h, body = await get("/plain")  # after a HEAD response the next one still parses right
            assert (status, body) == (b"HTTP/1.1 200 OK", b"ok")
        writer.write(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            status, h, body = await read_response(reader)
            assert (status, body, h["connection"]) == (b"HTTP/1.1 200 OK", b"ok", "close")
            assert await reader.read() == b""
    finally:
        writer.close()
    assert up.connections <= 2  # reused (a HEAD's connection may be replaced, nothing more)
