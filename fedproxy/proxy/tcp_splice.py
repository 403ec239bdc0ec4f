"""One TCP splice: the client and upstream ``asyncio.Protocol`` halves, and the upstream connect with failover.

A client connection is accepted by :class:`Client`, which pauses reading at once (a passthrough listener
reads on until the ClientHello is whole, see ``tcp_passthrough``) while the listener asks the pool for an
endpoint. :func:`connect` tries endpoints: a refused or timed-out connect reports the failure and tries
another pick (never one already tried; another member first when the failed one looks down), up to
``connect_attempts``. Once an upstream answers, its :class:`Upstream` protocol writes the PROXY header (if
configured), the client is resumed and bytes are copied both ways by plain ``data_received -> write`` calls:
no StreamReader/Writer, no per-read objects (shared/PERFORMANCE.md: a Protocol pair on uvloop beats HAProxy
on bulk throughput; connection set-up is where Python pays, so per-connection work is kept to the few
objects it must have).

The two halves are one module because neither exists without the other: ``Upstream`` only forwards its
events to its ``Client``, which owns the connection's state.

Back-pressure: each transport's write buffer has a high-water mark; when it is crossed asyncio calls the
writing side's ``pause_writing()``, and the shared :class:`~fedproxy.proxy.flow.FlowControl` stops reading the
other side until ``resume_writing()``. Memory per connection is bounded by two write buffers.

Half-close: an EOF from one side becomes ``write_eof()`` on the other (``eof_received`` returns True to keep
the transport open for writing); the connection closes when both directions have ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from ..balancing import Pool, PoolSpec, tcp_spec
from ..config import Config, TcpListener
from ..model import Endpoint
from ..tls.clienthello import ClientHello, HelloError, Incomplete, parse_client_hello
from ..tls.names import NameTable
from . import proxy_protocol
from .flow import FlowControl
from .tcp_passthrough import sni_table

log = logging.getLogger("fedproxy.proxy.tcp")

# Write buffer high-water mark per transport: large enough to keep a 256 KiB read in flight, small enough
# that 10,000 connections stay well under a few GB even when every peer stops reading.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
CONNECT = "connect"  # FlowControl reason: the client is not read until an upstream answers


class Owner(Protocol):
    """What a connection tells its listener (``TcpProxyServer``)."""

    counts: dict[str, int]

    def accepted(self, conn: Client) -> None: ...

    def finished(self, conn: Client) -> None: ...

    def connect_done(self, conn: Client, exc: Exception | None) -> None: ...


def close_transport(transport: asyncio.Transport | None, how: str = "close") -> None:
    """End ``transport``: ``close`` sends what is buffered, then FIN; ``reset`` aborts (RST) to pass a reset
    on; ``stuck`` (idle timeout, drain deadline) sends FIN when nothing is buffered, else aborts, because a
    peer that reads nothing would keep a closing transport, and its buffer, forever."""
    if transport is None:
        return
    if how == "reset" or (how == "stuck" and transport.get_write_buffer_size()):
        transport.abort()
    elif not transport.is_closing():
        transport.close()


class Settings:
    """What one connection needs from the listener, computed once per ``update()`` (not per connection)."""

    __slots__ = ("listener", "name", "service", "spec", "proxy_protocol", "idle", "owner", "sni")

    def __init__(self, listener: TcpListener, config: Config, owner: Owner) -> None:
        self.listener = listener
        self.name = listener.name or f"tcp-{listener.port}"
        self.service = str(listener.service)
        self.spec = tcp_spec(listener, config)
        self.proxy_protocol = listener.proxy_protocol
        self.idle = listener.idle_timeout
        self.owner = owner
        self.sni: NameTable[PoolSpec] | None = sni_table(listener, config, self.spec)  # passthrough only


class Upstream(asyncio.Protocol):
    """The upstream side of one splice: forwards every event to its ``Client``."""

    __slots__ = ("client", "transport")

    def __init__(self, client: Client) -> None:
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


class Client(asyncio.Protocol):
    """The client side of one splice; owns the connection's state and its accounting."""

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
        "task",
        "coro",
        "waiter",
        "deadline",
        "client_eof",
        "server_eof",
        "result",
        "done",
        "admitted",
        "early",
        "hello",
    )

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.up_flow = FlowControl()  # client -> upstream: pauses reading the client
        self.down_flow = FlowControl()  # upstream -> client: pauses reading the upstream
        self.ep: Endpoint | None = None
        self.pool: Pool | None = None
        self.peer: Any = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = self.last = time.monotonic()
        self.task: asyncio.Task[Any] | None = None  # slow path only: passthrough, failover after a failed connect
        # The first connect attempt, driven by callbacks (``_step``) instead of a task; ``deadline`` is when
        # the listener's sweep times it out (monotonic s).
        self.coro: Coroutine[Any, Any, Any] | None = None
        self.waiter: Any = None  # the future ``coro`` waits on
        self.deadline = 0.0
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
        self.s.owner.accepted(self)

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

    def upstream_made(self, upstream: Upstream) -> None:
        if self.done:
            close_transport(upstream.transport, "reset")
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

    def upstream_lost(self, upstream: Upstream, exc: Exception | None) -> None:
        self.up_flow.connection_lost()
        if self.upstream is upstream and not self.done:
            self.finish("upstream_reset" if exc is not None else "ok")

    # The first connect attempt

    def start_connect(self, pool: Pool, ep: Endpoint, timeout: float) -> None:
        """Connect to ``ep`` without a task: ``loop.create_connection``'s coroutine is stepped from the done
        callbacks of the futures it waits on (what a Task does, minus the Task, its registration and its
        scheduling); the outcome goes to ``owner.connect_done``. A timeout is enforced by the listener's sweep.
        """
        self.ep = ep
        pool.started(ep)
        self.deadline = time.monotonic() + timeout if timeout > 0 else float("inf")
        self.coro = asyncio.get_running_loop().create_connection(self._new_upstream, ep.address, ep.port)
        self._step(None)

    def _new_upstream(self) -> Upstream:
        return Upstream(self)

    def _step(self, _: object) -> None:
        coro = self.coro
        if coro is None:  # finished or timed out meanwhile: the coroutine was closed
            return
        try:
            waiting = coro.send(None)
        except StopIteration:
            self.coro = self.waiter = None
            self.s.owner.connect_done(self, None)
            return
        except Exception as exc:  # the connect failed (OSError) or the loop refused it
            self.coro = self.waiter = None
            self.s.owner.connect_done(self, exc)
            return
        if waiting is None:  # a bare yield (sleep(0)): step again on the next loop iteration
            asyncio.get_running_loop().call_soon(self._step, None)
        else:
            waiting._asyncio_future_blocking = False  # as Task.__step does before it waits on the future
            waiting.add_done_callback(self._step)
            self.waiter = waiting

    def abandon_connect(self) -> None:
        """Stop the first connect attempt (closing its coroutine closes its socket)."""
        coro, self.coro = self.coro, None
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            # Cancelled first, as a Task's cancel would: the loop's own callbacks on it unregister the socket
            # (asyncio's sock_connect leaves a writer on the fd otherwise, and the fd number is reused).
            waiter.cancel()
        if coro is not None:
            coro.close()

    # Lifecycle

    def finish(self, result: str, how: str = "close") -> None:
        """End the connection once: close both sides, release the slot and the endpoint, log and count."""
        if self.done:
            return
        self.done = True
        self.result = result
        if self.coro is not None:
            self.abandon_connect()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if result.endswith("_reset"):
            how = "reset"
        close_transport(self.transport, how)
        if self.upstream is not None:
            close_transport(self.upstream.transport, how)
        if self.pool is not None:
            self.pool.breaker.release("connections")  # conn.pool is only set once the slot was acquired
            if self.ep is not None:
                self.pool.finished(self.ep)
        self.s.owner.finished(self)


class Attempts:
    """The failover state of one connection's connect: endpoints tried, failures per member, members down."""

    __slots__ = ("tried", "failed", "down", "last_error")

    def __init__(self) -> None:
        self.tried: list[Endpoint] = []
        self.failed: dict[str, int] = {}  # member -> failed attempts in this connection
        self.down: set[str] = set()  # members that look down: prefer the others
        self.last_error = ""

    def note_failure(self, name: str, ep: Endpoint, exc: BaseException) -> None:
        """Record a failed attempt at ``ep`` (already in ``tried``) and log it."""
        timed_out = isinstance(exc, TimeoutError)
        self.last_error = "timeout" if timed_out else (getattr(exc, "strerror", None) or type(exc).__name__)
        self.failed[ep.cluster] = self.failed.get(ep.cluster, 0) + 1
        # No answer at all (timeout) or a second failure in the same member: the member looks down,
        # while one refused connect only says that pod is gone.
        if timed_out or self.failed[ep.cluster] >= 2:
            self.down.add(ep.cluster)
        log.info(
            "event=tcp_connect_failed listener=%s endpoint=%s error=%s attempt=%d",
            name,
            ep,
            self.last_error.replace(" ", "_"),
            len(self.tried),
        )

    def pick(self, pool: Pool, key: int | None) -> Endpoint | None:
        """The next endpoint to try: never one tried, a member that looks down only when no other is left."""
        ep = None
        if self.down:
            avoid = [e for e in pool.endpoints if e.cluster in self.down]
            ep = pool.pick(key, exclude=self.tried + avoid)
        if ep is None:
            ep = pool.pick(key, exclude=self.tried)
        if ep is not None:
            self.tried.append(ep)
        return ep


async def connect(conn: Client, pool: Pool, key: int | None, report: Any, attempts: Attempts) -> bool:
    """Try endpoints of ``pool`` until one answers or ``connect_attempts`` (counting those already in
    ``attempts``) are spent; True when one answered (``conn.ep``). ``report(ep, ok)`` is told every outcome.
    """
    # Connect retries are not held to the retry budget (as Envoy's tcp_proxy): a refused connect sends no
    # byte, so retrying it elsewhere adds no load a client would not bring anyway, and a pod dying under a
    # few clients must not close them (tests/reliability/test_backend_faults.py).
    lst = conn.s.listener
    loop = asyncio.get_running_loop()
    while len(attempts.tried) < max(1, lst.connect_attempts):
        ep = attempts.pick(pool, key)
        if ep is None:
            break
        conn.ep = ep
        pool.started(ep)
        try:
            async with asyncio.timeout(lst.connect_timeout if lst.connect_timeout > 0 else None):
                await loop.create_connection(conn._new_upstream, ep.address, ep.port)
        except (OSError, TimeoutError) as exc:
            pool.finished(ep)
            conn.ep = None
            report(ep, False)
            attempts.note_failure(conn.s.name, ep, exc)
            continue
        report(ep, True)
        return True
    return False
