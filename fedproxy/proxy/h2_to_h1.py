"""An HTTP/2 stream sent to an HTTP/1.1 backend over the existing keep-alive pool (upstream.py).

``H1Call`` is a ``Sink`` of an ``UpstreamProtocol`` and offers the forwarding side the same interface as
``H2Call``: response events from ``get()``, ``ack(n)`` once passed on, ``send_data`` for the request body.
The request head is built by ``http_head.request_head`` (hop-by-hop stripped, X-Forwarded-* added); a body
without content-length goes chunked. Back-pressure without HTTP/2 windows: the upstream transport stops being
read while more than ``QUEUE_LIMIT`` response bytes wait for the client's window, and request bytes wait while
the upstream's write buffer is full.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..config import UpstreamTls
from ..model import Endpoint
from . import http_head
from .h2_stream import Event, Headers
from .upstream import UpstreamPool, UpstreamProtocol

QUEUE_LIMIT = 256 * 1024  # response bytes queued before the backend is no longer read (one h2 stream window)

_DROP_RESPONSE = http_head.HOP_BY_HOP | {b"transfer-encoding", b"keep-alive", b"proxy-connection"}


class _WriteGate:
    """Stands for the client's FlowControl in ``UpstreamProtocol.attach_flow``: awaitable while paused."""

    __slots__ = ("paused", "waiter")

    def __init__(self) -> None:
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    def pause_reading(self, reason: str) -> None:
        self.paused = True

    def resume_reading(self, reason: str) -> None:
        self.paused = False
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        while self.paused:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter


class H1Call:
    """One request on a pooled HTTP/1.1 connection, seen through the HTTP/2 call interface."""

    def __init__(self, pool: UpstreamPool, up: UpstreamProtocol, head_request: bool) -> None:
        self.pool = pool
        self.up = up
        self.events: deque[Event] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.queued = 0
        self.read_paused = False
        self.chunked = False
        self.sent_end = False
        self.gate = _WriteGate()
        up.begin(self, head_request)
        up.attach_flow(self.gate)  # type: ignore[arg-type]  # duck-typed: pause_reading/resume_reading

    def send_head(self, method: bytes, target: bytes, headers: Headers, *, client_ip: str, host: bytes,
                  request_id: bytes, has_request_id: bool, end_stream: bool,
                  scheme: bytes = b"http") -> None:  # fmt: skip
        """Write the request head; without content-length a body that follows is sent chunked."""
        has_length = any(n == b"content-length" for n, _ in headers)
        self.chunked = not end_stream and not has_length
        head = http_head.request_head(method, target, [(b"host", host), *headers], client_ip=client_ip, host=host,
                                      request_id=request_id, has_request_id=has_request_id, chunked=self.chunked,
                                      websocket=False, scheme=scheme)  # fmt: skip
        self.sent_end = end_stream
        self._write(head)

    def _write(self, data: bytes) -> None:
        if self.up.transport is not None and not self.up.closed:
            self.up.transport.write(data)

    # The call interface (see h2_upstream.H2Call)

    async def get(self) -> Event:
        while not self.events:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.events.popleft()

    def ack(self, length: int) -> None:
        self.queued -= length
        if self.read_paused and self.queued <= QUEUE_LIMIT // 2 and self.up.transport is not None:
            self.read_paused = False
            if not self.up.transport.is_closing():
                self.up.transport.resume_reading()

    async def send_data(self, data: bytes, end_stream: bool) -> None:
        await self.gate.wait()
        if data:
            self._write(http_head.chunk(data) if self.chunked else data)
        if end_stream:
            self.sent_end = True
            if self.chunked:
                self._write(http_head.CHUNK_END)

    def send_trailers(self, headers: Headers) -> None:
        # Request trailers are not forwarded to HTTP/1.1 (rare outside gRPC); the body ends here.
        if not self.sent_end:
            self.sent_end = True
            if self.chunked:
                self._write(http_head.CHUNK_END)

    def finish(self, ok: bool) -> None:
        """Back to the pool when the exchange completed cleanly, else closed."""
        if ok and self.sent_end and self.up.reusable and not self.read_paused:
            self.pool.release(self.up, 60.0)
        else:
            self.up.detach()
            self.up.close()

    # Sink (UpstreamProtocol callbacks)

    def _push(self, event: Event) -> None:
        self.events.append(event)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def on_response_head(self, up: UpstreamProtocol) -> None:
        drop = _DROP_RESPONSE | http_head.connection_tokens(up.headers)
        headers = [(b":status", b"%d" % up.status)]
        headers += [(n.lower(), v) for n, v in up.headers if n.lower() not in drop]
        self._push(("headers", headers, False))

    def on_response_body(self, data: bytes) -> None:
        self.queued += len(data)
        self._push(("data", data, len(data), False))
        if self.queued > QUEUE_LIMIT and not self.read_paused and self.up.transport is not None:
            self.read_paused = True
            self.up.transport.pause_reading()

    def on_response_complete(self) -> None:
        self._push(("data", b"", 0, True))

    def on_upstream_lost(self, exc: Exception) -> None:
        self._push(("lost", str(exc)))

    def on_tunnel_data(self, data: bytes) -> None:
        self.on_response_body(data)

    def on_informational(self, up: UpstreamProtocol) -> None:
        pass


async def open_h1(
    pool: UpstreamPool, ep: Endpoint, connect_timeout: float, head_request: bool, tls: UpstreamTls | None = None
) -> H1Call:
    """A call on a pooled (or new) connection to ``ep``; raises OSError/TimeoutError when it cannot connect."""
    up, _reused = await pool.acquire(ep, connect_timeout, tls)
    return H1Call(pool, up, head_request)
