"""The DNS hot path: query bytes -> response bytes from the prebuilt :class:`AnswerTable` (pure).

Theory of operation (shared/PERFORMANCE.md: 0.78x Knot this way, 0.06x with dnspython per query): parse the
header and question by hand (:mod:`.wire`), look up (lowercased name, type), and join a freshly packed header,
the query's own question bytes (so the answer keeps the query's letter case, RFC 4343) and the prebuilt
sections. A name that rotates picks its cluster with smooth weighted round-robin (nginx's algorithm) over
counters kept outside the table; a rotation seen for the first time starts ``rr_seed`` steps in (mixed with the
name), so replicas and workers with different seeds do not all answer the same cluster first. Negative answers
share one prebuilt SOA tail: a miss allocates one bytes object.

Protocol choices: authoritative only (AA, RA clear, no recursion): names outside the zone are REFUSED; OPT is
echoed with our payload size and the DO bit (RFC 3225); EDNS version > 0 gets BADVERS (RFC 6891 6.1.3); a UDP
answer larger than the requestor's payload (512 without EDNS, capped by ``dns.max_udp_payload``) is sent as the
header and question with TC set (RFC 2181 9), so the client retries over TCP.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

from . import wire
from .names import build_table
from .table import AnswerTable, Entry, Rotation

__all__ = ["AnswerTable", "Hot", "answer", "build_table", "lookup", "pick_index", "prebuild", "render", "respond"]

Transport = Literal["udp", "tcp"]
ECHO = wire.OPCODE_MASK | wire.RD | wire.CD
REFUSED = Entry(wire.REFUSED, 0, 0, 0, b"")
NOTIMP = Entry(wire.NOTIMP, 0, 0, 0, b"")
BADVERS = Entry(0, 0, 0, 0, b"")  # the rcode's high bits travel in the OPT record
TCP_MAX = 65535
MAX_SPIN = 4096  # steps a new rotation may be advanced to its start (bounded: weights can be large)


def _start(table: AnswerTable, rot: Rotation) -> dict[str, int]:
    """New counters for ``rot``, advanced by a step count derived from the table's seed and the name."""
    current: dict[str, int] = {}
    table.rr_state[rot.key] = current
    steps = (table.rr_seed + zlib.crc32(rot.key[0])) % min(sum(rot.weights), MAX_SPIN) if table.rr_seed else 0
    for _ in range(steps):
        _step(current, rot)
    return current


def pick_index(table: AnswerTable, rot: Rotation) -> int:
    """Smooth weighted round-robin (nginx): each cluster gains its weight, the leader pays the total."""
    current = table.rr_state.get(rot.key)
    if current is None:
        current = _start(table, rot)
    return _step(current, rot)


def pick(table: AnswerTable, rot: Rotation) -> Entry:
    """The entry of ``rot`` that answers this query (advances the rotation)."""
    return rot.entries[pick_index(table, rot)]


def _step(current: dict[str, int], rot: Rotation) -> int:
    total = 0
    best = 0
    best_value = None
    for i, cluster in enumerate(rot.clusters):
        weight = rot.weights[i]
        value = current.get(cluster, 0) + weight
        current[cluster] = value
        total += weight
        if best_value is None or value > best_value:
            best, best_value = i, value
    current[rot.clusters[best]] -= total
    return best


def in_zone(name: bytes, zone: bytes) -> bool:
    """Whether lowercased wire ``name`` is ``zone`` or below it, on label boundaries."""
    if not name.endswith(zone):
        return False
    pos = 0
    cut = len(name) - len(zone)
    while pos < cut:
        pos += name[pos] + 1
    return pos == cut


def lookup(table: AnswerTable, q: wire.Query) -> Entry | Rotation:
    """The table's answer for a parsed query, before any round-robin pick (a :class:`Rotation` is returned as is)."""
    if q.flags & wire.OPCODE_MASK:
        return NOTIMP
    if q.edns_version:
        return BADVERS
    if q.qclass != wire.CLASS_IN:
        return REFUSED
    name = q.qname.lower()
    entry = table.entries.get((name, q.qtype))
    if entry is None:
        if name in table.names:
            return table.nodata
        return table.nxdomain if in_zone(name, table.zone) else REFUSED
    return entry


def render(table: AnswerTable, q: wire.Query, entry: Entry, transport: Transport = "udp") -> bytes:
    """The response to ``q`` from ``entry``: header, the query's own question, the prebuilt sections, OPT."""
    flags = wire.QR | entry.flags | (q.flags & ECHO)
    edns = q.edns_payload >= 0
    if edns:
        ext = wire.BADVERS if entry is BADVERS else 0
        opt = wire.opt_record(table.max_udp_payload, ext, q.edns_flags & wire.DO_BIT)
        limit = min(max(512, q.edns_payload), table.max_udp_payload)
        out = wire.HEADER.pack(q.id, flags, 1, entry.an, entry.ns, entry.ar + 1) + q.question + entry.body + opt
    else:
        opt = b""
        limit = 512
        out = wire.HEADER.pack(q.id, flags, 1, entry.an, entry.ns, entry.ar) + q.question + entry.body
    if len(out) > (limit if transport == "udp" else TCP_MAX):
        out = wire.HEADER.pack(q.id, flags | wire.TC, 1, 0, 0, 1 if edns else 0) + q.question + opt
    return out


def rcode_of(entry: Entry) -> int:
    """The rcode an answer from ``entry`` carries (BADVERS travels partly in OPT)."""
    return wire.BADVERS if entry is BADVERS else entry.flags & 0xF


def answer(
    table: AnswerTable, data: bytes, transport: Transport = "udp"
) -> tuple[bytes | None, int, int, Entry | None]:
    """(response or None to drop, rcode or -1, qtype or 0, the entry answered from, for its metric labels).

    Never raises on any input.
    """
    q = wire.parse_query(data)
    if q is None:
        return None, -1, 0, None
    if type(q) is int:
        return wire.header_only(data, q), q, 0, None
    assert isinstance(q, wire.Query)
    entry = lookup(table, q)
    if type(entry) is Rotation:
        entry = pick(table, entry)
    assert isinstance(entry, Entry)
    return render(table, q, entry, transport), rcode_of(entry), q.qtype, entry


def respond(table: AnswerTable, data: bytes, transport: Transport = "udp") -> bytes | None:
    """The response to one query (None: drop it). Pure apart from the round-robin counters in ``table``."""
    return answer(table, data, transport)[0]


@dataclass(slots=True)
class Hot:
    """Everything after the ID of the response to one exact query (the bytes after its ID), prebuilt.

    ``tail`` is the response when one entry answers; a rotation has ``tail`` None and one tail per candidate in
    ``tails``, picked by :func:`pick_index`. ``counts`` are answers sent per candidate since the I/O layer last
    moved them into its metrics (a plain int add per query instead of a metrics call).
    """

    tail: bytes | None
    tails: tuple[bytes, ...]
    entries: tuple[Entry, ...]
    rotation: Rotation | None
    qtype: int
    counts: list[int]


def prebuild(table: AnswerTable, data: bytes, transport: Transport = "udp") -> Hot | None:
    """The :class:`Hot` answer for query ``data`` (None: not a query the table answers by itself, e.g. FORMERR).

    Every query with the same bytes after the ID gets the same answer from one table (the rotation aside), so
    the caller may key these by ``data[2:]`` and patch the ID in.
    """
    q = wire.parse_query(data)
    if q is None or type(q) is int:
        return None
    assert isinstance(q, wire.Query)
    found = lookup(table, q)
    if type(found) is Rotation:
        entries = found.entries
        tails = tuple(render(table, q, e, transport)[2:] for e in entries)
        return Hot(None, tails, entries, found, q.qtype, [0] * len(entries))
    assert isinstance(found, Entry)
    tail = render(table, q, found, transport)[2:]
    return Hot(tail, (tail,), (found,), None, q.qtype, [0])
