"""DNS listeners: UDP and TCP sockets around the pure answer path (I/O only).

The runtime calls :meth:`DnsServer.update` on every serving-state swap; the table is rebuilt at once so answers
change with the state. Round-robin counters live here, outside the table, so a rebuild keeps every rotation
that the change did not touch. TCP follows RFC 7766: 2-byte length framing, several queries per connection
(pipelined, answered in order), an idle timeout.

UDP hot path (issue 9): ``hot`` maps the exact bytes of a query after its ID to the prebuilt rest of its response
(:class:`~.answer.Hot`): one dict lookup, one join with the query's ID, one ``sendto``. A miss goes through the
full parse (:func:`.answer.answer`) and then fills ``hot``; a rebuild starts an empty ``hot`` (refilled by the
next query of each kind); ``hot`` is bounded (``MAX_HOT``, cleared when full: random names cannot grow it).

Metrics, kept cheap on the hot path: ``fedproxy_dns_answers_total{rcode,qtype,service,cluster}``: a hot answer
adds 1 to a plain int on its ``Hot``, moved into the counter at scrape time (a collector registered before the
counter), on each rebuild and every ``FLUSH_INTERVAL`` (multi-process mode: the control process reads what the
workers wrote); a slow-path answer counts through children cached on the answered table entry;
``fedproxy_dns_answer_seconds`` times one query in ``ANSWER_SAMPLE`` (two clock reads per query would cost
more than the lookup itself); ``fedproxy_service_conflicts{service}`` is the number of MCS conflicts the catalog
reports for a service, refreshed with each table (set to 0, not removed, once they clear: multiprocess mode
cannot remove a series).

Round-robin seed: every replica and worker starts new rotations at a different point (``rr_seed``: the
``FEDPROXY_DNS_RR_SEED`` environment variable when set, else a hash of hostname and pid), so N replicas behind
one resolver do not all answer the same cluster first after a start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import weakref
import zlib
from collections.abc import Callable
from dataclasses import replace

from prometheus_client import Counter, Gauge, Histogram

from ..aio import TaskOwner
from ..balancing import ServingState
from ..config import DnsConfig
from ..metrics_flush import on_scrape
from . import wire
from .answer import AnswerTable, Hot, answer, build_table, pick_index, prebuild, rcode_of
from .forward import forward
from .names import ServiceMemo
from .table import RoundRobinState

log = logging.getLogger("fedproxy.dns")
_SERVERS: weakref.WeakSet[DnsServer] = weakref.WeakSet()


@on_scrape
def _flush_servers() -> None:
    for server in list(_SERVERS):
        server.flush_counts()


ANSWERS = Counter(
    "fedproxy_dns_answers",
    "DNS responses sent, by rcode, query type, service and the cluster answered (* several, empty none)",
    ["rcode", "qtype", "service", "cluster"],
)
ANSWER_SECONDS = Histogram(
    "fedproxy_dns_answer_seconds",
    "Time to compute one DNS answer (parse, lookup, join), sampled one query in 64",
    buckets=(1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 1e-3, 1e-2),
)
CONFLICTS = Gauge(
    "fedproxy_service_conflicts",
    "MCS conflicts (type, port definition, port not exposed by every member) of an exported service",
    ["service"],
    multiprocess_mode="max",
)
ANSWER_SAMPLE = 64  # a power of two: the sampling test is a mask
BUILD_SECONDS = Histogram(
    "fedproxy_dns_table_build_seconds",
    "Time to rebuild the DNS answer table after a state change",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}
QTYPES = {1: "A", 2: "NS", 6: "SOA", 16: "TXT", 28: "AAAA", 33: "SRV", 255: "ANY", 0: "none"}
TCP_IDLE_TIMEOUT = 10.0  # s, RFC 7766 6.2.3 suggests seconds, not minutes, for an idle connection
MAX_HOT = 10_000  # distinct hot queries kept per table (letter-case variants and EDNS sizes count apart)
FLUSH_INTERVAL = 1.0  # s between moves of hot counts into the metrics (what another process may read)


def default_rr_seed() -> int:
    """``FEDPROXY_DNS_RR_SEED`` when set, else a hash of hostname and pid (differs per replica and worker)."""
    text = os.environ.get("FEDPROXY_DNS_RR_SEED", "")
    if text.strip().isdigit():
        return int(text)
    return zlib.crc32(f"{socket.gethostname()}/{os.getpid()}".encode()) or 1


class DnsServer:
    """Authoritative DNS for the clusterset domain on ``config.address:config.port`` (UDP and TCP)."""

    def __init__(
        self,
        config: DnsConfig,
        get_state: Callable[[], ServingState],
        reuse_port: bool = False,
        rr_seed: int | None = None,
    ) -> None:
        """``rr_seed``: where new rotations start (None: :func:`default_rr_seed`; 0: no offset)."""
        self.config = config
        self.get_state = get_state
        self.reuse_port = reuse_port
        self.rr_seed = default_rr_seed() if rr_seed is None else rr_seed
        self.rr_state: RoundRobinState = {}
        self._memo = ServiceMemo()  # per-service records of the last build, reused when unchanged
        self._conflicted: set[str] = set()
        self._queries = 0
        self._unlabelled: dict[int, Counter] = {}  # counters of answers given without a table entry
        self.table: AnswerTable | None = None
        self.hot: dict[bytes, Hot] = {}  # query bytes after the ID -> prebuilt response after the ID
        self.port = config.port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[DnsTcpProtocol] = set()
        self._tasks = TaskOwner("dns")
        self._forwarded = 0
        _SERVERS.add(self)

    def forwards(self, response: bytes) -> bool:
        """Whether this response (REFUSED: outside the zone) should go to the ``dns.forward`` upstreams instead."""
        return bool(self.config.forward) and response[3] & 0xF == wire.REFUSED

    def spawn_forward(self, query: bytes, reply: Callable[[bytes], None], transport: str = "udp") -> None:
        """Forward ``query`` in the background; ``reply`` gets the upstream's answer, or SERVFAIL.

        A query that came over TCP is retried over TCP when the upstream truncates its UDP answer; over UDP the
        truncated answer is relayed, and the client retries over TCP itself.
        """

        async def run() -> None:
            out = await forward(query, self.config.forward, tcp_on_truncation=transport == "tcp")
            reply(out if out is not None else wire.header_only(query, wire.SERVFAIL))

        self._forwarded += 1
        self._tasks.spawn(f"forward-{self._forwarded}", run())

    def reconfigure(self, config: DnsConfig, state: ServingState) -> None:
        """Take a reloaded ``dns:`` section (answer settings, forwarders) and rebuild; the bind stays as started."""
        self.config = replace(config, address=self.config.address, port=self.config.port)
        self.update(state)

    def update(self, state: ServingState) -> None:
        """Rebuild the answer table from ``state`` (called on every state swap)."""
        started = time.perf_counter()
        self.table = build_table(state, self.rr_state, self.config, self.rr_seed, self._memo)
        self.flush_counts()
        self.hot = {}
        elapsed = time.perf_counter() - started
        BUILD_SECONDS.observe(elapsed)
        self._count_conflicts(state)
        log.debug(
            "event=dns_table_built version=%s names=%d seconds=%.4f", state.version, len(self.table.names), elapsed
        )

    def _count_conflicts(self, state: ServingState) -> None:
        now = {str(k): len(svc.conflicts) for k, svc in state.catalog.services.items() if svc.conflicts}
        for service in self._conflicted - now.keys():
            CONFLICTS.labels(service).set(0)
        for service, count in now.items():
            CONFLICTS.labels(service).set(count)
        self._conflicted = set(now)

    def flush_counts(self) -> None:
        """Move the hot answers' plain-int counts into ``fedproxy_dns_answers_total``."""
        for hot in self.hot.values():
            counts = hot.counts
            for i, n in enumerate(counts):
                if n:
                    counts[i] = 0
                    entry = hot.entries[i]
                    self._counter(entry, rcode_of(entry), hot.qtype).inc(n)

    def _counter(self, entry: object, rcode: int, qtype: int) -> Counter:
        """The metric child for answers from ``entry`` (None: no table entry), cached on the entry."""
        cache = entry.counters if entry is not None else self._unlabelled  # type: ignore[attr-defined]
        key = rcode << 16 | qtype
        counter = cache.get(key)
        if counter is None:
            service, cluster = (entry.service, entry.cluster) if entry is not None else ("", "")  # type: ignore[attr-defined]
            qname = QTYPES.get(qtype, "other")
            counter = cache[key] = ANSWERS.labels(RCODES.get(rcode, str(rcode)), qname, service, cluster)
        return counter

    def udp_miss(self, data: bytes, sampled: bool = False) -> bytes | None:
        """The slow path of a UDP query (``hot`` had no answer, or it was sampled for timing); fills ``hot``."""
        out = self._handle(data, "udp", sampled)
        if out is None or self.forwards(out):
            return out
        table = self.table
        hot = self.hot
        if table is not None and data[2:] not in hot:
            try:
                made = prebuild(table, data)
            except Exception:  # a bug must cost speed, not answers: the slow path answered already
                log.exception("event=dns_prebuild_failed size=%d", len(data))
                return out
            if made is not None:
                if len(hot) >= MAX_HOT:
                    self.flush_counts()
                    hot.clear()
                hot[data[2:]] = made
        return out

    def handle(self, data: bytes, transport: str) -> bytes | None:
        """One query -> its response (None: drop); counts it. Never raises."""
        self._queries += 1
        return self._handle(data, transport, not self._queries & (ANSWER_SAMPLE - 1))

    def _handle(self, data: bytes, transport: str, sampled: bool) -> bytes | None:
        table = self.table
        if table is None:
            self.update(self.get_state())
            table = self.table
        assert table is not None
        started = time.perf_counter() if sampled else 0.0
        try:
            out, rcode, qtype, entry = answer(table, data, transport)  # type: ignore[arg-type]
        except Exception:  # a bug must cost one answer, not the listener
            log.exception("event=dns_answer_failed size=%d", len(data))
            out = wire.header_only(data, wire.SERVFAIL) if len(data) >= 12 else None
            rcode, qtype, entry = wire.SERVFAIL, 0, None
        if sampled:
            ANSWER_SECONDS.observe(time.perf_counter() - started)
        if out is not None:
            self._counter(entry, rcode, qtype).inc()
        return out

    async def start(self) -> None:
        """Bind UDP then TCP on the same port (port 0: an ephemeral port free for both, in ``self.port``)."""
        if self.table is None:
            self.update(self.get_state())
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.config.address else socket.AF_INET
        for attempt in range(8):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: DnsUdpProtocol(self),
                local_addr=(self.config.address, self.config.port),
                family=family,
                reuse_port=self.reuse_port or None,
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await loop.create_server(
                    lambda: DnsTcpProtocol(self),
                    self.config.address,
                    port,
                    family=family,
                    reuse_address=True,
                    reuse_port=self.reuse_port or None,
                )
            except OSError:
                udp.close()
                if self.config.port or attempt == 7:
                    raise
                continue  # the ephemeral UDP port is taken for TCP: try another
            self._udp = udp  # type: ignore[assignment]
            self.port = port
            break
        self._tasks.spawn("flush-counts", self._flush_every())
        log.info("event=dns_listening address=%s port=%d", self.config.address, self.port)

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush_counts()

    async def close(self) -> None:
        """Stop both listeners, forwards in flight and open TCP connections."""
        await self._tasks.close()
        self.flush_counts()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for conn in list(self._connections):
                conn.close()
            await self._tcp.wait_closed()
            self._tcp = None


class DnsUdpProtocol(asyncio.DatagramProtocol):
    """One datagram in, at most one datagram out."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.sendto: Callable[[bytes, tuple], None] = lambda data, addr: None

    # Protocol interface
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sendto = transport.sendto  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        # The hot path: no parse, no allocation but the key and the response (module docstring).
        server = self.server
        hot = server.hot.get(data[2:])
        if hot is not None:
            server._queries = n = server._queries + 1
            if n & (ANSWER_SAMPLE - 1):
                tail = hot.tail
                if tail is None:  # a rotation: the next candidate's prebuilt answer
                    i = pick_index(server.table, hot.rotation)  # type: ignore[arg-type]
                    hot.counts[i] += 1
                    self.sendto(data[:2] + hot.tails[i], addr)
                else:
                    hot.counts[0] += 1
                    self.sendto(data[:2] + tail, addr)
                return
            out = server.udp_miss(data, sampled=True)
        else:
            server._queries += 1
            out = server.udp_miss(data, sampled=not server._queries & (ANSWER_SAMPLE - 1))
        if out is None or self.transport is None:
            return
        if self.server.forwards(out):
            self.server.spawn_forward(data, lambda reply: self._send(reply, addr), "udp")
        else:
            self.transport.sendto(out, addr)

    def _send(self, data: bytes, addr: tuple) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("event=dns_udp_error error=%s", exc)


class DnsTcpProtocol(asyncio.Protocol):
    """RFC 7766 framing: queries are answered in the order they arrive on the connection."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.idle: asyncio.TimerHandle | None = None

    # Protocol interface
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while len(self.buffer) >= 2:
            size = (self.buffer[0] << 8) | self.buffer[1]
            if len(self.buffer) < 2 + size:
                break
            query = bytes(self.buffer[2 : 2 + size])
            del self.buffer[: 2 + size]
            response = self.server.handle(query, "tcp")
            if response is None:
                # A response or a runt where a query belongs: the peer is not speaking DNS.
                if out and self.transport is not None:
                    self.transport.write(b"".join(out))
                self.close()
                return
            if self.server.forwards(response):
                self.server.spawn_forward(query, self._send, "tcp")  # answered when it comes (RFC 7766 allows it)
                continue
            out.append(len(response).to_bytes(2, "big") + response)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        self._arm()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _send(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(len(response).to_bytes(2, "big") + response)

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE_TIMEOUT, self.close)
