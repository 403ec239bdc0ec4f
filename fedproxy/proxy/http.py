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
from collections.abc import Callable
from typing import Any

from ..aio import TaskOwner
from ..balancing import ServingState
from ..config import Config, HttpListener
from ..model import Endpoint
from . import http_forward
from .http_protocol import HttpProxyProtocol
from .http_request import Request
from .router import Router, build_router
from .upstream import UpstreamPool

log = logging.getLogger("fedproxy.proxy.http")


class HttpProxyServer:
    """One HTTP listener. Collaborators: ``get_state`` (the current ServingState) and ``report`` (the
    outcome of each upstream attempt, for passive health)."""

    def __init__(
        self,
        listener: HttpListener,
        config: Config,
        get_state: Callable[[], ServingState],
        report: Callable[[Endpoint, bool], None],
        *,
        reuse_port: bool = False,
    ) -> None:
        self.listener = listener
        self.config = config
        self.get_state = get_state
        self.report = report
        self.reuse_port = reuse_port
        self.name = listener.name or f"http-{listener.port}"
        self.router: Router = build_router(listener, config)
        self.access_log = config.http.access_log
        self.upstreams = UpstreamPool()
        self.upstream_idle = max((r.timeouts.idle for r in listener.routes), default=60.0)
        self.port = listener.port
        self.connections: set[HttpProxyProtocol] = set()
        self.tasks = TaskOwner(f"http:{self.name}")
        self._server: asyncio.AbstractServer | None = None
        self._next_conn = 0
        self._requests = 0
        self._by_class: dict[str, int] = {}
        self._local: dict[int, int] = {}

    async def start(self) -> None:
        """Bind and listen; ``port`` is the bound port afterwards (useful when 0 was asked)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProxyProtocol(self, loop),
            self.listener.address,
            self.listener.port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=1024,
            family=socket.AF_INET6 if ":" in self.listener.address else socket.AF_INET,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("event=http_listening listener=%s address=%s port=%d", self.name, self.listener.address, self.port)

    def update(self, listener: HttpListener, config: Config) -> None:
        """Swap routes and settings atomically (synchronous: no request sees half of it)."""
        self.router = build_router(listener, config)
        self.listener = listener
        self.config = config
        self.access_log = config.http.access_log
        self.upstream_idle = max((r.timeouts.idle for r in listener.routes), default=60.0)

    # Connection registry (uvicorn's ServerState).

    def register(self, conn: HttpProxyProtocol) -> int:
        self.connections.add(conn)
        self._next_conn += 1
        return self._next_conn

    def unregister(self, conn: HttpProxyProtocol) -> None:
        self.connections.discard(conn)

    def spawn_request(self, conn: HttpProxyProtocol, req: Request) -> None:
        self._requests += 1
        self.tasks.spawn(f"req-{conn.conn_id}-{self._requests}", http_forward.forward(self, conn, req))

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
        self.upstreams.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.connections.clear()
