"""The DNS responder under random and mutated packets, over real UDP (hypothesis, bounded examples).

The server runs on its own event loop in a thread so hypothesis can drive it from a plain (sync) test; every
packet goes through a fresh client socket, so a late reply can never be mistaken for the next packet's.

Checked for every packet: the handler never fails (no ``event=dns_answer_failed`` log: the server would turn a
bug into SERVFAIL), a reply carries the query's ID and one of NOERROR/NXDOMAIN/FORMERR/REFUSED/NOTIMP, and a UDP
reply is never larger than max(512, the query's EDNS payload size) (no amplification); afterwards a valid query
is still answered.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from types import MappingProxyType

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedproxy.balancing import build_state
from fedproxy.catalog import build_catalog
from fedproxy.config import ClusterConfig, Config, DnsConfig
from fedproxy.dns.server import DnsServer
from fedproxy.model import (
    ClusterSnapshot,
    EndpointSlice,
    Locality,
    Service,
    ServiceExport,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)

from .conftest import LogCapture

pytestmark = pytest.mark.reliability

ZONE = "clusterset.local"
# A headless service with 300 pods: its A answer is far larger than any UDP limit (the amplification bait).
BIG = f"big.demo.svc.{ZONE}"
WEB = f"web.demo.svc.{ZONE}"
NAMES = [WEB, BIG, f"east.web.demo.svc.{ZONE}", f"nope.demo.svc.{ZONE}", ZONE, "example.com", "a.b", "."]
ALLOWED_RCODES = {dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.FORMERR, dns.rcode.REFUSED, dns.rcode.NOTIMP}


def _snapshot() -> ClusterSnapshot:
    ports = (ServicePort("http", 80, "TCP", 8080),)
    web = Service("demo", "web", cluster_ips=("10.1.0.10",), ports=ports, created="2024-01-01T00:00:00Z")
    big = Service("demo", "big", headless=True, ports=ports, created="2024-01-01T00:00:00Z")
    pods = tuple(SliceEndpoint((f"10.9.{i // 250}.{i % 250 + 1}",), hostname=f"pod-{i}") for i in range(300))
    return ClusterSnapshot(
        "east",
        Locality("r1"),
        services=MappingProxyType({("demo", "web"): web, ("demo", "big"): big}),
        endpointslices=MappingProxyType(
            {
                ("demo", "web-1"): EndpointSlice(
                    "demo", "web-1", "web", "IPv4", (SlicePort("http", 8080),), (SliceEndpoint(("10.1.1.1",)),)
                ),
                ("demo", "big-1"): EndpointSlice("demo", "big-1", "big", "IPv4", (SlicePort("http", 8080),), pods),
            }
        ),
        serviceexports=MappingProxyType(
            {("demo", "web"): ServiceExport("demo", "web"), ("demo", "big"): ServiceExport("demo", "big")}
        ),
    )


class ThreadedDns:
    """A DnsServer on 127.0.0.1:0 running on its own loop in a daemon thread; ``stop()`` closes it."""

    def __init__(self) -> None:
        config = Config(clusters=(ClusterConfig("east", local=True, region="r1"),))
        self.state = build_state(config, build_catalog([_snapshot()], config, 1))
        self.loop = asyncio.new_event_loop()
        self.server = DnsServer(DnsConfig(address="127.0.0.1", port=0), lambda: self.state)
        self._thread = threading.Thread(target=self.loop.run_forever, name="dns-fuzz", daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def send(self, packet: bytes, wait: float = 0.05) -> bytes | None:
        """One datagram from a fresh socket; the reply or None (dropped)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(wait)
            s.sendto(packet, ("127.0.0.1", self.server.port))
            try:
                return s.recv(65535)
            except TimeoutError:
                return None


@pytest.fixture(scope="module")
def dns_server() -> Iterator[tuple[ThreadedDns, LogCapture]]:
    import logging

    cap = LogCapture()
    logger = logging.getLogger("fedproxy")
    logger.addHandler(cap)
    server = ThreadedDns()
    server.start()
    yield server, cap
    server.stop()
    logger.removeHandler(cap)
    # Still answering after everything the module threw at it was checked by each test; here: no handler bug.
    assert "dns_answer_failed" not in cap.text(), cap.text()[-2000:]


def udp_limit(packet: bytes) -> int:
    """What a UDP reply may weigh: 512, or the query's EDNS payload size when it parses and is larger."""
    try:
        q = dns.message.from_wire(packet)
    except Exception:
        return 512
    return max(512, q.payload if q.edns >= 0 else 512)


def check_reply(packet: bytes, reply: bytes | None) -> None:
    if reply is None:
        return  # dropping (a response, or no header to answer) is allowed
    assert len(reply) >= 12
    assert reply[:2] == packet[:2], "reply must carry the query ID"
    assert reply[2] & 0x80, "reply must have QR set"
    assert len(reply) <= udp_limit(packet), f"amplification: {len(packet)} -> {len(reply)} bytes"
    assert reply[3] & 0x0F in ALLOWED_RCODES, f"rcode {reply[3] & 0x0F}"


def still_answers(server: ThreadedDns) -> None:
    q = dns.message.make_query(WEB, "A")
    reply = server.send(q.to_wire(), wait=2)
    assert reply is not None
    r = dns.message.from_wire(reply)
    assert r.rcode() == dns.rcode.NOERROR and [rd.address for rr in r.answer for rd in rr] == ["10.1.0.10"]


def valid_query(name: str, rdtype: int, payload: int | None, opcode: int, rd: bool, qid: int) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=payload is not None, payload=payload or 512, id=qid)
    q.set_opcode(opcode)
    if not rd:
        q.flags &= ~dns.flags.RD
    return q.to_wire()


queries = st.builds(
    valid_query,
    st.sampled_from(NAMES),
    st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 99, 252, 255, 65000]),
    st.one_of(st.none(), st.integers(0, 65535)),
    st.sampled_from([0, 0, 0, 1, 2, 4, 5, 15]),
    st.booleans(),
    st.integers(0, 65535),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid query with bytes flipped, cut, inserted or its header counts rewritten."""
    data = bytearray(draw(queries))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "counts", "pointer"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "counts" and len(data) >= 12:
            data[4:12] = struct.pack("!4H", *(draw(st.integers(0, 65535)) for _ in range(4)))
        elif op == "pointer" and len(data) > 14:
            i = draw(st.integers(12, len(data) - 2))
            data[i : i + 2] = struct.pack("!H", 0xC000 | draw(st.integers(0, len(data))))
    return as_query(bytes(data))


def as_query(packet: bytes) -> bytes:
    """Clear QR: responses are dropped (tested in tests/dns), which tells nothing here."""
    return packet[:2] + bytes([packet[2] & 0x7F]) + packet[3:] if len(packet) > 2 else packet


FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(packet=st.binary(min_size=0, max_size=700).map(as_query))
def test_random_packets(dns_server, packet: bytes) -> None:
    server, _ = dns_server
    check_reply(packet, server.send(packet))


@FUZZ
@given(packet=mutated())
def test_mutated_queries(dns_server, packet: bytes) -> None:
    server, _ = dns_server
    check_reply(packet, server.send(packet))


@FUZZ
@given(packet=queries)
def test_valid_queries_answer_as_dns_servers_do(dns_server, packet: bytes) -> None:
    server, _ = dns_server
    reply = server.send(packet, wait=2)
    assert reply is not None, "a well-formed query is always answered"
    check_reply(packet, reply)
    rcode, opcode = reply[3] & 0x0F, (reply[2] >> 3) & 0x0F
    assert opcode == (packet[2] >> 3) & 0x0F
    if opcode != dns.opcode.QUERY:
        assert rcode == dns.rcode.NOTIMP  # UPDATE, NOTIFY, IQUERY...: not implemented, as authoritative servers say
        return
    q = dns.message.from_wire(packet)
    r = dns.message.from_wire(reply)
    if not str(q.question[0].name).rstrip(".").endswith(ZONE):
        assert rcode == dns.rcode.REFUSED  # not an open resolver
    if q.edns >= 0 and rcode != dns.rcode.FORMERR:
        assert r.edns >= 0, "an EDNS query gets an EDNS answer"


def test_large_answer_is_truncated_over_udp_and_whole_over_tcp(dns_server) -> None:
    server, _ = dns_server
    for payload in (None, 512, 1232, 4096):
        packet = valid_query(BIG, dns.rdatatype.A, payload, 0, True, 4711)
        reply = server.send(packet, wait=2)
        assert reply is not None
        assert len(reply) <= udp_limit(packet)
        assert dns.message.from_wire(reply).flags & dns.flags.TC, f"payload {payload}: TC not set"
    q = dns.message.make_query(BIG, "A")
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=2) as s:
        wire_q = q.to_wire()
        s.sendall(struct.pack("!H", len(wire_q)) + wire_q)
        size = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
        r = dns.message.from_wire(s.recv(size, socket.MSG_WAITALL))
    assert not r.flags & dns.flags.TC and sum(len(rr) for rr in r.answer) == 300
    still_answers(server)


def test_still_answers_after_the_fuzzing(dns_server) -> None:
    still_answers(dns_server[0])
