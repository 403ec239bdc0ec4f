"""Issue 9 speed work, checked for behaviour: the UDP hot path (query bytes -> prebuilt response) and the
per-service reuse of a previous table build must answer exactly what the full path and a fresh build do."""

from __future__ import annotations

import struct
from dataclasses import replace

import dns.message
import pytest
from dns_world import Running, addresses, make_state, member
from prometheus_client import REGISTRY

from fedproxy.config import DnsConfig
from fedproxy.dns import server as server_module
from fedproxy.dns.answer import build_table, respond
from fedproxy.dns.names import ServiceMemo
from fedproxy.model import ClusterSnapshot

WEB = "web.demo.svc.clusterset.local"
SPREAD = DnsConfig(address="127.0.0.1", port=0, policy="spread")


def merged(*snaps: ClusterSnapshot) -> ClusterSnapshot:
    """One member snapshot holding the services of all ``snaps`` (same member name)."""
    out = snaps[0]
    for s in snaps[1:]:
        for kind in ("services", "endpointslices", "serviceexports", "serviceimports"):
            out = out.with_objects(kind, {**getattr(out, kind), **getattr(s, kind)})
    return out


def world(
    db_pods: tuple[str, ...] = ("10.1.0.7",), west_pod: str = "10.2.0.1", api_ip: str = "10.0.0.9"
) -> list[ClusterSnapshot]:
    east = merged(
        member("east", "10.0.0.1", ("10.1.0.1",), region="eu", zone="eu-a"),
        member("east", "", db_pods, headless=True, svc="db", hostnames=("db-0",)),
        member("east", api_ip, ("10.1.0.9",), svc="api"),  # east only: one answer, no rotation
    )
    west = member("west", "10.0.0.2", (west_pod,), region="eu", zone="eu-b")
    return [east, west]


def same_table(a, b) -> None:
    assert a.names == b.names
    assert a.entries == b.entries  # Entry equality: flags, counts, bytes and labels (not the metric cache)


@pytest.mark.parametrize("cfg", [SPREAD, DnsConfig(address="127.0.0.1", port=0, locality=True)])
def test_a_build_reusing_unchanged_services_equals_a_fresh_build(cfg: DnsConfig) -> None:
    memo = ServiceMemo()
    first = make_state(world(), local="east", dns_cfg=cfg)
    same_table(build_table(first, {}, cfg, memo=memo), build_table(first, {}, cfg))
    kept = dict(memo.services)
    changes = [
        make_state(world(db_pods=("10.1.0.7", "10.1.0.8")), local="east", dns_cfg=cfg, version=2),
        make_state(world(west_pod="10.2.0.2"), local="east", dns_cfg=cfg, version=3),
        make_state(world(), local="east", dns_cfg=cfg, version=4, weights={"west": 3}),
        make_state(world(), local="east", dns_cfg=cfg, version=5, drained=frozenset({"west"})),
        make_state(world(), dns_cfg=cfg, version=6),  # no local member: every tier moves
    ]
    for state in changes:
        same_table(build_table(state, {}, cfg, memo=memo), build_table(state, {}, cfg))
    # Only the first change touched db alone: web and api were reused as they were.
    memo = ServiceMemo()
    build_table(first, {}, cfg, memo=memo)
    kept = dict(memo.services)
    build_table(changes[0], {}, cfg, memo=memo)
    assert [k.name for k in kept if memo.services[k] is kept[k]] == ["api", "web"]
    # Other settings: nothing is reused.
    other = replace(cfg, ttl=cfg.ttl + 1)
    same_table(build_table(changes[0], {}, other, memo=memo), build_table(changes[0], {}, other))
    assert all(memo.services[k] is not kept[k] for k in kept)


async def udp_raw(run: Running, data: bytes) -> bytes:
    reply = await run.raw_udp(data)
    assert reply is not None
    return reply


async def test_hot_answers_are_the_full_paths_answers_with_the_id_and_case_of_each_query(start) -> None:
    state = make_state(world(), local="east", dns_cfg=SPREAD)
    run = await start(state, SPREAD, rr_seed=0)
    for name, kw in [("api.demo.svc.clusterset.local", {}), ("WeB.DeMo.svc.clusterset.LOCAL", {"use_edns": 0})]:
        q = dns.message.make_query(name, "A", **kw)
        for qid in (1, 2, 0xBEEF, 1):
            q.id = qid
            data = q.to_wire()
            got = await udp_raw(run, data)
            assert struct.unpack_from("!H", got)[0] == qid
            reference = build_table(state, {}, SPREAD)
            if "WeB" not in name:  # a rotation's reference depends on where it is; its bytes are checked below
                assert got == respond(reference, data)
            else:
                question = len(data) - 12 - 11  # the header and the 11-byte OPT record around it
                assert got[12 : 12 + question] == data[12 : 12 + question]  # the name in the case it was asked
    assert len(run.server.hot) == 2
    # A new state is answered at once, not from the previous table's hot answers.
    run.set(make_state(world(api_ip="10.0.0.10"), local="east", dns_cfg=SPREAD, version=2))
    q = dns.message.make_query("api.demo.svc.clusterset.local", "A")
    assert addresses(dns.message.from_wire(await udp_raw(run, q.to_wire()))) == ["10.0.0.10"]


async def test_hot_answers_are_counted_and_the_hot_set_is_bounded(start, monkeypatch) -> None:
    monkeypatch.setattr(server_module, "MAX_HOT", 3)
    state = make_state(world(), local="east", dns_cfg=SPREAD)
    run = await start(state, SPREAD, rr_seed=0)
    labels = {"rcode": "NOERROR", "qtype": "A", "service": "demo/api", "cluster": "east"}

    def answered() -> float:
        return REGISTRY.get_sample_value("fedproxy_dns_answers_total", labels) or 0.0

    before = answered()
    for _ in range(10):
        await run.udp("api.demo.svc.clusterset.local")
    assert answered() - before == 10  # counted on the hot entry, moved into the metric at scrape time
    for i in range(8):
        await run.udp(f"n{i}.demo.svc.clusterset.local")
        assert len(run.server.hot) <= 3
    await run.udp("api.demo.svc.clusterset.local")
    assert answered() - before == 11
