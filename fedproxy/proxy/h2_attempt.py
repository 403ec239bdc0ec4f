"""One try of a proxied HTTP/2 stream on one endpoint: open the upstream call, pump the body, relay the answer.

Theory of operation: ``attempt`` opens a *call* (``H2Call`` on the endpoint's multiplexed connection, or ``H1Call``
on the HTTP/1.1 keep-alive pool) and runs two flows under one TaskGroup: the request body pump (client stream ->
call, each DATA acknowledged to the client once written upstream; an earlier try's replay buffer first) and the
response relay (call -> client stream, each DATA acknowledged upstream once the client's window took it). Expected
failures are returned, not raised: ("done"|"client", status) when answered, else a failure name the retry policy of
h2_forward.py knows ("refused", "connect-failure", "refused-stream", "reset", "timeout", "status", "unavailable").
gRPC awareness: a response head is held until its first DATA or its trailers, so an UNAVAILABLE (14) with no
message (Trailers-Only, or trailers right after the head) can still be retried elsewhere (``may_retry`` decides,
and takes the retry budget's slot, before anything reaches the client).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import h2.errors

from ..balancing import Pool
from ..config import UpstreamTls
from ..model import Endpoint
from . import grpc_status, http_log
from .h2_request import CONNECTION_SPECIFIC, Call, upstream_headers
from .h2_stream import Event, H2Stream, StreamGone
from .h2_to_h1 import H1Call, open_h1
from .h2_upstream import H2Call
from .http_request import bounded
from .router import Route

if TYPE_CHECKING:
    from .h2_protocol import H2ServerProtocol
    from .http import HttpProxyServer

_DEFAULT_TLS = UpstreamTls()
REFUSED_STREAM = int(h2.errors.ErrorCodes.REFUSED_STREAM)


class ClientGone(Exception):
    """The client reset the stream (or its connection ended) before the request body was read."""


async def attempt(
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
            connect_timeout = bounded(timeouts.connect, deadline, conn.loop.time())
            up = await _open(server, conn, call, route, ep, connect_timeout, fresh)
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
    return H2Call(h2conn, upstream_headers(call, conn, tls is not None), end)


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
    head_timeout = bounded(route.config.timeouts.response_header, deadline, loop.time())
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
            async with asyncio.timeout(bounded(route.config.timeouts.response_header, deadline, loop.time())):
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
    conn.send_headers(stream, [(n, v) for n, v in headers if n not in CONNECTION_SPECIFIC], end_stream=end)
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
