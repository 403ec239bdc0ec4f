"""Upstream HTTP/1.1 connections: one Protocol per connection and a small keep-alive pool per endpoint.

An ``UpstreamProtocol`` carries one request at a time for a *sink* (the client connection's protocol, see
``Sink``): it parses only the response head with httptools (llhttp) and hands body bytes on as they come.
After a 101 it becomes a byte splice. Back-pressure: while this connection's write buffer is full the
client's ``FlowControl`` (``attach_flow``) stops reading the client; the client side pauses this transport
the other way.
``UpstreamPool`` keeps up to ``max_idle`` idle connections per endpoint, each closed after the idle timeout.
With a route's ``upstream_tls`` the connection is TLS: one client context per distinct ``UpstreamTls`` value,
idle connections keyed by (endpoint, settings), and the TLS session of a finished exchange offered again on
the next connection to the same server name (fedproxy.tls.context.ResumingContext; docs/tls.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import httptools

from ..config import UpstreamTls
from ..model import Endpoint
from ..tls.context import ResumingContext, upstream_context, upstream_server_name
from .flow import FlowControl
from .http_head import HOP_BY_HOP

if TYPE_CHECKING:
    from .http_express import Express

log = logging.getLogger("fedproxy.proxy.upstream")

MAX_IDLE_PER_ENDPOINT = 128  # idle keep-alive connections kept per endpoint (more than a busy listener has in flight)
UPSTREAM_FULL = "upstream-full"  # the reason the client's reading is paused for our back-pressure
MAX_RESPONSE_HEAD = 64 * 1024  # bytes; a larger response head is a broken upstream
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})  # Connection values that name no other header
# A header line (lowercased head) that keeps a head from being forwarded as received: hop-by-hop but Connection,
# Via (appended to), a folded line. One regex search instead of a test per name.
_NOT_PLAIN = re.compile(
    b"\n(?:%b|via):|\n[ \t]" % b"|".join(re.escape(n) for n in sorted(HOP_BY_HOP) if n != b"connection")
)


class UpstreamLost(ConnectionError):
    """The upstream connection ended before the response was complete."""

    def __init__(self, message: str, got_bytes: bool) -> None:
        super().__init__(message)
        self.got_bytes = got_bytes  # any response byte arrived (then a retry would not be safe)


class Sink(Protocol):
    """What the client side receives from an upstream connection (callbacks run in the loop thread)."""

    def on_response_head(self, up: UpstreamProtocol) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_complete(self) -> None: ...
    def on_upstream_lost(self, exc: Exception) -> None: ...
    def on_tunnel_data(self, data: bytes) -> None: ...
    def on_informational(self, up: UpstreamProtocol) -> None: ...


class Writer(Protocol):
    """The client connection a response goes to: its writes are gathered while we parse (one send)."""

    def cork(self) -> None: ...
    def uncork(self) -> None: ...


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, ep: Endpoint, tls: UpstreamTls | None = None) -> None:
        # Per connection.
        self.pool = pool
        self.ep = ep
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self.client_flow: FlowControl | None = None  # pauses the client's reading while we cannot write
        self.closed = False
        self.idle_handle: asyncio.TimerHandle | None = None
        self.idle_until: float | None = None  # while idle in the pool: closed at this loop time
        # Per response.
        self.sink: Sink | None = None
        self.writer: Writer | None = None
        self.parser: httptools.HttpResponseParser | None = None  # kept from one response to the next
        self.head_request = False
        self.status = 0
        self.reason = b""
        self.head = b""  # the response head as received: status line and header lines (CRLF each), no blank line
        self.head_chunks: list[bytes] = []  # bytes received since the response began, until its head is complete
        self.head_pos = 0  # where the next head starts in those bytes (after 1xx interim responses)
        self._headers: list[tuple[bytes, bytes]] | None = None
        self.drop: frozenset[bytes] | None = HOP_BY_HOP  # names response_head strips; None: it reads Connection
        self.plain = False  # no hop-by-hop header but Connection (keep-alive/close), no Via: forwarded as received
        self.content_length = False
        self.chunked = False
        self.got_bytes = False
        self.head_done = False
        self.complete = False
        self.told = False  # the sink has heard of the completion
        self.keep_alive = True
        self.upgraded = False
        # The express lane (http_express): its attempt in flight, and its validating response parser.
        self.express: Express | None = None
        self.lean: httptools.HttpResponseParser | None = None

    def begin(self, sink: Sink, head_request: bool, writer: Writer | None = None) -> None:
        """Start a request/response on this connection for ``sink`` (the caller writes the request); ``writer``
        (the client connection), if given, is corked while response bytes are parsed."""
        self.idle_until = None  # the idle timer, if armed, finds it busy and lets it be (see _idle_check)
        self.sink = sink
        self.writer = writer
        if self.parser is None:  # llhttp parses the next response of a keep-alive connection with the same parser
            self.parser = httptools.HttpResponseParser(self)
        self.head_request = head_request
        self.status, self.reason, self.head, self._headers = 0, b"", b"", None
        self.head_chunks, self.head_pos = [], 0
        self.drop = HOP_BY_HOP
        self.content_length = self.chunked = self.got_bytes = self.head_done = self.complete = False
        self.told = False
        self.keep_alive = True

    def attach_flow(self, client_flow: FlowControl) -> None:
        """Request direction back-pressure: while our write buffer is full, the client is not read."""
        self.client_flow = client_flow
        if self.write_paused:
            client_flow.pause_reading(UPSTREAM_FULL)

    def detach(self) -> None:
        self.sink = None
        self.writer = None
        flow, self.client_flow = self.client_flow, None
        if flow is not None:
            flow.resume_reading(UPSTREAM_FULL)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def idle_for(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        """Close this connection if it is still idle ``timeout`` s from now (one lazy timer per connection)."""
        self.idle_until = when = loop.time() + timeout
        if self.idle_handle is None:
            self.idle_handle = loop.call_at(when, self._idle_check, loop)

    def _idle_check(self, loop: asyncio.AbstractEventLoop) -> None:
        self.idle_handle = None
        when = self.idle_until
        if when is None or self.closed:
            return  # busy (or gone): the next release arms it again
        if loop.time() >= when:
            self.close()
        else:
            self.idle_handle = loop.call_at(when, self._idle_check, loop)

    @property
    def reusable(self) -> bool:
        return not self.closed and self.complete and self.keep_alive and not self.upgraded

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        ex = self.express
        if ex is not None and ex.respond(self, data):
            return
        sink = self.sink
        if sink is None:
            # Bytes on an idle connection: the upstream broke framing or is closing; never reuse it.
            self.close()
            return
        if self.upgraded:
            sink.on_tunnel_data(data)
            return
        self.got_bytes = True
        if not self.head_done:
            self.head_chunks.append(data)
        writer = self.writer
        if writer is not None:
            writer.cork()
        try:
            self.parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserUpgrade as exc:
            if self.status == 101:
                self.upgraded = True
                rest = data[exc.args[0] :]
                if rest:
                    sink.on_tunnel_data(rest)
            else:
                self._fail("upgrade without 101")
            return
        except httptools.HttpParserError as exc:
            self._fail(f"bad response: {exc}")
            return
        finally:
            if writer is not None:
                writer.uncork()
        if not self.head_done and sum(map(len, self.head_chunks)) - self.head_pos > MAX_RESPONSE_HEAD:
            self._fail("response head too large")
            return
        if self.head_done and not self.complete and self.head_request:
            self.complete = True  # a HEAD response has no body whatever its Content-Length says
            self.parser = None  # which the parser would wait for: the next response needs a fresh one
        if self.complete and not self.told:
            # Told once the parser has returned: the sink may put this connection back in the pool (and the
            # next request may take it and start a new parser) from this call.
            self.told = True
            sink = self.sink
            if sink is not None:
                sink.on_response_complete()

    def _fail(self, message: str) -> None:
        sink = self.sink
        self.keep_alive = False
        self.close()
        if sink is not None and not self.complete:
            self.sink = None
            sink.on_upstream_lost(UpstreamLost(message, self.got_bytes))

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        flow, self.client_flow = self.client_flow, None
        if flow is not None:
            flow.resume_reading(UPSTREAM_FULL)
        self.pool.forget(self)
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        sink, self.sink = self.sink, None
        if sink is None or self.complete:
            return
        if self.upgraded:
            sink.on_response_complete()
        elif self.head_done and not self.content_length and not self.chunked and self.parser is not None:
            # A close-delimited body (RFC 9112 6.3 rule 8) ends here.
            self.complete = True
            sink.on_response_complete()
        else:
            sink.on_upstream_lost(UpstreamLost(f"upstream closed: {exc or 'eof'}", self.got_bytes))

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.client_flow is not None:
            self.client_flow.pause_reading(UPSTREAM_FULL)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.client_flow is not None:
            self.client_flow.resume_reading(UPSTREAM_FULL)

    # Parser callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            self.keep_alive = False  # bytes after the response it asked for: the upstream broke framing

    # No on_status/on_header: llhttp checks the framing, and the few values the proxy acts on are read from the
    # head's bytes at once (C string searches), which costs less than a Python call per header.

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response head's (name, value) pairs, split from ``head`` when first asked for."""
        if self._headers is None:
            pairs: list[tuple[bytes, bytes]] = []
            for line in self.head.split(b"\r\n")[1:-1]:
                if line[:1] in (b" ", b"\t") and pairs:  # obsolete line folding: part of the previous value
                    name, value = pairs[-1]
                    pairs[-1] = (name, value + b" " + line.strip(b" \t"))
                    continue
                name, _, value = line.partition(b":")
                pairs.append((name, value.strip(b" \t")))
            self._headers = pairs
        return self._headers

    def _read_head(self) -> bool:
        """Find the head llhttp just completed in the bytes received and read its framing; False if not found."""
        chunks = self.head_chunks
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(chunks) > 1:
            self.head_chunks = [raw]
        start = self.head_pos
        end = raw.find(b"\r\n\r\n", start)
        if end < 0:
            return False  # bare LF line ends: not forwarded
        self.head_pos = end + 4
        head = self.head = raw[start : end + 2]
        self._headers = None
        line_end = head.find(b"\r\n")
        parts = head[:line_end].split(b" ", 2)
        self.reason = parts[2] if len(parts) > 2 else b""
        low = head.lower()
        self.content_length = b"\ncontent-length:" in low
        self.chunked = False
        self.drop = HOP_BY_HOP
        if b"\ntransfer-encoding:" in low:
            i = low.find(b"\ntransfer-encoding:")
            self.chunked = b"chunked" in low[i : low.find(b"\r\n", i + 1)]
        i = low.find(b"\nconnection:")
        if i >= 0:
            value = low[i + 12 : low.find(b"\r\n", i + 1)].strip(b" \t")
            if value not in _PLAIN_CONNECTION or low.find(b"\nconnection:", i + 1) >= 0:
                self.drop = None  # it names more hop-by-hop headers
        self.plain = self.drop is not None and head.startswith(b"HTTP/1.1 ") and _NOT_PLAIN.search(low) is None
        return True

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        if self.complete:
            return  # a response after the one asked for (see on_message_begin): never passed on
        if not self._read_head():
            raise ValueError("response head without CRLF line ends")
        self.status = parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            if self.sink is not None:
                self.sink.on_informational(self)
            return
        self.head_done = True
        self.head_chunks = []  # not held (it may be a large first piece of the body) while the connection idles
        self.keep_alive = parser.should_keep_alive()
        if self.sink is not None:
            self.sink.on_response_head(self)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self.complete:
            self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.head_done and not self.complete and self.status != 101:
            self.complete = True  # data_received tells the sink after the parser returns


class UpstreamPool:
    """Keep-alive connections per endpoint: ``acquire`` reuses an idle one or connects; ``release`` keeps it."""

    def __init__(self, max_idle: int = MAX_IDLE_PER_ENDPOINT) -> None:
        self.max_idle = max_idle
        self._idle: dict[tuple[Endpoint, UpstreamTls | None], list[UpstreamProtocol]] = {}
        self._contexts: dict[UpstreamTls, ResumingContext] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the connections (known at first release)
        self.connects = 0
        self.reuses = 0

    async def acquire(
        self, ep: Endpoint, connect_timeout: float, tls: UpstreamTls | None = None
    ) -> tuple[UpstreamProtocol, bool]:
        """A connection to ``ep`` (TLS with ``tls``) and whether it was reused; raises OSError/TimeoutError on
        connect failure (a failed TLS handshake or certificate check is an ``ssl.SSLError``, an OSError)."""
        up = self.take_idle(ep, tls)
        if up is not None:
            return up, True
        loop = asyncio.get_running_loop()
        factory: Callable[[], UpstreamProtocol] = lambda: UpstreamProtocol(self, ep, tls)  # noqa: E731
        async with asyncio.timeout(connect_timeout if connect_timeout > 0 else None):
            if tls is None:
                _transport, up = await loop.create_connection(factory, ep.address, ep.port)
            else:
                _transport, up = await loop.create_connection(
                    factory,
                    ep.address,
                    ep.port,
                    ssl=self.tls_context(tls),
                    server_hostname=upstream_server_name(tls, ep.address),
                    ssl_handshake_timeout=connect_timeout if connect_timeout > 0 else None,
                )
        self.connects += 1
        return up, False

    def take_idle(self, ep: Endpoint, tls: UpstreamTls | None = None) -> UpstreamProtocol | None:
        """An idle keep-alive connection to ``ep`` (counted as a reuse), or None: a connect is needed."""
        idle = self._idle.get((ep, tls))
        while idle:
            up = idle.pop()
            if not up.closed and up.transport is not None and not up.transport.is_closing():
                self.reuses += 1
                return up
        return None

    def tls_context(self, tls: UpstreamTls) -> ResumingContext:
        """The client context for ``tls`` settings, made once per pool (its sessions live as long as it)."""
        ctx = self._contexts.get(tls)
        if ctx is None:
            ctx = self._contexts[tls] = upstream_context(tls)
        return ctx

    def release(self, up: UpstreamProtocol, idle_timeout: float) -> None:
        """Keep ``up`` for the next request to its endpoint, or close it if it cannot be reused."""
        up.detach()
        if up.tls is not None and up.transport is not None:
            # After a response the TLS 1.3 session ticket has arrived: remember it for the next handshake.
            sslobj = up.transport.get_extra_info("ssl_object")
            if sslobj is not None:
                self.tls_context(up.tls).remember(upstream_server_name(up.tls, up.ep.address), sslobj.session)
        key = (up.ep, up.tls)
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        if not up.reusable or len(idle) >= self.max_idle or idle_timeout <= 0:
            up.close()
            return
        idle.append(up)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        up.idle_for(loop, idle_timeout)

    def forget(self, up: UpstreamProtocol) -> None:
        idle = self._idle.get((up.ep, up.tls))
        if idle and up in idle:
            idle.remove(up)
            if not idle:
                del self._idle[(up.ep, up.tls)]

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Close every idle connection (in-use ones are closed by their client side)."""
        for idle in list(self._idle.values()):
            for up in list(idle):
                up.close()
        self._idle.clear()
