"""The answer table: every name under the clusterset domain, prebuilt as DNS wire bytes (pure).

Theory of operation: dnspython is too slow per query but is the reference for correctness, so it runs here, once
per serving-state change. For each (name lowercased in wire form, type) the table holds the answer's sections as
wire bytes, compressed against the question at offset 12; the hot path (:mod:`.answer`) copies the query's own
question in front of them, so pointers stay valid and the answer keeps the query's letter case. A name that
rotates between clusters holds one prebuilt answer per candidate cluster (a :class:`Rotation`).

Which cluster a name may answer follows the Kubernetes MCS DNS specification (KEP-1645) and Submariner
Lighthouse: only connected, not drained members with ready endpoints; ``local_first`` answers the local member
alone while it can; ``locality`` ranks members as the proxy does (fedproxy.balancing.tiers); ``spread`` treats all
alike. The names and policies are in :mod:`.names`; this module turns records into bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

from . import wire

Key = tuple[bytes, int]

A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
IN = dns.rdataclass.IN


@dataclass(frozen=True, slots=True)
class Entry:
    """One prebuilt answer: header flags (AA, rcode), section counts, and every section after the question."""

    flags: int
    an: int
    ns: int
    ar: int
    body: bytes
    service: str = ""  # metric labels: "ns/name", "" for answers that belong to no service
    cluster: str = ""  # the one cluster the answer names, "*" when several (or a ClusterSet/proxy IP), "" none
    # Metric children by (rcode << 16 | qtype), filled by the I/O layer on first use: after that the hot path
    # counts with one int-keyed dict lookup and an inc. Never part of the answer; not compared.
    counters: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Rotation:
    """A name answered by one of several clusters, picked per query by smooth weighted round-robin."""

    key: Key  # where the rotation counters live in the long-lived round-robin state
    clusters: tuple[str, ...]
    weights: tuple[int, ...]
    entries: tuple[Entry, ...]


RoundRobinState = dict[Key, dict[str, int]]


@dataclass(slots=True)
class AnswerTable:
    """What the hot path needs; rebuilt on every state change, except ``rr_state`` which outlives it."""

    entries: Mapping[Key, Entry | Rotation]
    names: frozenset[bytes]  # every existing name, lowercased wire form (for NODATA vs NXDOMAIN)
    zone: bytes  # the domain, lowercased wire form
    nodata: Entry
    nxdomain: Entry
    max_udp_payload: int = 1232
    rr_state: RoundRobinState = field(default_factory=dict)
    version: int = 0
    rr_seed: int = 0  # where a new rotation starts (per replica, so replicas do not answer in lockstep)


def name_key(name: dns.name.Name) -> bytes:
    return name.to_wire().lower()  # type: ignore[union-attr]


def rrset(name: dns.name.Name, ttl: int, rdtype: int, rdatas: Iterable[dns.rdata.Rdata]) -> dns.rrset.RRset:
    # dnspython's stubs want RdataType; it accepts the plain int codes used throughout (RdataType is an IntEnum).
    rs = dns.rrset.RRset(name, IN, rdtype)  # type: ignore[arg-type]
    for rd in rdatas:
        rs.add(rd, ttl)
    return rs


def address_rrsets(name: dns.name.Name, ttl: int, addresses: Sequence[str]) -> list[dns.rrset.RRset]:
    """The A and AAAA rrsets of ``name`` for ``addresses`` (both families; empty ones left out)."""
    out = []
    v4 = [dns.rdtypes.IN.A.A(IN, A, a) for a in addresses if ":" not in a]
    v6 = [dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, a) for a in addresses if ":" in a]
    if v4:
        out.append(rrset(name, ttl, A, v4))
    if v6:
        out.append(rrset(name, ttl, AAAA, v6))
    return out


def family_addresses(addresses: Iterable[str], rdtype: int) -> tuple[str, ...]:
    """The addresses an A (IPv4) or AAAA (IPv6) answer may carry."""
    v6 = rdtype == AAAA
    return tuple(a for a in addresses if (":" in a) == v6)


def encode(
    name: dns.name.Name,
    rdtype: int,
    answer: Sequence[dns.rrset.RRset],
    authority: Sequence[dns.rrset.RRset] = (),
    additional: Sequence[dns.rrset.RRset] = (),
    flags: int = wire.AA,
    labels: tuple[str, str] = ("", ""),
) -> Entry:
    """Encode the sections with dnspython, compressed against the question ``name``, and split off the header."""
    msg = dns.message.Message(id=0)
    msg.question = [dns.rrset.RRset(name, IN, rdtype)]  # type: ignore[arg-type]  # int code, as in rrset()
    msg.answer = list(answer)
    msg.authority = list(authority)
    msg.additional = list(additional)
    data = msg.to_wire(want_shuffle=False)  # stable record order: the table is rebuilt often, answers stay put
    _, _, _, an, ns, ar = wire.HEADER.unpack_from(data)
    qlen = len(name_key(name)) + 4
    return Entry(flags, an, ns, ar, data[12 + qlen :], *labels)


def negative_tail(soa: dns.rrset.RRset) -> bytes:
    """The SOA for the authority section of negative answers, uncompressed so that it fits any question."""
    buf = io.BytesIO()
    soa.to_wire(buf, None)
    return buf.getvalue()


class TableBuilder:
    """Collects records name by name and encodes them; ``finish`` adds empty non-terminals and seals the table."""

    def __init__(self, origin: dns.name.Name, ttl: int, negative_ttl: int, serial: int) -> None:
        self.origin = origin
        self.ttl = ttl
        self.entries: dict[Key, Entry | Rotation] = {}
        self.names: set[bytes] = set()
        soa_text = f"ns.dns.{origin} hostmaster.{origin} {serial % 2**32} 7200 1800 86400 {negative_ttl}"
        self.soa_rdata = dns.rdata.from_text(IN, dns.rdatatype.SOA, soa_text)
        # RFC 2308 5: the SOA in a negative answer carries min(SOA TTL, SOA minimum) as its TTL.
        self.negative_soa = rrset(origin, negative_ttl, dns.rdatatype.SOA, [self.soa_rdata])
        self.rotation_keys: set[Key] = set()
        self.service = ""  # the service whose names are being added (a metric label of their entries)

    def fragment(self) -> TableBuilder:
        """An empty builder with the same zone settings, for one service's names (merged back with ``merge``)."""
        part = TableBuilder.__new__(TableBuilder)
        part.origin, part.ttl, part.soa_rdata, part.negative_soa = (
            self.origin,
            self.ttl,
            self.soa_rdata,
            self.negative_soa,
        )
        part.entries, part.names, part.rotation_keys, part.service = {}, set(), set(), self.service
        return part

    def merge(self, entries: Mapping[Key, Entry | Rotation], names: Iterable[bytes]) -> None:
        """Add a fragment's records as if added here in order (first writer wins, as in ``add``)."""
        self.names.update(names)
        for key, entry in entries.items():
            if key not in self.entries:
                self.entries[key] = entry
                if type(entry) is Rotation:
                    self.rotation_keys.add(key)

    def touch(self, name: dns.name.Name) -> None:
        """Make ``name`` exist (NODATA for every type without records) without adding records."""
        self.names.add(name_key(name))

    def add(
        self,
        name: dns.name.Name,
        rdtype: int,
        answer: Sequence[dns.rrset.RRset],
        additional: Sequence[dns.rrset.RRset] = (),
        cluster: str = "*",
    ) -> None:
        """Answer ``rdtype`` at ``name`` with these records (first writer wins if two builders collide)."""
        key = (name_key(name), rdtype)
        self.names.add(key[0])
        if key in self.entries or not answer:
            return
        labels = (self.service, cluster if self.service else "")
        self.entries[key] = encode(name, rdtype, answer, (), additional, labels=labels)

    def addresses(self, name: dns.name.Name, addresses: Sequence[str], cluster: str = "*") -> None:
        """A and AAAA records for ``name`` (``cluster``: the metric label, when one cluster answers)."""
        self.touch(name)
        for rs in address_rrsets(name, self.ttl, addresses):
            self.add(name, rs.rdtype, [rs], cluster=cluster)

    def rotate(self, name: dns.name.Name, rdtype: int, choices: Sequence[tuple[str, int, Sequence[str]]]) -> None:
        """``rdtype`` at ``name`` answered by one of ``choices`` (cluster, weight, addresses) per query."""
        self.touch(name)
        choices = [c for c in choices if family_addresses(c[2], rdtype)]
        if not choices:
            return
        key = (name_key(name), rdtype)
        if key in self.entries:
            return
        entries = []
        for cluster, _, addrs in choices:
            rs = address_rrsets(name, self.ttl, family_addresses(addrs, rdtype))
            entries.append(encode(name, rdtype, rs, labels=(self.service, cluster)))
        if len(entries) == 1:
            self.entries[key] = entries[0]
            return
        self.rotation_keys.add(key)
        self.entries[key] = Rotation(
            key, tuple(c[0] for c in choices), tuple(max(1, c[1]) for c in choices), tuple(entries)
        )

    def finish(self, rr_state: RoundRobinState, max_udp_payload: int, version: int, rr_seed: int = 0) -> AnswerTable:
        zone = name_key(self.origin)
        # Empty non-terminals: every ancestor down to the zone exists. Names are lowercased wire bytes under the
        # zone, so a parent is the name without its first label.
        names = self.names
        for key in list(names):
            while len(key) > len(zone):
                key = key[key[0] + 1 :]
                if key in names:
                    break  # its ancestors were added with it
                names.add(key)
        # Counters of names that still rotate survive (issue 6); the others would only grow the dict.
        for rr_key in list(rr_state):
            rot = self.entries.get(rr_key)
            if not isinstance(rot, Rotation):
                del rr_state[rr_key]
            else:
                for cluster in [c for c in rr_state[rr_key] if c not in rot.clusters]:
                    del rr_state[rr_key][cluster]
        tail = negative_tail(self.negative_soa)
        return AnswerTable(
            entries=self.entries,
            names=frozenset(self.names),
            zone=zone,
            nodata=Entry(wire.AA | wire.NOERROR, 0, 1, 0, tail),
            nxdomain=Entry(wire.AA | wire.NXDOMAIN, 0, 1, 0, tail),
            max_udp_payload=max(512, max_udp_payload),
            rr_state=rr_state,
            version=version,
            rr_seed=rr_seed,
        )
