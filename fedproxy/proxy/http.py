"""The HTTP/1.1 reverse proxy listener: socket lifecycle, router swap, connection registry, drain.

``HttpProxyServer`` binds one ``HttpListener``; every client connection gets an ``HttpProxyProtocol``
(http_protocol.py) and every request a task owned by the server (http_forward.py). The runtime swaps the
router with ``update`` in the same synchronous step as the serving-state swap; a request in flight keeps
the route and pool it started with. Like uvicorn's ServerState, live connections are registered so that
``drain`` can ask each to finish its request and close.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ..aio import TaskOwner
from ..balancing import ServingState
from ..config import Config, HttpListener
from ..model import Endpoint
from ..tls.certs import CertError, current_stamp
from ..tls.context import ServerTls
from ..tls.secrets import SecretMaterial, SecretRef, tls_refs
from . import h2_protocol, http_forward, http_log
from .h2_upstream import H2UpstreamPool
from .http_protocol import HttpProxyProtocol
from .http_request import Request
from .router import Router, build_router
from .upstream import UpstreamPool

TLS_POLL = 2.0  # s between checks of certificate files' mtimes (a stat per file; renewals are rare)
METRICS_FLUSH = 1.0  # s between moves of the per-request plain-int counts into prometheus (http_log.flush)

log = logging.getLogger("fedproxy.proxy.http")


class HttpProxyServer:
    """One HTTP listener. Collaborators: ``get_state`` (the current ServingState) and ``report`` (the
    outcome of each upstream attempt, for passive health)."""

    # Application protocols a TLS connection may negotiate by ALPN here. The HTTP/2 protocol adds "h2" once it
    # takes connections whose ``negotiated_protocol(transport)`` (fedproxy.tls.context) is "h2".
    ALPN_SUPPORTED: tuple[str, ...] = ("h2", "http/1.1")  # HTTP/2 hook: h2_protocol takes "h2" connections

    def __init__(
        self,
        listener: HttpListener,
        config: Config,
        get_state: Callable[[], ServingState],
        report: Callable[[Endpoint, bool], None],
        *,
        reuse_port: bool = False,
        tls_secrets: Mapping[SecretRef, SecretMaterial] | None = None,
    ) -> None:
        self.listener = listener
        self.config = config
        self.get_state = get_state
        self.report = report
        self.reuse_port = reuse_port
        self.name = listener.name or f"http-{listener.port}"
        self.router: Router = build_router(listener, config)
        self.access_log = config.http.access_log
        self.log_on = self._log_on()
        self.upstreams = UpstreamPool()
        self.h2_upstreams = H2UpstreamPool()  # HTTP/2 hook: routes with upstream_protocol h2c/h2
        self.upstream_idle = max((r.timeouts.idle for r in listener.routes), default=60.0)
        self.port = listener.port
        self.connections: set[HttpProxyProtocol] = set()
        self.tasks = TaskOwner(f"http:{self.name}")
        self._server: asyncio.AbstractServer | None = None
        self._next_conn = 0
        self._requests = 0
        self._by_class: dict[str, int] = {}
        self._local: dict[int, int] = {}
        self.tls: ServerTls | None = None
        self.tls_secrets: Mapping[SecretRef, SecretMaterial] = tls_secrets or {}  # PEM of Secret certificates

    async def start(self) -> None:
        """Bind and listen; ``port`` is the bound port afterwards (useful when 0 was asked)."""
        loop = asyncio.get_running_loop()
        if self.listener.tls is not None:
            try:
                self.tls = ServerTls(self.listener.tls, self.ALPN_SUPPORTED, self.tls_secrets)
            except CertError as exc:  # checked at config load; files changed since: fail like a bind error
                raise OSError(f"listener {self.name}: {exc}") from None
        self._server = await loop.create_server(
            lambda: self.make_protocol(loop),
            self.listener.address,
            self.listener.port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=1024,
            family=socket.AF_INET6 if ":" in self.listener.address else socket.AF_INET,
            ssl=self.tls.context if self.tls is not None else None,
            ssl_handshake_timeout=self.listener.request_head_timeout if self.tls is not None else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.tls is not None:
            self.tasks.spawn("tls-files", self._watch_tls_files())
        self.tasks.spawn("metrics-flush", self._flush_metrics())
        log.info("event=http_listening listener=%s address=%s port=%d", self.name, self.listener.address, self.port)

    def make_protocol(self, loop: asyncio.AbstractEventLoop) -> asyncio.Protocol:
        """HTTP/2 hook: with h2c (or TLS ALPN, see h2_protocol.choose_protocol) a selector picks per connection."""
        if self.listener.h2c or self.tls is not None:
            return h2_protocol.ProtocolSelector(self, loop)
        return HttpProxyProtocol(self, loop)

    def update(self, listener: HttpListener, config: Config) -> None:
        """Swap routes and settings atomically (synchronous: no request sees half of it)."""
        self.router = build_router(listener, config)
        self.listener = listener
        self.config = config
        self.access_log = config.http.access_log
        self.log_on = self._log_on()
        self.upstream_idle = max((r.timeouts.idle for r in listener.routes), default=60.0)
        if self.tls is not None and listener.tls is not None:
            self._reload_tls("config_reload")
        elif (self.tls is None) != (listener.tls is None):
            log.warning("event=tls_toggle_ignored listener=%s reason=needs_new_listener", self.name)

    def _log_on(self) -> bool:
        """Whether requests are access-logged (decided per config, not per request)."""
        return self.access_log != "off" and http_log.access_log.isEnabledFor(logging.INFO)

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH)
            http_log.flush()

    # TLS certificates: re-read on reload, when the files change and when a Secret changes (new handshakes only).

    def set_tls_secrets(self, secrets: Mapping[SecretRef, SecretMaterial]) -> None:
        """The current PEM pairs of the watched Secrets; reloads when one this listener serves changed."""
        old, self.tls_secrets = self.tls_secrets, secrets
        spec = self.listener.tls
        if self.tls is not None and spec is not None and any(old.get(r) != secrets.get(r) for r in tls_refs(spec)):
            self._reload_tls("secret_changed")

    def _reload_tls(self, why: str) -> bool:
        assert self.tls is not None and self.listener.tls is not None
        try:
            self.tls.update(self.listener.tls, secrets=self.tls_secrets)
        except (CertError, OSError) as exc:  # ssl.SSLError is an OSError; keep serving the previous certificates
            log.warning("event=tls_reload_failed listener=%s why=%s error=%r", self.name, why, str(exc))
            return False
        store = self.tls.store
        log.info(
            "event=tls_reloaded listener=%s why=%s certificates=%d pending=%s",
            self.name,
            why,
            len(store.certs),
            ",".join(map(str, store.pending)) or "-",
        )
        return True

    async def _watch_tls_files(self) -> None:
        failed: object = None  # the stamp that last failed to load: retried only once the files change again
        while True:
            await asyncio.sleep(TLS_POLL)
            tls, spec = self.tls, self.listener.tls
            if tls is None or spec is None:
                continue
            stamp = current_stamp(spec)
            if stamp != tls.store.stamp and stamp != failed:
                failed = None if self._reload_tls("files_changed") else stamp

    # Connection registry (uvicorn's ServerState).

    def register(self, conn: HttpProxyProtocol) -> int:
        self.connections.add(conn)
        self._next_conn += 1
        return self._next_conn

    def unregister(self, conn: HttpProxyProtocol) -> None:
        self.connections.discard(conn)

    def spawn_request(self, conn: HttpProxyProtocol, req: Request, resume: http_forward.Resume | None = None) -> None:
        """Serve ``req`` with a task (the fast path's hand-over passes what it did so far as ``resume``)."""
        if resume is None or not resume.outcome:
            self._requests += 1
        self.tasks.spawn(f"req-{conn.conn_id}-{self._requests}", http_forward.forward(self, conn, req, resume))

    def count_fast(self) -> None:
        """A request the fast path took (the task path counts its own in ``spawn_request``)."""
        self._requests += 1

    def count(self, status: int) -> None:
        key = f"{status // 100}xx" if status else "none"
        self._by_class[key] = self._by_class.get(key, 0) + 1

    def count_local(self, status: int) -> None:
        """A response the connection answered itself before any request task (400, 408, 431)."""
        self._local[status] = self._local.get(status, 0) + 1
        self.count(status)

    def stats(self) -> dict[str, Any]:
        return {
            "listener": self.name,
            "port": self.port,
            "connections": len(self.connections),
            "requests": self._requests,
            "responses": dict(self._by_class),
            "rejected": dict(self._local),
            "in_flight": sum(1 for c in self.connections if c.active is not None),
            "upstream_connects": self.upstreams.connects,
            "upstream_reuses": self.upstreams.reuses,
            "upstream_idle": self.upstreams.idle_count(),
            **({"tls": self.tls_stats()} if self.tls is not None else {}),
        }

    def tls_stats(self) -> dict[str, Any]:
        assert self.tls is not None
        store = self.tls.store
        return {
            "certificates": [{"source": c.source, "subject": c.subject, "names": list(c.names)} for c in store.certs],
            "pending": [str(ref) for ref in store.pending],  # Secrets not arrived: their names cannot be served
            "handshakes_refused": self.tls.refused,  # refused for want of any certificate
        }

    async def drain(self, timeout: float) -> None:
        """Stop accepting; idle connections close now, busy ones after their request; the rest at the deadline."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await self.close()

    async def close(self) -> None:
        """Close the listener, every connection and every request task now."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await self.tasks.close()
        http_log.flush()
        self.upstreams.close()
        self.h2_upstreams.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.connections.clear()
