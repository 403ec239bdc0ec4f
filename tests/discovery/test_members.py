"""Members come and go: config reloads, the Karmada source, and every way of authenticating."""

from __future__ import annotations

from pathlib import Path

from fedproxy.config import ClusterConfig, KarmadaConfig
from fedproxy.discovery import Credentials, make_client
from fedproxy.model import Locality
from fedproxy.sim import objects
from fedproxy.sim.kubeconfig import write_kubeconfig

from .conftest import cluster_config, config_with, eventually, member_objects


async def test_update_adds_removes_and_restarts_members(tmp_path: Path, servers, run_discovery) -> None:
    east, west = servers("east"), servers("west")
    for s in (east, west):
        await s.start()
        s.apply_all(member_objects())
    east_cfg, west_cfg = cluster_config(tmp_path, east), cluster_config(tmp_path, west)
    discovery, rec = await run_discovery(config_with(east_cfg))
    await eventually(lambda: set(rec.latest) == {"east"} and rec.snap("east").synced, what="east")

    await discovery.update(config_with(east_cfg, west_cfg))
    await eventually(lambda: set(rec.latest) == {"east", "west"} and rec.snap("west").synced, what="west added")

    # Changed connection settings restart the member: here "east" moved to another API server, and
    # nothing of the old one survives.
    east2 = servers("east")
    await east2.start()
    east2.apply(objects.service("demo", "moved", cluster_ip="127.1.1.7", ports=[{"port": 80}]))
    moved = write_kubeconfig(tmp_path / "moved", [east2])
    east_moved = ClusterConfig(name="east", kubeconfig=str(moved), context="east", region="r1")
    await discovery.update(config_with(east_moved, west_cfg))
    await eventually(
        lambda: rec.snap("east").synced and set(rec.snap("east").services) == {("demo", "moved")}, what="restart"
    )
    assert rec.snap("east").locality == Locality("r1", "")
    assert not rec.snap("east").endpointslices

    await discovery.update(config_with(west_cfg))
    await eventually(lambda: set(rec.latest) == {"west"}, what="east removed")
    assert set(discovery.snapshots()) == {"west"} and set(discovery.status()) == {"west"}
    # The remaining member is untouched and still watched.
    west.apply(objects.service("demo", "new", cluster_ip="127.1.1.5", ports=[{"port": 80}]))
    await eventually(lambda: ("demo", "new") in rec.snap("west").services, what="west still watched")


async def test_tls_with_client_certificate(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east", client_cert_auth=True)
    await east.start()
    east.apply_all(member_objects())
    path = write_kubeconfig(tmp_path / "kc", [east], client_certs={"east": east.issue_client_cert("fedproxy")})
    config = config_with(ClusterConfig(name="east", kubeconfig=str(path), context="east"))
    discovery, rec = await run_discovery(config)
    await eventually(lambda: rec.snap("east") is not None and rec.snap("east").synced, what="synced over mTLS")
    assert discovery.status()["east"]["host"].startswith("https://")


async def test_direct_credentials_token_and_ca(servers) -> None:
    east = servers("east", tls=True)
    await east.start()
    good = await make_client(Credentials(server=east.url, token=east.token, ca_data=east.ca_pem))
    try:
        from kubernetes_asyncio import client

        nodes = await client.CoreV1Api(good.api).list_node()
        assert nodes.items == []
    finally:
        await good.close()
    wrong_ca = await make_client(Credentials(server=east.url, token=east.token))  # system trust store
    try:
        from kubernetes_asyncio import client

        try:
            await client.CoreV1Api(wrong_ca.api).list_node()
        except Exception as exc:  # the emulator's CA is not trusted: verification stays on
            assert "certificate" in str(exc).lower() or "ssl" in type(exc).__name__.lower()
        else:
            raise AssertionError("an untrusted server certificate was accepted")
    finally:
        await wrong_ca.close()


async def test_bad_kubeconfig_does_not_block_other_members(tmp_path: Path, servers, run_discovery) -> None:
    west = servers("west")
    await west.start()
    west.apply_all(member_objects())
    broken = ClusterConfig(name="east", kubeconfig=str(tmp_path / "missing"), context="east")
    discovery, rec = await run_discovery(config_with(broken, cluster_config(tmp_path, west)))
    await eventually(lambda: rec.snap("west") is not None and rec.snap("west").synced, what="west synced")
    await eventually(lambda: not rec.snap("east").connected, 3.0, "broken member disconnected")
    assert "client setup" in discovery.status()["east"]["last_error"]


async def test_karmada_members_come_and_go(tmp_path: Path, servers, run_discovery) -> None:
    karmada = servers("karmada")
    east, west, south = servers("east", tls=True), servers("west"), servers("south")
    for s in (karmada, east, west, south):
        await s.start()
    for s in (east, west, south):
        s.apply_all(member_objects())

    def register(member, region: str, zone: str, ready: bool = True) -> None:
        data = {"token": member.token.encode()}
        if member.ca_pem:
            data["caBundle"] = member.ca_pem
        karmada.apply(objects.secret("karmada-cluster", f"{member.name}-secret", data))
        karmada.apply(
            objects.karmada_cluster(
                member.name, member.url, "karmada-cluster", f"{member.name}-secret", region, zone, ready=ready
            )
        )

    register(east, "eu", "eu-1")
    register(west, "us", "us-1")
    path = write_kubeconfig(tmp_path / "karmada", [karmada])
    # A config entry without connection settings only tunes a discovered member.
    config = config_with(
        ClusterConfig(name="east", weight=3), karmada=KarmadaConfig(kubeconfig=str(path), context="karmada")
    )
    discovery, rec = await run_discovery(config)
    await eventually(
        lambda: set(rec.latest) == {"east", "west"} and all(s.synced for s in rec.latest.values()), what="members"
    )
    assert rec.snap("east").locality == Locality("eu", "eu-1")
    assert discovery.status()["east"]["source"] == "karmada"
    assert ("demo", "web") in rec.snap("east").services  # reached over TLS with the Secret's caBundle

    register(south, "ap", "ap-1")
    await eventually(lambda: "south" in rec.latest and rec.snap("south").synced, what="south added")

    karmada.delete("clusters", "", "west")
    await eventually(lambda: set(rec.latest) == {"east", "south"}, what="west removed")

    karmada.patch(
        "clusters", "", "east", {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "x"}]}}
    )
    await eventually(lambda: not rec.snap("east").connected, what="east not ready")
    assert rec.snap("south").connected
    register(east, "eu", "eu-2")
    await eventually(lambda: rec.snap("east").connected and rec.snap("east").locality.zone == "eu-2", what="ready")

    # Karmada itself goes away: members keep being watched with what is known.
    await karmada.kill()
    south.apply(objects.service("demo", "late", cluster_ip="127.1.1.6", ports=[{"port": 80}]))
    await eventually(lambda: ("demo", "late") in rec.snap("south").services, what="south still watched")

    # Dropping karmada from the config drops its members.
    await discovery.update(config_with())
    await eventually(lambda: not rec.latest, what="karmada members dropped")
