"""PROXY protocol v1 and v2 headers, sent first on an upstream connection (pure: bytes in, bytes out).

Follows HAProxy's "The PROXY protocol" versions 1 & 2 (doc/proxy-protocol.txt, 2020/03/05):

- v1: one ASCII line ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n``; ``PROXY UNKNOWN\\r\\n`` when the
  addresses are not both IPv4 or both IPv6 (section 2.1).
- v2: the 12-byte signature, version/command ``0x21`` (v2, PROXY), family/transport ``0x11`` (TCP over IPv4)
  or ``0x21`` (TCP over IPv6), a big-endian length, then source address, destination address, source port,
  destination port (section 2.2). Addresses of another family become ``AF_UNSPEC`` (``0x00``, length 0): the
  receiver then uses the real connection's addresses, as the spec asks.

An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, what a dual-stack listener reports for IPv4 clients) is sent
as the IPv4 address it stands for, so receivers see the client's real family.
"""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # section 2.2, "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
V2_PROXY = 0x21  # protocol version 2, command PROXY
V2_LOCAL = 0x20  # protocol version 2, command LOCAL (health checks; no addresses)
V2_TCP4 = 0x11
V2_TCP6 = 0x21
V2_UNSPEC = 0x00

Address = tuple[str, int]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IpAddress | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id ("fe80::1%eth0")
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _pair(source: Address | None, dest: Address | None) -> tuple[IpAddress, int, IpAddress, int] | None:
    """Both addresses as IPs of one family, or None when that cannot be said (UNKNOWN / UNSPEC)."""
    if source is None or dest is None:
        return None
    src, dst = _ip(source[0]), _ip(dest[0])
    if src is None or dst is None or src.version != dst.version:
        return None
    return src, int(source[1]), dst, int(dest[1])


def encode_v1(source: Address | None, dest: Address | None) -> bytes:
    """The v1 line for a TCP connection from ``source`` (the client) to ``dest`` (the address it connected to)."""
    pair = _pair(source, dest)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, sport, dst, dport = pair
    family = "TCP4" if src.version == 4 else "TCP6"
    # str() of an ipaddress is the spec's form: dotted quad, or RFC 5952 compressed IPv6.
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def encode_v2(source: Address | None, dest: Address | None, *, local: bool = False) -> bytes:
    """The v2 binary header; ``local`` sends the LOCAL command (a connection of the proxy's own)."""
    if local:
        return V2_SIGNATURE + bytes((V2_LOCAL, V2_UNSPEC)) + b"\x00\x00"
    pair = _pair(source, dest)
    if pair is None:
        return V2_SIGNATURE + bytes((V2_PROXY, V2_UNSPEC)) + b"\x00\x00"
    src, sport, dst, dport = pair
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    family = V2_TCP4 if src.version == 4 else V2_TCP6
    return V2_SIGNATURE + bytes((V2_PROXY, family)) + struct.pack("!H", len(body)) + body


def encode(version: str, source: Address | None, dest: Address | None) -> bytes:
    """``version`` "v1" or "v2" (the listener's ``proxy_protocol`` setting); "" gives no header."""
    if version == "v1":
        return encode_v1(source, dest)
    if version == "v2":
        return encode_v2(source, dest)
    return b""
