"""The callback-driven fast path of the HTTP/1.1 proxy: no task, no future, no timer per request.

Theory of operation: the common request (complete head, no body, no upgrade or ``Expect``, no total deadline,
an idle keep-alive connection to the picked endpoint in the pool) is served entirely from protocol callbacks:
``start`` runs in the client parser's ``on_headers_complete`` (route, breaker slot, pick, take an idle
upstream, write the rewritten head); ``FastExchange`` receives the upstream's parser callbacks and commits the
response head as soon as it arrives, then streams the body to the client and finishes the request when the
upstream completes it. The response-head timeout is the client connection's lazy deadline (one timer per
connection, re-armed only when it fires early).

Anything else hands over to the task path (http_forward.forward) with the attempt so far (``Resume``): a
response that may be retried (5xx with a 5xx/gateway-error policy), a 101, an upstream lost before the
head, a timeout. The task path then decides exactly as if it had made the attempt itself, so both paths
share one retry, error and access-log behaviour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import http_forward, http_head
from .http_forward import HOLD, Exchange, Resume, access, commit_head
from .http_request import affinity_key
from .upstream import UpstreamLost, UpstreamProtocol

if TYPE_CHECKING:
    from ..balancing import Pool
    from ..model import Endpoint
    from .http import HttpProxyServer
    from .http_protocol import HttpProxyProtocol
    from .http_request import Request
    from .router import Route


def start(server: HttpProxyServer, client: HttpProxyProtocol, req: Request) -> bool:
    """Serve ``req`` on the fast path if it qualifies; False (nothing held, nothing picked) when it does not."""
    router = server.router
    if req.cookie and router.needs_cookies:
        return False
    route = router.match(req.host, req.path, req.match_headers, None)
    if route is None:
        return False
    timeouts = route.config.timeouts
    if timeouts.total > 0:
        return False
    pool = server.get_state().pool(route.spec)
    breaker = pool.breaker
    if (refused := breaker.try_acquire("requests")) is not None:
        server.count_fast()
        http_forward.refuse(server, client, req, route, refused)
        return True
    pinned = req.match_headers.get(route.pin_header) or None if route.pin_header else None
    if pinned is not None and pinned not in pool.clusters:
        breaker.release("requests")
        return False
    hash_key = affinity_key(route, client.client_ip, req.match_headers, req.cookie)
    ep = pool.pick(hash_key, exclude=(), cluster=pinned)
    if ep is None:
        breaker.release("requests")
        return False
    tls = route.config.upstream_tls
    up = server.upstreams.take_idle(ep, tls)
    if up is None:  # a connect must be awaited: the task path makes this first attempt with the same endpoint
        server.spawn_request(client, req, Resume(route, pool, ep, hash_key, pinned, "", 0))
        return True
    server.count_fast()
    pool.started(ep)
    ex = FastExchange(server, client, req, up, route, pool, ep, hash_key, pinned)
    up.begin(ex, req.method == b"HEAD", client)
    up.attach_flow(client.inbound)
    client.up = up
    client.flow.set_source(up.transport)
    up.transport.write(  # type: ignore[union-attr]
        http_head.request_head(
            req.method, req.target, req.headers, client_ip=client.client_ip, host=req.host,
            request_id=req.request_id, has_request_id=req.has_request_id, chunked=False, websocket=False,
            scheme=client.scheme, drop=req.drop,
        )
    )  # fmt: skip
    if timeouts.response_header > 0:
        client.set_deadline(timeouts.response_header, ex.on_timeout)
    return True


class FastExchange(Exchange):
    """One fast-path attempt; after a hand-over (``fast`` False) it behaves as the task path's ``Exchange``."""

    __slots__ = ("server", "route", "pool", "ep", "hash_key", "pinned", "fast", "sent_at")

    def __init__(
        self,
        server: HttpProxyServer,
        client: HttpProxyProtocol,
        req: Request,
        up: UpstreamProtocol,
        route: Route,
        pool: Pool,
        ep: Endpoint,
        hash_key: int | None,
        pinned: str | None,
    ) -> None:
        super().__init__(client, req, up)
        self.server, self.route, self.pool, self.ep = server, route, pool, ep
        self.hash_key, self.pinned = hash_key, pinned
        self.fast = True
        self.sent_at = client.loop.time()

    def _hand_over(self, outcome: str, status: int) -> None:
        """Give the request to the task path with this attempt's outcome (the attempt itself is over)."""
        self.fast = False
        self.pool.finished(self.ep)
        res = Resume(self.route, self.pool, self.ep, self.hash_key, self.pinned, outcome, status)
        self.server.spawn_request(self.client, self.req, res)

    def on_response_head(self, up: UpstreamProtocol) -> None:
        if not self.fast:
            super().on_response_head(up)
            return
        client, req, server, ep = self.client, self.req, self.server, self.ep
        client.clear_deadline()
        status = up.status
        http_forward.observe_latency(server, self.route, ep, client.loop.time() - self.sent_at)
        req.status = status
        server.report(ep, status < 500)
        if status == 101 or (status >= 500 and self.route.retries_on_status):
            client.flow.pause_reading(HOLD)  # held until the task path decides: retry or pass it on
            self._hand_over("status", status)
            return
        commit_head(client, req, up)

    def on_response_complete(self) -> None:
        if not self.fast:
            super().on_response_complete()
            return
        client, req, up, server = self.client, self.req, self.up, self.server
        if req.resp_framing == b"chunked":
            client.write(http_head.CHUNK_END)
        if req.body_done and up.reusable:
            server.upstreams.release(up, server.upstream_idle)
        else:
            up.detach()
            up.close()
        self._end(True)

    def on_upstream_lost(self, exc: Exception) -> None:
        if not self.fast:
            super().on_upstream_lost(exc)
            return
        client, req = self.client, self.req
        self.server.report(self.ep, False)
        if req.committed:  # the response broke half way: the client connection cannot be reused
            self._end(False)
            return
        client.clear_deadline()
        if client.closing:
            outcome = "client"
        else:
            outcome = "bad-response" if isinstance(exc, UpstreamLost) and exc.got_bytes else "reset"
        self._hand_over(outcome, 0)

    def on_timeout(self) -> None:
        """The response head did not come in time (the client connection's deadline)."""
        if not self.fast or self.req.committed:
            return
        self.up.detach()
        self.up.close()
        self.server.report(self.ep, False)
        self._hand_over("timeout", 0)

    def _end(self, ok: bool) -> None:
        self.fast = False
        client, req = self.client, self.req
        pool = self.pool
        pool.finished(self.ep)
        pool.breaker.release("requests")
        access(self.server, client, req, self.route, self.ep, 0)
        if not ok:
            self.up.detach()
            self.up.close()
        client.finish(req, ok)
