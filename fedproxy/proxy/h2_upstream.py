"""Upstream HTTP/2 (h2c, or h2 over TLS with ALPN): one multiplexed connection per endpoint.

``H2UpstreamPool.acquire(ep, ...)`` returns one of the endpoint's open connections that can take one more stream
(below the peer's SETTINGS_MAX_CONCURRENT_STREAMS, no GOAWAY seen), the oldest first so that streams pack onto few
connections; only when every one is full (or there is none) it connects a new one, and concurrent callers share
that connect. Every open connection stays in the pool until it closes: a full one is reused as soon as a stream
ends (replacing it by the new one used to strand it, and each burst above the limit opened yet another).
A new connection is handed out once the peer's first SETTINGS arrived (servers send them with their preface, so
it costs one round trip at connect): the protocol default limit is unlimited, and a backend with a lower one would
refuse the excess of a burst (RST_STREAM REFUSED_STREAM), which the only endpoint of a service cannot retry.
A connection with no stream for ``idle_timeout`` seconds closes.
``H2Call`` is one request on it, seen by the forwarding side (h2_attempt.py, driven by h2_forward.py) through
the same small interface as the HTTP/1.1 translation (h2_to_h1.py): ``get()`` response events, ``ack(n)`` once
passed on, ``send_data``/``send_trailers`` for the request body, ``finish(ok)``.
A GOAWAY ends the streams above its last stream id as REFUSED_STREAM, which the forwarder retries: the
peer did not process them (RFC 9113 6.8). The first such retry goes to the same endpoint on a ``fresh``
connection (``acquire(..., fresh=True)``), so that a service with one endpoint survives a GOAWAY or a refusal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import h2.errors
import h2.events

from ..config import UpstreamTls
from ..model import Endpoint
from ..tls.context import ResumingContext, upstream_context, upstream_server_name
from .h2_stream import Event, H2Peer, H2Stream, Headers, StreamGone

log = logging.getLogger("fedproxy.proxy.h2")

DEFAULT_PEER_STREAMS = 100  # streams per connection before the peer's SETTINGS (RFC 9113 6.5.2's advised minimum)


class H2UpstreamConnection(H2Peer):
    """Client side of one HTTP/2 connection to an endpoint."""

    def __init__(self, pool: H2UpstreamPool, ep: Endpoint, tls: UpstreamTls | None, idle_timeout: float) -> None:
        super().__init__(client_side=True)
        self.pool = pool
        self.ep = ep
        self.tls = tls
        self.idle_timeout = idle_timeout
        self.idle_handle: asyncio.TimerHandle | None = None
        self.stream_limit = DEFAULT_PEER_STREAMS  # the peer's MAX_CONCURRENT_STREAMS once its SETTINGS came
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # the peer's SETTINGS came

    @property
    def available(self) -> bool:
        """Open, no GOAWAY, and below the peer's concurrent stream limit.

        ``self.streams`` counts every stream h2 still counts as open (and those whose end we have not read yet),
        so it is a safe and O(1) stand-in for h2's ``open_outbound_streams``, which scans all streams."""
        if self.terminated or self.transport is None or self.transport.is_closing():
            return False
        return len(self.streams) < self.stream_limit

    def open_stream(self, headers: Headers, end_stream: bool) -> H2Stream:
        """Start a request; raises StreamGone if the connection can no longer take one."""
        if not self.available:
            raise StreamGone("connection not available")
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        stream = self.new_stream(self.h2.get_next_available_stream_id())
        self.send_headers(stream, headers, end_stream)
        return stream

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.start()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"upstream {self.ep} closed before its SETTINGS"))
            self.ready.exception()  # acquire may have given up waiting already
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self.pool.forget(self)

    def handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.stream_limit = self.h2.remote_settings.max_concurrent_streams
            if not self.ready.done():
                self.ready.set_result(None)
        super().handle(event)

    def handle_head(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)  # type: ignore[arg-type]
            if stream is not None:
                ended = event.stream_ended is not None
                stream.ended = stream.ended or ended
                stream.push(("headers", list(event.headers), ended))  # type: ignore[arg-type]
        # 1xx (InformationalResponseReceived) are dropped: h2 clients do not need the backend's 100 Continue.

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams:
            return
        if self.terminated:
            self.close()
        elif self.idle_timeout > 0 and self.idle_handle is None and not self.lost:
            self.idle_handle = asyncio.get_running_loop().call_later(self.idle_timeout, self.close)


class H2UpstreamPool:
    """The multiplexed connections per (endpoint, TLS settings); counts connects and stream reuses for stats."""

    def __init__(self) -> None:
        self._conns: dict[tuple[Endpoint, UpstreamTls | None], list[H2UpstreamConnection]] = {}
        self._connecting: dict[tuple[Endpoint, UpstreamTls | None], asyncio.Future[H2UpstreamConnection]] = {}
        self._contexts: dict[UpstreamTls, ResumingContext] = {}
        self.connects = 0
        self.reuses = 0

    async def acquire(
        self,
        ep: Endpoint,
        connect_timeout: float,
        idle_timeout: float,
        tls: UpstreamTls | None = None,
        fresh: bool = False,
    ) -> H2UpstreamConnection:
        """A connection to ``ep`` (h2 over TLS with ``tls``, offering ALPN "h2"; else h2c prior knowledge) able
        to take a stream; raises OSError/TimeoutError when it cannot connect (ssl.SSLError is an OSError).

        The caller must open its stream before its next ``await`` (the slot is not reserved).
        ``fresh``: always a new connection of its own (never shared with a concurrent connect), for a stream an
        open connection refused; it joins the pool like any other."""
        key = (ep, tls)
        timeout = connect_timeout if connect_timeout > 0 else None
        if fresh:
            async with asyncio.timeout(timeout):
                conn = await self._connect(ep, tls, idle_timeout)
            self.connects += 1
            self._conns.setdefault(key, []).append(conn)
            return conn
        async with asyncio.timeout(timeout):
            while True:
                for conn in self._conns.get(key, ()):
                    if conn.available:
                        self.reuses += 1
                        return conn
                pending = self._connecting.get(key)
                if pending is None:
                    break
                # Someone connects already: wait for it, then look again (its slots may be taken by then).
                await asyncio.shield(pending)
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[H2UpstreamConnection] = loop.create_future()
            self._connecting[key] = fut
            try:
                conn = await self._connect(ep, tls, idle_timeout)
            except BaseException as exc:
                fut.set_exception(exc if isinstance(exc, OSError | TimeoutError) else ConnectionError(str(exc)))
                fut.exception()  # the waiters (if any) get it; nobody else must
                raise
            finally:
                self._connecting.pop(key, None)
        self.connects += 1
        self._conns.setdefault(key, []).append(conn)
        fut.set_result(conn)
        return conn

    async def _connect(self, ep: Endpoint, tls: UpstreamTls | None, idle_timeout: float) -> H2UpstreamConnection:
        loop = asyncio.get_running_loop()
        factory: Callable[[], H2UpstreamConnection] = lambda: H2UpstreamConnection(self, ep, tls, idle_timeout)  # noqa: E731
        if tls is None:
            _transport, conn = await loop.create_connection(factory, ep.address, ep.port)
            await self._settled(conn)
            return conn
        ctx = self._contexts.get(tls)
        if ctx is None:
            ctx = self._contexts[tls] = upstream_context(tls, ("h2",))
        transport, conn = await loop.create_connection(
            factory, ep.address, ep.port, ssl=ctx, server_hostname=upstream_server_name(tls, ep.address)
        )
        if transport.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            conn.abort()
            raise ConnectionError(f"upstream {ep} did not agree to h2 by ALPN")
        await self._settled(conn)
        return conn

    @staticmethod
    async def _settled(conn: H2UpstreamConnection) -> None:
        """Wait for the peer's SETTINGS (its stream limit); abort the connection if we stop waiting."""
        try:
            await asyncio.shield(conn.ready)
        except BaseException:
            conn.abort()
            raise

    def forget(self, conn: H2UpstreamConnection) -> None:
        """The connection closed: drop it from the pool."""
        key = (conn.ep, conn.tls)
        conns = self._conns.get(key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[key]

    def open_count(self) -> int:
        """Open connections over all endpoints."""
        return sum(len(conns) for conns in self._conns.values())

    def close(self) -> None:
        """Close every connection (streams on them end as lost)."""
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.abort()
        self._conns.clear()


class H2Call:
    """One request on an upstream HTTP/2 connection, for the forwarding side."""

    __slots__ = ("conn", "stream")

    def __init__(self, conn: H2UpstreamConnection, headers: Headers, end_stream: bool) -> None:
        self.conn = conn
        self.stream = conn.open_stream(headers, end_stream)

    async def get(self) -> Event:
        return await self.stream.get()

    def ack(self, flow_length: int) -> None:
        self.conn.ack(self.stream.id, flow_length)

    async def send_data(self, data: bytes, end_stream: bool) -> None:
        if not data and not end_stream:
            return
        await self.conn.send_data(self.stream, data, end_stream)

    def send_trailers(self, headers: Headers) -> None:
        self.conn.send_trailers(self.stream, headers)

    def finish(self, ok: bool) -> None:
        """Done with the call: a stream still open either way is reset (CANCEL), so the backend stops work."""
        stream = self.stream
        if not (stream.closed and stream.ended):
            self.conn.reset(stream, int(h2.errors.ErrorCodes.CANCEL))
        else:
            self.conn.finished_receiving(stream)
