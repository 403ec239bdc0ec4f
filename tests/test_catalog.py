"""Catalog from realistic snapshots: fixtures are Kubernetes API list responses (tests/fixtures/k8s/*.json)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedproxy.backends import cluster_backends, select_port
from fedproxy.catalog import Catalog, CatalogMemo, build_catalog
from fedproxy.config import ClusterConfig, ClustersetConfig, Config, ExportConfig
from fedproxy.model import (
    OBJECT_KINDS,
    ClusterSnapshot,
    Endpoint,
    EndpointSlice,
    Locality,
    Node,
    Service,
    ServiceExport,
    ServiceImport,
    ServiceKey,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)
from fedproxy.resources import parse

FIXTURES = Path(__file__).parent / "fixtures" / "k8s"
WEB, DB = ServiceKey("demo", "web"), ServiceKey("demo", "db")
CONFIG = Config(
    clusters=(
        ClusterConfig("east-1", kubeconfig="k", region="us-east", zone="a", local=True),
        ClusterConfig("west-1", kubeconfig="k", region="us-west", weight=3, capacity=50),
        ClusterConfig("odd-1", kubeconfig="k"),
    )
)


def snapshot(name: str, **kw) -> ClusterSnapshot:
    """Parse a fixture as discovery does: each object on its own, bad ones skipped (and reported here)."""
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    snap = ClusterSnapshot(name, **kw)
    for kind in OBJECT_KINDS:
        objects = {}
        for obj in data[kind]["items"]:
            key, value = parse(kind, obj)
            objects[key] = value
        snap = snap.with_objects(kind, objects)
    return snap


@pytest.fixture(scope="module")
def catalog():
    return build_catalog([snapshot("east-1"), snapshot("west-1"), snapshot("odd-1")], CONFIG, version=7)


def test_clusters_carry_config_and_discovery_state(catalog):
    assert catalog.version == 7 and catalog.local == "east-1"
    east, west, odd = (catalog.clusters[n] for n in ("east-1", "west-1", "odd-1"))
    assert east.local and east.pods_reachable and east.locality == Locality("us-east", "a")
    assert (west.weight, west.capacity, west.pods_reachable) == (3, 50, False)
    assert (odd.weight, odd.local) == (1, False)


def test_only_exported_services_are_in_the_catalog(catalog):
    assert ServiceKey("demo", "internal") not in catalog.services
    assert set(catalog.services) >= {WEB, DB}


def test_pods_merge_across_slices_and_keep_conditions(catalog):
    side = catalog.services[WEB].clusters["east-1"]
    pods = {p.address: p for p in side.pods}
    assert list(pods) == ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "fd00::1"]  # IPv4 first, numeric order
    assert pods["10.1.0.1"].hostname == "web-0" and pods["10.1.0.4"].zone == "b"
    assert not pods["10.1.0.2"].ready and pods["10.1.0.3"].terminating and pods["10.1.0.3"].serving
    assert [p.address for p in side.ready_pods] == ["10.1.0.1", "10.1.0.4", "fd00::1"]
    assert side.node_addresses == ("192.168.1.1",)  # n2 is not Ready


def test_mcs_port_conflict_oldest_export_wins_and_is_reported(catalog):
    web = catalog.services[WEB]
    ports = {p.name: p.port for p in web.ports}
    assert ports == {"http": 80, "metrics": 9090}  # union by name; east (older) keeps http's definition
    assert any("port http" in c and "west-1" in c for c in web.conflicts)
    assert set(web.clusters) == {"east-1", "west-1", "odd-1"} and web.clusterset_ips == ("10.200.0.1",)


def test_mcs_type_conflict_leaves_the_newer_member_out(catalog):
    db = catalog.services[DB]
    assert not db.headless and set(db.clusters) == {"east-1"}
    assert db.excluded["west-1"].startswith("type conflict: Headless")
    assert any(c.startswith("type:") for c in db.conflicts)


def test_invalid_export_and_externalname_are_excluded(catalog):
    ext = catalog.services[ServiceKey("demo", "ext")]
    assert not ext.clusters and "not valid" in ext.excluded["odd-1"]


def backends(catalog, key, cluster, port, choice):
    return cluster_backends(catalog.services[key].clusters[cluster], catalog.clusters[cluster], port, choice)


def test_every_backend_kind(catalog):
    pod = backends(catalog, WEB, "east-1", "http", "pod")
    assert [str(e) for e in pod.endpoints] == ["east-1/10.1.0.1:8080", "east-1/10.1.0.4:8080", "east-1/[fd00::1]:8080"]
    assert backends(catalog, WEB, "east-1", None, "auto").kind == "pod"  # local member: pods reachable
    assert backends(catalog, WEB, "east-1", 80, "clusterip").endpoints == (
        Endpoint("east-1", "10.96.0.10", 80, "clusterip"),
    )
    assert backends(catalog, WEB, "east-1", "http", "nodeport").reason == "service has no nodePort"
    assert backends(catalog, WEB, "east-1", "http", "loadbalancer").reason == "no LoadBalancer ingress IP"
    auto = backends(catalog, WEB, "west-1", "http", "auto")  # remote: LoadBalancer first (hostname ignored)
    assert auto.kind == "loadbalancer" and auto.endpoints == (Endpoint("west-1", "172.18.0.10", 8080, "loadbalancer"),)
    nodeport = backends(catalog, WEB, "west-1", "metrics", "nodeport")
    assert nodeport.endpoints == (Endpoint("west-1", "192.168.2.1", 30090, "nodeport"),)
    assert [e.port for e in backends(catalog, WEB, "west-1", "metrics", "pod").endpoints] == [9090, 9090]
    headless = backends(catalog, WEB, "west-1", "http", "clusterip")
    assert headless.endpoints == (Endpoint("west-1", "10.97.0.10", 8080, "clusterip"),)
    # A member whose pods are not reachable and that has neither a LoadBalancer IP nor a NodePort.
    odd_v6 = backends(catalog, ServiceKey("demo", "v6"), "odd-1", None, "auto")
    assert odd_v6.kind is None and "pods not reachable" in odd_v6.reason
    np = backends(catalog, ServiceKey("demo", "np"), "odd-1", "http", "auto")
    assert np.kind == "nodeport" and np.endpoints == (Endpoint("odd-1", "fd00:1::1", 30081, "nodeport"),)


def test_odd_objects_never_break_the_catalog(catalog):
    web = catalog.services[WEB]
    odd_web = web.clusters.get("odd-1")
    # odd-1's web has no ports, FQDN and unknown address types: it serves nothing but the others are intact.
    assert odd_web is not None and odd_web.pods == ()
    assert "no port" in backends(catalog, WEB, "odd-1", "http", "pod").reason
    assert select_port(odd_web.service, None) is None
    v6 = catalog.services[ServiceKey("demo", "v6")].clusters["odd-1"]
    assert [p.address for p in v6.pods] == ["fd00::2"]  # the address-less endpoint is dropped
    assert backends(catalog, ServiceKey("demo", "v6"), "odd-1", None, "pod").endpoints == (
        Endpoint("odd-1", "fd00::2", 8080, "pod"),
    )
    # A slice port without a number: the pod port falls back to the service's numeric targetPort.
    assert backends(catalog, ServiceKey("demo", "np"), "odd-1", "http", "pod").endpoints[0].port == 8080
    assert backends(catalog, ServiceKey("demo", "v6"), "odd-1", None, "clusterip").endpoints[0].address == "fd00:96::10"


@pytest.mark.parametrize(
    "obj",
    [
        {"metadata": {}},
        {"metadata": {"name": "x"}, "spec": {"ports": [{"port": 0}]}},
        {"metadata": {"name": "x"}, "spec": []},
        [],
    ],
)
def test_unusable_api_objects_are_rejected_with_a_value_error(obj):
    with pytest.raises(ValueError):
        parse("services", obj)


def test_disconnected_member_stays_in_the_catalog_marked(catalog):
    cat = build_catalog([snapshot("east-1"), snapshot("west-1", connected=False, error="watch lost")], CONFIG)
    assert not cat.connected("west-1") and cat.clusters["west-1"].error == "watch lost"
    assert "west-1" in cat.services[WEB].clusters  # pools and DNS decide what disconnected means


def test_label_export_mode_exports_matching_services_without_serviceexports():
    config = Config(clusterset=ClustersetConfig(export=ExportConfig(mode="label", selector="app=web")))
    snap = snapshot("east-1").with_objects("serviceexports", MappingProxyType({}))
    svc = snap.services[("demo", "web")]
    labelled = snap.with_object("services", ("demo", "web"), type(svc)(**{**_fields(svc), "labels": {"app": "web"}}))
    cat = build_catalog([labelled], config)
    assert set(cat.services) == {WEB} and cat.services[WEB].clusters["east-1"].export is None
    assert cat.local == ""


def _fields(obj) -> dict:
    return {f: getattr(obj, f) for f in obj.__slots__}


def test_empty_and_unsynced_inputs():
    cat = build_catalog([], CONFIG)
    assert cat.services == {} and cat.local == "east-1"
    cat = build_catalog([ClusterSnapshot("east-1", synced=False)], CONFIG)
    assert not cat.clusters["east-1"].synced and cat.services == {}


# -- pod ports (review fix) -------------------------------------------------------------------------------------


def _two_port_catalog(slice_ports: tuple[SlicePort, ...]) -> Catalog:
    svc = Service(
        "demo",
        "app",
        cluster_ips=("10.96.0.9",),
        ports=(ServicePort("http", 80, target_port=8080), ServicePort("metrics", 9090, target_port=9090)),
    )
    sl = EndpointSlice("demo", "app-1", "app", ports=slice_ports, endpoints=(SliceEndpoint(("10.1.0.9",)),))
    snap = ClusterSnapshot(
        "east-1",
        services={("demo", "app"): svc},
        endpointslices={("demo", "app-1"): sl},
        serviceexports={("demo", "app"): ServiceExport("demo", "app")},
    )
    return build_catalog([snap], CONFIG)


def test_a_pod_listed_only_with_another_port_name_gets_no_traffic_for_this_port():
    cat = _two_port_catalog((SlicePort("metrics", 9090),))
    app = ServiceKey("demo", "app")
    assert backends(cat, app, "east-1", "metrics", "pod").endpoints == (Endpoint("east-1", "10.1.0.9", 9090, "pod"),)
    http = backends(cat, app, "east-1", "http", "pod")
    assert http.endpoints == () and http.reason == "no ready pod endpoints"  # was 10.1.0.9:9090 (kube-proxy skips)
    both = _two_port_catalog((SlicePort("metrics", 9090), SlicePort("http", 8081)))
    assert backends(both, app, "east-1", "http", "pod").endpoints[0].port == 8081


def test_a_lone_unnamed_slice_port_serves_a_single_port_service(catalog):
    # odd-1's v6: unnamed service port, slice port named "http" (kept); a lone unnamed slice port likewise.
    assert backends(catalog, ServiceKey("demo", "v6"), "odd-1", None, "pod").endpoints[0].port == 8080
    svc = Service("demo", "one", cluster_ips=("10.96.0.8",), ports=(ServicePort("web", 80, target_port=8080),))
    sl = EndpointSlice("demo", "one-1", "one", ports=(SlicePort("", 8082),), endpoints=(SliceEndpoint(("10.1.0.8",)),))
    snap = ClusterSnapshot(
        "east-1",
        services={("demo", "one"): svc},
        endpointslices={("demo", "one-1"): sl},
        serviceexports={("demo", "one"): ServiceExport("demo", "one")},
    )
    cat = build_catalog([snap], CONFIG)
    assert backends(cat, ServiceKey("demo", "one"), "east-1", "web", "pod").endpoints[0].port == 8082


# -- memoized builds (issue 9) ----------------------------------------------------------------------------------

MEMBERS = ("east-1", "west-1", "odd-1")
NAMES = ("a", "b", "c", "d")
ADDRESSES = ("10.1.0.1", "10.1.0.2", "10.1.0.10", "10.2.0.1", "fd00::1", "fd00::a")
LABEL_CONFIG = replace(CONFIG, clusterset=ClustersetConfig(export=ExportConfig(mode="label", selector="x=1")))


def _service(name: str, variant: int) -> Service:
    ports = ((ServicePort("http", 80, target_port=8080),), (ServicePort("http", 81), ServicePort("m", 90)))[variant % 2]
    return Service(
        "ns",
        name,
        cluster_ips=() if variant == 2 else ("10.96.0.1",),
        headless=variant == 2,
        ports=ports,
        labels={"x": str(variant % 2)},
        created=f"2024-01-0{variant + 1}T00:00:00Z",
    )


def _slice(name: str, index: int, picks: list[int], ready: bool, port_name: str) -> EndpointSlice:
    eps = tuple(SliceEndpoint((ADDRESSES[i],), ready=ready, terminating=not ready) for i in picks)
    family = "IPv6" if picks and ":" in ADDRESSES[picks[0]] else "IPv4"
    eps = tuple(e for e in eps if (":" in e.addresses[0]) == (family == "IPv6"))
    return EndpointSlice("ns", f"{name}-{index}", name, family, (SlicePort(port_name, 8080 + index),), eps)


_change = st.one_of(
    st.tuples(st.just("service"), st.sampled_from(NAMES), st.sampled_from([0, 1, 2, None])),
    st.tuples(
        st.just("slice"),
        st.sampled_from(NAMES),
        st.integers(0, 2),
        st.lists(st.integers(0, 5), max_size=4),
        st.booleans(),
        st.sampled_from(["http", "m", ""]),
        st.booleans(),
    ),
    st.tuples(st.just("export"), st.sampled_from(NAMES), st.sampled_from([None, True, False])),
    st.tuples(st.just("import"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(st.just("nodes"), st.booleans(), st.sampled_from(["10.0.0.1", "10.0.0.2"])),
    st.tuples(st.just("member"), st.booleans()),
    st.tuples(st.just("config"), st.booleans()),
    st.tuples(st.just("touch")),  # new mapping objects, same values
)


def _apply(snaps: dict[str, ClusterSnapshot], member: str, change: tuple) -> None:
    snap = snaps.get(member) or ClusterSnapshot(member)
    kind = change[0]
    if kind == "service":
        _, name, variant = change
        snap = snap.with_object("services", ("ns", name), None if variant is None else _service(name, variant))
    elif kind == "slice":
        _, name, index, picks, ready, port_name, delete = change
        obj = None if delete else _slice(name, index, picks, ready, port_name)
        snap = snap.with_object("endpointslices", ("ns", f"{name}-{index}"), obj)
    elif kind == "export":
        _, name, valid = change
        obj = (
            None
            if valid is None
            else ServiceExport("ns", name, created="2024-02-01T00:00:00Z", valid=valid, reason="r")
        )
        snap = snap.with_object("serviceexports", ("ns", name), obj)
    elif kind == "import":
        _, name, present = change
        obj = ServiceImport("ns", name, ips=("240.0.0.9",)) if present else None
        snap = snap.with_object("serviceimports", ("ns", name), obj)
    elif kind == "nodes":
        _, ready, address = change
        snap = snap.with_object("nodes", "n1", Node("n1", {"InternalIP": (address,)}, ready=ready))
    elif kind == "member":
        if not change[1]:
            snaps.pop(member, None)
            return
    elif kind == "touch":
        for k in OBJECT_KINDS:
            snap = snap.with_objects(k, getattr(snap, k))
    snaps[member] = snap


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(MEMBERS), _change), min_size=1, max_size=40))
def test_memoized_builds_equal_fresh_builds_across_changes(changes):
    snaps = _populated()
    memo = CatalogMemo()
    config = CONFIG
    build_catalog(snaps.values(), config, memo=memo)
    for member, change in changes:
        if change[0] == "config":
            config = LABEL_CONFIG if change[1] else CONFIG
        else:
            _apply(snaps, member, change)
        fresh = build_catalog(snaps.values(), config, version=3)
        memoized = build_catalog(snaps.values(), config, version=3, memo=memo)
        assert memoized == fresh
        assert list(memoized.services) == list(fresh.services)  # the same (sorted) order


def _populated(members: tuple[str, ...] = MEMBERS) -> dict[str, ClusterSnapshot]:
    """Every member exports every name with one slice of two pods."""
    snaps: dict[str, ClusterSnapshot] = {}
    for m in members:
        for name in NAMES:
            _apply(snaps, m, ("service", name, 0))
            _apply(snaps, m, ("export", name, True))
            _apply(snaps, m, ("slice", name, 0, [0, 1], True, "http", False))
    return snaps


def test_a_slice_change_rebuilds_only_its_service():
    snaps = _populated(MEMBERS[:2])
    memo = CatalogMemo()
    before = build_catalog(snaps.values(), CONFIG, memo=memo)
    _apply(snaps, "west-1", ("slice", "b", 0, [3], True, "http", False))
    after = build_catalog(snaps.values(), CONFIG, version=1, memo=memo)
    key = ServiceKey("ns", "b")
    assert after.services[key] is not before.services[key]
    assert after.services[key].clusters["east-1"] is before.services[key].clusters["east-1"]
    assert [p.address for p in after.services[key].clusters["west-1"].pods] == ["10.2.0.1"]
    assert all(after.services[k] is before.services[k] for k in before.services if k != key)
    # A relist with equal objects (new mapping, same values) rebuilds nothing.
    _apply(snaps, "east-1", ("touch",))
    again = build_catalog(snaps.values(), CONFIG, version=2, memo=memo)
    assert all(again.services[k] is after.services[k] for k in after.services)
