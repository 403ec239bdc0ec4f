"""Secrets in the emulated API server, through the real kubernetes-asyncio client: one named Secret listed and
watched by field selector, writes through the API and the Python handle, and the server's Secret validation."""

from __future__ import annotations

import base64

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer

CRT, KEY = b"-----BEGIN CERTIFICATE-----\nx\n", b"-----BEGIN PRIVATE KEY-----\ny\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_one_secret_by_field_selector_list_and_watch(api: FakeApiServer, kube: client.ApiClient) -> None:
    api.apply(objects.tls_secret("web", "front", CRT, KEY))
    api.apply(objects.tls_secret("web", "other", CRT, KEY))
    api.apply(objects.tls_secret("elsewhere", "front", CRT, KEY))
    core = client.CoreV1Api(kube)
    listed = await core.list_namespaced_secret("web", field_selector="metadata.name=front")
    assert [(s.metadata.namespace, s.metadata.name, s.type) for s in listed.items] == [
        ("web", "front", "kubernetes.io/tls")
    ]
    assert base64.b64decode(listed.items[0].data["tls.crt"]) == CRT
    rv = listed.metadata.resource_version

    # Changes to the other Secrets are not seen by this watch; create/replace/delete of "front" are.
    api.patch("secrets", "web", "other", {"data": {"tls.crt": b64(b"changed")}})
    api.apply(objects.tls_secret("web", "front", CRT + b"2", KEY))
    api.delete("secrets", "web", "front")
    api.apply(objects.tls_secret("web", "front", CRT + b"3", KEY))
    w = watch.Watch()
    seen = []
    async with w:
        async for ev in w.stream(
            core.list_namespaced_secret, "web", field_selector="metadata.name=front", resource_version=rv,
            timeout_seconds=1,
        ):  # fmt: skip
            seen.append((ev["type"], ev["object"].metadata.name, base64.b64decode(ev["object"].data["tls.crt"])))
            if len(seen) == 3:
                break
    assert seen == [("MODIFIED", "front", CRT + b"2"), ("DELETED", "front", CRT + b"2"), ("ADDED", "front", CRT + b"3")]


async def test_secret_writes_through_the_api(api: FakeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    body = objects.tls_secret("web", "front", CRT, KEY)
    created = await core.create_namespaced_secret("web", body)
    assert created.type == "kubernetes.io/tls"
    body["data"]["tls.crt"] = b64(CRT + b"v2")
    replaced = await core.replace_namespaced_secret("front", "web", body)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    assert base64.b64decode(api.get("secrets", "web", "front")["data"]["tls.crt"]) == CRT + b"v2"
    await core.delete_namespaced_secret("front", "web")
    assert api.list("secrets", "web") == []


async def test_secret_validation_matches_the_real_server(api: FakeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    # A kubernetes.io/tls Secret needs both keys; their content is not checked.
    bad = objects.secret("web", "front", {"tls.crt": CRT}, type="kubernetes.io/tls")
    with pytest.raises(ApiException) as err:
        await core.create_namespaced_secret("web", bad)
    assert err.value.status == 422 and "data[tls.key]: Required value" in err.value.body
    api.apply(objects.tls_secret("web", "front", b"garbage", b"garbage"))
    # The type is immutable: turning it Opaque in place is refused (delete + create is the way).
    opaque = objects.secret("web", "front", {"tls.crt": CRT, "tls.key": KEY})
    with pytest.raises(ApiException) as err:
        await core.replace_namespaced_secret("front", "web", opaque)
    assert err.value.status == 422 and "type: Invalid value: field is immutable" in err.value.body
    api.delete("secrets", "web", "front")
    api.apply(opaque)
    assert api.get("secrets", "web", "front")["type"] == "Opaque"
    untyped = {"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": "web", "name": "plain"}, "data": {}}
    assert api.apply(untyped)["type"] == "Opaque"  # defaulted, as the API does
