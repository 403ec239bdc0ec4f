"""The client side of the HTTP/1.1 proxy: one asyncio Protocol per client connection.

Theory of operation (after uvicorn's httptools_impl): llhttp parses the request head; the few values the
proxy acts on are picked out in the parser callbacks and everything else stays raw pairs. When a head is
complete a task (owned by the server's TaskOwner) routes it, picks an endpoint, sends the head upstream
and waits for the response head, retrying per policy; body bytes stream both ways from the callbacks with
``FlowControl`` back-pressure, never buffered whole. One request is served at a time; pipelined requests
wait in ``queue`` with reading paused. After a 101 both connections become a byte splice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from ..tls.context import handshake_facts
from . import http_express, http_fast, http_head, http_log
from .flow import FlowControl
from .http_request import Request, next_request_id
from .upstream import UpstreamProtocol

if TYPE_CHECKING:
    from .http import HttpProxyServer

log = logging.getLogger("fedproxy.proxy.http")

KEEPALIVE_IDLE = 60.0  # s an idle client keep-alive connection is kept (Timeouts.idle default)


class _BadHead(Exception):
    """A request head llhttp accepts that HTTP/1.1 does not (answered 400 with this reason)."""


class _HeadTooLarge(Exception):
    pass


class HttpProxyProtocol(asyncio.Protocol):
    # A TLS connection's version and the server name its client sent (set in connection_made), for the log.
    tls_version = "-"
    sni = "-"

    def __init__(self, server: HttpProxyServer, loop: asyncio.AbstractEventLoop) -> None:
        # Collaborators.
        self.server = server
        self.loop = loop
        self.listener = server.listener
        # Per connection.
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.lean: httptools.HttpRequestParser | None = http_express.new_parser()  # None: express lane off
        self.mid = False  # the full parser is inside a message (the express lane takes whole messages only)
        self.flow = FlowControl()  # response direction: the upstream is the source, we are the sink
        self.inbound = FlowControl()  # every reason to stop reading this client (upstream full, pipelining...)
        self.client_ip = ""
        self.scheme = b"http"  # b"https" once the transport is TLS (X-Forwarded-Proto, Forwarded proto=)
        self.conn_id = 0
        self.requests_served = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when ``timer`` fires
        self.deadline: float | None = None  # when ``deadline_cb`` is due (see set_deadline)
        self.deadline_cb: Callable[[], None] = self._close
        self.closing = False
        self.draining = False
        self.queue: deque[Request] = deque()  # parsed requests waiting for the one in flight
        self.tunnel: UpstreamProtocol | None = None
        self.upgrade_seen = False
        self.corked = False
        self.wbuf: list[bytes] = []  # writes gathered while corked
        # Per request.
        self.req: Request | None = None  # the request being parsed
        self.active: Request | None = None  # the request being proxied
        self.up: UpstreamProtocol | None = None  # its upstream connection

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        self.inbound = FlowControl(transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "unknown"
        server = self.server
        if server.tls is not None and transport.get_extra_info("sslcontext") is not None:
            self.scheme = b"https"
            self.tls_version, self.sni, cert = handshake_facts(transport)
            http_log.count_connection(server.name, "http/1.1", self.tls_version, cert)
        else:
            http_log.count_connection(server.name, "http/1.1", "-", "-")
        self.conn_id = server.register(self)
        self.set_deadline(self.listener.request_head_timeout, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._cancel_timer()
        self.server.unregister(self)
        self.flow.connection_lost()
        if self.tunnel is not None:
            self.tunnel.close()
        if self.up is not None and self.active is not None and not self.up.complete:
            self.up.close()  # the client is gone: the rest of its response is of no use
        for w in self._waiters():
            if not w.done():
                w.set_exception(ConnectionResetError("client closed"))

    def _waiters(self) -> list[asyncio.Future[None]]:
        req = self.active
        return [w for w in (req.head_waiter, req.done_waiter) if w is not None] if req else []

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)  # type: ignore[union-attr]
            return
        if self.upgrade_seen:
            req = self._upgrade_request()
            if req is not None:
                req.tunnel_pending.append(data)
            return
        try:
            if self.active is None and not self.mid and http_express.serve(self, data):
                return
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_seen = True
            req = self._upgrade_request()
            rest = data[exc.args[0] :]
            if req is not None and req.websocket:
                if rest:
                    req.tunnel_pending.append(rest)
                self.inbound.pause_reading("upgrade")
            elif req is not None:
                req.keep_alive = False  # a non-websocket upgrade (h2c...) is refused: answer, then close
        except httptools.HttpParserCallbackError as exc:
            self._bad_request(431 if isinstance(exc.__context__, _HeadTooLarge) else 400, str(exc.__context__ or exc))
        except httptools.HttpParserError as exc:
            self._bad_request(400, str(exc))
        except Exception:  # a bug must cost one connection, never the process
            log.exception("event=http_connection_error conn=%d", self.conn_id)
            self._close()

    def _upgrade_request(self) -> Request | None:
        """The request that carried the upgrade: the last one parsed (queued behind the one in flight, which may be
        an express exchange, or in flight itself). The parser stops at it: nothing after it is a request."""
        return self.queue[-1] if self.queue else self.active  # type: ignore[return-value]

    def eof_received(self) -> bool | None:
        # The client half-closed: finish the request in flight, then close.
        if self.active is None and not self.queue:
            return False
        if self.active is not None:
            self.active.keep_alive = False
        return True

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def shutdown(self) -> None:
        """Drain: close now if idle, else after the request in flight."""
        self.draining = True
        if self.active is None and not self.queue:
            self._close()

    # Parser callbacks

    def on_message_begin(self) -> None:
        self.mid = True
        self.req = Request(self.loop.time())
        if self.active is None and self.requests_served:
            self.set_deadline(self.listener.request_head_timeout, self._head_timeout)

    def on_url(self, url: bytes) -> None:
        req = self.req
        assert req is not None
        req.target += url
        req.head_bytes += len(url)
        if req.head_bytes > self.listener.max_header_bytes:
            raise _HeadTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.req
        assert req is not None
        req.head_bytes += len(name) + len(value) + 4
        if req.head_bytes > self.listener.max_header_bytes:
            raise _HeadTooLarge()
        req.headers.append((name, value))
        low = name.lower()
        if low == b"host":
            if req.host_seen:  # which one would the upstream route by? (RFC 9112 3.2: 400)
                raise _BadHead("more than one Host header")
            req.host, req.host_seen = value, True
        elif low == b"x-request-id":
            req.has_request_id, req.request_id = True, value
        elif low == b"cookie":
            req.cookie = req.cookie + b"; " + value if req.cookie else value
        elif low == b"upgrade":
            req.slow = True
            if value.lower() == b"websocket":
                req.websocket = True
        elif low == b"expect":
            req.slow = True
            if value.lower() == b"100-continue":
                req.expect_continue = True
        elif low == b"connection":
            req.drop = None  # its tokens name more hop-by-hop headers: request_head reads them
        elif low == b"transfer-encoding":
            req.slow = req.chunked = True
        elif low == b"content-length" and value.strip(b" \t") != b"0":
            req.slow = True
        names = self.server.router.header_names
        if names:
            text = low.decode("latin-1")
            if text in names:
                req.match_headers[text] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        req = self.req
        assert req is not None
        parser = self.parser
        req.method = parser.get_method()
        req.http10 = parser.get_http_version() == "1.0"
        if not req.host_seen and not req.http10:
            raise _BadHead("HTTP/1.1 request without a Host header")
        req.keep_alive = parser.should_keep_alive() and not self.draining
        q = req.target.find(b"?")
        req.path = req.target if q < 0 else req.target[:q]
        if not req.has_request_id:
            req.request_id = next_request_id()
        if self.active is None:
            self.clear_deadline()
            self.active = req
            if req.slow or not http_fast.start(self.server, self, req):
                self.server.spawn_request(self, req)
        else:
            self.queue.append(req)
            self.inbound.pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        req = self.req
        assert req is not None
        req.body_in += len(body)
        framed = http_head.chunk(body) if req.chunked else body
        if req is self.active and self.up is not None and req.head_waiter is not None:
            self._send_body(req, framed)
        else:
            req.pending.append(framed)
            if sum(map(len, req.pending)) > 65536:
                self.inbound.pause_reading("body")

    def on_message_complete(self) -> None:
        self.mid = False
        req = self.req
        assert req is not None
        req.body_done = True
        if req.chunked:
            if req is self.active and self.up is not None and req.head_waiter is not None:
                self._send_body(req, http_head.CHUNK_END)
            else:
                req.pending.append(http_head.CHUNK_END)

    # Request flow

    def _send_body(self, req: Request, framed: bytes) -> None:
        up = self.up
        if up is None or up.transport is None:
            return
        up.transport.write(framed)
        req.sent_body = True
        req.keep_for_replay(framed)

    def flush_pending(self, req: Request, head: bytes) -> None:
        """Write ``head`` and the body bytes that arrived before it went out upstream, in one write."""
        up = self.up
        pending, req.pending = req.pending, []
        if up is not None and up.transport is not None:
            if pending:
                body = b"".join(pending)
                up.transport.write(head + body)
                req.sent_body = True
                req.keep_for_replay(body)
            else:
                up.transport.write(head)
        self.inbound.resume_reading("body")

    def _start(self, req: Request) -> None:
        self.active = req
        if req.slow or not req.body_done or not http_fast.start(self.server, self, req):
            self.server.spawn_request(self, req)

    def finish(self, req: Request, reuse_client: bool) -> None:
        """The response is complete (or failed after the head): next request, or close."""
        self.active = None
        self.up = None
        self.flow.set_source(None)
        self.requests_served += 1
        if self.closing:
            return
        if not reuse_client or not req.keep_alive or not req.body_done or self.draining or self.upgrade_seen:
            self._close()
            return
        self.inbound.resume_reading("pipeline")
        if self.queue:
            self._start(self.queue.popleft())
        else:
            self.set_deadline(KEEPALIVE_IDLE, self._close)

    def write(self, data: bytes) -> None:
        if self.corked:
            self.wbuf.append(data)
        elif self.transport is not None and not self.closing:
            self.transport.write(data)

    # While an upstream connection's bytes are parsed the client's writes are gathered (``cork``) and sent in
    # one write (``uncork``): a small response's head and body, arriving together, cost one send, not two.

    def cork(self) -> None:
        self.corked = True

    def uncork(self) -> None:
        self.corked = False
        buf = self.wbuf
        if buf:
            self.wbuf = []
            self.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def start_tunnel(self, up: UpstreamProtocol, req: Request) -> None:
        """After a 101: splice bytes both ways until either side closes."""
        self.tunnel = up
        pending, req.tunnel_pending = req.tunnel_pending, []
        for data in pending:
            up.transport.write(data)  # type: ignore[union-attr]
        self.inbound.resume_reading("upgrade")

    def _bad_request(self, status: int, reason: str) -> None:
        log.info(
            "event=http_bad_request conn=%d client=%s status=%d reason=%r", self.conn_id, self.client_ip, status, reason
        )
        if self.active is None or not self.active.committed:
            text = "request header fields too large" if status == 431 else "bad request"
            self.write(http_head.error_response(status, text))
        self.server.count_local(status)
        self._close()

    def _head_timeout(self) -> None:
        if self.active is None:
            self.write(http_head.error_response(408, "request head timeout"))
            self.server.count_local(408)
            log.info("event=http_request_timeout conn=%d client=%s", self.conn_id, self.client_ip)
        self._close()

    # One lazy timer per connection: setting a deadline moves a timestamp; the timer is re-armed only when it
    # fires before the deadline (or when the new deadline is earlier), never once per request.

    def set_deadline(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` ``delay`` s from now unless another deadline replaces it first (``delay`` <= 0: none)."""
        if delay <= 0:
            self.deadline = None
            return
        when = self.loop.time() + delay
        self.deadline, self.deadline_cb = when, callback
        if self.timer is None or self.timer_at > when:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = when
            self.timer = self.loop.call_at(when, self._on_timer)

    def clear_deadline(self) -> None:
        self.deadline = None

    def _on_timer(self) -> None:
        self.timer = None
        when = self.deadline
        if when is None or self.closing:
            return
        if self.loop.time() >= when:
            self.deadline = None
            self.deadline_cb()
        else:
            self.timer_at = when
            self.timer = self.loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _close(self) -> None:
        self._cancel_timer()
        if self.corked:
            self.uncork()  # what was gathered goes out before the close
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.close()
