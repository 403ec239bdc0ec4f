"""PROXY protocol encoder against the examples and layouts of HAProxy's proxy-protocol.txt (pure, no sockets)."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from fedproxy.proxy import proxy_protocol as pp

SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # section 2.2, byte by byte


def test_v1_spec_examples() -> None:
    # Section 2.1: "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert pp.encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert pp.encode_v1(("2001:db8::1", 1234), ("2001:db8::2", 80)) == b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n"
    # Mixed families cannot be expressed: UNKNOWN (the receiver uses the real connection's addresses).
    assert pp.encode_v1(("10.0.0.1", 1), ("2001:db8::2", 80)) == b"PROXY UNKNOWN\r\n"
    assert pp.encode_v1(None, ("10.0.0.1", 80)) == b"PROXY UNKNOWN\r\n"


def test_v1_ipv4_mapped_becomes_tcp4_and_fits_the_spec_maximum() -> None:
    line = pp.encode_v1(("::ffff:10.1.2.3", 40000), ("::ffff:10.0.0.1", 8080))
    assert line == b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 8080\r\n"
    worst = pp.encode_v1(("255.255.255.255", 65535), ("255.255.255.255", 65535))
    assert len(worst) <= 107  # the spec's maximum line length, CRLF included


def test_v2_ipv4_layout() -> None:
    header = pp.encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert header[:12] == SIG
    assert header[12] == 0x21  # version 2, PROXY
    assert header[13] == 0x11  # AF_INET, STREAM
    assert struct.unpack("!H", header[14:16])[0] == 12
    assert header[16:] == bytes([192, 168, 0, 1, 192, 168, 0, 11]) + struct.pack("!HH", 56324, 443)


def test_v2_ipv6_layout() -> None:
    header = pp.encode_v2(("2001:db8::1", 1234), ("2001:db8::2", 80))
    assert header[12:14] == b"\x21\x21"  # version 2 PROXY; AF_INET6, STREAM
    assert struct.unpack("!H", header[14:16])[0] == 36
    body = header[16:]
    assert body[:16] == ipaddress.IPv6Address("2001:db8::1").packed
    assert body[16:32] == ipaddress.IPv6Address("2001:db8::2").packed
    assert struct.unpack("!HH", body[32:]) == (1234, 80)


def test_v2_unspec_and_local() -> None:
    assert pp.encode_v2(("10.0.0.1", 1), ("::1", 2)) == SIG + b"\x21\x00\x00\x00"
    assert pp.encode_v2(None, None, local=True) == SIG + b"\x20\x00\x00\x00"


def test_encode_dispatch() -> None:
    src, dst = ("127.0.0.1", 5), ("127.0.0.2", 6)
    assert pp.encode("", src, dst) == b""
    assert pp.encode("v1", src, dst) == pp.encode_v1(src, dst)
    assert pp.encode("v2", src, dst) == pp.encode_v2(src, dst)


ipv4 = st.ip_addresses(v=4).map(str)
port = st.integers(0, 65535)


@given(ipv4, port, ipv4, port)
def test_v1_roundtrip(src: str, sport: int, dst: str, dport: int) -> None:
    line = pp.encode_v1((src, sport), (dst, dport))
    assert line.endswith(b"\r\n") and len(line) <= 107
    words = line[:-2].decode().split(" ")
    assert words == ["PROXY", "TCP4", src, dst, str(sport), str(dport)]


@given(st.ip_addresses(v=6).map(str), port, st.ip_addresses(v=6).map(str), port)
def test_v2_ipv6_roundtrip(src: str, sport: int, dst: str, dport: int) -> None:
    header = pp.encode_v2((src, sport), (dst, dport))
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.ipv4_mapped is not None or d.ipv4_mapped is not None:
        return  # mapped addresses are sent as IPv4: covered above
    body = header[16:]
    assert len(body) == struct.unpack("!H", header[14:16])[0] == 36
    assert ipaddress.IPv6Address(body[:16]) == s and ipaddress.IPv6Address(body[16:32]) == d
    assert struct.unpack("!HH", body[32:]) == (sport, dport)
