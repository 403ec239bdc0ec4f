"""The emulated API server through the real kubernetes-asyncio client: lists, watches, selectors, writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer


async def collect(stream: watch.Watch, n: int | None = None) -> list[dict[str, Any]]:
    """Events until the stream ends (timeout_seconds) or `n` have arrived."""
    events = []
    async with stream:
        async for ev in stream:
            events.append(ev)
            if n is not None and len(events) == n:
                break
    return events


async def test_discovery_documents(api: FakeApiServer, kube: client.ApiClient, demo: list[dict]) -> None:
    version = await client.VersionApi(kube).get_code()
    assert version.major == "1"
    groups = await client.ApisApi(kube).get_api_versions()
    names = {g.name for g in groups.groups}
    assert {"discovery.k8s.io", "multicluster.x-k8s.io", "cluster.karmada.io"} <= names
    core = await client.CoreV1Api(kube).get_api_resources()
    assert {"services", "nodes", "secrets", "configmaps"} <= {r.name for r in core.resources}


async def test_lists_with_real_client(api: FakeApiServer, kube: client.ApiClient, demo: list[dict]) -> None:
    api.apply_all(demo)
    core = client.CoreV1Api(kube)
    services = await core.list_service_for_all_namespaces()
    assert [s.metadata.name for s in services.items] == ["echo", "nginx", "db"]
    assert services.metadata.resource_version == str(api.store.resource_version)
    nginx = await core.read_namespaced_service("nginx", "demo")
    assert nginx.spec.ports[0].node_port == 30080 and nginx.spec.cluster_ip == "127.1.1.1"
    slices = await client.DiscoveryV1Api(kube).list_endpoint_slice_for_all_namespaces()
    ep = slices.items[0].endpoints[0]
    assert ep.addresses == ["127.0.1.1"] and ep.conditions.ready is True
    assert slices.items[0].metadata.labels["kubernetes.io/service-name"] == "nginx"
    exports = await client.CustomObjectsApi(kube).list_cluster_custom_object(
        "multicluster.x-k8s.io", "v1alpha1", "serviceexports"
    )
    assert exports["kind"] == "ServiceExportList"
    assert [(e["kind"], e["metadata"]["name"]) for e in exports["items"]] == [("ServiceExport", "nginx")]


async def test_selectors_filter_lists(api: FakeApiServer, kube: client.ApiClient, demo: list[dict]) -> None:
    api.apply_all(demo)
    core = client.CoreV1Api(kube)
    by_label = await core.list_service_for_all_namespaces(label_selector="app in (nginx,db),tier!=db")
    assert sorted(s.metadata.name for s in by_label.items) == ["db", "nginx"]
    by_field = await core.list_service_for_all_namespaces(field_selector="metadata.namespace!=demo")
    assert [s.metadata.name for s in by_field.items] == ["db"]
    namespaced = await core.list_namespaced_service("demo", label_selector="!tier")
    assert [s.metadata.name for s in namespaced.items] == ["echo"]
    with pytest.raises(ApiException) as err:
        await core.list_service_for_all_namespaces(label_selector="app in nginx")
    assert err.value.status == 400


async def test_missing_object_is_404_status(api: FakeApiServer, kube: client.ApiClient, demo: list[dict]) -> None:
    with pytest.raises(ApiException) as err:
        await client.CoreV1Api(kube).read_namespaced_service("nope", "demo")
    assert err.value.status == 404
    assert '"reason":"NotFound"' in err.value.body.replace(" ", "")


async def test_configmap_writes(api: FakeApiServer, kube: client.ApiClient, demo: list[dict]) -> None:
    core = client.CoreV1Api(kube)
    cm = objects.configmap("fedproxy", "overrides", {"drain": "east-2"})
    created = await core.create_namespaced_config_map("fedproxy", cm)
    assert created.metadata.resource_version == "1"
    created.data["weights"] = "west-1=50"
    replaced = await core.replace_namespaced_config_map("overrides", "fedproxy", created)
    assert replaced.data == {"drain": "east-2", "weights": "west-1=50"}
    with pytest.raises(ApiException) as err:  # stale resourceVersion
        await core.replace_namespaced_config_map("overrides", "fedproxy", created)
    assert err.value.status == 409
    patched = await core.patch_namespaced_config_map("overrides", "fedproxy", {"data": {"drain": None}})
    assert patched.data == {"weights": "west-1=50"}
    await core.delete_namespaced_config_map("overrides", "fedproxy")
    assert api.list("configmaps") == []


async def test_watch_streams_changes_and_resumes(api: FakeApiServer, kube: client.ApiClient, demo: list[dict]) -> None:
    api.apply_all(demo)
    core = client.CoreV1Api(kube)
    listed = await core.list_namespaced_service("demo")
    rv = listed.metadata.resource_version

    async def mutate() -> None:
        await asyncio.sleep(0.05)
        api.patch("svc", "demo", "nginx", {"metadata": {"labels": {"v": "2"}}})
        api.apply(objects.service("demo", "new", cluster_ip="127.1.1.9"))
        api.apply(objects.service("other", "ignored"))  # other namespace
        api.delete("svc", "demo", "echo")

    task = asyncio.create_task(mutate())
    w = watch.Watch()
    events = await collect(w.stream(core.list_namespaced_service, "demo", resource_version=rv, timeout_seconds=5), 3)
    await task
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("MODIFIED", "nginx"),
        ("ADDED", "new"),
        ("DELETED", "echo"),
    ]
    # Resume from the middle: only what came after is replayed.
    mid = events[0]["object"].metadata.resource_version
    replay = await collect(
        watch.Watch().stream(core.list_namespaced_service, "demo", resource_version=mid, timeout_seconds=0.3)
    )
    assert [e["type"] for e in replay] == ["ADDED", "DELETED"]


async def test_watch_from_zero_starts_with_current_state(
    api: FakeApiServer, kube: client.ApiClient, demo: list[dict]
) -> None:
    api.apply_all(demo)
    events = await collect(
        watch.Watch().stream(
            client.DiscoveryV1Api(kube).list_endpoint_slice_for_all_namespaces,
            resource_version="0",
            timeout_seconds=0.3,
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "nginx-abc")]
    assert events[0]["raw_object"]["kind"] == "EndpointSlice"


async def test_watch_selector_transitions(api: FakeApiServer, kube: client.ApiClient, demo: list[dict]) -> None:
    api.apply_all(demo)
    core = client.CoreV1Api(kube)
    rv = str(api.store.resource_version)

    async def relabel() -> None:
        await asyncio.sleep(0.05)
        api.patch("svc", "demo", "nginx", {"metadata": {"labels": {"tier": "db"}}})
        api.patch("svc", "demo", "echo", {"metadata": {"labels": {"tier": "web"}}})

    task = asyncio.create_task(relabel())
    events = await collect(
        watch.Watch().stream(
            core.list_service_for_all_namespaces, label_selector="tier=web", resource_version=rv, timeout_seconds=5
        ),
        2,
    )
    await task
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("DELETED", "nginx"), ("ADDED", "echo")]


async def test_watch_custom_objects_and_field_selector(
    api: FakeApiServer, kube: client.ApiClient, demo: list[dict]
) -> None:
    api.apply_all(demo)
    custom = client.CustomObjectsApi(kube)
    rv = str(api.store.resource_version)

    async def export() -> None:
        await asyncio.sleep(0.05)
        api.apply(objects.service_export("demo", "skipped"))
        api.apply(objects.service_export("demo", "echo"))

    task = asyncio.create_task(export())
    events = await collect(
        watch.Watch().stream(
            custom.list_cluster_custom_object,
            "multicluster.x-k8s.io",
            "v1alpha1",
            "serviceexports",
            resource_version=rv,
            field_selector="metadata.name=echo",
            timeout_seconds=5,
        ),
        1,
    )
    await task
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "echo"


async def test_bookmarks(api: FakeApiServer, kube: client.ApiClient, demo: list[dict]) -> None:
    api.apply_all(demo)
    rv = str(api.store.resource_version)
    events = await collect(
        watch.Watch().stream(
            client.CoreV1Api(kube).list_node,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=0.5,
        )
    )
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["raw_object"] == {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": rv}}


async def test_expired_resource_version_is_410(api: FakeApiServer, kube: client.ApiClient, demo: list[dict]) -> None:
    api.apply_all(demo)
    api.expire_resource_versions()
    core = client.CoreV1Api(kube)
    # With timeout_seconds the Watch does not retry: the ERROR event surfaces as ApiException(410).
    with pytest.raises(ApiException) as err:
        await collect(
            watch.Watch().stream(core.list_service_for_all_namespaces, resource_version="1", timeout_seconds=5)
        )
    assert err.value.status == 410
    assert "too old resource version: 1" in err.value.reason
    # On the wire: HTTP 200 and one ERROR event carrying the Status, then the stream ends.
    resp = await core.list_service_for_all_namespaces(watch=True, resource_version="1", _preload_content=False)
    assert resp.status == 200
    body = await resp.read()
    resp.release()
    assert body.count(b"\n") == 1 and b'"type":"ERROR"' in body and b'"code":410' in body
