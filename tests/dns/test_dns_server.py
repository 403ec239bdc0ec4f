"""The DNS responder over real UDP/TCP sockets on 127.0.0.1, queried with dnspython."""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from dataclasses import replace

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
from dns_world import addresses, make_state, member

from fedproxy.config import ClustersetConfig, DnsConfig, HttpConfig, HttpListener, HttpRoute
from fedproxy.model import ServiceKey

WEB = "web.demo.svc.clusterset.local"


def three(**kw: object) -> list:
    return [
        member("east", "10.0.0.1", ("10.1.0.1",), region="eu", zone="eu-a", **kw),
        member("west", "10.0.0.2", ("10.2.0.1",), region="eu", zone="eu-b", **kw),
        member("south", "10.0.0.3", ("10.3.0.1",), region="us", zone="us-a", **kw),
    ]


async def test_local_first_answers_the_local_cluster_then_rotates_when_it_has_no_ready_pods(start) -> None:
    snaps = three()
    run = await start(make_state(snaps, local="east"))
    for _ in range(5):
        assert addresses(await run.udp(WEB)) == ["10.0.0.1"]
    snaps[0] = member("east", "10.0.0.1", ("10.1.0.1",), region="eu", zone="eu-a", ready=False)
    run.set(make_state(snaps, local="east"))
    seen = Counter([addresses(await run.udp(WEB))[0] for _ in range(20)])
    assert seen == {"10.0.0.2": 10, "10.0.0.3": 10}


async def test_weighted_round_robin_is_fair_and_survives_unrelated_changes(start) -> None:
    snaps = three()
    weights = {"east": 1, "west": 2, "south": 3}
    cfg = DnsConfig(address="127.0.0.1", port=0, policy="spread")
    run = await start(make_state(snaps, weights=weights, dns_cfg=cfg))
    seen: Counter[str] = Counter()
    for i in range(60):
        if i == 7:  # a change that does not touch web keeps the rotation going
            other = member("east", "10.9.0.1", ("10.9.1.1",), svc="db")
            run.set(make_state([*snaps, replace(other, name="north")], weights=weights, dns_cfg=cfg, version=2))
        seen[addresses(await run.udp(WEB))[0]] += 1
    # Smooth WRR is exact over whole cycles: within one answer of the weight's share.
    assert abs(seen["10.0.0.1"] - 10) <= 1 and abs(seen["10.0.0.2"] - 20) <= 1 and abs(seen["10.0.0.3"] - 30) <= 1


async def test_disconnected_and_drained_clusters_are_never_answered(start) -> None:
    snaps = three()
    cfg = DnsConfig(address="127.0.0.1", port=0, policy="spread")
    run = await start(make_state(snaps, dns_cfg=cfg))
    assert len({addresses(await run.udp(WEB))[0] for _ in range(6)}) == 3
    snaps[1] = replace(snaps[1], connected=False)
    run.set(make_state(snaps, dns_cfg=cfg, drained=frozenset({"south"})))
    assert {addresses(await run.udp(WEB))[0] for _ in range(6)} == {"10.0.0.1"}
    r = await run.udp("west." + WEB)
    assert r.rcode() == dns.rcode.NXDOMAIN
    snaps[0] = replace(snaps[0], connected=False)
    run.set(make_state(snaps, dns_cfg=cfg, drained=frozenset({"south"})))
    r = await run.udp(WEB)
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].rdtype == dns.rdatatype.SOA


async def test_locality_policy_and_scoped_names(start) -> None:
    cfg = DnsConfig(address="127.0.0.1", port=0, locality=True)
    snaps = three(ready=True)
    snaps[0] = member("east", "10.0.0.1", ("10.1.0.1",), region="eu", zone="eu-a", ready=False)
    run = await start(make_state(snaps, local="east", dns_cfg=cfg))
    # The local member has no ready pod; same region (west) beats the rest (south).
    assert {addresses(await run.udp(WEB))[0] for _ in range(4)} == {"10.0.0.2"}
    assert addresses(await run.udp("web.demo.svc.us.clusterset.local")) == ["10.0.0.3"]
    assert addresses(await run.udp("web.demo.svc.eu-b.eu.clusterset.local")) == ["10.0.0.2"]
    r = await run.udp("web.demo.svc.eu-a.eu.clusterset.local")
    assert r.rcode() == dns.rcode.NXDOMAIN


async def test_cluster_prefixed_names_and_strict_mode(start) -> None:
    state = make_state(three())
    run = await start(state)
    assert addresses(await run.udp("south." + WEB)) == ["10.0.0.3"]
    assert (await run.udp("mars." + WEB)).rcode() == dns.rcode.NXDOMAIN
    strict = await start(state, DnsConfig(address="127.0.0.1", port=0, cluster_prefix=False))
    assert (await strict.udp("south." + WEB)).rcode() == dns.rcode.NXDOMAIN


async def test_backend_choice_and_clusterset_ips(start) -> None:
    snaps = [member("east", "10.0.0.1", ("10.1.0.1", "fd00::11"), lb=("192.0.2.1",))]
    run = await start(make_state(snaps), DnsConfig(address="127.0.0.1", port=0, backend="loadbalancer"))
    assert addresses(await run.udp(WEB)) == ["192.0.2.1"]
    pods = await start(make_state(snaps), DnsConfig(address="127.0.0.1", port=0, backend="pod"))
    assert addresses(await pods.udp(WEB)) == ["10.1.0.1"]
    assert addresses(await pods.udp(WEB, "AAAA")) == ["fd00::11"]
    vip = [member("east", "10.0.0.1", ("10.1.0.1",), clusterset_ips=("10.96.0.10",))]
    run = await start(make_state(vip))
    assert addresses(await run.udp(WEB)) == ["10.96.0.10"]


async def test_proxy_answer_mode(start) -> None:
    route = HttpRoute(service=ServiceKey("demo", "web"))
    http = HttpConfig(listeners=(HttpListener(port=8080, address="127.0.0.5", routes=(route,)),))
    cfg = DnsConfig(address="127.0.0.1", port=0, answer="proxy")
    run = await start(make_state(three(), dns_cfg=cfg, http=http))
    assert addresses(await run.udp(WEB)) == ["127.0.0.5"]


async def test_headless_names(start) -> None:
    snaps = [
        member("east", "", ("10.1.0.1", "10.1.0.2"), headless=True, hostnames=("web-0", None)),
        member("west", "", ("10.1.0.2", "10.2.0.1"), headless=True),
        member("north", "", ("10.4.0.1",), headless=True, ready=False),
        member("pnr", "", ("10.5.0.1",), headless=True, ready=False, publish_not_ready=True, svc="pnr"),
    ]
    run = await start(make_state(snaps, local="east"))
    assert addresses(await run.udp(WEB)) == ["10.1.0.1", "10.1.0.2", "10.2.0.1"]
    assert addresses(await run.udp("web-0.east." + WEB)) == ["10.1.0.1"]
    assert addresses(await run.udp("10-1-0-2.east." + WEB)) == ["10.1.0.2"]
    assert (await run.udp("10-4-0-1.north." + WEB)).rcode() == dns.rcode.NXDOMAIN
    assert addresses(await run.udp("pnr.demo.svc.clusterset.local")) == ["10.5.0.1"]
    srv = await run.udp("_http._tcp." + WEB, "SRV")
    targets = sorted(str(rd.target) for rd in srv.answer[0])
    assert targets[0] == "10-1-0-2.east." + WEB + "." and len(targets) == 4
    assert {rd.port for rd in srv.answer[0]} == {8080}
    assert len(srv.additional) == 4
    gone = [replace(s, connected=False) if s.name != "north" else s for s in snaps[:3]]
    run.set(make_state(gone))
    assert (await run.udp(WEB)).rcode() == dns.rcode.NXDOMAIN


async def test_srv_named_ports_and_additional_section(start) -> None:
    run = await start(make_state(three(), local="east"))
    r = await run.udp("_http._tcp." + WEB, "SRV")
    recs = sorted((rd.priority, rd.port, str(rd.target)) for rd in r.answer[0])
    assert recs[0] == (0, 80, "east." + WEB + ".") and len(recs) == 3
    glue = sorted((str(rs.name), rd.address) for rs in r.additional for rd in rs)
    assert glue == [
        ("east." + WEB + ".", "10.0.0.1"),
        ("south." + WEB + ".", "10.0.0.3"),
        ("west." + WEB + ".", "10.0.0.2"),
    ]
    plain = await run.udp(WEB, "SRV")
    assert {rd.port for rd in plain.answer[0]} == {80, 9000}
    # Unnamed ports have no _port._proto name.
    assert (await run.udp("_._tcp." + WEB, "SRV")).rcode() == dns.rcode.NXDOMAIN


async def test_negative_answers_apex_and_version(start) -> None:
    run = await start(make_state(three()))
    nodata = await run.udp(WEB, "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA and nodata.authority[0].ttl == 5
    ent = await run.udp("demo.svc.clusterset.local")
    assert ent.rcode() == dns.rcode.NOERROR and not ent.answer
    nx = await run.udp("nothing.demo.svc.clusterset.local")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    assert (await run.udp("clusterset.local", "NS")).answer[0][0].target.to_text().startswith("ns.dns.")
    assert (await run.udp("clusterset.local", "SOA")).answer[0].rdtype == dns.rdatatype.SOA
    txt = await run.udp("dns-version.clusterset.local", "TXT")
    assert txt.answer[0][0].strings == (b"1.0.0",)
    refused = await run.udp("example.com")
    assert refused.rcode() == dns.rcode.REFUSED and not refused.authority
    assert (await run.udp("xclusterset.local")).rcode() == dns.rcode.REFUSED


async def test_case_is_preserved_and_ignored(start) -> None:
    run = await start(make_state(three(), local="east"))
    r = await run.udp("WeB.DeMo.svc.ClusterSet.LOCAL")
    assert r.answer[0].name.to_text() == "WeB.DeMo.svc.ClusterSet.LOCAL."
    assert addresses(r) == ["10.0.0.1"]


async def test_edns_payload_truncation_and_tcp(start) -> None:
    pods = tuple(f"10.1.{i // 250}.{i % 250 + 1}" for i in range(60))
    run = await start(make_state([member("east", "", pods, headless=True)]))
    small = await run.udp(WEB)
    assert small.flags & dns.flags.TC and not small.answer
    big = await run.udp(WEB, use_edns=0, payload=4096)
    assert big.edns == 0 and big.payload == 1232  # our cap (dns.max_udp_payload)
    assert len(addresses(big)) == 60 and not big.flags & dns.flags.TC
    many = tuple(f"10.1.{i // 250}.{i % 250 + 1}" for i in range(120))
    run.set(make_state([member("east", "", many, headless=True)]))
    assert (await run.udp(WEB, use_edns=0, payload=4096)).flags & dns.flags.TC
    full = await run.tcp(WEB)
    assert len(addresses(full)) == 120 and not full.flags & dns.flags.TC
    do = await run.udp("clusterset.local", "SOA", want_dnssec=True)
    assert do.ednsflags & dns.flags.DO


async def test_tcp_pipelining(start) -> None:
    run = await start(make_state(three(), local="east"))
    reader, writer = await asyncio.open_connection("127.0.0.1", run.server.port)
    try:
        queries = [dns.message.make_query(n, "A") for n in (WEB, "west." + WEB, "nope." + WEB)]
        writer.write(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        await writer.drain()
        for q in queries:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            r = dns.message.from_wire(await reader.readexactly(size))
            assert r.id == q.id and r.question == q.question
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_packets_formerr_notimp_and_drops(start) -> None:
    run = await start(make_state(three()))
    assert await run.raw_udp(b"\x12\x34\x01") is None  # no room for a header: dropped
    good = dns.message.make_query(WEB, "A").to_wire()
    bad_label = good[:12] + b"\x3fweb" + good[16:]
    r = await run.raw_udp(bad_label)
    assert r is not None and r[:2] == good[:2] and r[3] & 0xF == dns.rcode.FORMERR
    loop = good[:12] + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    r = await run.raw_udp(loop)
    assert r is not None and r[3] & 0xF == dns.rcode.FORMERR
    notify = dns.message.make_query(WEB, "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    raw = await run.raw_udp(notify.to_wire())
    assert raw is not None
    r = dns.message.from_wire(raw)
    assert r.rcode() == dns.rcode.NOTIMP and r.opcode() == dns.opcode.NOTIFY
    response = dns.message.make_response(dns.message.make_query(WEB, "A")).to_wire()
    assert await run.raw_udp(response) is None  # never answer a response
    # The listener is still serving after all that.
    assert addresses(await run.udp("east." + WEB)) == ["10.0.0.1"]


async def test_forward_names_outside_the_zone(start) -> None:
    other = make_state(three(), clusterset=ClustersetConfig(domain="other.example"))
    upstream = await start(other)
    cfg = DnsConfig(address="127.0.0.1", port=0, forward=(f"127.0.0.1:{upstream.server.port}",))
    run = await start(make_state(three(), local="east"), cfg)
    r = await run.udp("east.web.demo.svc.other.example")
    assert addresses(r) == ["10.0.0.1"]
    r = await run.tcp("west.web.demo.svc.other.example")
    assert addresses(r) == ["10.0.0.2"]
    assert (await run.udp("nothing.other.example")).rcode() == dns.rcode.NXDOMAIN
    assert addresses(await run.udp(WEB)) == ["10.0.0.1"]  # our own zone is still ours
    dead = await start(make_state(three()), replace(cfg, forward=("127.0.0.1:9",)))
    assert (await dead.udp("x.other.example")).rcode() == dns.rcode.SERVFAIL
