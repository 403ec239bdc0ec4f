"""The TCP (L4) proxy listener: ``TcpProxyServer`` accepts clients and splices each to an endpoint the pool picks.

This module holds the listener's lifecycle (start, ``update``, drain), admission (``max_connections``), the
per-listener metrics and stats. The per-connection Protocols and the connect with failover are in
``tcp_splice``; TLS passthrough routing (``sni_routes``) is in ``tcp_passthrough``.

Connection set-up is where Python pays (shared/PERFORMANCE.md), so the per-connection path holds no task, no
timer and no metric call (issue 9): the first connect attempt is stepped by callbacks
(``Client.start_connect``); only a passthrough client (waiting for its ClientHello) or a failover after a failed
attempt gets a task. Timeouts are one listener-wide sweep (``_sweep``, every ``_interval`` s) over the live
connections: a connect past its deadline is abandoned and fails over, a connection idle for ``idle_timeout``
is closed (so a timeout fires up to a quarter of itself late, at most 1 s). Metrics are plain ints per
(listener, member, result) moved into the Prometheus counters at scrape time, every second and on close.

Limits: ``max_connections`` either closes the excess at once ("close") or holds it accepted, paused and
without an upstream until a slot frees ("backlog": asyncio cannot pause ``accept()`` itself, so waiting
connections sit in a FIFO; the kernel's listen backlog queues the ones after them).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

from ..aio import TaskOwner
from ..balancing import Pool, PoolSpec, ServingState
from ..balancing.hashing import hash_key
from ..balancing.metrics import count_rejection
from ..config import Config, TcpListener
from ..metrics_flush import on_scrape
from ..model import Endpoint
from .tcp_passthrough import DECODE_ERROR_ALERT, route_by_hello
from .tcp_splice import Attempts, Client, Settings, connect

__all__ = ["DECODE_ERROR_ALERT", "TcpProxyServer", "source_hash"]

log = logging.getLogger("fedproxy.proxy.tcp")
access_log = logging.getLogger("fedproxy.access")

FLUSH_INTERVAL = 1.0  # s between moves of the plain-int counts into the Prometheus metrics
_SERVERS: weakref.WeakSet[TcpProxyServer] = weakref.WeakSet()


@on_scrape
def _flush_servers() -> None:
    """Every listener's plain-int counts into the TCP metrics, and the active gauge."""
    for server in list(_SERVERS):
        server.flush_counts()
    _set_active()


_ACTIVE_NAMES: set[str] = set()  # every listener name the active gauge was set for (set to 0, never removed)


def _set_active() -> None:
    """``fedproxy_tcp_active_connections`` per listener name, summed over this process's servers (a draining
    server and its replacement share a name during a reload)."""
    active = dict.fromkeys(_ACTIVE_NAMES, 0)
    for server in list(_SERVERS):
        active[server.name] = active.get(server.name, 0) + server.stats_active
    for name, n in active.items():
        _ACTIVE_NAMES.add(name)
        ACTIVE.labels(name).set(n)


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


def source_hash(address: str) -> int:
    """The affinity key for a client address (``hash_source_ip``): stable across processes and restarts."""
    return hash_key(address)


def _sweep_interval(listener: TcpListener) -> float:
    """How often the sweep runs: a quarter of the shortest timeout, between 50 ms and 1 s."""
    timeouts = [t for t in (listener.idle_timeout, listener.connect_timeout) if t > 0]
    return min(1.0, max(0.05, min(timeouts, default=4.0) / 4))


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
        self._interval = _sweep_interval(listener)
        self._server: asyncio.AbstractServer | None = None
        self._tasks = TaskOwner(f"tcp-{listener.port}")
        self._conns: set[Client] = set()  # accepted and not finished (admitted or waiting)
        self._admitted = 0  # connections holding a max_connections slot
        self._waiting: deque[Client] = deque()  # backlog mode: accepted, waiting for a slot
        self._seq = 0
        self._draining = False
        self._idle_event: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._flushed = 0.0
        self._last_pool: tuple[ServingState, PoolSpec, Pool] | None = None  # (state, spec) -> pool, last used
        # Not yet flushed into the metrics: (listener, cluster, result) -> connections; (listener, cluster) ->
        # [bytes in, bytes out].
        self._conn_counts: dict[tuple[str, str, str], int] = {}
        self._byte_counts: dict[tuple[str, str], list[int]] = {}
        self.port = listener.port
        self.counts = {"accepted": 0, "rejected": 0, "connect_failed": 0, "no_upstream": 0}
        self.bytes_in = 0
        self.bytes_out = 0
        _SERVERS.add(self)

    @property
    def listener(self) -> TcpListener:
        return self._settings.listener

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def stats_active(self) -> int:
        """Connections holding a ``max_connections`` slot."""
        return self._admitted

    async def start(self) -> None:
        """Bind ``listener.address:port``; ``self.port`` is the bound port (useful with port 0)."""
        lst = self._settings.listener
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, lst.address, lst.port, reuse_address=True, reuse_port=self._reuse_port or None, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(self._interval, self._sweep)
        log.info("event=tcp_listen listener=%s address=%s port=%d", self.name, lst.address, self.port)

    def update(self, listener: TcpListener, config: Config) -> None:
        """New settings for new connections; open ones keep theirs. Synchronous: no connection sees a mix."""
        self._settings = Settings(listener, config, self)
        self._interval = min(self._interval, _sweep_interval(listener))  # open connections keep old timeouts

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
        if full:
            self._waiting.append(conn)  # backlog: stays paused, without an upstream, until a slot frees
        else:
            self._admit(conn)

    def _admit(self, conn: Client) -> None:
        conn.admitted = True
        self._admitted += 1
        s = conn.s
        if conn.hello is not None and s.sni is not None:
            self._seq += 1
            conn.task = self._tasks.spawn(f"c{self._seq}", self._passthrough(conn))
        else:
            self._start(conn, s.spec)

    async def _passthrough(self, conn: Client) -> None:
        """Route a passthrough client by its ClientHello's server name, then connect as any other."""
        assert conn.s.sni is not None
        spec = await route_by_hello(conn, conn.s.sni, conn.s.spec)
        if spec is not None:
            conn.task = None  # the connect below may start a failover task of its own
            self._start(conn, spec)

    def _start(self, conn: Client, spec: PoolSpec) -> None:
        """Pick an endpoint for ``conn`` and start its first connect attempt (no task: ``start_connect``)."""
        s = conn.s
        state = self._get_state()
        last = self._last_pool
        if last is not None and last[0] is state and last[1] is spec:
            pool = last[2]  # same state and spec as the previous connection: skip hashing the spec (the old
            # state stays referenced until the next connection on this listener: one state, bounded)
        else:
            pool = state.pool(spec)
            self._last_pool = (state, spec, pool)
        if (refused := pool.breaker.try_acquire("connections")) is not None:
            count_rejection(str(spec.service), "max_connections")
            log.warning("event=tcp_circuit_open listener=%s service=%s reason=%r", s.name, spec.service, refused)
            conn.finish("circuit_open")
            return
        conn.pool = pool
        key = source_hash(conn.peer[0]) if s.listener.hash_source_ip and conn.peer else None
        ep = pool.pick(key)
        if ep is None:
            self._unreachable(conn, pool, None)
            return
        conn.start_connect(pool, ep, s.listener.connect_timeout)

    def connect_done(self, conn: Client, exc: Exception | None) -> None:
        """The first connect attempt's outcome: report it; on failure fail over in a task (or give up)."""
        ep, pool = conn.ep, conn.pool
        assert ep is not None and pool is not None
        if exc is None:
            self._report(ep, True)
            return
        pool.finished(ep)
        conn.ep = None
        self._report(ep, False)
        attempts = Attempts()
        attempts.tried.append(ep)
        attempts.note_failure(conn.s.name, ep, exc)
        if conn.s.listener.connect_attempts <= 1:
            self._unreachable(conn, pool, attempts)
            return
        self._seq += 1
        key = source_hash(conn.peer[0]) if conn.s.listener.hash_source_ip and conn.peer else None
        conn.task = self._tasks.spawn(f"c{self._seq}", self._failover(conn, pool, key, attempts))

    async def _failover(self, conn: Client, pool: Pool, key: int | None, attempts: Attempts) -> None:
        if not await connect(conn, pool, key, self._report, attempts):
            self._unreachable(conn, pool, attempts)

    def _unreachable(self, conn: Client, pool: Pool, attempts: Attempts | None) -> None:
        """No endpoint answered (``attempts``) or none could be picked: close the client and say why."""
        s = conn.s
        if attempts is None or not attempts.tried:
            self.counts["no_upstream"] += 1
            log.warning("event=tcp_no_upstream listener=%s service=%s reason=%r", s.name, s.service, pool.reason)
            conn.finish("no_upstream")
            return
        self.counts["connect_failed"] += 1
        log.warning(
            "event=tcp_upstream_unreachable listener=%s service=%s attempts=%d error=%s",
            s.name,
            s.service,
            len(attempts.tried),
            attempts.last_error.replace(" ", "_"),
        )
        conn.finish("connect_failed")

    def finished(self, conn: Client) -> None:
        if conn.admitted:
            self._admitted -= 1
        elif conn in self._waiting:
            self._waiting.remove(conn)
        self._conns.discard(conn)
        self.bytes_in += conn.bytes_in
        self.bytes_out += conn.bytes_out
        s = conn.s
        ep = conn.ep
        cluster = ep.cluster if ep is not None else ""
        key = (s.name, cluster, conn.result)
        counts = self._conn_counts
        counts[key] = counts.get(key, 0) + 1
        if ep is not None:
            pair = self._byte_counts.get((s.name, cluster))
            if pair is None:
                pair = self._byte_counts[(s.name, cluster)] = [0, 0]
            pair[0] += conn.bytes_in
            pair[1] += conn.bytes_out
        if access_log.isEnabledFor(logging.INFO):
            peer = conn.peer
            access_log.info(
                "event=tcp_connection listener=%s service=%s cluster=%s endpoint=%s client=%s bytes_in=%d "
                "bytes_out=%d duration=%.3f result=%s",
                s.name,
                s.service,
                cluster or "-",
                f"{ep.address}:{ep.port}" if ep is not None else "-",
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

    # Timeouts and metrics

    def _sweep(self) -> None:
        """Time out connects past their deadline and idle connections; flush the counts once a second."""
        now = time.monotonic()
        for conn in list(self._conns):
            if conn.done:
                continue
            if conn.coro is not None and now >= conn.deadline:
                conn.abandon_connect()
                self.connect_done(conn, TimeoutError())
            elif conn.s.idle > 0 and now - conn.last >= conn.s.idle:
                conn.finish("idle_timeout", "stuck")
        if now - self._flushed >= FLUSH_INTERVAL:
            self.flush_counts()
            _set_active()
        self._sweeper = asyncio.get_running_loop().call_later(self._interval, self._sweep)

    def flush_counts(self) -> None:
        """Move the plain-int counts into ``fedproxy_tcp_connections_total`` and the byte counters."""
        self._flushed = time.monotonic()
        counts, self._conn_counts = self._conn_counts, {}
        for labels, n in counts.items():
            CONNECTIONS.labels(*labels).inc(n)
        byte_counts, self._byte_counts = self._byte_counts, {}
        for labels, (sent, received) in byte_counts.items():
            if sent:
                BYTES_IN.labels(*labels).inc(sent)
            if received:
                BYTES_OUT.labels(*labels).inc(received)

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
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.flush_counts()
        _set_active()
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
