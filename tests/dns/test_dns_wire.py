"""The pure hot path: the hand parser, the fast path against dnspython (the reference), and a fuzz test."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from dns_world import make_state, member
from hypothesis import given, settings
from hypothesis import strategies as st

from fedproxy.dns import wire
from fedproxy.dns.answer import build_table, respond

WEB = "web.demo.svc.clusterset.local"


@pytest.fixture(scope="module")
def table():
    snaps = [
        member("east", "10.0.0.1", ("10.1.0.1", "fd00::1"), region="eu", zone="eu-a"),
        member("west", "fd00::2", ("10.2.0.1",), region="eu", zone="eu-b"),
        member("east", "", ("10.1.0.7",), headless=True, svc="db", hostnames=("db-0",)),
    ]
    snaps = [snaps[0], snaps[1]]
    db = member("east", "", ("10.1.0.7", "10.1.0.8"), headless=True, svc="db", hostnames=("db-0",))
    snaps[0] = snaps[0].with_objects("services", {**snaps[0].services, **db.services})
    snaps[0] = snaps[0].with_objects("endpointslices", {**snaps[0].endpointslices, **db.endpointslices})
    snaps[0] = snaps[0].with_objects("serviceexports", {**snaps[0].serviceexports, **db.serviceexports})
    return build_table(make_state(snaps, local="east"), {})


def test_parse_query_reads_header_question_and_opt() -> None:
    q = dns.message.make_query("A.Example.", "AAAA", use_edns=0, payload=4000, want_dnssec=True)
    parsed = wire.parse_query(q.to_wire())
    assert isinstance(parsed, wire.Query)
    assert parsed.id == q.id and parsed.qtype == 28 and parsed.qclass == 1
    assert parsed.qname == b"\x01A\x07Example\x00" and parsed.key == (b"\x01a\x07example\x00", 28)
    assert parsed.edns_payload == 4000 and parsed.edns_flags & wire.DO_BIT and parsed.edns_version == 0


@pytest.mark.parametrize(
    "packet, expected",
    [
        (b"", None),
        (b"\x00\x01" + b"\x00" * 9, None),  # 11 bytes: no header
        (b"\x00\x01\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01", None),  # QR set
        (b"\x00\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", wire.FORMERR),  # no question
        (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab", wire.FORMERR),  # label runs past the end
        (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01", wire.FORMERR),  # pointer loop
        (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01", wire.FORMERR),
        (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01", wire.FORMERR),  # short type/class
        (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x01\x00\x01\xc0\x20", wire.FORMERR),  # bad ptr
        (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x01\x00\x01\x00\x00\x29", wire.FORMERR),
    ],
)
def test_parse_query_rejects_malformed_packets(packet: bytes, expected: int | None) -> None:
    assert wire.parse_query(packet) == expected


def test_too_long_name_is_formerr() -> None:
    name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 octets > 255
    packet = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"
    assert wire.parse_query(packet) == wire.FORMERR


QUERIES = [
    (WEB, "A"),
    (WEB, "AAAA"),
    (WEB, "SRV"),
    ("_http._tcp." + WEB, "SRV"),
    ("east." + WEB, "A"),
    ("west." + WEB, "AAAA"),
    ("db.demo.svc.clusterset.local", "A"),
    ("_http._tcp.db.demo.svc.clusterset.local", "SRV"),
    ("db-0.east.db.demo.svc.clusterset.local", "A"),
    ("web.demo.svc.eu-b.eu.clusterset.local", "AAAA"),
    ("clusterset.local", "SOA"),
    ("clusterset.local", "NS"),
    ("dns-version.clusterset.local", "TXT"),
]


@pytest.mark.parametrize("name, rdtype", QUERIES)
@pytest.mark.parametrize("edns", [-1, 0])
def test_fast_path_bytes_equal_dnspython(table, name: str, rdtype: str, edns: int) -> None:
    """Re-encode the fast answer's records with dnspython: the bytes must be identical (dnspython is the reference)."""
    q = dns.message.make_query(name, rdtype, use_edns=edns)
    fast = respond(table, q.to_wire())
    assert fast is not None
    parsed = dns.message.from_wire(fast)
    assert parsed.rcode() == dns.rcode.NOERROR and parsed.answer
    ref = dns.message.make_response(q, our_payload=table.max_udp_payload)
    ref.flags |= dns.flags.AA
    ref.answer = [dns.rrset.from_rdata_list(rs.name, rs.ttl, list(rs)) for rs in parsed.answer]
    ref.additional = [dns.rrset.from_rdata_list(rs.name, rs.ttl, list(rs)) for rs in parsed.additional]
    assert fast == ref.to_wire(want_shuffle=False)


@pytest.mark.parametrize(
    "name, rdtype, rcode",
    [
        (WEB, "MX", dns.rcode.NOERROR),
        ("demo.svc.clusterset.local", "A", dns.rcode.NOERROR),
        ("nothing." + WEB, "A", dns.rcode.NXDOMAIN),
        ("Other.Example", "A", dns.rcode.REFUSED),
    ],
)
def test_negative_answers_equal_dnspython_semantically(table, name: str, rdtype: str, rcode: int) -> None:
    q = dns.message.make_query(name, rdtype, use_edns=0)
    fast = dns.message.from_wire(respond(table, q.to_wire()))
    ref = dns.message.make_response(q, our_payload=table.max_udp_payload)
    ref.set_rcode(rcode)
    if rcode != dns.rcode.REFUSED:
        ref.flags |= dns.flags.AA
        soa = dns.rrset.from_text("clusterset.local.", 5, "IN", "SOA", fast.authority[0][0].to_text())
        ref.authority = [soa]
    assert fast == ref
    assert fast.question[0].name.to_text() == name + "."  # the query's case, byte for byte


def test_badvers_for_edns_version_1(table) -> None:
    q = dns.message.make_query(WEB, "A", use_edns=1)
    r = dns.message.from_wire(respond(table, q.to_wire()))
    assert r.rcode() == dns.rcode.BADVERS and not r.answer


VALID = [dns.message.make_query(n, t, use_edns=e).to_wire() for n, t in QUERIES for e in (-1, 0)]


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 2))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(packet=packets(), transport=st.sampled_from(["udp", "tcp"]))
def test_fuzz_respond_never_raises_and_stays_bounded(table, packet: bytes, transport: str) -> None:
    out = respond(table, packet, transport)  # type: ignore[arg-type]
    if out is None:
        return
    assert len(out) <= (table.max_udp_payload if transport == "udp" else 65535)
    assert out[:2] == packet[:2]
    if out[2] & 0x78 == 0:  # dnspython reads UPDATE's question as a zone section and wants SOA there
        dns.message.from_wire(out)  # whatever we answer to a QUERY is a well-formed DNS message
    else:
        assert out[3] & 0xF in (dns.rcode.NOTIMP, dns.rcode.FORMERR)
