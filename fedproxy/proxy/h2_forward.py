"""One proxied HTTP/2 stream: route, admit, pick per stream, retry, and end the stream (errors, access log).

``serve_stream`` runs as a task per stream (owned by the listener). It routes the request, takes the pool's
"requests" slot (circuit breaker), picks an endpoint and hands each try to ``h2_attempt.attempt`` (upstream
h2c/h2 or HTTP/1.1, body pump and response relay), then decides from the try's outcome whether to retry.
Retries never reuse an endpoint (``exclude``); they need the request body still replayable (REPLAY_LIMIT).
A refused stream (never processed upstream, RFC 9113 8.7) is first sent again once on a fresh connection to the
same endpoint. The proxy's own errors become responses here only (``_error``), reaching gRPC clients as
Trailers-Only with the mapped status; every stream ends with ``_release`` (unread window handed back) and one
access record (``_access``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

import h2.errors
from prometheus_client import Counter

from ..balancing import Pool
from ..balancing.metrics import count_budget_exhausted, count_rejection
from ..model import Endpoint
from . import grpc_status, http_head, http_log
from .h2_attempt import attempt
from .h2_request import Call
from .h2_stream import H2Stream, Headers, StreamGone
from .http_request import affinity_key, backoff, retry_kind
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
        hash_key = affinity_key(route, conn.client_ip, match, call.cookie, cookies)
        policy = route.config.retries
        total = route.config.timeouts.total
        deadline = loop.time() + total if total > 0 else None
        tried: list[Endpoint] = []
        following: Endpoint | None = None  # the endpoint a granted retry goes to

        def may_retry(outcome: str, status: int) -> bool:
            nonlocal following
            if retries >= policy.attempts or not any(k in policy.on for k in _kinds(outcome, status)):
                return False
            if stream.closed or not call.replayable():
                return False
            # Not processed upstream, or a gRPC UNAVAILABLE: safe whatever the method; else idempotent only.
            safe = outcome in ("refused", "connect-failure", "refused-stream", "unavailable")
            if not (safe or call.method in (b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE")):
                return False
            # Never to an endpoint already tried: with none left, this attempt's outcome is the answer.
            following = pool.pick(hash_key, exclude=tried, cluster=pinned)
            return following is not None

        def retry_answered(outcome: str, status: int) -> bool:
            """Called by ``h2_attempt._relay`` for an answered attempt (5xx, gRPC UNAVAILABLE) while its head is
            held: True takes one retry slot of the pool's budget (the response is dropped), False passes the answer on.
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
                outcome, status = await attempt(server, conn, stream, call, route, pool, ep, deadline,
                                                retry_answered, True)  # fmt: skip
            else:
                ep, following = following or pool.pick(hash_key, cluster=pinned), None  # a retry's was picked
                if ep is None:
                    why = f"no healthy endpoint for {route.spec.service}: {pool.reason or 'all ejected or drained'}"
                    await _error(conn, stream, call, 503, why)
                    return
                tried.append(ep)
                outcome, status = await attempt(server, conn, stream, call, route, pool, ep, deadline,
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
            "tls": conn.tls_version,
            "sni": conn.sni,
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
