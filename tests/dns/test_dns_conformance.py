"""Where the MCS DNS specification (KEP-1645) and Submariner Lighthouse differ, and the switch that picks each.

One row per difference: the query, what the spec mode answers, what the Lighthouse-compatible mode answers.
Spec mode is ``cluster_prefix: false`` + ``policy: spread``; Lighthouse mode is the default
(``cluster_prefix: true`` + ``policy: local_first``). Answers are summarised as a sorted tuple of addresses or
SRV targets, or the rcode's name when there is no answer. docs/dns.md carries the same table.
"""

from __future__ import annotations

import dns.message
import dns.rcode
import pytest
from dns_world import make_state, member

from fedproxy.config import DnsConfig
from fedproxy.dns.answer import build_table, respond

D = "demo.svc.clusterset.local"
SPEC = DnsConfig(cluster_prefix=False, policy="spread")
LIGHTHOUSE = DnsConfig()


def summary(table, name: str, rdtype: str, times: int = 1) -> tuple[str, ...]:
    seen: set[str] = set()
    for _ in range(times):
        r = dns.message.from_wire(respond(table, dns.message.make_query(name, rdtype).to_wire()))
        if not r.answer:
            return (dns.rcode.to_text(r.rcode()),)
        for rs in r.answer:
            seen.update(str(rd.target) if rdtype == "SRV" else rd.address for rd in rs)
    return tuple(sorted(seen))


@pytest.fixture(scope="module")
def state():
    snaps = [
        member("east", "10.0.0.1", ("10.1.0.1",)),
        member("west", "10.0.0.2", ("10.2.0.1",)),
    ]
    east_db = member("east", "", ("10.1.0.9",), headless=True, svc="db", hostnames=("db-0",))
    snaps[0] = snaps[0].with_objects("services", {**snaps[0].services, **east_db.services})
    snaps[0] = snaps[0].with_objects("endpointslices", {**snaps[0].endpointslices, **east_db.endpointslices})
    snaps[0] = snaps[0].with_objects("serviceexports", {**snaps[0].serviceexports, **east_db.serviceexports})
    return make_state(snaps, local="east")


ROWS = [
    # (what differs, name, type, spec answer, Lighthouse answer)
    ("cluster-prefixed name", f"west.web.{D}", "A", ("NXDOMAIN",), ("10.0.0.2",)),
    ("local preference (over 4 queries)", f"web.{D}", "A", ("10.0.0.1", "10.0.0.2"), ("10.0.0.1",)),
    ("SRV target", f"_http._tcp.web.{D}", "SRV", (f"web.{D}.",), (f"east.web.{D}.", f"west.web.{D}.")),
    ("cluster-prefixed SRV", f"_http._tcp.west.web.{D}", "SRV", ("NXDOMAIN",), (f"west.web.{D}.",)),
    # Spec: the name only exists as the parent of the pod names (an empty non-terminal: NODATA, RFC 8020).
    ("headless cluster name", f"east.db.{D}", "A", ("NOERROR",), ("10.1.0.9",)),
    # Rows where both agree, so a regression in either mode shows up here too.
    ("headless pod name", f"db-0.east.db.{D}", "A", ("10.1.0.9",), ("10.1.0.9",)),
    ("dns-version", "dns-version.clusterset.local", "TXT", ("NOERROR",), ("NOERROR",)),
]


@pytest.mark.parametrize("what, name, rdtype, spec, lighthouse", ROWS, ids=[r[0] for r in ROWS])
def test_spec_and_lighthouse_modes(state, what: str, name: str, rdtype: str, spec: tuple, lighthouse: tuple) -> None:
    if rdtype == "TXT":
        for cfg in (SPEC, LIGHTHOUSE):
            r = dns.message.from_wire(
                respond(build_table(state, {}, cfg), dns.message.make_query(name, "TXT").to_wire())
            )
            assert r.answer[0][0].strings == (b"1.0.0",)
        return
    assert summary(build_table(state, {}, SPEC), name, rdtype, times=4) == spec
    assert summary(build_table(state, {}, LIGHTHOUSE), name, rdtype, times=4) == lighthouse
