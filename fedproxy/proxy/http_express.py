"""The express lane of the HTTP/1.1 proxy: a body-less request and a one-read response as byte slices.

Theory of operation: most requests of a keep-alive client are a complete head in one read (no body, no
upgrade, nothing hop-by-hop) and most answers are a complete Content-Length response in one read. For that
pair the per-request Python work is what costs (shared/PERFORMANCE.md), so this lane skips the parser
callbacks, the ``Request`` object and the head rebuilding of the fast path:

- ``serve`` (client read): cheap byte tests pick the requests it may take; llhttp still validates the bytes
  (a second parser with no callbacks, so a malformed head is caught before anything is sent); the route, the
  breaker slot, the pick and an idle upstream connection are the same calls the fast path makes. The head
  goes upstream as received plus the forwarding lines and a request id: no hop-by-hop header can be in it.
- ``Express.respond`` (upstream read): a response whose head and whole Content-Length body are in the read,
  with no hop-by-hop header but ``Connection: keep-alive``, is validated by a callback-less llhttp parser and
  written to the client in one write with ``Via`` added, then the upstream goes back to the pool.

Anything else — a head split over reads, a retriable 5xx, a 1xx, a chunked or close-delimited body, a client
that half-closed, a drain, a timeout, a lost upstream — converts the attempt into the fast path's
``FastExchange`` (``Express.convert``) before a byte of the response is handled, so retries, errors, metrics
and the access log behave exactly as there. A request the lane does not take goes to the full parser, which
is at the same message boundary (the lane only takes whole messages).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httptools

from . import http_forward, http_head, http_log
from .http_fast import FastExchange
from .http_request import Request, affinity_key, next_request_id

if TYPE_CHECKING:
    from ..balancing import Pool
    from ..model import Endpoint
    from .http_protocol import HttpProxyProtocol
    from .router import Route
    from .upstream import UpstreamProtocol

# Request header lines (lowercased head) that send a request to the full parser: a body, an upgrade, an
# Expect, hop-by-hop headers and the forwarding headers this hop appends to.
_REQ_SLOW = re.compile(
    rb"\n(?:content-length|transfer-encoding|upgrade|expect|keep-alive|te|trailer|proxy-[a-z-]*"
    rb"|x-forwarded-[a-z-]*|forwarded|via):"
)
# Response header lines that need the fast path's head rebuilding (Connection is handled here).
_RESP_SLOW = re.compile(rb"\n(?:transfer-encoding|keep-alive|upgrade|te|trailer|proxy-[a-z-]*|via):|\n[ \t]")
_VIA = b"\r\nVia: " + http_head.VIA
_VIA_CLOSE = _VIA + b"\r\nConnection: close"
_PLAIN_CONNECTION = (b"keep-alive", b"close")
_MAX_POOLS = 1024  # cached (route, state) -> pool entries before the cache starts over

# id(route) -> (route, state, pool): PoolSpec hashes a tree of frozen dataclasses, too dear per request.
_pools: dict[int, tuple[object, object, Pool]] = {}


def new_parser() -> httptools.HttpRequestParser:
    """The validating request parser of one client connection (no callbacks: llhttp only checks)."""
    return httptools.HttpRequestParser(_NO_CALLBACKS)


def new_response_parser() -> httptools.HttpResponseParser:
    return httptools.HttpResponseParser(_NO_CALLBACKS)


class _NoCallbacks:
    pass


_NO_CALLBACKS = _NoCallbacks()


def serve(client: HttpProxyProtocol, data: bytes) -> bool:
    """Take ``data`` (one whole body-less request) on the express lane; False: nothing done, parse it fully."""
    n = len(data)
    if data[n - 4 :] != b"\r\n\r\n" or data.find(b"\r\n\r\n") != n - 4 or data[:5] == b"HEAD ":
        return False
    server = client.server
    router = server.router
    if router.needs_headers or n > client.listener.max_header_bytes:
        return False
    low = data.lower()
    if _REQ_SLOW.search(low) is not None or (router.needs_cookies and b"\ncookie:" in low):
        return False
    for needle in router.pin_needles:
        if needle in low:
            return False
    le = data.find(b"\r\n")
    sp = data.find(b" ")
    if data[le - 9 : le] != b" HTTP/1.1" or sp < 0 or sp >= le - 9:
        return False
    i = low.find(b"\r\nhost:")
    if i < 0:  # the full parser answers 400
        return False
    j = data.find(b"\r\n", i + 7)
    host = data[i + 7 : j].strip(b" \t")
    if low.find(b"\r\nhost:", j) >= 0:
        return False
    k = low.find(b"\r\nx-request-id:")
    if k >= 0:
        j = data.find(b"\r\n", k + 15)
        rid = data[k + 15 : j].strip(b" \t")
        if low.find(b"\r\nx-request-id:", j) >= 0:
            return False
    keep_alive = True
    c = low.find(b"\r\nconnection:")
    if c >= 0:  # one Connection header saying keep-alive or close (naming no other header) is ours to drop
        e = low.find(b"\r\n", c + 2)
        value = low[c + 13 : e].strip(b" \t")
        if value not in _PLAIN_CONNECTION or low.find(b"\r\nconnection:", e) >= 0:
            return False
        keep_alive = value == b"keep-alive"
    parser = client.lean
    if parser is None:
        return False
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # malformed, or CONNECT: the full parser answers
        client.lean = None
        return False
    target = data[sp + 1 : le - 9]
    q = target.find(b"?")
    path = target if q < 0 else target[:q]
    route = router.match(host, path)
    if route is None:
        return False
    cfg = route.config
    if cfg.timeouts.total > 0 or (route.spec.hash is not None and route.spec.hash.on != "source_ip"):
        return False
    state = server.get_state()
    cached = _pools.get(id(route))
    if cached is None or cached[0] is not route or cached[1] is not state:
        if len(_pools) >= _MAX_POOLS:
            _pools.clear()
        cached = _pools[id(route)] = (route, state, state.pool(route.spec))
    pool = cached[2]
    hash_key = affinity_key(route, client.client_ip, {}, b"") if route.spec.hash else None  # source_ip only
    if k < 0:
        rid = next_request_id()
    ex = Express(client, route, pool, hash_key, data, le, host, path, rid, k >= 0)
    ex.keep_alive = keep_alive and not client.draining
    client.deadline = None  # the keep-alive idle deadline: a request is here
    refused = pool.breaker.try_acquire("requests")
    if refused is not None:
        server.count_fast()
        req = client.active = ex.request()
        http_forward.refuse(server, client, req, route, refused)
        return True
    ep = pool.pick(hash_key)
    if ep is None:  # nothing to pick: the full path answers (503) with its reasons
        pool.breaker.release("requests")
        return False
    up = server.upstreams.take_idle(ep, cfg.upstream_tls)
    if up is None:  # a connect must be awaited: the task path makes this first attempt with the same endpoint
        req = client.active = ex.request()
        server.spawn_request(client, req, http_forward.Resume(route, pool, ep, hash_key, None, "", 0))
        return True
    server.count_fast()
    pool.started(ep)
    ex.up, ex.ep = up, ep
    client.active = ex
    client.up = up
    up.idle_until = None
    up.complete = up.got_bytes = up.head_done = False  # what its loss means is read from these (not begin())
    up.express = ex
    up.sink = ex  # type: ignore[assignment]  # told of a lost connection; any other event converts first
    fwd = http_head.forwarding_lines(client.client_ip, host, client.scheme)
    head = data[: n - 2] if c < 0 else data[:c] + data[e : n - 2]
    up.transport.write(  # type: ignore[union-attr]
        head + fwd + b"\r\n" if k >= 0 else head + fwd + b"X-Request-Id: " + rid + b"\r\n\r\n"
    )
    header_timeout = cfg.timeouts.response_header
    if header_timeout > 0:
        client.set_deadline(header_timeout, ex.on_timeout)
    return True


class Express:
    """One express attempt; quacks like the ``Request`` the client connection holds while it is in flight."""

    __slots__ = ("client", "route", "pool", "hash_key", "data", "le", "host", "path", "request_id",
                 "has_request_id", "started", "up", "ep", "keep_alive", "status", "converted")  # fmt: skip
    # What the client connection reads of its active request.
    committed = False
    body_done = True
    head_waiter = None
    done_waiter = None

    def __init__(
        self,
        client: HttpProxyProtocol,
        route: Route,
        pool: Pool,
        hash_key: int | None,
        data: bytes,
        le: int,
        host: bytes,
        path: bytes,
        request_id: bytes,
        has_request_id: bool,
    ) -> None:
        self.client, self.route, self.pool, self.hash_key = client, route, pool, hash_key
        self.data, self.le, self.host, self.path = data, le, host, path
        self.request_id, self.has_request_id = request_id, has_request_id
        self.started = client.loop.time()
        self.up: UpstreamProtocol | None = None
        self.ep: Endpoint | None = None
        self.keep_alive = True
        self.status = 0
        self.converted: FastExchange | None = None

    def respond(self, up: UpstreamProtocol, data: bytes) -> bool:
        """Serve the response in ``data`` if it is whole and plain; False: converted, the caller parses it."""
        client = self.client
        end = data.find(b"\r\n\r\n")
        code = data[9:12]
        if end < 0 or data[:9] != b"HTTP/1.1 " or data[12:13] != b" " or not code.isdigit() or client.closing:
            self.convert()
            return False
        status = int(code)
        if status < 200 or status == 204 or status == 304 or (status >= 500 and self.route.retries_on_status):
            self.convert()
            return False
        head = data[:end]
        low = head.lower()
        i = low.find(b"\ncontent-length:")
        if i < 0 or low.find(b"\ncontent-length:", i + 1) >= 0 or _RESP_SLOW.search(low) is not None:
            self.convert()
            return False
        j = low.find(b"\r\n", i + 16)
        length = low[i + 16 : j if j >= 0 else end].strip(b" \t")
        if not length.isdigit() or end + 4 + int(length) != len(data):
            self.convert()
            return False
        c = low.find(b"\nconnection:")
        if c >= 0:
            e = low.find(b"\r\n", c + 12)
            e = e if e >= 0 else end
            if low[c + 12 : e].strip(b" \t") != b"keep-alive" or low.find(b"\nconnection:", e) >= 0:
                self.convert()
                return False
            head = head[: c - 1] + head[e:]  # the client's connection is ours to describe: nothing to say
        parser = up.lean
        if parser is None:
            parser = up.lean = new_response_parser()
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            up.lean = None  # the full parser meets the same bytes and fails the attempt as usual
            self.convert()
            return False
        # Served: the bytes go out, the upstream goes back to the pool, the request is accounted.
        server, route, ep, pool = client.server, self.route, self.ep, self.pool
        assert ep is not None
        client.deadline = None
        http_log.observe_latency(server.name, route.service_name, ep.cluster, client.loop.time() - self.started)
        server.report(ep, status < 500)
        self.status = status
        keep_alive = self.keep_alive and not client.draining
        self.keep_alive = keep_alive
        client.transport.write(head + (_VIA if keep_alive else _VIA_CLOSE) + data[end:])  # type: ignore[union-attr]
        up.express = None
        up.complete = True
        server.upstreams.release(up, server.upstream_idle)
        pool.finished(ep)
        pool.breaker.release("requests")
        if server.log_on:  # access() counts the response too
            req = self.request()
            req.bytes_out = len(data) - end - 4
            http_forward.access(server, client, req, route, ep, 0)
        else:
            server.count(status)
            http_log.count_request(server.name, route.service_name, ep.cluster, status)
        client.finish(self, True)  # type: ignore[arg-type]
        return True

    def request(self) -> Request:
        """The ``Request`` the full parser would have made of these bytes (for the fast path, refusals, logs)."""
        data, le = self.data, self.le
        req = Request(self.started)
        sp = data.find(b" ")
        req.method = data[:sp]
        req.target = data[sp + 1 : le - 9]
        req.path = self.path
        pairs = []
        cookies = []
        for line in data[le + 2 : -4].split(b"\r\n"):
            name, _, value = line.partition(b":")
            value = value.strip(b" \t")
            pairs.append((name, value))
            if name.lower() == b"cookie":
                cookies.append(value)
        req.headers = pairs
        req.cookie = b"; ".join(cookies)
        req.host = self.host
        req.keep_alive = self.keep_alive
        req.request_id, req.has_request_id = self.request_id, self.has_request_id
        req.head_bytes = len(data)
        req.body_done = True
        req.status = self.status
        return req

    def convert(self) -> FastExchange:
        """Hand this attempt to the fast path's exchange (before any response byte is handled)."""
        fx = self.converted
        if fx is not None:
            return fx
        client, up, ep = self.client, self.up, self.ep
        assert up is not None and ep is not None
        req = self.request()
        fx = self.converted = FastExchange(
            client.server, client, req, up, self.route, self.pool, ep, self.hash_key, None
        )
        fx.sent_at = self.started
        if client.active is self:
            client.active = req
        up.express = None
        up.begin(fx, False, client)
        up.attach_flow(client.inbound)
        client.flow.set_source(up.transport)
        if client.deadline is not None:
            client.deadline_cb = fx.on_timeout
        return fx

    # Events before the response: the fast path handles them.

    def on_timeout(self) -> None:
        if self.converted is None and self.client.active is self:
            self.convert().on_timeout()

    def on_upstream_lost(self, exc: Exception) -> None:
        self.convert().on_upstream_lost(exc)
