"""A small federation as a Catalog, built directly (the catalog has its own tests in tests/test_catalog.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import pytest

from fedproxy.catalog import Catalog, CatalogService, ClusterInfo, ClusterService, Pod
from fedproxy.model import Locality, Service, ServiceKey, ServicePort

KEY = ServiceKey("demo", "web")

# name -> (region, zone): east-1 is local; east-1b shares its zone; east-2 its region; west-1 is remote.
LOCALITY = {
    "east-1": ("us-east", "a"),
    "east-1b": ("us-east", "a"),
    "east-2": ("us-east", "b"),
    "west-1": ("us-west", "a"),
}

MakeCatalog = Callable[..., Catalog]


def make_catalog(
    pods: Mapping[str, int],
    weights: Mapping[str, int] | None = None,
    capacity: Mapping[str, int] | None = None,
    connected: Mapping[str, bool] | None = None,
    local: str = "east-1",
) -> Catalog:
    """Members named in ``pods`` each serving demo/web with that many ready pods on port 8080."""
    clusters: dict[str, ClusterInfo] = {}
    sides: dict[str, ClusterService] = {}
    svc = Service("demo", "web", ports=(ServicePort("http", 80, target_port=8080),))
    for n, (name, count) in enumerate(sorted(pods.items())):
        region, zone = LOCALITY.get(name, ("elsewhere", name))
        clusters[name] = ClusterInfo(
            name,
            Locality(region, zone),
            connected=(connected or {}).get(name, True),
            local=name == local,
            weight=(weights or {}).get(name, 1),
            pods_reachable=True,
            capacity=(capacity or {}).get(name),
        )
        pod_list = tuple(
            Pod(f"10.{n}.{i // 250}.{i % 250 + 1}", MappingProxyType({"http": 8080})) for i in range(count)
        )
        sides[name] = ClusterService(name, svc, pods=pod_list)
    return Catalog(
        1, MappingProxyType(clusters), MappingProxyType({KEY: CatalogService(KEY, clusters=sides)}), local=local
    )


@pytest.fixture
def catalog() -> MakeCatalog:
    return make_catalog
