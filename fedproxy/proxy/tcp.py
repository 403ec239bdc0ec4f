"""The TCP (L4) proxy listener: ``TcpProxyServer`` accepts clients and splices each to an endpoint the pool picks.

This module holds the listener's lifecycle (start, ``update``, drain), admission (``max_connections``), the
per-listener metrics and stats. The per-connection Protocols and the connect with failover are in
``tcp_splice``; TLS passthrough routing (``sni_routes``) is in ``tcp_passthrough``.

Limits: one idle timer per connection, re-armed lazily from a last-activity timestamp (not re-created per
read); ``max_connections`` either closes the excess at once ("close") or holds it accepted, paused and without
an upstream until a slot frees ("backlog": asyncio cannot pause ``accept()`` itself, so waiting connections
sit in a FIFO; the kernel's listen backlog queues the ones after them).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

from ..aio import TaskOwner
from ..balancing import ServingState
from ..balancing.metrics import count_rejection
from ..config import Config, TcpListener
from ..model import Endpoint
from .tcp_passthrough import DECODE_ERROR_ALERT, route_by_hello
from .tcp_splice import Client, Settings, connect

__all__ = ["DECODE_ERROR_ALERT", "TcpProxyServer", "source_hash"]

log = logging.getLogger("fedproxy.proxy.tcp")
access_log = logging.getLogger("fedproxy.access")

try:  # the balancing core's own key function, when it has one, so HTTP and TCP hash alike
    from ..balancing.hashing import hash_key as _balancing_hash_key
except ImportError:  # pragma: no cover - depends on the balancing package's version
    _balancing_hash_key = None  # type: ignore[assignment]

CONNECTIONS = Counter(
    "fedproxy_tcp_connections",
    "TCP client connections by listener, member and result",
    ["listener", "cluster", "result"],
)
BYTES_IN = Counter("fedproxy_tcp_received_bytes", "Bytes from TCP clients to upstreams", ["listener", "cluster"])
BYTES_OUT = Counter("fedproxy_tcp_sent_bytes", "Bytes from upstreams to TCP clients", ["listener", "cluster"])
ACTIVE = Gauge(
    "fedproxy_tcp_active_connections", "Open TCP client connections", ["listener"], multiprocess_mode="livesum"
)

_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """The labelled child of ``metric``, cached: ``labels()`` takes a lock and builds a tuple each call."""
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def source_hash(address: str) -> int:
    """The affinity key for a client address (``hash_source_ip``): stable across processes and restarts."""
    if _balancing_hash_key is not None:
        return int(_balancing_hash_key(address))
    return int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8).digest(), "big")


class TcpProxyServer:
    """One TCP listener: accepts clients and splices each to an endpoint of the listener's service.

    ``get_state`` is read once per connection (a connection keeps the state, so the pool, it started with);
    ``report(endpoint, ok)`` is told the outcome of every upstream connect attempt (passive health).
    """

    def __init__(
        self,
        listener: TcpListener,
        config: Config,
        get_state: Callable[[], ServingState],
        report: Callable[[Endpoint, bool], None],
        *,
        reuse_port: bool = False,
    ) -> None:
        self._get_state = get_state
        self._report = report
        self._reuse_port = reuse_port
        self._settings = Settings(listener, config, self)
        self._server: asyncio.AbstractServer | None = None
        self._tasks = TaskOwner(f"tcp-{listener.port}")
        self._conns: set[Client] = set()  # accepted and not finished (admitted or waiting)
        self._admitted = 0  # connections holding a max_connections slot
        self._waiting: deque[Client] = deque()  # backlog mode: accepted, waiting for a slot
        self._seq = 0
        self._draining = False
        self._idle_event: asyncio.Event | None = None
        self.port = listener.port
        self.counts = {"accepted": 0, "rejected": 0, "connect_failed": 0, "no_upstream": 0}
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def listener(self) -> TcpListener:
        return self._settings.listener

    @property
    def name(self) -> str:
        return self._settings.name

    async def start(self) -> None:
        """Bind ``listener.address:port``; ``self.port`` is the bound port (useful with port 0)."""
        lst = self._settings.listener
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, lst.address, lst.port, reuse_address=True, reuse_port=self._reuse_port or None, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("event=tcp_listen listener=%s address=%s port=%d", self.name, lst.address, self.port)

    def update(self, listener: TcpListener, config: Config) -> None:
        """New settings for new connections; open ones keep theirs. Synchronous: no connection sees a mix."""
        self._settings = Settings(listener, config, self)

    def _protocol(self) -> Client:
        return Client(self._settings)

    # Called by connections

    def accepted(self, conn: Client) -> None:
        self.counts["accepted"] += 1
        lst = conn.s.listener
        conn.peer = conn.transport.get_extra_info("peername")  # type: ignore[union-attr]
        if self._draining:
            conn.finish("draining")
            return
        full = lst.max_connections and self._admitted >= lst.max_connections
        if full and lst.on_max_connections == "close":
            self.counts["rejected"] += 1
            conn.finish("over_limit")
            return
        self._conns.add(conn)
        if conn.s.idle > 0:
            conn.timer = asyncio.get_running_loop().call_later(conn.s.idle, conn.idle_check)
        if full:
            self._waiting.append(conn)  # backlog: stays paused, without an upstream, until a slot frees
        else:
            self._admit(conn)

    def _admit(self, conn: Client) -> None:
        conn.admitted = True
        self._admitted += 1
        _child(ACTIVE, conn.s.name).inc()
        self._seq += 1
        conn.task = self._tasks.spawn(f"c{self._seq}", self._connect(conn))

    def finished(self, conn: Client) -> None:
        if conn.admitted:
            self._admitted -= 1
            _child(ACTIVE, conn.s.name).dec()
        elif conn in self._waiting:
            self._waiting.remove(conn)
        self._conns.discard(conn)
        self.bytes_in += conn.bytes_in
        self.bytes_out += conn.bytes_out
        s = conn.s
        cluster = conn.ep.cluster if conn.ep is not None else ""
        _child(CONNECTIONS, s.name, cluster, conn.result).inc()
        if conn.ep is not None:
            _child(BYTES_IN, s.name, cluster).inc(conn.bytes_in)
            _child(BYTES_OUT, s.name, cluster).inc(conn.bytes_out)
        if access_log.isEnabledFor(logging.INFO):
            peer = conn.peer
            access_log.info(
                "event=tcp_connection listener=%s service=%s cluster=%s endpoint=%s client=%s bytes_in=%d "
                "bytes_out=%d duration=%.3f result=%s",
                s.name,
                s.service,
                cluster or "-",
                f"{conn.ep.address}:{conn.ep.port}" if conn.ep is not None else "-",
                f"{peer[0]}:{peer[1]}" if peer else "-",
                conn.bytes_in,
                conn.bytes_out,
                time.monotonic() - conn.started,
                conn.result,
            )
        # A freed slot goes to the oldest waiting connection (backlog mode).
        while self._waiting and not self._draining:
            lst = self._settings.listener
            if lst.max_connections and self._admitted >= lst.max_connections:
                break
            nxt = self._waiting.popleft()
            if not nxt.done:
                self._admit(nxt)
        if self._idle_event is not None and not self._conns:
            self._idle_event.set()

    async def _connect(self, conn: Client) -> None:
        """Pick and connect an upstream for ``conn``; close the client when none answers."""
        s = conn.s
        spec = s.spec
        if conn.hello is not None and s.sni is not None:
            found = await route_by_hello(conn, s.sni, spec)
            if found is None:
                return
            spec = found
        pool = self._get_state().pool(spec)
        if (refused := pool.breaker.try_acquire("connections")) is not None:
            count_rejection(str(spec.service), "max_connections")
            log.warning("event=tcp_circuit_open listener=%s service=%s reason=%r", s.name, spec.service, refused)
            conn.finish("circuit_open")
            return
        conn.pool = pool
        key = source_hash(conn.peer[0]) if s.listener.hash_source_ip and conn.peer else None
        tried, last_error = await connect(conn, pool, key, self._report)
        if tried and not last_error:
            return
        if not tried:
            self.counts["no_upstream"] += 1
            log.warning("event=tcp_no_upstream listener=%s service=%s reason=%r", s.name, s.service, pool.reason)
            conn.finish("no_upstream")
        else:
            self.counts["connect_failed"] += 1
            log.warning(
                "event=tcp_upstream_unreachable listener=%s service=%s attempts=%d error=%s",
                s.name,
                s.service,
                tried,
                last_error.replace(" ", "_"),
            )
            conn.finish("connect_failed")

    # Lifecycle

    async def drain(self, timeout: float) -> None:
        """Stop accepting; open connections run until they end or ``timeout`` s pass, then are closed."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._waiting):
            conn.finish("draining")
        if self._conns:
            self._idle_event = asyncio.Event()
            try:
                async with asyncio.timeout(max(0.0, timeout)):
                    await self._idle_event.wait()
            except TimeoutError:
                log.info("event=tcp_drain_deadline listener=%s closing=%d", self.name, len(self._conns))
        for conn in list(self._conns):
            conn.finish("drained", "stuck")
        await self._tasks.close()
        if self._server is not None:
            server, self._server = self._server, None
            # Some loops (uvloop, CPython >= 3.12) also wait here for accepted transports to go away; one
            # closed normally may still be flushing to a slow reader, which must not hold up a shutdown.
            try:
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
            except TimeoutError:
                log.info("event=tcp_close_wait_timeout listener=%s", self.name)

    async def close(self) -> None:
        """Stop at once: the listener and every open connection are closed."""
        await self.drain(0.0)

    def stats(self) -> dict[str, Any]:
        """Counters for the admin state view (this process only)."""
        return {
            "listener": self.name,
            "service": self._settings.service,
            "port": self.port,
            "active": self._admitted,
            "waiting": len(self._waiting),
            "draining": self._draining,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            **self.counts,
        }
