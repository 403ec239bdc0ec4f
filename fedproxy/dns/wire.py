"""DNS wire format for the hot path: parse a query's header, question and EDNS OPT by hand (pure).

Theory of operation: dnspython's ``from_wire`` costs more than the whole answer budget (shared/PERFORMANCE.md),
so a query is read with index arithmetic only: the 12-byte header (RFC 1035 4.1.1), the single question, and the
additional section just far enough to find the OPT pseudo-record (RFC 6891). Every read is bounds-checked.
A question name may not contain a compression pointer (nothing precedes it that a pointer could refer to), so a
pointer there is FORMERR, which also makes loops impossible; names in the additional section may point only
backwards and are skipped, never followed.

``parse_query`` returns a :class:`Query`, an rcode to answer with from the header alone, or ``None`` to drop the
packet (too short to carry an ID, or a response rather than a query).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
U16 = struct.Struct("!H")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength

QR = 0x8000
OPCODE_MASK = 0x7800
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
CD = 0x0010

NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16  # extended rcode, RFC 6891 6.1.3

TYPE_A = 1
TYPE_NS = 2
TYPE_SOA = 6
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
CLASS_IN = 1

DO_BIT = 0x8000  # in the OPT TTL's low 16 bits (RFC 3225)
MAX_NAME = 255  # octets of a wire name, RFC 1035 2.3.4
MAX_LABEL = 63


@dataclass(slots=True)
class Query:
    """One parsed query. ``question`` is the query's own question bytes (name in its case + type + class)."""

    id: int
    flags: int
    qname: bytes  # wire form as sent
    qtype: int
    qclass: int
    question: bytes
    edns_payload: int = -1  # the requestor's UDP payload size; -1 when the query has no OPT
    edns_flags: int = 0
    edns_version: int = 0

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11

    @property
    def key(self) -> tuple[bytes, int]:
        """The table key: the name lowercased (safe on wire form: label lengths are < 64 < ord('A'))."""
        return (self.qname.lower(), self.qtype)


def read_qname(data: bytes, pos: int) -> int:
    """End offset of the uncompressed name at ``pos``, or -1 when malformed, compressed or too long."""
    n = len(data)
    start = pos
    while True:
        if pos >= n:
            return -1
        length = data[pos]
        if length == 0:
            pos += 1
            return pos if pos - start <= MAX_NAME else -1
        if length > MAX_LABEL:  # a pointer (0xC0) or an extended label type: refused in a question
            return -1
        pos += length + 1
        if pos - start > MAX_NAME:
            return -1


def skip_name(data: bytes, pos: int) -> int:
    """End offset of a possibly compressed name at ``pos`` (pointer only backwards, not followed), or -1."""
    n = len(data)
    start = pos
    while True:
        if pos >= n:
            return -1
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n:
                return -1
            target = ((length & 0x3F) << 8) | data[pos + 1]
            return pos + 2 if target < start else -1
        if length > MAX_LABEL:
            return -1
        pos += length + 1
        if pos - start > MAX_NAME:
            return -1


def parse_query(data: bytes) -> Query | int | None:
    """Parse one DNS query; an int is the rcode to answer with from the header alone (see module doc)."""
    if len(data) < 12:
        return None
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & QR:
        return None  # a response: answering it could start a loop between two servers
    if qdcount != 1:
        return NOTIMP if flags & OPCODE_MASK else FORMERR
    end = read_qname(data, 12)
    if end < 0 or end + 4 > len(data):
        return FORMERR
    qtype, qclass = struct.unpack_from("!HH", data, end)
    q = Query(qid, flags, data[12:end], qtype, qclass, data[12 : end + 4])
    if flags & OPCODE_MASK:
        return q  # the caller answers NOTIMP with the question echoed
    if ancount or nscount:
        return FORMERR
    pos = end + 4
    seen_opt = False
    for _ in range(arcount):
        name_start = pos
        pos = skip_name(data, pos)
        if pos < 0 or pos + 10 > len(data):
            return FORMERR
        rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(data, pos)
        pos += 10 + rdlen
        if pos > len(data):
            return FORMERR
        if rtype == TYPE_OPT:
            if seen_opt or data[name_start] != 0:
                return FORMERR  # RFC 6891 6.1.1: one OPT, owned by the root
            seen_opt = True
            q.edns_payload = rclass
            q.edns_version = (ttl >> 16) & 0xFF
            q.edns_flags = ttl & 0xFFFF
    return q


def header_only(data: bytes, rcode: int) -> bytes:
    """An error response echoing the ID, opcode and RD of ``data`` (at least 12 bytes), with no sections."""
    qid, flags = struct.unpack_from("!HH", data)
    return HEADER.pack(qid, QR | (flags & (OPCODE_MASK | RD | CD)) | rcode, 0, 0, 0, 0)


def opt_record(payload: int, ext_rcode: int = 0, flags: int = 0) -> bytes:
    """Our OPT pseudo-record: root owner, our payload size, the extended rcode's high bits, no options."""
    return b"\x00" + RR_FIXED.pack(TYPE_OPT, payload, ((ext_rcode >> 4) << 24) | flags, 0)
