"""The Python floor: the least an asyncio HTTP/1.1 proxy on uvloop can do per request, measured beside fedproxy.

shared/PERFORMANCE.md's "asyncio Protocol, parses only the request head and Content-Length, pooled keep-alive
upstreams" row, as a subject of the HTTP scenario: no routing, no balancing, no header rewriting, no metrics, no
timeouts, one upstream address. It shows, on the machine and in the run at hand, how much of the gap between
fedproxy and nginx is Python itself and how much is fedproxy's work per request. Not a proxy to use: it trusts
its peers (GET-style requests without bodies, Content-Length responses in order) and is measured with
keep-alive clients only.

Run: ``python -m benchmarks.floor_proxy LISTEN_PORT UPSTREAM_PORT``.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, idle: list[Upstream]) -> None:
        self.idle = idle
        self.client: Client | None = None
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None and client.transport is not None and not client.transport.is_closing():
            client.transport.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        self.idle.append(self)
        if client is not None and client.close_after and client.transport is not None:
            client.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.idle:
            self.idle.remove(self)


class Client(asyncio.Protocol):
    def __init__(self, upstream_port: int, idle: list[Upstream]) -> None:
        self.upstream_port = upstream_port
        self.idle = idle
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.data = b""
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data = data
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        data = self.data
        self.close_after = not self.parser.should_keep_alive()
        while self.idle:
            up = self.idle.pop()
            if up.transport is not None and not up.transport.is_closing():
                up.client = self
                up.transport.write(data)
                return
        asyncio.ensure_future(self._connect(data))

    async def _connect(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: Upstream(self.idle), "127.0.0.1", self.upstream_port)
        up.client = self
        up.transport.write(data)  # type: ignore[union-attr]


def main() -> None:
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])
    idle: list[Upstream] = []
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(loop.create_server(lambda: Client(upstream, idle), "127.0.0.1", listen, backlog=4096))
    loop.run_forever()


if __name__ == "__main__":
    main()
