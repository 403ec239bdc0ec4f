"""One proxied request: route, pick, send upstream, retry per policy, stream the response back.

``forward`` runs as a task per request (owned by the server). An ``Exchange`` is the ``Sink`` an upstream
connection reports to for one attempt; it holds the response head until the task decides between retry
and commit, then streams body bytes straight to the client from the upstream's parser callbacks.
Errors become responses in one place (``_fail``): 404 no route, 502 unreachable, 503 no endpoint,
504 timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, NamedTuple

from ..balancing import Pool
from ..balancing.metrics import count_budget_exhausted, count_rejection
from ..model import Endpoint
from . import http_head, http_log
from .http_request import Request, affinity_key, backoff, bounded, may_retry, retry_kind
from .router import Route
from .upstream import UpstreamLost, UpstreamProtocol

if TYPE_CHECKING:
    from .http import HttpProxyServer
    from .http_protocol import HttpProxyProtocol

log = logging.getLogger("fedproxy.proxy.http")

HOLD = "hold"  # the upstream is not read while its response head waits for the retry-or-commit decision


class Exchange:
    """Receives one upstream attempt's response and passes it on once committed."""

    __slots__ = ("client", "req", "up", "lost")

    def __init__(self, client: HttpProxyProtocol, req: Request, up: UpstreamProtocol) -> None:
        self.client, self.req, self.up = client, req, up
        self.lost: Exception | None = None

    def on_informational(self, up: UpstreamProtocol) -> None:
        # 100 Continue goes to a client that asked for it; other 1xx are dropped (HTTP/1.0 clients cannot take them).
        if up.status == 100 and self.req.expect_continue and not self.req.http10:
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_response_head(self, up: UpstreamProtocol) -> None:
        # Hold body bytes until the task commits (it may still retry on a 5xx).
        self.client.flow.pause_reading(HOLD)
        w = self.req.head_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def on_response_body(self, data: bytes) -> None:
        req = self.req
        if not req.committed:
            req.resp_pending.append(data)  # framed at commit, when the client's framing is known
        elif req.resp_framing != b"none":
            req.bytes_out += len(data)
            self.client.write(http_head.chunk(data) if req.resp_framing == b"chunked" else data)

    def on_response_complete(self) -> None:
        req = self.req
        if req.committed and req.resp_framing == b"chunked" and not self.up.upgraded:
            self.client.write(http_head.CHUNK_END)
        for w in (req.head_waiter, req.done_waiter):
            if w is not None and not w.done():
                w.set_result(None)

    def on_upstream_lost(self, exc: Exception) -> None:
        self.lost = exc
        for w in (self.req.head_waiter, self.req.done_waiter):
            if w is not None and not w.done():
                w.set_exception(exc)

    def on_tunnel_data(self, data: bytes) -> None:
        req = self.req
        if not req.committed:
            req.tunnel_pending_up.append(data)  # bytes after the 101 head wait for it to reach the client
            return
        req.bytes_out += len(data)
        self.client.write(data)


class Resume(NamedTuple):
    """What the fast path (http_fast) hands over: the request already holds a "requests" slot of ``pool`` and
    ``ep`` was picked for it. ``outcome`` "" means no attempt was made yet (``ep`` is tried first); otherwise
    it is that attempt's outcome as ``_attempt`` would have returned it (with ``status`` for "status")."""

    route: Route
    pool: Pool
    ep: Endpoint
    hash_key: int | None
    pinned: str | None
    outcome: str
    status: int


async def forward(
    server: HttpProxyServer, client: HttpProxyProtocol, req: Request, resume: Resume | None = None
) -> None:
    """Serve ``req`` end to end; never raises (a failure becomes a response or a closed connection)."""
    route: Route | None = None
    ep: Endpoint | None = None
    pool: Pool | None = None
    retries = 0
    retrying = False  # holds one of the pool's retry slots
    try:
        if resume is not None:
            route, pool, hash_key, pinned = resume.route, resume.pool, resume.hash_key, resume.pinned
            service = str(route.spec.service)
            first: Endpoint | None = resume.ep
        else:
            first = None
            cookies = http_head.parse_cookies(req.cookie) if (req.cookie and server.router.needs_cookies) else None
            route = server.router.match(req.host, req.path, req.match_headers, cookies)
            if route is None:
                _fail(
                    server,
                    client,
                    req,
                    404,
                    f"no route for host {req.host.decode('latin-1')!r} path {req.path.decode('latin-1')!r}",
                )
                return
            state_pool = server.get_state().pool(route.spec)
            service = str(route.spec.service)
            if (refused := state_pool.breaker.try_acquire("requests")) is not None:
                _refuse(server, client, req, route, refused)
                return
            pool = state_pool  # from here on the request holds a "requests" slot, released in finally
            pinned = req.match_headers.get(route.pin_header) or None
            if pinned is not None and pinned not in pool.clusters:
                _fail(server, client, req, 503, f"cluster {pinned!r} has no endpoint for {route.spec.service}", route)
                return
            hash_key = affinity_key(route, client.client_ip, req.match_headers, req.cookie)
        timeouts = route.config.timeouts
        policy = route.config.retries
        loop = client.loop
        deadline = loop.time() + timeouts.total if timeouts.total > 0 else None
        tried: list[Endpoint] = []
        while True:
            if resume is not None and resume.outcome:  # the fast path made the first attempt
                ep = resume.ep
                tried.append(ep)
                outcome, status, sent = resume.outcome, resume.status, True
                resume = first = None
            else:
                ep = first if first is not None else pool.pick(hash_key, cluster=pinned)  # a retry's was picked
                first = None
                if ep is None:
                    why = pool.reason or "every endpoint is ejected or drained"
                    _fail(server, client, req, 503, f"no healthy endpoint for {route.spec.service}: {why}", route)
                    return
                tried.append(ep)
                outcome, status, sent = await _attempt(server, client, req, route, pool, ep, deadline)
            if retrying:
                retrying = False
                pool.breaker.release("retries")
            if outcome == "done":
                return
            if outcome == "max_pending":
                _fail(server, client, req, 503, f"circuit breaker: pending requests for {service} at the limit",
                      route, limit="max_pending")  # fmt: skip
                return
            kinds = retry_kind("" if outcome == "status" else outcome, status)
            if client.up is not None and outcome != "status":
                _drop_upstream(client)
            retry = outcome != "timeout" and may_retry(req, policy, retries, kinds, sent) and not client.closing
            if retry:  # never to an endpoint already tried: with none left, this attempt's outcome is the answer
                first = pool.pick(hash_key, exclude=tried, cluster=pinned)
                retry = first is not None
            # The budget protects upstreams from retry storms of answered requests (5xx). A try that got no
            # response byte (refused, failed connect, a stale keep-alive connection reset) is retried outside
            # it, as TCP connect retries are: otherwise a pod that dies under load turns into failed requests
            # whenever more than the budget's floor of clients hit it at once.
            budgeted = False
            if retry and outcome == "status":
                if (limit := pool.breaker.try_retry()) is not None:
                    retry = False  # over the pool's retry budget: answer with this attempt's outcome (Envoy)
                    if limit == "retry_budget":
                        count_budget_exhausted(service)
                    else:
                        count_rejection(service, limit)
                    log.info("event=http_retry_refused service=%s limit=%s", service, limit)
                else:
                    budgeted = True
            if retry:
                retrying = budgeted
                if client.up is not None:  # a held 5xx we retry instead of passing on
                    _drop_upstream(client)
                retries += 1
                http_log.count_retry(server.name, str(route.spec.service))
                log.info(
                    "event=http_retry service=%s endpoint=%s reason=%s status=%d retry=%d",
                    route.spec.service,
                    ep,
                    outcome or "status",
                    status,
                    retries,
                )
                await asyncio.sleep(backoff(policy, retries - 1, random.random()))
                continue
            if outcome == "status":  # a 5xx we did not retry: pass it on as it is
                await _commit(server, client, req, ep, deadline)
                return
            if outcome == "timeout":
                _fail(server, client, req, 504, f"upstream {ep} timed out", route, ep)
            elif outcome == "client":
                client.finish(req, False)
            else:
                _fail(server, client, req, 502, f"upstream {ep} failed: {outcome}", route, ep)
            return
    except Exception:
        log.exception("event=http_forward_error conn=%d", client.conn_id)
        if not req.committed:
            _fail(server, client, req, 502, "internal proxy error", route, ep)
        else:
            client.finish(req, False)
    finally:
        if pool is not None:
            pool.breaker.release("requests")
            if retrying:
                pool.breaker.release("retries")
        access(server, client, req, route, ep, retries)


async def _attempt(
    server: HttpProxyServer,
    client: HttpProxyProtocol,
    req: Request,
    route: Route,
    pool: Pool,
    ep: Endpoint,
    deadline: float | None,
) -> tuple[str, int, bool]:
    """One try. Returns (outcome, status, request_sent): outcome "done" when the response went out,
    "status" with a held 5xx, or a failure name ("refused", "connect-failure", "reset", "timeout", "client")."""
    timeouts = route.config.timeouts
    loop = client.loop
    breaker = pool.breaker
    if breaker.try_acquire("pending") is not None:  # waiting for an upstream connection counts as pending
        count_rejection(str(route.spec.service), "max_pending")
        return "max_pending", 0, False
    pool.started(ep)
    try:
        try:
            up, _reused = await server.upstreams.acquire(
                ep, bounded(timeouts.connect, deadline, loop.time()), route.config.upstream_tls
            )
        except ConnectionRefusedError:
            server.report(ep, False)
            return "refused", 0, False
        except (OSError, TimeoutError):
            server.report(ep, False)
            return "connect-failure", 0, False
        finally:
            breaker.release("pending")
        if client.closing:
            server.upstreams.release(up, 0)
            return "client", 0, False
        ex = Exchange(client, req, up)
        req.head_waiter = loop.create_future()
        req.done_waiter = None
        req.resp_pending, req.sent_body, req.committed = [], False, False
        up.begin(ex, req.method == b"HEAD", client)
        up.attach_flow(client.inbound)
        client.up = up
        client.flow.set_source(up.transport)
        head = http_head.request_head(
            req.method, req.target, req.headers, client_ip=client.client_ip, host=req.host,
            request_id=req.request_id, has_request_id=req.has_request_id, chunked=req.chunked,
            websocket=req.websocket, scheme=client.scheme, drop=req.drop,
        )  # fmt: skip
        sent_at = loop.time()
        if req.replay:
            head = b"".join((head, *req.replay))  # one write (one send) for the head and the replayed body
            req.sent_body = True
        client.flush_pending(req, head)
        try:
            async with asyncio.timeout(bounded(timeouts.response_header, deadline, loop.time())):
                await req.head_waiter
        except TimeoutError:
            up.close()
            server.report(ep, False)
            return "timeout", 0, True
        except UpstreamLost as exc:
            server.report(ep, False)
            if client.closing:
                return "client", 0, True
            return ("reset" if not exc.got_bytes else "bad-response"), 0, True
        except ConnectionError:
            up.close()
            return "client", 0, True
        observe_latency(server, route, ep, loop.time() - sent_at)
        req.status = up.status
        server.report(ep, up.status < 500)
        if up.status >= 500:
            return "status", up.status, True
        await _commit(server, client, req, ep, deadline)
        return "done", up.status, True
    finally:
        pool.finished(ep)


async def _commit(
    server: HttpProxyServer, client: HttpProxyProtocol, req: Request, ep: Endpoint, deadline: float | None
) -> None:
    """Send the held response head to the client and stream the rest until the upstream completes it."""
    up = client.up
    assert up is not None and up.transport is not None
    status = up.status
    if up.upgraded or (status == 101 and req.websocket):
        req.committed = True
        client.write(
            http_head.response_head(101, up.reason, up.headers, framing=b"none", keep_alive=True, http10=False,
                                    upgrade=True)
        )  # fmt: skip
        for data in req.tunnel_pending_up:
            client.write(data)
        req.tunnel_pending_up = []
        client.start_tunnel(up, req)
        client.flow.resume_reading(HOLD)
        req.done_waiter = client.loop.create_future()
        try:
            await req.done_waiter
        except ConnectionError:
            pass
        up.close()
        client.finish(req, False)
        return
    commit_head(client, req, up)
    framing = req.resp_framing
    no_body = framing == b"none"
    req.done_waiter = client.loop.create_future()
    if up.complete:
        if framing == b"chunked" and not no_body:
            client.write(http_head.CHUNK_END)
        req.done_waiter.set_result(None)
    ok = True
    try:
        if deadline is not None:
            async with asyncio.timeout_at(deadline):
                await req.done_waiter
        else:
            await req.done_waiter
    except (ConnectionError, TimeoutError) as exc:
        ok = False
        if isinstance(exc, UpstreamLost):
            server.report(ep, False)
        log.info("event=http_response_aborted endpoint=%s reason=%r", ep, str(exc) or type(exc).__name__)
    if ok and req.body_done and up.reusable:
        server.upstreams.release(up, server.upstream_idle)
    else:
        up.detach()
        up.close()
    client.finish(req, ok)


def commit_head(client: HttpProxyProtocol, req: Request, up: UpstreamProtocol) -> None:
    """Send the response head to the client with the framing chosen for it, then any body bytes held so far;
    from here on the sink streams body bytes straight through (``req.resp_framing``: length, chunked, none)."""
    status = up.status
    no_body = req.method == b"HEAD" or status in (204, 304)
    keep_alive = req.keep_alive and not client.draining
    if no_body or up.content_length and not up.chunked:
        framing = b"length"
    elif req.http10:
        framing, keep_alive = b"close", False
    else:
        framing = b"chunked"
    if not req.body_done:
        keep_alive = False  # the upstream answered before the upload ended: the rest cannot be skipped safely
    req.keep_alive = keep_alive
    req.resp_framing = b"none" if no_body else framing
    if up.plain and framing == b"length" and not req.http10:
        head = http_head.forwarded_head(up.head, keep_alive)
    else:
        head = http_head.response_head(status, up.reason, up.headers, framing=framing, keep_alive=keep_alive,
                                       http10=req.http10, drop=up.drop)  # fmt: skip
    pending, req.resp_pending = req.resp_pending, []
    req.committed = True
    client.write(head)
    if not no_body:
        for data in pending:
            req.bytes_out += len(data)
            client.write(http_head.chunk(data) if framing == b"chunked" else data)
    client.flow.resume_reading(HOLD)


def observe_latency(server: HttpProxyServer, route: Route, ep: Endpoint, seconds: float) -> None:
    http_log.observe_latency(server.name, route.service_name, ep.cluster, seconds)


def refuse(server: HttpProxyServer, client: HttpProxyProtocol, req: Request, route: Route, refused: str) -> None:
    """The pool's "requests" breaker refused ``req`` (``refused``: why): 503, metrics and the access log."""
    _refuse(server, client, req, route, refused)
    access(server, client, req, route, None, 0)


def _refuse(server: HttpProxyServer, client: HttpProxyProtocol, req: Request, route: Route, refused: str) -> None:
    count_rejection(route.service_name, "max_requests")
    _fail(server, client, req, 503, f"circuit breaker: {refused}", route, limit="max_requests")


def _drop_upstream(client: HttpProxyProtocol) -> None:
    """Close the current attempt's connection (never reused: its response state is unknown)."""
    up, client.up = client.up, None
    client.flow.resume_reading(HOLD)
    client.flow.set_source(None)
    if up is not None:
        up.detach()
        up.close()


def _fail(
    server: HttpProxyServer,
    client: HttpProxyProtocol,
    req: Request,
    status: int,
    reason: str,
    route: Route | None = None,
    ep: Endpoint | None = None,
    limit: str = "",
) -> None:
    """Answer with the proxy's own error response (the one place errors become responses).

    ``limit``: the circuit-breaker limit that refused the request, sent as ``x-fedproxy-reason``."""
    _drop_upstream(client)
    req.status = status
    service = str(route.spec.service) if route else "-"
    log.warning("event=http_error status=%d service=%s endpoint=%s reason=%r request_id=%s", status, service,
                ep or "-", reason, req.request_id.decode("latin-1"))  # fmt: skip
    if req.committed:
        client.finish(req, False)
        return
    keep = req.keep_alive and req.body_done and not client.draining
    req.keep_alive = keep
    req.committed = True
    body = http_head.error_response(status, reason, request_id=req.request_id, keep_alive=keep)
    if limit:  # after the status line: clients and tests tell a breaker's 503 from a no-endpoint 503
        line_end = body.index(b"\r\n") + 2
        body = body[:line_end] + b"x-fedproxy-reason: circuit-breaker %b\r\n" % limit.encode() + body[line_end:]
    if req.method == b"HEAD":  # the head only: a body would be read as the start of the next response
        body = body[: body.index(b"\r\n\r\n") + 4]
    req.bytes_out += len(body)
    client.write(body)
    client.finish(req, keep)


def access(
    server: HttpProxyServer,
    client: HttpProxyProtocol,
    req: Request,
    route: Route | None,
    ep: Endpoint | None,
    retries: int,
) -> None:
    service = route.service_name if route else "-"
    cluster = ep.cluster if ep else "-"
    server.count(req.status)
    http_log.count_request(server.name, service, cluster, req.status)
    if not server.log_on:
        return
    http_log.log_access(
        server.access_log,
        {
            "event": "http_request",
            "listener": server.name,
            "protocol": "http/1.1",
            "tls": client.tls_version,
            "sni": client.sni,
            "method": req.method.decode("latin-1"),
            "path": req.path.decode("latin-1"),
            "route": route.name if route else "-",
            "service": service,
            "cluster": ep.cluster if ep else "-",
            "endpoint": str(ep) if ep else "-",
            "status": req.status,
            "bytes_in": req.body_in,
            "bytes_out": req.bytes_out,
            "duration_ms": round((client.loop.time() - req.started) * 1000, 2),
            "retries": retries,
            "client": client.client_ip,
            "request_id": req.request_id.decode("latin-1"),
        },
    )
