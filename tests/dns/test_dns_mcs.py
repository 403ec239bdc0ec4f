"""Issue 7 over real UDP/TCP queries: MCS objects (ServiceImport, ServiceExport conditions, ports across
clusters), per-replica round-robin offsets, SRV under cluster-prefixed names, forwarding with TCP retry, the
headless and dual-stack details, and the metrics (read back from the prometheus registry)."""

from __future__ import annotations

from dataclasses import replace

import dns.flags
import dns.rcode
import pytest
from dns_world import PORTS, addresses, make_state, member
from prometheus_client import REGISTRY

from fedproxy.admin.state import service_json
from fedproxy.config import ClustersetConfig, DnsConfig, TcpConfig, TcpListener
from fedproxy.dns.server import default_rr_seed
from fedproxy.model import ClusterSnapshot, EndpointSlice, ServiceKey, ServicePort, SliceEndpoint, SlicePort
from fedproxy.resources import parse_service, parse_serviceexport, parse_serviceimport

WEB = "web.demo.svc.clusterset.local"
DB = "db.demo.svc.clusterset.local"
SPREAD = DnsConfig(address="127.0.0.1", port=0, policy="spread")
METRICS = ServicePort("metrics", 9090, "TCP", 9090)


def with_service(snap: ClusterSnapshot, **changes: object) -> ClusterSnapshot:
    ((key, svc),) = snap.services.items()
    return snap.with_objects("services", {key: replace(svc, **changes)})


def two() -> list[ClusterSnapshot]:
    return [member("east", "10.0.0.1", ("10.1.0.1",)), member("west", "10.0.0.2", ("10.2.0.1",))]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_replicas_start_their_rotation_at_different_offsets(start) -> None:
    state = make_state(two(), dns_cfg=SPREAD)
    firsts = set()
    for seed in (1, 2):  # two replicas: the seeds differ in parity, so do their first answers (2 clusters)
        run = await start(state, SPREAD, rr_seed=seed)
        firsts.add(addresses(await run.udp(WEB))[0])
    assert firsts == {"10.0.0.1", "10.0.0.2"}
    lockstep = [addresses(await (await start(state, SPREAD, rr_seed=0)).udp(WEB))[0] for _ in range(2)]
    assert lockstep[0] == lockstep[1]  # seed 0 = no offset: what every replica did before
    run = await start(state, SPREAD, rr_seed=7)
    seq = [addresses(await run.tcp(WEB))[0] for _ in range(4)]
    assert seq[0] != seq[1] and seq[:2] == seq[2:]  # after its start a replica still alternates fairly


def test_default_seed_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPROXY_DNS_RR_SEED", "42")
    assert default_rr_seed() == 42
    monkeypatch.delenv("FEDPROXY_DNS_RR_SEED")
    assert default_rr_seed() != 0  # hostname/pid hash, never "no offset"


async def test_srv_under_cluster_prefixed_names(start) -> None:
    snaps = two()
    db = member("east", "", ("10.1.0.7", "10.1.0.8"), headless=True, svc="db", hostnames=("db-0", "db-1"))
    db_west = member("west", "", ("10.2.0.7",), headless=True, svc="db", hostnames=("db-2",))
    for i, extra in ((0, db), (1, db_west)):
        for kind in ("services", "endpointslices", "serviceexports"):
            snaps[i] = snaps[i].with_objects(kind, {**getattr(snaps[i], kind), **getattr(extra, kind)})
    state = make_state(snaps, local="east")
    run = await start(state)
    r = await run.udp("_http._tcp.west." + WEB, "SRV")
    assert [(rd.port, str(rd.target)) for rd in r.answer[0]] == [(80, "west." + WEB + ".")]
    assert [(str(rs.name), rd.address) for rs in r.additional for rd in rs] == [("west." + WEB + ".", "10.0.0.2")]
    r = await run.tcp("west." + WEB, "SRV")
    assert sorted(rd.port for rd in r.answer[0]) == [80, 9000]
    r = await run.udp("_http._tcp.east." + DB, "SRV")
    assert sorted(str(rd.target) for rd in r.answer[0]) == [f"db-0.east.{DB}.", f"db-1.east.{DB}."]
    assert sorted(rd.address for rs in r.additional for rd in rs) == ["10.1.0.7", "10.1.0.8"]
    r = await run.tcp("west." + DB, "SRV")
    assert {str(rd.target) for rd in r.answer[0]} == {f"db-2.west.{DB}."}
    strict = await start(state, DnsConfig(address="127.0.0.1", port=0, cluster_prefix=False))
    assert (await strict.udp("_http._tcp.west." + WEB, "SRV")).rcode() == dns.rcode.NXDOMAIN
    assert (await strict.tcp("_http._tcp.east." + DB, "SRV")).rcode() == dns.rcode.NXDOMAIN


async def test_forwarded_truncated_answer_is_retried_over_tcp(start) -> None:
    many = tuple(f"10.1.0.{i}" for i in range(1, 121))
    other = ClustersetConfig(domain="other.example")
    upstream = await start(make_state([member("east", "", many, headless=True)], clusterset=other))
    cfg = DnsConfig(address="127.0.0.1", port=0, forward=(f"127.0.0.1:{upstream.server.port}",))
    run = await start(make_state(two()), cfg)
    name = "web.demo.svc.other.example"
    assert (await run.udp(name)).flags & dns.flags.TC  # UDP client: the truncated reply, it retries itself
    full = await run.tcp(name)
    assert len(addresses(full)) == 120 and not full.flags & dns.flags.TC


async def test_answers_by_service_and_cluster_and_sampled_answer_time(start) -> None:
    run = await start(make_state(two(), dns_cfg=SPREAD), SPREAD, rr_seed=0)
    answers = "fedproxy_dns_answers_total"
    web = {"rcode": "NOERROR", "qtype": "A", "service": "demo/web"}
    nx = {"rcode": "NXDOMAIN", "qtype": "A", "service": "", "cluster": ""}
    before = [sample(answers, **web, cluster=c) for c in ("east", "west")]
    before_nx, before_time = sample(answers, **nx), sample("fedproxy_dns_answer_seconds_count")
    for _ in range(32):
        await run.udp(WEB)
        await run.tcp(WEB)
    after = [sample(answers, **web, cluster=c) for c in ("east", "west")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [32, 32]
    assert sample("fedproxy_dns_answer_seconds_count") - before_time == 1  # one query in 64
    await run.udp("nothing." + WEB)
    assert sample(answers, **nx) - before_nx == 1
    before_west = sample(answers, **web, cluster="west")
    await run.udp("west." + WEB)
    assert sample(answers, **web, cluster="west") - before_west == 1


async def test_port_only_some_clusters_expose_is_served_only_from_them_and_reported(start) -> None:
    east = with_service(member("east", "10.0.0.1", ("10.1.0.1",)), ports=(*PORTS, METRICS))
    west = with_service(member("west", "10.0.0.2", ("10.2.0.1",)), ports=PORTS[:1])
    state = make_state([east, west], local="east")
    run = await start(state)
    r = await run.udp("_metrics._tcp." + WEB, "SRV")
    assert [(rd.port, str(rd.target)) for rd in r.answer[0]] == [(9090, "east." + WEB + ".")]
    r = await run.tcp(WEB, "SRV")
    assert sorted((str(rd.target), rd.port) for rd in r.answer[0]) == [
        ("east." + WEB + ".", 80),
        ("east." + WEB + ".", 9000),
        ("east." + WEB + ".", 9090),
        ("west." + WEB + ".", 80),
    ]
    assert (await run.udp("_metrics._tcp.west." + WEB, "SRV")).rcode() == dns.rcode.NXDOMAIN
    svc = state.catalog.services[ServiceKey("demo", "web")]
    doc = service_json(svc, state.catalog.clusters)  # what the admin state API shows
    assert sorted(doc["conflicts"]) == ["port 9000/TCP: only exposed by east", "port metrics/TCP: only exposed by east"]
    assert sample("fedproxy_service_conflicts", service="demo/web") == 2
    run.set(make_state([east, with_service(west, ports=(*PORTS, METRICS))], local="east", version=2))
    assert sample("fedproxy_service_conflicts", service="demo/web") == 0  # cleared, not left stale


async def test_serviceimport_ips_and_headless_type_from_kubernetes_objects(start) -> None:
    meta = {"namespace": "demo", "name": "web"}
    vip = parse_serviceimport({"metadata": meta, "spec": {"type": "ClusterSetIP", "ips": ["10.96.0.10", "fd96::a"]}})
    snaps = [s.with_objects("serviceimports", {("demo", "web"): vip}) for s in two()]
    run = await start(make_state(snaps))
    assert addresses(await run.udp(WEB)) == ["10.96.0.10"]
    assert addresses(await run.tcp(WEB, "AAAA")) == ["fd96::a"]
    headless = parse_serviceimport({"metadata": meta, "spec": {"type": "Headless"}})
    snaps = [s.with_objects("serviceimports", {("demo", "web"): headless}) for s in two()]
    run.set(make_state(snaps))
    assert addresses(await run.udp(WEB)) == ["10.1.0.1", "10.2.0.1"]  # every pod, not a ClusterIP
    assert addresses(await run.tcp("10-2-0-1.west." + WEB)) == ["10.2.0.1"]


async def test_export_not_valid_is_not_served(start) -> None:
    invalid = parse_serviceexport(
        {
            "metadata": {"namespace": "demo", "name": "web", "creationTimestamp": "2023-01-01T00:00:00Z"},
            "status": {"conditions": [{"type": "Valid", "status": "False", "reason": "UnsupportedServiceType"}]},
        }
    )
    snaps = two()
    snaps[1] = snaps[1].with_objects("serviceexports", {("demo", "web"): invalid})
    run = await start(make_state(snaps, dns_cfg=SPREAD), SPREAD)
    assert {addresses(await run.udp(WEB))[0] for _ in range(4)} == {"10.0.0.1"}
    assert (await run.tcp("west." + WEB)).rcode() == dns.rcode.NXDOMAIN
    snaps[0] = snaps[0].with_objects("serviceexports", {("demo", "web"): invalid})
    run.set(make_state(snaps, dns_cfg=SPREAD))
    assert (await run.udp(WEB)).rcode() == dns.rcode.NXDOMAIN


async def test_headless_dedupe_across_slices_and_lighthouse_not_ready_annotation(start) -> None:
    east = member("east", "", ("10.1.0.1",), headless=True, hostnames=("web-0",))
    twin = EndpointSlice(
        "demo", "web-twin", "web", "IPv4", (SlicePort("http", 8080),), (SliceEndpoint(("10.1.0.1",), hostname="web-0"),)
    )
    east = east.with_objects("endpointslices", {**east.endpointslices, ("demo", "web-twin"): twin})
    run = await start(make_state([east]))
    r = await run.udp(WEB)
    assert [rd.address for rs in r.answer for rd in rs] == ["10.1.0.1"]  # once, though in two slices
    r = await run.tcp("_http._tcp." + WEB, "SRV")
    assert len(r.answer[0]) == 1
    not_ready = member("west", "", ("10.2.0.1",), headless=True, ready=False, svc="db")
    obj = {"metadata": {"namespace": "demo", "name": "db"}, "spec": {"clusterIP": "None", "ports": []}}
    assert not parse_service(obj).publish_not_ready
    run.set(make_state([east, not_ready]))
    assert (await run.udp(DB)).rcode() == dns.rcode.NXDOMAIN  # no ready endpoint (spec)
    obj["metadata"]["annotations"] = {"lighthouse.submariner.io/publish-not-ready-addresses": "true"}
    annotated = parse_service(obj)
    assert annotated.publish_not_ready
    pnr = not_ready.with_objects("services", {("demo", "db"): replace(annotated, ports=PORTS)})
    run.set(make_state([east, pnr], version=2))
    assert addresses(await run.tcp(DB)) == ["10.2.0.1"]


async def test_dual_stack_clusterip_and_pods(start) -> None:
    east = with_service(member("east", "10.0.0.1", ("10.1.0.1", "fd00::1")), cluster_ips=("10.0.0.1", "fd00::a"))
    west = member("west", "fd00::b", ("fd00::2",))  # IPv6 only
    run = await start(make_state([east, west], dns_cfg=SPREAD), SPREAD, rr_seed=0)
    assert {addresses(await run.udp(WEB))[0] for _ in range(4)} == {"10.0.0.1"}  # west has no IPv4: never in A
    assert {addresses(await run.tcp(WEB, "AAAA"))[0] for _ in range(4)} == {"fd00::a", "fd00::b"}
    assert addresses(await run.udp("east." + WEB, "AAAA")) == ["fd00::a"]
    assert addresses(await run.udp("east." + WEB)) == ["10.0.0.1"]
    r = await run.udp("west." + WEB)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer  # NODATA: the name exists, without IPv4


async def test_proxy_answer_with_advertise_address(start) -> None:
    tcp = TcpConfig(listeners=(TcpListener(port=7000, address="0.0.0.0", service=ServiceKey("demo", "web")),))
    state = make_state(two(), tcp=tcp)
    wildcard = await start(state, DnsConfig(address="127.0.0.1", port=0, answer="proxy"))
    assert addresses(await wildcard.udp(WEB)) in (["10.0.0.1"], ["10.0.0.2"])  # a wildcard bind is not dialable
    cfg = DnsConfig(address="127.0.0.1", port=0, answer="proxy", advertise_address="192.0.2.53")
    run = await start(state, cfg)
    assert addresses(await run.udp(WEB)) == ["192.0.2.53"]
    assert addresses(await run.tcp("west." + WEB)) == ["10.0.0.2"]  # cluster names still answer the cluster


async def test_type_conflict_oldest_export_wins(start) -> None:
    west = member("west", "10.0.0.2", ("10.2.0.1",))
    old = replace(west.serviceexports[("demo", "web")], created="2020-01-01T00:00:00Z")
    west = west.with_objects("serviceexports", {("demo", "web"): old})  # the oldest export: ClusterSetIP
    east = member("east", "", ("10.1.0.1",), headless=True)
    state = make_state([east, west], dns_cfg=SPREAD)
    run = await start(state, SPREAD)
    assert {addresses(await run.udp(WEB))[0] for _ in range(4)} == {"10.0.0.2"}  # never east's pods
    assert (await run.tcp("east." + WEB)).rcode() == dns.rcode.NXDOMAIN
    assert any(c.startswith("type:") for c in state.catalog.services[ServiceKey("demo", "web")].conflicts)
    assert sample("fedproxy_service_conflicts", service="demo/web") == 1


async def test_reconfigure_takes_new_answer_settings(start) -> None:
    state = make_state(two(), local="east")
    run = await start(state)
    assert addresses(await run.udp("west." + WEB)) == ["10.0.0.2"]
    run.server.reconfigure(DnsConfig(address="0.0.0.0", port=53, cluster_prefix=False), state)
    assert (await run.udp("west." + WEB)).rcode() == dns.rcode.NXDOMAIN  # still on its port, strict now
