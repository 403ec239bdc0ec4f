"""API objects with missing or odd fields, applied to a member's emulated API server, never break the catalog:
the other services keep working over HTTP and DNS, and the watch keeps delivering later changes.
"""

from __future__ import annotations

from typing import Any

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest

from fedproxy.sim import objects

from .conftest import DOMAIN, World, eventually

pytestmark = pytest.mark.reliability


def _slice(name: str, service: str, **fields: Any) -> dict[str, Any]:
    obj = objects.endpoint_slice("demo", name, service, ports=[{"name": "http", "port": 8080}])
    obj.update(fields)
    return obj


def odd_objects() -> list[dict[str, Any]]:
    """Each one is odd in a different way; all in namespace ``odd`` or ``demo`` next to the healthy services."""
    no_ports = objects.service("demo", "noports", cluster_ip="10.1.0.20")
    no_spec = objects.service("demo", "nospec", cluster_ip="10.1.0.21", ports=[{"name": "a", "port": 1}])
    del no_spec["spec"]
    odd_ports = objects.service("demo", "oddports", cluster_ip="10.1.0.22", ports=[{"name": "a", "port": 1}])
    odd_ports["spec"]["ports"] = [{"name": "x"}, {"port": "eighty"}, None, {"port": 70000}, {"port": 81}]
    v6 = objects.service(
        "demo", "v6", cluster_ip="fd00::10", ports=[{"name": "http", "port": 80}], ip_families=["IPv6"]
    )
    null_ips = objects.service("demo", "nullips", ports=[{"name": "http", "port": 80}])
    null_ips["spec"]["clusterIP"] = None
    null_ips["spec"]["clusterIPs"] = [None, 7, "not-an-ip"]
    return [
        no_ports,
        no_spec,
        odd_ports,
        v6,
        null_ips,
        *(objects.service_export("demo", n) for n in ("noports", "nospec", "oddports", "v6", "nullips", "ghost")),
        _slice("noports-1", "noports", endpoints=None),
        _slice("nospec-1", "nospec", endpoints=[{}, {"addresses": []}, {"addresses": None, "conditions": None}]),
        _slice("oddports-1", "oddports", ports=None, endpoints=[{"addresses": ["127.0.11.99"]}]),
        _slice(
            "oddports-2",
            "oddports",
            ports=[{"port": None}, {"name": 5}],
            addressType="FQDN",
            endpoints=[{"addresses": ["pod.example.com"]}],
        ),
        _slice("oddports-3", "oddports", addressType="Bogus", endpoints=[{"addresses": ["1.2.3.4"]}]),
        _slice("v6-1", "v6", addressType="IPv6", endpoints=[{"addresses": ["::1"], "conditions": {"ready": True}}]),
        _slice("nullips-1", "nullips", endpoints=[{"addresses": ["not-an-ip", "999.1.1.1", "", None]}]),
        _slice("orphan-1", "no-such-service", endpoints=[{"addresses": ["127.0.11.98"]}]),
        _slice("unlabelled", "web", endpoints=[{"addresses": ["127.0.11.97"], "conditions": {"ready": "yes"}}]),
        objects.node("node-odd", "127.0.9.9"),
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-bare"}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-weird"}, "status": {"addresses": "nope"}},
    ]


async def test_odd_objects_do_not_break_the_catalog(world: World, fedproxy_logs) -> None:
    proxy = await world.start(world.yaml())
    server = world.server("east")
    applied = 0
    for obj in odd_objects():
        try:
            server.apply(obj)
            applied += 1
        except Exception:  # the emulator's own validation refused it, as a real API server would
            continue
    assert applied >= 15
    # A normal change after the odd objects still arrives: the watch loops survived them.
    added = await world.fleet.add_pod("east")
    await eventually(lambda: added in proxy.pool_addresses("east"), what="later change")
    assert "on_change_failed" not in fedproxy_logs.text()
    assert "Traceback" not in fedproxy_logs.text()
    catalog = proxy.runtime.get_state().catalog
    assert ("demo", "web") in {(k.namespace, k.name) for k in catalog.services}
    assert ("demo", "echo") in {(k.namespace, k.name) for k in catalog.services}
    # The healthy services keep serving, over HTTP, TCP (through the pools) and DNS.
    assert proxy.pool_addresses("east") >= set(world.fleet.members["east"].web_pods)
    for _ in range(4):
        assert (await proxy.get())[0] == 200
    rcode, addrs = await proxy.dns_a(f"east.web.demo.svc.{DOMAIN}")
    assert addrs == {"10.1.0.10"}
    # The IPv6 service is answered over AAAA.
    q = dns.message.make_query(f"v6.demo.svc.{DOMAIN}", "AAAA")
    r = await dns.asyncquery.udp(q, "127.0.0.1", port=proxy.dns_port, timeout=2)
    assert {rd.address for rr in r.answer if rr.rdtype == dns.rdatatype.AAAA for rd in rr} == {"fd00::10"}
    # The admin state view renders the odd catalog.
    async with world.session.get(f"{proxy.admin_url}/api/v1/state") as resp:
        assert resp.status == 200
        await resp.json()
    # Removing the odd objects again leaves the catalog as it was.
    for obj in odd_objects():
        try:
            server.delete(obj["kind"], obj["metadata"].get("namespace") or "", obj["metadata"]["name"])
        except Exception:
            continue
    await eventually(
        lambda: {k.name for k in proxy.runtime.get_state().catalog.services} == {"web", "echo"}, what="clean again"
    )
