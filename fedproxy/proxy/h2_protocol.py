"""The client side of the HTTP/2 proxy: one asyncio Protocol per downstream HTTP/2 connection.

``H2ServerProtocol`` serves h2 (ALPN "h2" after a TLS handshake) and h2c with prior knowledge (a cleartext
connection that opens with the preface). Each request stream is served by its own task, owned by the listener's
TaskOwner (``h2_forward.serve_stream``): routing, balancing and retries are per stream, so the streams of one
connection spread over endpoints like separate HTTP/1.1 requests. The connection registers with the
``HttpProxyServer`` like an HTTP/1.1 one, so drain sends GOAWAY and waits for the open streams.

``ProtocolSelector`` is what an ``HttpProxyServer`` listener with h2c (or TLS) creates per connection: it picks
HTTP/2 or HTTP/1.1 (``choose_protocol`` by ALPN, else by sniffing the preface) and hands the transport over.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import h2.errors
import h2.events
import h2.exceptions

from ..tls.context import handshake_facts
from . import h2_forward, http_log
from .h2_stream import H2Peer, H2Stream
from .http_protocol import HttpProxyProtocol

if TYPE_CHECKING:
    from .http import HttpProxyServer

log = logging.getLogger("fedproxy.proxy.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 3.4, the client connection preface
IDLE_TIMEOUT = 300.0  # s a downstream HTTP/2 connection without streams is kept (gRPC channels idle long)


class H2ServerProtocol(H2Peer):
    def __init__(self, server: HttpProxyServer, loop: asyncio.AbstractEventLoop, scheme: bytes = b"http") -> None:
        super().__init__(client_side=False)
        self.server = server
        self.loop = loop
        self.scheme = scheme
        self.client_ip = ""
        self.tls_version = self.sni = "-"  # of a TLS connection, for the access log (connection_made)
        self.conn_id = 0
        self.draining = False
        self.streams_served = 0
        self.timer: asyncio.TimerHandle | None = None

    @property
    def active(self) -> object | None:
        """Non-None while a stream is open (HttpProxyServer.stats counts connections in flight by it)."""
        return self.streams or None

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "unknown"
        self.tls_version, self.sni, cert = handshake_facts(transport)
        http_log.count_connection(self.server.name, "h2", self.tls_version, cert)
        self.conn_id = self.server.register(self)  # type: ignore[arg-type]
        self.start()
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_timer()
        self.server.unregister(self)  # type: ignore[arg-type]

    def handle_head(self, event: h2.events.Event) -> None:
        if not isinstance(event, h2.events.RequestReceived):
            return
        sid = int(event.stream_id or 0)
        if self.draining:
            self.h2.reset_stream(sid, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self._cancel_timer()
        stream = self.new_stream(sid)
        ended = event.stream_ended is not None
        stream.ended = ended
        self.streams_served += 1
        self.server.tasks.spawn(
            f"h2-{self.conn_id}-{sid}",
            h2_forward.serve_stream(self.server, self, stream, list(event.headers), ended),  # type: ignore[arg-type]
        )

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams:
            return
        if self.draining:
            self.close()
        else:
            self._idle()

    def shutdown(self) -> None:
        """Drain: GOAWAY (no new streams), close once the open ones are done."""
        if self.draining or self.lost:
            return
        self.draining = True
        try:
            self.h2.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
            self.flush()
        except h2.exceptions.H2Error:
            pass
        if not self.streams:
            self.close()

    def _idle(self) -> None:
        self._cancel_timer()
        if not self.lost:
            self.timer = self.loop.call_later(IDLE_TIMEOUT, self.shutdown)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def choose_protocol(server: HttpProxyServer, transport: asyncio.BaseTransport) -> asyncio.Protocol | None:
    """The HTTP/2 protocol when the TLS handshake negotiated ALPN "h2", else None (serve HTTP/1.1).

    For the TLS listener: call it in the protocol's ``connection_made`` (the handshake is done by then)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
        return H2ServerProtocol(server, asyncio.get_running_loop(), scheme=b"https")
    return None


class ProtocolSelector(asyncio.Protocol):
    """Chooses the protocol of one connection, then steps aside (``transport.set_protocol``)."""

    def __init__(self, server: HttpProxyServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        chosen = choose_protocol(self.server, transport)
        if chosen is not None:
            self._switch(chosen)
        elif not self.server.listener.h2c:
            self._switch(HttpProxyProtocol(self.server, self.loop))
        else:  # prior knowledge: wait for the first bytes, within the request head timeout
            self.timer = self.loop.call_later(self.server.listener.request_head_timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        n = min(len(self.buffer), len(PREFACE))
        if self.buffer[:n] != PREFACE[:n]:
            self._switch(HttpProxyProtocol(self.server, self.loop))
        elif n == len(PREFACE):
            self._switch(H2ServerProtocol(self.server, self.loop))

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _switch(self, protocol: asyncio.Protocol) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self.buffer = self.buffer, b""
        if data:
            protocol.data_received(data)
