"""The TCP (L4) proxy: one listener, every client connection spliced to an endpoint the pool picks.

Theory of operation: a client connection is accepted by ``_Client`` (an ``asyncio.Protocol``), which pauses
reading at once and asks the serving state's pool for an endpoint. A connect attempt runs in a task owned by
the server; a refused or timed-out connect reports the failure and tries another pick (never one already
tried; another member first when the failed one looks down), up to ``connect_attempts``. Once an upstream
answers, its ``_Upstream`` protocol writes the PROXY header (if configured), the client is resumed and bytes
are copied both ways by plain ``data_received -> write`` calls: no StreamReader/Writer, no per-read objects
(shared/PERFORMANCE.md: a Protocol pair on uvloop beats HAProxy on bulk throughput; connection set-up is
where Python pays, so per-connection work is kept to the few objects it must have).

Back-pressure: each transport's write buffer has a high-water mark; when it is crossed asyncio calls the
writing side's ``pause_writing()``, and the shared :class:`~fedproxy.proxy.flow.FlowControl` stops reading the
other side until ``resume_writing()``. Memory per connection is bounded by two write buffers.

Half-close: an EOF from one side becomes ``write_eof()`` on the other (``eof_received`` returns True to keep
the transport open for writing); the connection closes when both directions have ended.

Limits: one idle timer per connection, re-armed lazily from a last-activity timestamp (not re-created per
read); ``max_connections`` either closes the excess at once ("close") or holds it accepted, paused and without
an upstream until a slot frees ("backlog": asyncio cannot pause ``accept()`` itself, so waiting connections
sit in a FIFO; the kernel's listen backlog queues the ones after them).

TLS passthrough (``sni_routes``, docs/tls.md): the client is read (not paused) until its ClientHello is whole;
the bytes are kept in ``early`` and written to the upstream first, so the backend terminates TLS itself. The
server name picks the pool (exact, ``*.suffix``, default); a malformed hello gets a TLS alert and is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

from ..aio import TaskOwner
from ..balancing import Pool, PoolSpec, ServingState, tcp_spec
from ..balancing.metrics import count_rejection
from ..config import Config, TcpListener
from ..model import Endpoint
from ..tls.clienthello import ClientHello, HelloError, Incomplete, parse_client_hello
from ..tls.names import NameTable
from . import proxy_protocol
from .flow import FlowControl

log = logging.getLogger("fedproxy.proxy.tcp")
access_log = logging.getLogger("fedproxy.access")

try:  # the balancing core's own key function, when it has one, so HTTP and TCP hash alike
    from ..balancing.hashing import hash_key as _balancing_hash_key
except ImportError:  # pragma: no cover - depends on the balancing package's version
    _balancing_hash_key = None  # type: ignore[assignment]

# Write buffer high-water mark per transport: large enough to keep a 256 KiB read in flight, small enough
# that 10,000 connections stay well under a few GB even when every peer stops reading.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
CONNECT = "connect"  # FlowControl reason: the client is not read until an upstream answers
HELLO_TIMEOUT = 10.0  # s a passthrough client has to send its ClientHello (like request_head_timeout)
# TLS alert record: fatal (2), decode_error (50), sent to a client whose ClientHello we could not parse.
DECODE_ERROR_ALERT = bytes((21, 3, 3, 0, 2, 2, 50))

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


def _close(transport: asyncio.Transport | None, how: str = "close") -> None:
    """End ``transport``: ``close`` sends what is buffered, then FIN; ``reset`` aborts (RST) to pass a reset
    on; ``stuck`` (idle timeout, drain deadline) sends FIN when nothing is buffered, else aborts, because a
    peer that reads nothing would keep a closing transport, and its buffer, forever."""
    if transport is None:
        return
    if how == "reset" or (how == "stuck" and transport.get_write_buffer_size()):
        transport.abort()
    elif not transport.is_closing():
        transport.close()


class _Settings:
    """What one connection needs from the listener, computed once per ``update()`` (not per connection)."""

    __slots__ = ("listener", "name", "service", "spec", "proxy_protocol", "idle", "server", "sni")

    def __init__(self, listener: TcpListener, config: Config, server: TcpProxyServer) -> None:
        self.listener = listener
        self.name = listener.name or f"tcp-{listener.port}"
        self.service = str(listener.service)
        self.spec = tcp_spec(listener, config)
        self.proxy_protocol = listener.proxy_protocol
        self.idle = listener.idle_timeout
        self.server = server
        self.sni: NameTable[PoolSpec] | None = None  # passthrough: server name -> pool
        if listener.sni_routes:
            self.sni = NameTable(
                (name, tcp_spec(dataclasses.replace(listener, service=svc), config))
                for name, svc in listener.sni_routes.items()
            )
            if self.sni.default is None:
                self.sni.default = self.spec


class _Upstream(asyncio.Protocol):
    """The upstream side of one splice: forwards every event to its ``_Client``."""

    __slots__ = ("client", "transport")

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.upstream_made(self)

    def data_received(self, data: bytes) -> None:
        client = self.client
        client.bytes_out += len(data)
        client.last = time.monotonic()
        client.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return self.client.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        self.client.up_flow.pause_writing()

    def resume_writing(self) -> None:
        self.client.up_flow.resume_writing()


class _Client(asyncio.Protocol):
    """The client side of one splice; owns the connection's state, its timers and its accounting."""

    __slots__ = (
        "s",
        "transport",
        "upstream",
        "up_flow",
        "down_flow",
        "ep",
        "pool",
        "peer",
        "bytes_in",
        "bytes_out",
        "started",
        "last",
        "timer",
        "task",
        "client_eof",
        "server_eof",
        "result",
        "done",
        "admitted",
        "early",
        "hello",
    )

    def __init__(self, settings: _Settings) -> None:
        self.s = settings
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.up_flow = FlowControl()  # client -> upstream: pauses reading the client
        self.down_flow = FlowControl()  # upstream -> client: pauses reading the upstream
        self.ep: Endpoint | None = None
        self.pool: Pool | None = None
        self.peer: Any = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = self.last = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[Any] | None = None
        self.client_eof = self.server_eof = False
        self.result = ""
        self.done = False
        self.admitted = False
        # Bytes that arrive before the upstream is connected: uvloop may deliver data read together with
        # the accept even though reading is paused in connection_made. Bounded by one read.
        self.early: bytes = b""
        self.hello: asyncio.Future[ClientHello | HelloError] | None = None  # passthrough listeners only

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.up_flow.set_source(self.transport)
        if self.s.sni is not None:
            self.hello = asyncio.get_running_loop().create_future()  # keep reading until the hello is whole
        else:
            self.up_flow.pause_reading(CONNECT)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[union-attr]
        self.s.server.accepted(self)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.last = time.monotonic()
        if self.upstream is None:
            self.early += data
            hello = self.hello
            if hello is not None and not hello.done():
                found = parse_client_hello(self.early)
                if isinstance(found, Incomplete):
                    return
                hello.set_result(found)
            self.up_flow.pause_reading(CONNECT)
            return
        self.upstream.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.hello is not None and not self.hello.done():
            self.hello.set_result(HelloError("eof"))
        if self.upstream is None and not self.done:
            return True  # half-close before the upstream exists: forwarded once it is connected
        up = self.upstream.transport if self.upstream is not None else None
        if up is None or self.server_eof:
            self.finish("ok")
            return False
        if up.can_write_eof():
            up.write_eof()
        return True  # keep writing to the client until the upstream ends too

    def connection_lost(self, exc: Exception | None) -> None:
        self.down_flow.connection_lost()
        if not self.done:
            self.finish("client_reset" if exc is not None else ("ok" if self.upstream else "client_closed"))

    def pause_writing(self) -> None:
        self.down_flow.pause_writing()

    def resume_writing(self) -> None:
        self.down_flow.resume_writing()

    # Upstream events

    def upstream_made(self, upstream: _Upstream) -> None:
        if self.done:
            _close(upstream.transport, "reset")
            return
        self.upstream = upstream
        up = upstream.transport
        up.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[union-attr]
        if self.s.proxy_protocol:
            t = self.transport
            up.write(  # type: ignore[union-attr]
                proxy_protocol.encode(self.s.proxy_protocol, self.peer, t.get_extra_info("sockname"))  # type: ignore[union-attr]
            )
        self.down_flow.set_source(up)  # type: ignore[arg-type]
        if self.early:
            up.write(self.early)  # type: ignore[union-attr]
            self.early = b""
        if self.client_eof:
            if up.can_write_eof():  # type: ignore[union-attr]
                up.write_eof()  # type: ignore[union-attr]
            return
        self.up_flow.resume_reading(CONNECT)

    def upstream_eof(self) -> bool:
        self.server_eof = True
        if self.client_eof:
            self.finish("ok")
            return False
        t = self.transport
        if t is not None and not t.is_closing() and t.can_write_eof():
            t.write_eof()
        return True

    def upstream_lost(self, upstream: _Upstream, exc: Exception | None) -> None:
        self.up_flow.connection_lost()
        if self.upstream is upstream and not self.done:
            self.finish("upstream_reset" if exc is not None else "ok")

    # Lifecycle

    def idle_check(self) -> None:
        remaining = self.last + self.s.idle - time.monotonic()
        if remaining > 0:
            self.timer = asyncio.get_running_loop().call_later(remaining, self.idle_check)
        else:
            self.timer = None
            self.finish("idle_timeout", "stuck")

    def finish(self, result: str, how: str = "close") -> None:
        """End the connection once: close both sides, release the slot and the endpoint, log and count."""
        if self.done:
            return
        self.done = True
        self.result = result
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if result.endswith("_reset"):
            how = "reset"
        _close(self.transport, how)
        if self.upstream is not None:
            _close(self.upstream.transport, how)
        if self.pool is not None:
            self.pool.breaker.release("connections")  # conn.pool is only set once the slot was acquired
            if self.ep is not None:
                self.pool.finished(self.ep)
        self.s.server.finished(self)


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
        self._settings = _Settings(listener, config, self)
        self._server: asyncio.AbstractServer | None = None
        self._tasks = TaskOwner(f"tcp-{listener.port}")
        self._conns: set[_Client] = set()  # accepted and not finished (admitted or waiting)
        self._admitted = 0  # connections holding a max_connections slot
        self._waiting: deque[_Client] = deque()  # backlog mode: accepted, waiting for a slot
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
        self._settings = _Settings(listener, config, self)

    def _protocol(self) -> _Client:
        return _Client(self._settings)

    # Called by connections

    def accepted(self, conn: _Client) -> None:
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

    def _admit(self, conn: _Client) -> None:
        conn.admitted = True
        self._admitted += 1
        _child(ACTIVE, conn.s.name).inc()
        self._seq += 1
        conn.task = self._tasks.spawn(f"c{self._seq}", self._connect(conn))

    def finished(self, conn: _Client) -> None:
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

    async def _connect(self, conn: _Client) -> None:
        """Try endpoints until one answers or ``connect_attempts`` are spent; close the client when none does."""
        s = conn.s
        lst = s.listener
        spec = s.spec
        if conn.hello is not None and s.sni is not None:
            found = await self._client_hello(conn)
            if found is None:
                return
            spec = s.sni.lookup(found.server_name) or spec
        pool = self._get_state().pool(spec)
        if (refused := pool.breaker.try_acquire("connections")) is not None:
            count_rejection(str(spec.service), "max_connections")
            log.warning("event=tcp_circuit_open listener=%s service=%s reason=%r", s.name, spec.service, refused)
            conn.finish("circuit_open")
            return
        conn.pool = pool
        key = source_hash(conn.peer[0]) if lst.hash_source_ip and conn.peer else None
        await self._attempts(conn, pool, spec, key)

    async def _attempts(self, conn: _Client, pool: Pool, spec: PoolSpec, key: int | None) -> None:
        # Connect retries are not held to the retry budget (as Envoy's tcp_proxy): a refused connect sends no
        # byte, so retrying it elsewhere adds no load a client would not bring anyway, and a pod dying under a
        # few clients must not close them (tests/reliability/test_backend_faults.py).
        s = conn.s
        lst = s.listener
        loop = asyncio.get_running_loop()
        tried: list[Endpoint] = []
        failed: dict[str, int] = {}  # member -> failed attempts in this connection
        down: set[str] = set()  # members that look down: prefer the others
        last_error = ""
        for _ in range(max(1, lst.connect_attempts)):
            ep = None
            if down:
                avoid = [e for e in pool.endpoints if e.cluster in down]
                ep = pool.pick(key, exclude=tried + avoid)
            if ep is None:
                ep = pool.pick(key, exclude=tried)
            if ep is None:
                break
            tried.append(ep)
            conn.ep = ep
            pool.started(ep)
            try:
                async with asyncio.timeout(lst.connect_timeout if lst.connect_timeout > 0 else None):
                    await loop.create_connection(lambda: _Upstream(conn), ep.address, ep.port)
            except (OSError, TimeoutError) as exc:
                pool.finished(ep)
                conn.ep = None
                self._report(ep, False)
                timed_out = isinstance(exc, TimeoutError)
                last_error = "timeout" if timed_out else (exc.strerror or type(exc).__name__)
                failed[ep.cluster] = failed.get(ep.cluster, 0) + 1
                # No answer at all (timeout) or a second failure in the same member: the member looks down,
                # while one refused connect only says that pod is gone.
                if timed_out or failed[ep.cluster] >= 2:
                    down.add(ep.cluster)
                log.info(
                    "event=tcp_connect_failed listener=%s endpoint=%s error=%s attempt=%d",
                    s.name,
                    ep,
                    last_error.replace(" ", "_"),
                    len(tried),
                )
                continue
            self._report(ep, True)
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
                len(tried),
                last_error.replace(" ", "_"),
            )
            conn.finish("connect_failed")

    async def _client_hello(self, conn: _Client) -> ClientHello | None:
        """Wait for the passthrough client's ClientHello; None (the client is closed) when it is bad or late."""
        assert conn.hello is not None
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                found = await conn.hello
        except TimeoutError:
            found = HelloError("timeout")
        if isinstance(found, ClientHello):
            return found
        self.counts["bad_client_hello"] = self.counts.get("bad_client_hello", 0) + 1
        log.info(
            "event=tcp_bad_client_hello listener=%s reason=%s bytes=%d", conn.s.name, found.reason, len(conn.early)
        )
        t = conn.transport
        if found.reason not in ("eof", "timeout", "not_tls") and t is not None and not t.is_closing():
            t.write(DECODE_ERROR_ALERT)  # RFC 8446 6.2: tell a TLS client why, then close
        conn.finish("bad_client_hello")
        return None

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
