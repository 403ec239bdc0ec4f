"""One proxied HTTP/2 stream: route, pick per stream, call upstream (h2c/h2 or HTTP/1.1), retry, relay.

``serve_stream`` runs as a task per stream (owned by the listener). Each attempt opens a *call* (``H2Call`` on
the endpoint's multiplexed connection, or ``H1Call`` on the HTTP/1.1 keep-alive pool) and runs two flows: the
request body pump (client stream -> call, each DATA acknowledged to the client once written upstream) and the
response relay (call -> client stream, each DATA acknowledged upstream once the client's window took it).
Retries never reuse an endpoint (``exclude``); they need the request body still replayable (REPLAY_LIMIT).
gRPC awareness: a response head is held until its first DATA or its trailers, so an UNAVAILABLE (14) with no
message (Trailers-Only, or trailers right after the head) can still be retried elsewhere; the proxy's own
errors reach gRPC clients as Trailers-Only with the mapped status.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import h2.errors
from prometheus_client import Counter

from ..balancing import Pool
from ..balancing.hashing import hash_key
from ..balancing.metrics import count_budget_exhausted, count_rejection
from ..config import UpstreamTls
from ..model import Endpoint
from . import grpc_status, http_head, http_log
from .h2_stream import Event, H2Stream, Headers, StreamGone
from .h2_to_h1 import H1Call, open_h1
from .h2_upstream import H2Call
from .http_request import REPLAY_LIMIT, backoff, retry_kind
from .router import Route

if TYPE_CHECKING:
    from .h2_protocol import H2ServerProtocol
    from .http import HttpProxyServer

log = logging.getLogger("fedproxy.proxy.h2")

GRPC_CALLS = Counter(
    "fedproxy_grpc_calls_total",
    "gRPC calls proxied, by listener, service, member cluster and grpc-status",
    ["listener", "service", "cluster", "grpc_status"],
)
# RFC 9113 8.2.2: connection-specific fields never cross an HTTP/2 hop.
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_DEFAULT_TLS = UpstreamTls()
REFUSED_STREAM = int(h2.errors.ErrorCodes.REFUSED_STREAM)

# The balancing package's hash, so the admin explain endpoint picks what the proxy picks for a key.
_hash_text = hash_key


class ClientGone(Exception):
    """The client reset the stream (or its connection ended) before the request body was read."""


class Call:
    """Per-stream state: the request as received, its replay buffer, and the response outcome."""

    def __init__(self, headers: Headers, body_done: bool, started: float) -> None:
        self.started = started
        self.method = self.scheme = self.authority = self.path = b""
        self.headers: Headers = []  # regular fields, lowercase names (h2 guarantees it)
        self.request_id = b""
        self.has_request_id = False
        self.cookie = b""
        for name, value in headers:
            if name.startswith(b":"):
                if name == b":method":
                    self.method = value
                elif name == b":path":
                    self.path = value
                elif name == b":authority":
                    self.authority = value
                elif name == b":scheme":
                    self.scheme = value
                continue
            if name == b"host" and not self.authority:
                self.authority = value
            elif name == b"x-request-id":
                self.request_id, self.has_request_id = value, True
            elif name == b"cookie":  # h2 may split cookies into several fields (RFC 9113 8.2.3)
                self.cookie = self.cookie + b"; " + value if self.cookie else value
            self.headers.append((name, value))
        if not self.has_request_id:
            self.request_id = os.urandom(8).hex().encode("ascii")
        self.grpc = grpc_status.is_grpc(self.headers)
        self.body_done = body_done
        self.no_body = body_done  # END_STREAM on the request headers
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.consumed = False  # any request body byte was taken from the client stream
        self.trailers: Headers | None = None
        self.body_in = self.bytes_out = 0
        self.status = 0
        self.grpc_status: int | None = None
        self.committed = False
        self.data_sent = False

    @property
    def path_only(self) -> bytes:
        q = self.path.find(b"?")
        return self.path if q < 0 else self.path[:q]

    def keep(self, data: bytes) -> None:
        self.consumed = True
        self.body_in += len(data)
        if self.replay is not None:
            self.replay_size += len(data)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
            else:
                self.replay.append(data)

    def replayable(self) -> bool:
        return self.replay is not None or not self.consumed


def _kinds(outcome: str, status: int) -> tuple[str, ...]:
    if outcome == "refused-stream":  # not processed by the peer (REFUSED_STREAM / above GOAWAY's last id)
        return ("refused", "connect-failure", "reset")
    if outcome == "unavailable":  # gRPC UNAVAILABLE before any message: a failed attempt like a reset
        return ("unavailable", "reset", "gateway-error", "5xx")
    return retry_kind("" if outcome == "status" else outcome, status)


async def serve_stream(
    server: HttpProxyServer, conn: H2ServerProtocol, stream: H2Stream, headers: Headers, body_done: bool
) -> None:
    """Serve one request stream end to end; never raises (a failure becomes a response or a reset)."""
    loop = conn.loop
    call = Call(headers, body_done, loop.time())
    route: Route | None = None
    ep: Endpoint | None = None
    held: Pool | None = None  # the pool whose "requests" slot this stream holds (released in finally)
    retry_slots = 0  # retry slots of the pool's budget held: the try under way and/or one just granted
    retries = 0
    try:
        if not call.method or not call.path or call.method == b"CONNECT":
            await _error(conn, stream, call, 400, "bad request: CONNECT and requests without :path are not proxied")
            return
        router = server.router
        cookies = http_head.parse_cookies(call.cookie) if (call.cookie and router.needs_cookies) else None
        match = {n.decode("latin-1"): v.decode("latin-1") for n, v in call.headers
                 if n.decode("latin-1") in router.header_names}  # fmt: skip
        route = router.match(call.authority, call.path_only, match, cookies)
        if route is None:
            await _error(conn, stream, call, 404, f"no route for host {call.authority!r} path {call.path_only!r}")
            return
        pool = server.get_state().pool(route.spec)
        service = str(route.spec.service)
        if (refused := pool.breaker.try_acquire("requests")) is not None:
            count_rejection(service, "max_requests")
            await _error(conn, stream, call, 503, f"circuit breaker: {refused}", limit="max_requests")
            return
        held = pool  # the stream holds a "requests" slot for its whole life, as an HTTP/1.1 request does
        pinned = match.get(route.pin_header) or None
        if pinned is not None and pinned not in pool.clusters:
            await _error(conn, stream, call, 503, f"cluster {pinned!r} has no endpoint for {route.spec.service}")
            return
        hash_key = _hash_for(route, match, cookies, call, conn.client_ip)
        policy = route.config.retries
        total = route.config.timeouts.total
        deadline = loop.time() + total if total > 0 else None
        tried: list[Endpoint] = []

        def may_retry(outcome: str, status: int) -> bool:
            if retries >= policy.attempts or not any(k in policy.on for k in _kinds(outcome, status)):
                return False
            if stream.closed or not call.replayable():
                return False
            # Not processed upstream, or a gRPC UNAVAILABLE: safe whatever the method; else idempotent only.
            safe = outcome in ("refused", "connect-failure", "refused-stream", "unavailable")
            return safe or call.method in (b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE")

        def retry_answered(outcome: str, status: int) -> bool:
            """Called by ``_relay`` for an answered attempt (5xx, gRPC UNAVAILABLE) while its head is held: True
            takes one retry slot of the pool's budget (the response is dropped), False passes the answer on.
            Tries that got no response are retried outside the budget, as the HTTP/1.1 path does."""
            nonlocal retry_slots, granted
            if not may_retry(outcome, status):
                return False
            if (limit := pool.breaker.try_retry()) is not None:
                if limit == "retry_budget":
                    count_budget_exhausted(service)
                else:
                    count_rejection(service, limit)
                log.info("event=h2_retry_refused service=%s limit=%s", service, limit)
                return False
            retry_slots += 1
            granted = True  # held through the backoff and the next try, as HTTP/1.1 does
            return True

        fresh: Endpoint | None = None  # retry once on a new connection to this endpoint (a refused stream)
        fresh_used = False
        granted = False
        while True:
            budgeted, granted = granted, False
            if fresh is not None:
                ep, fresh = fresh, None
                outcome, status = await _attempt(server, conn, stream, call, route, pool, ep, deadline,
                                                 retry_answered, True)  # fmt: skip
            else:
                ep = pool.pick(hash_key, exclude=tried, cluster=pinned)
                if ep is None:
                    if tried:  # every endpoint left was tried: the last failure is the answer (HTTP/1.1 does the same)
                        why = f"no upstream could be reached for {route.spec.service} (tried {len(tried)})"
                        await _error(conn, stream, call, 502, why)
                    else:
                        why = f"no healthy endpoint for {route.spec.service}: {pool.reason or 'all ejected or drained'}"
                        await _error(conn, stream, call, 503, why)
                    return
                tried.append(ep)
                outcome, status = await _attempt(server, conn, stream, call, route, pool, ep, deadline,
                                                 retry_answered)  # fmt: skip
            if budgeted:
                retry_slots -= 1
                pool.breaker.release("retries")
            if outcome in ("done", "client"):
                return
            if outcome == "refused-stream" and not fresh_used and not stream.closed and call.replayable():
                # The backend never processed the stream (RFC 9113 8.7): safe to send again, whatever the method.
                # A new connection to the same endpoint, so that a single-endpoint service survives a GOAWAY or
                # a refusing connection; not a try of another endpoint, and outside the retry budget.
                fresh, fresh_used = ep, True
                log.info("event=h2_retry_fresh_connection service=%s endpoint=%s", service, ep)
                continue
            # _relay only returns an answered outcome once retry_answered granted the retry (and its slot).
            if outcome in ("status", "unavailable") or may_retry(outcome, status):
                retries += 1
                http_log.count_retry(server.name, str(route.spec.service))
                log.info("event=h2_retry service=%s endpoint=%s reason=%s status=%d retry=%d",
                         route.spec.service, ep, outcome, status, retries)  # fmt: skip
                await asyncio.sleep(backoff(policy, retries - 1, conn_random()))
                continue
            code = 504 if outcome == "timeout" else 502
            await _error(conn, stream, call, code, f"upstream {ep} failed: {outcome}")
            return
    except StreamGone:
        pass  # the client reset the stream while we answered
    except Exception:
        log.exception("event=h2_forward_error conn=%d stream=%d", conn.conn_id, stream.id)
        if not call.committed:
            try:
                await _error(conn, stream, call, 502, "internal proxy error")
            except StreamGone:
                pass
    finally:
        if held is not None:
            held.breaker.release("requests")
            for _ in range(retry_slots):
                held.breaker.release("retries")
        _release(conn, stream)
        _access(server, conn, call, route, ep, retries)


def conn_random() -> float:
    return int.from_bytes(os.urandom(2), "big") / 65536


def _hash_for(route: Route, match: dict[str, str], cookies: dict[str, str] | None, call: Call, ip: str) -> int | None:
    cfg = route.spec.hash
    if cfg is None:
        return None
    if cfg.on == "source_ip":
        text = ip
    elif cfg.on == "header":
        text = match.get(cfg.name.lower(), "")
    else:
        text = (cookies or http_head.parse_cookies(call.cookie)).get(cfg.name, "") if call.cookie else ""
    return _hash_text(text) if text else None


async def _attempt(
    server: HttpProxyServer,
    conn: H2ServerProtocol,
    stream: H2Stream,
    call: Call,
    route: Route,
    pool: Pool,
    ep: Endpoint,
    deadline: float | None,
    may_retry: Callable[[str, int], bool],
    fresh: bool = False,
) -> tuple[str, int]:
    """One try: ("done"|"client", status) when answered, else a failure name the retry policy knows.
    ``fresh``: on a new upstream connection (HTTP/2 upstreams), never one already open."""
    timeouts = route.config.timeouts
    pool.started(ep)
    up: H2Call | H1Call | None = None
    ok = False
    try:
        try:
            up = await _open(server, conn, call, route, ep, _bounded(timeouts.connect, deadline, conn.loop), fresh)
        except ConnectionRefusedError:
            server.report(ep, False)
            return "refused", 0
        except (OSError, TimeoutError, StreamGone):
            server.report(ep, False)
            return "connect-failure", 0
        outcome, status = "client", 0
        try:
            async with asyncio.TaskGroup() as tg:
                pump = tg.create_task(_pump_request(conn, stream, call, up))
                outcome, status = await _relay(server, conn, stream, call, route, up, ep, deadline, may_retry)
                pump.cancel()  # the response is over (or failed): the rest of the upload is of no use
        except* ClientGone:
            outcome = "client"
        except* StreamGone:  # one side's stream ended under us: the client's (after commit) or the upstream's
            outcome = "client" if call.committed or stream.closed else "reset"
        ok = outcome == "done"
        return outcome, status
    finally:
        pool.finished(ep)
        if up is not None:
            up.finish(ok)


async def _open(
    server: HttpProxyServer,
    conn: H2ServerProtocol,
    call: Call,
    route: Route,
    ep: Endpoint,
    timeout: float | None,
    fresh: bool = False,
) -> H2Call | H1Call:
    """Connect (or reuse) and send the request head; raises OSError/TimeoutError/StreamGone on failure."""
    proto = route.config.upstream_protocol
    end = call.no_body
    tls = route.config.upstream_tls
    if proto == "http1":
        h1 = await open_h1(server.upstreams, ep, timeout or 0.0, call.method == b"HEAD", tls)
        h1.send_head(call.method, call.path, call.headers, client_ip=conn.client_ip, host=call.authority,
                     request_id=call.request_id, has_request_id=call.has_request_id, end_stream=end,
                     scheme=conn.scheme)  # fmt: skip
        return h1
    if proto == "h2":
        tls = tls or _DEFAULT_TLS  # h2 is HTTP/2 over TLS: verify against the system store unless configured
    else:
        tls = None  # h2c is cleartext by definition
    h2conn = await server.h2_upstreams.acquire(ep, timeout or 0.0, route.config.timeouts.idle, tls, fresh=fresh)
    return H2Call(h2conn, _upstream_headers(call, conn, tls is not None), end)


def _upstream_headers(call: Call, conn: H2ServerProtocol, tls: bool) -> Headers:
    out: Headers = [(b":method", call.method), (b":scheme", b"https" if tls else b"http"),
                    (b":authority", call.authority), (b":path", call.path)]  # fmt: skip
    xff = b""
    for name, value in call.headers:
        if name in _CONNECTION_SPECIFIC or name == b"host" or (name == b"te" and value != b"trailers"):
            continue
        if name == b"x-forwarded-for":
            xff = xff + b", " + value if xff else value
            continue
        out.append((name, value))
    ip = conn.client_ip.encode("ascii")
    out.append((b"x-forwarded-for", xff + b", " + ip if xff else ip))
    out.append((b"x-forwarded-proto", conn.scheme))
    if not call.has_request_id:
        out.append((b"x-request-id", call.request_id))
    return out


async def _pump_request(conn: H2ServerProtocol, stream: H2Stream, call: Call, up: H2Call | H1Call) -> None:
    """Request body: replay what an earlier attempt took, then the client's DATA as it comes."""
    if call.no_body:
        return
    for data in call.replay or ():
        await up.send_data(data, False)
    while not call.body_done:
        event = await stream.get()
        if event[0] == "data":
            _, data, flow, end = event
            call.keep(data)  # before sending: a cancelled send must still be replayable
            call.body_done = end
            try:
                await up.send_data(data, end)
            finally:
                conn.ack(stream.id, flow)
            if end:
                return
        elif event[0] == "trailers":
            call.trailers, call.body_done = event[1], True
            up.send_trailers(event[1])
            return
        else:
            raise ClientGone(str(event[1]))
    if call.trailers is not None:
        up.send_trailers(call.trailers)
    else:
        await up.send_data(b"", True)


async def _relay(
    server: HttpProxyServer,
    conn: H2ServerProtocol,
    stream: H2Stream,
    call: Call,
    route: Route,
    up: H2Call | H1Call,
    ep: Endpoint,
    deadline: float | None,
    may_retry: Callable[[str, int], bool],
) -> tuple[str, int]:
    loop = conn.loop
    head_timeout = _bounded(route.config.timeouts.response_header, deadline, loop)
    sent_at = loop.time()
    held: list[Event] = []
    try:
        async with asyncio.timeout(head_timeout):
            event = await up.get()
    except TimeoutError:
        server.report(ep, False)
        return "timeout", 0
    if event[0] == "headers" and not event[2] and call.grpc:
        # Hold the head until the first message or the trailers: UNAVAILABLE with no message is retriable.
        # A stream that stays silent past the head timeout is committed as it is (a long-lived watch).
        try:
            async with asyncio.timeout(_bounded(route.config.timeouts.response_header, deadline, loop)):
                held.append(await up.get())
        except TimeoutError:
            pass
    if event[0] != "headers":
        server.report(ep, False)
        return ("refused-stream" if event[0] == "reset" and event[1] == REFUSED_STREAM else "reset"), 0
    headers, end = event[1], event[2]
    status = next((int(v) for n, v in headers if n == b":status"), 502)
    http_log.observe_latency(server.name, str(route.spec.service), ep.cluster, loop.time() - sent_at)
    if call.grpc:
        block = headers if end else (held[0][1] if held and held[0][0] == "trailers" else [])
        call.grpc_status = grpc_status.status_of(block)
        if held and held[0][0] in ("reset", "lost"):
            server.report(ep, False)
            return "reset", 0
        if grpc_status.retriable(call.grpc_status, False) and may_retry("unavailable", status):
            server.report(ep, False)
            return "unavailable", status
    elif status >= 500 and may_retry("status", status):
        server.report(ep, False)
        return "status", status
    call.status, call.committed = status, True
    healthy = status < 500 and call.grpc_status not in grpc_status.RETRIABLE
    conn.send_headers(stream, [(n, v) for n, v in headers if n not in _CONNECTION_SPECIFIC], end_stream=end)
    if end:
        server.report(ep, healthy)
        return "done", status
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                event = held.pop(0) if held else await up.get()
                if event[0] == "data":
                    _, data, flow, last = event
                    call.data_sent = call.data_sent or bool(data)
                    call.bytes_out += len(data)
                    await conn.send_data(stream, data, last)
                    up.ack(flow)
                    if last:
                        break
                elif event[0] == "trailers":
                    call.grpc_status = grpc_status.status_of(event[1])
                    conn.send_trailers(stream, event[1])
                    break
                else:  # the upstream reset or went away mid-response: the client sees the stream reset
                    server.report(ep, False)
                    conn.reset(stream, int(h2.errors.ErrorCodes.INTERNAL_ERROR))
                    return "client", status
    except TimeoutError:
        conn.reset(stream, int(h2.errors.ErrorCodes.CANCEL))
        return "client", status
    server.report(ep, healthy and call.grpc_status not in grpc_status.RETRIABLE)
    return "done", status


def _bounded(timeout: float, deadline: float | None, loop: asyncio.AbstractEventLoop) -> float | None:
    left = None if deadline is None else max(0.0, deadline - loop.time())
    t = timeout if timeout > 0 else None
    if t is None:
        return left
    return t if left is None else min(t, left)


async def _error(
    conn: H2ServerProtocol, stream: H2Stream, call: Call, status: int, reason: str, limit: str = ""
) -> None:
    """The proxy's own answer (the one place errors become responses): Trailers-Only for gRPC clients.

    ``limit``: the circuit-breaker limit that refused the stream, sent as ``x-fedproxy-reason`` (as HTTP/1.1 does)."""
    log.warning("event=h2_error status=%d reason=%r request_id=%s", status, reason, call.request_id.decode("latin-1"))
    call.status = status
    if call.committed or stream.closed:
        conn.reset(stream, int(h2.errors.ErrorCodes.INTERNAL_ERROR))
        return
    call.committed = True
    extra = [(b"x-fedproxy-reason", b"circuit-breaker " + limit.encode())] if limit else []
    if call.grpc:
        call.grpc_status = grpc_status.from_http(status)
        conn.send_headers(stream, grpc_status.trailers_only(status, reason) + extra, end_stream=True)
        return
    body = f"{status} {reason}\n".encode()
    conn.send_headers(stream, [(b":status", b"%d" % status), (b"content-type", b"text/plain; charset=utf-8"),
                               (b"content-length", b"%d" % len(body)), (b"x-request-id", call.request_id),
                               *extra])  # fmt: skip
    call.bytes_out += len(body)
    await conn.send_data(stream, body, True)


def _release(conn: H2ServerProtocol, stream: H2Stream) -> None:
    """Hand back the window of request DATA nobody read, and close the stream if still open."""
    for event in stream.events:
        if event[0] == "data":
            conn.ack(stream.id, event[2])
    stream.events.clear()
    if stream.closed and stream.ended:
        conn.finished_receiving(stream)
    else:  # our answer is complete but the client is still sending (or we failed): RFC 9113 8.1 NO_ERROR
        code = h2.errors.ErrorCodes.NO_ERROR if stream.closed else h2.errors.ErrorCodes.INTERNAL_ERROR
        conn.reset(stream, int(code))


def _access(
    server: HttpProxyServer, conn: H2ServerProtocol, call: Call, route: Route | None, ep: Endpoint | None, retries: int
) -> None:
    service = str(route.spec.service) if route else "-"
    cluster = ep.cluster if ep else "-"
    server.count(call.status)
    http_log.count_request(server.name, service, cluster, call.status)
    if call.grpc:
        gs = "-" if call.grpc_status is None else str(call.grpc_status)
        GRPC_CALLS.labels(server.name, service, cluster, gs).inc()
    if server.access_log == "off":
        return
    http_log.log_access(
        server.access_log,
        {
            "event": "http_request",
            "listener": server.name,
            "protocol": "h2",
            "method": call.method.decode("latin-1"),
            "path": call.path_only.decode("latin-1"),
            "route": route.name if route else "-",
            "service": service,
            "cluster": cluster,
            "endpoint": str(ep) if ep else "-",
            "upstream_protocol": route.config.upstream_protocol if route else "-",
            "status": call.status,
            "grpc_status": "-" if call.grpc_status is None else call.grpc_status,
            "bytes_in": call.body_in,
            "bytes_out": call.bytes_out,
            "duration_ms": round((conn.loop.time() - call.started) * 1000, 2),
            "retries": retries,
            "client": conn.client_ip,
            "conn": conn.conn_id,
            "request_id": call.request_id.decode("latin-1"),
        },
    )
