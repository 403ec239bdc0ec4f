"""Object changes in a member reach on_change: list, then watch events (create, modify, delete)."""

from __future__ import annotations

from pathlib import Path

from fedproxy.catalog import build_catalog
from fedproxy.config import ClustersetConfig, ExportConfig
from fedproxy.model import ServiceKey
from fedproxy.sim import objects

from .conftest import cluster_config, config_with, eventually, member_objects


def pod_addresses(recorder, config, cluster: str = "east") -> set[str]:
    catalog = build_catalog(recorder.latest.values(), config)
    svc = catalog.services.get(ServiceKey("demo", "web"))
    if svc is None:
        return set()
    cs = svc.clusters.get(cluster)
    return set() if cs is None else {p.address for p in cs.pods if p.ready}


async def test_initial_list_and_endpoint_changes(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    config = config_with(cluster_config(tmp_path, east))
    discovery, rec = await run_discovery(config)

    await eventually(lambda: rec.snap("east") is not None and rec.snap("east").synced, what="initial sync")
    snap = rec.snap("east")
    assert snap.connected
    assert ("demo", "web") in snap.services and "node-1" in snap.nodes
    assert pod_addresses(rec, config) == {"127.0.1.1"}

    # add a pod endpoint
    east.apply(
        objects.endpoint_slice(
            "demo",
            "web-1",
            "web",
            ports=[{"name": "http", "port": 8080}],
            endpoints=[objects.endpoint(["127.0.1.1"]), objects.endpoint(["127.0.1.2"])],
        )
    )
    await eventually(lambda: pod_addresses(rec, config) == {"127.0.1.1", "127.0.1.2"}, 1.0, "new pod")
    # mark one not ready
    east.apply(
        objects.endpoint_slice(
            "demo",
            "web-1",
            "web",
            ports=[{"name": "http", "port": 8080}],
            endpoints=[objects.endpoint(["127.0.1.1"], ready=False), objects.endpoint(["127.0.1.2"])],
        )
    )
    await eventually(lambda: pod_addresses(rec, config) == {"127.0.1.2"}, 1.0, "pod not ready")
    # delete the slice
    east.delete("endpointslices", "demo", "web-1")
    await eventually(lambda: not rec.snap("east").endpointslices, 1.0, "slice deleted")
    assert pod_addresses(rec, config) == set()
    assert discovery.status()["east"]["synced"]


async def test_member_without_mcs_crds_exports_by_label(tmp_path: Path, servers, run_discovery) -> None:
    """No ServiceExport/ServiceImport CRDs (404): those kinds are simply empty, and label export still works."""
    east = servers("east", crds=False)
    await east.start()
    east.apply(
        objects.service(
            "demo", "web", cluster_ip="127.1.1.1", ports=[{"name": "http", "port": 80}], labels={"app": "web"}
        )
    )
    east.apply(objects.service("demo", "other", cluster_ip="127.1.1.2", ports=[{"port": 80}]))
    east.apply(member_objects()[1])  # the slice of demo/web
    export = ClustersetConfig(export=ExportConfig(mode="label", selector="app=web"))
    config = config_with(cluster_config(tmp_path, east), clusterset=export)
    discovery, rec = await run_discovery(config)

    await eventually(lambda: rec.snap("east") is not None and rec.snap("east").synced, what="synced without CRDs")
    snap = rec.snap("east")
    assert snap.connected and not snap.error
    assert not snap.serviceexports and not snap.serviceimports
    status = discovery.status()["east"]
    assert status["errors"] == 0 and status["last_error"] == ""
    assert status["last_event_age"] is not None  # the initial list counts as hearing from the member
    assert {k for k, v in status["kinds"].items() if v["absent"]} == {"serviceexports", "serviceimports"}
    catalog = build_catalog(rec.latest.values(), config)
    assert set(catalog.services) == {ServiceKey("demo", "web")}
    assert pod_addresses(rec, config) == {"127.0.1.1"}
    # The other kinds keep being watched.
    east.apply(objects.service("demo", "api", cluster_ip="127.1.1.3", ports=[{"port": 80}], labels={"app": "web"}))
    await eventually(
        lambda: ServiceKey("demo", "api") in build_catalog(rec.latest.values(), config).services, what="new export"
    )
