"""Object changes in a member reach on_change: list, then watch events (create, modify, delete)."""

from __future__ import annotations

from pathlib import Path

from fedproxy.catalog import build_catalog
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
