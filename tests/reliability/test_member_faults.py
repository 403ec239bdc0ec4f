"""Member API server faults, end to end: fedproxy keeps the last good state for the grace period, then drops the
member from pools and DNS, resyncs fully when it returns (no stale endpoint), and says so in logs and metrics.
The other member keeps serving and keeps receiving its updates the whole time.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

import pytest
import yaml

from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.kubeconfig import kubeconfig_dict
from fedproxy.sim.pki import CertificateAuthority

from .conftest import CLUSTER_IP, DOMAIN, Proxy, World, eventually

pytestmark = pytest.mark.reliability

GRACE = 1.5
EAST_NAME = f"east.web.demo.svc.{DOMAIN}"


async def dns_union(proxy: Proxy, name: str | None = None, n: int = 6) -> set[str]:
    """Every address ``n`` queries return (answers rotate between members one cluster at a time)."""
    out: set[str] = set()
    for _ in range(n):
        _, addrs = await (proxy.dns_a(name) if name else proxy.dns_a())
        out |= addrs
    return out


Fault = Callable[[World], Awaitable[None]]


async def kill(world: World) -> None:
    await world.server("east").kill()


async def restart(world: World) -> None:
    await world.server("east").restart()


async def hang(world: World) -> None:
    world.server("east").hang(True)


async def unhang(world: World) -> None:
    world.server("east").hang(False)


async def revoke_token(world: World) -> None:
    """Bad credentials: the server rotates its token; the open watches are cut, every reconnect gets 401."""
    server = world.server("east")
    server.good_token, server.token = server.token, "rotated-away"  # type: ignore[attr-defined]
    server.cut_watches()


async def restore_token(world: World) -> None:
    server = world.server("east")
    server.token = server.good_token  # type: ignore[attr-defined]


FAULTS = {
    "killed": (kill, restart),
    "hung": (hang, unhang),
    "bad-token": (revoke_token, restore_token),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_member_down_grace_disconnect_and_full_resync(world: World, fedproxy_logs, fault: str) -> None:
    inject, heal = FAULTS[fault]
    proxy = await world.start(world.yaml(grace=GRACE))
    fleet = world.fleet
    east_pods = set(fleet.members["east"].web_pods)
    assert proxy.pool_addresses("east") == east_pods
    assert await dns_union(proxy, EAST_NAME) == {CLUSTER_IP["east"]}
    errors_before = await proxy.metric("fedproxy_discovery_errors_total", cluster="east")
    resyncs_before = await proxy.metric("fedproxy_discovery_resyncs_total", cluster="east")

    started = time.monotonic()
    await inject(world)
    # While the member is unreachable its pods change: one goes away, one is added.
    gone = sorted(east_pods)[0]
    await fleet.remove_pod("east", gone)
    added = await fleet.add_pod("east")
    # West keeps changing too, and those changes must keep arriving.
    west_new = await fleet.add_pod("west")
    await eventually(lambda: west_new in proxy.pool_addresses("west"), what="west update during east fault")

    # Inside the grace period: the last good state of east is still served (pools and DNS).
    if time.monotonic() - started < GRACE * 0.6:
        assert proxy.connected("east")
        assert gone in proxy.pool_addresses("east")
        assert await dns_union(proxy, EAST_NAME) == {CLUSTER_IP["east"]}

    await eventually(lambda: not proxy.connected("east"), timeout=GRACE + 8, what="east disconnected")
    assert time.monotonic() - started >= GRACE * 0.9, "disconnected before the grace period ran out"
    assert "east" not in proxy.pool_clusters()
    assert await dns_union(proxy) == {CLUSTER_IP["west"]}
    rcode, addrs = await proxy.dns_a(EAST_NAME)
    assert not addrs
    # Serving goes on through west, without a failed request.
    for _ in range(5):
        status, backend = await proxy.get()
        assert status == 200 and backend.startswith("west/")
    assert proxy.connected("west")
    assert await proxy.metric("fedproxy_discovery_connected", cluster="east") == 0
    assert await proxy.metric("fedproxy_discovery_connected", cluster="west") == 1
    assert await proxy.metric("fedproxy_discovery_errors_total", cluster="east") > errors_before
    assert "event=member_disconnected cluster=east" in fedproxy_logs.text()
    assert "event=member_disconnected cluster=west" not in fedproxy_logs.text()

    await heal(world)
    await eventually(lambda: proxy.connected("east"), timeout=10, what="east reconnected")
    # A full resync: exactly the pods east has now, nothing left from before the fault.
    await eventually(
        lambda: proxy.pool_addresses("east") == set(fleet.members["east"].web_pods), what="east pods resynced"
    )
    assert gone not in proxy.pool_addresses("east") and added in proxy.pool_addresses("east")
    assert await dns_union(proxy, EAST_NAME) == {CLUSTER_IP["east"]}
    assert await proxy.metric("fedproxy_discovery_connected", cluster="east") == 1
    assert await proxy.metric("fedproxy_discovery_resyncs_total", cluster="east", reason="reconnect") > 0
    assert await proxy.metric("fedproxy_discovery_resyncs_total", cluster="east") > resyncs_before
    assert "event=member_reconnected cluster=east" in fedproxy_logs.text()
    # And the watch is live again: a later change arrives as an event.
    later = await fleet.add_pod("east")
    await eventually(lambda: later in proxy.pool_addresses("east"), what="event after resync")


async def test_watch_cut_without_close_resumes_without_disconnecting(world: World, fedproxy_logs) -> None:
    proxy = await world.start(world.yaml(grace=GRACE))
    fleet = world.fleet
    assert world.server("east").cut_watches() > 0
    added = await fleet.add_pod("east")
    await eventually(lambda: added in proxy.pool_addresses("east"), what="change after a cut")
    for _ in range(3):
        assert world.server("east").cut_watches() >= 0
        gone = sorted(fleet.members["east"].web_pods)[0]
        await fleet.remove_pod("east", gone)
        await eventually(lambda g=gone: g not in proxy.pool_addresses("east"), what="delete after a cut")
        await fleet.add_pod("east")
    await asyncio.sleep(GRACE)
    assert proxy.connected("east") and proxy.connected("west")
    assert proxy.pool_addresses("east") == set(fleet.members["east"].web_pods)
    assert "event=member_disconnected" not in fedproxy_logs.text()
    assert await proxy.metric("fedproxy_discovery_connected", cluster="east") == 1


async def test_410_gone_relists_without_stale_objects(world: World, fedproxy_logs) -> None:
    proxy = await world.start(world.yaml(grace=GRACE))
    fleet = world.fleet
    server = world.server("east")
    await server.kill()
    gone = sorted(fleet.members["east"].web_pods)[0]
    await fleet.remove_pod("east", gone)
    added = await fleet.add_pod("east")
    server.expire_resource_versions()  # the watches' resourceVersion is now compacted away
    await server.restart()
    await eventually(
        lambda: proxy.pool_addresses("east") == set(fleet.members["east"].web_pods), what="relisted after 410"
    )
    assert gone not in proxy.pool_addresses("east") and added in proxy.pool_addresses("east")
    assert "reason=410" in fedproxy_logs.text()
    assert await proxy.metric("fedproxy_discovery_resyncs_total", cluster="east", reason="expired") > 0
    # Short outage (well inside the grace period): never disconnected.
    assert "event=member_disconnected" not in fedproxy_logs.text()


def _kubeconfig_with_ca(servers: list[FakeApiServer], ca_pem: bytes) -> dict:
    doc = kubeconfig_dict(servers)
    for c in doc["clusters"]:
        c["cluster"]["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    return doc


async def test_tls_ca_mismatch_member_never_trusted_then_fixed_by_reload(world: World, fedproxy_logs) -> None:
    """A TLS member whose kubeconfig trusts the wrong CA: disconnected after the grace period, the others serve;
    a reload with the right CA brings it in with a full sync."""
    south = FakeApiServer("south", tls=True, bookmark_interval=0.2)
    await south.start()
    try:
        south.apply_all(world.fleet.base_objects("east"))
        wrong = world.tmp_path / "kubeconfig-south-wrong"
        wrong.write_text(yaml.safe_dump(_kubeconfig_with_ca([south], CertificateAuthority("mallory").cert_pem)))
        right = world.tmp_path / "kubeconfig-south-right"
        right.write_text(yaml.safe_dump(kubeconfig_dict([south])))

        def with_south(path: str) -> str:
            extra = f"""
  - name: south
    kubeconfig: {path}
    context: south
    region: r3"""
            return world.yaml(grace=GRACE).replace("\ndiscovery:", extra + "\ndiscovery:", 1)

        proxy = await world.start(with_south(str(wrong)))
        await eventually(lambda: "south" in proxy.runtime.snapshots, what="south known")
        await eventually(
            lambda: not proxy.runtime.snapshots["south"].connected, timeout=GRACE + 8, what="south disconnected"
        )
        assert not proxy.runtime.snapshots["south"].synced
        assert "south" not in proxy.pool_clusters()
        status = proxy.runtime.discovery.status()["south"]
        assert "certificate" in status["last_error"].lower() or "ssl" in status["last_error"].lower()
        assert await proxy.metric("fedproxy_discovery_errors_total", cluster="south") > 0
        assert await proxy.metric("fedproxy_discovery_connected", cluster="south") == 0
        assert "event=member_disconnected cluster=south" in fedproxy_logs.text()
        assert proxy.connected("east") and proxy.connected("west")
        assert (await proxy.get())[0] == 200

        result = await proxy.runtime.reload(with_south(str(right)))
        assert result.ok, result.problems
        await eventually(
            lambda: (s := proxy.runtime.snapshots.get("south")) is not None and s.synced and s.connected,
            what="south synced after the fix",
        )
        assert await proxy.metric("fedproxy_discovery_connected", cluster="south") == 1
    finally:
        await south.stop()
