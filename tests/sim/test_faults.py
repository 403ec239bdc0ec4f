"""Fault injection, observed through the real kubernetes-asyncio client."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer

pytestmark = pytest.mark.reliability


async def test_kill_and_restart_on_same_port(api: FakeApiServer, kube: client.ApiClient) -> None:
    api.apply(objects.node("n1", "127.2.1.1"))
    core = client.CoreV1Api(kube)
    port = api.port
    await api.kill()
    assert not api.running
    with pytest.raises(aiohttp.ClientConnectorError):
        await core.list_node()
    api.apply(objects.node("n2", "127.2.1.2"))  # the store lives on while the server is down
    await api.restart()
    assert api.port == port
    nodes = await core.list_node()
    assert [n.metadata.name for n in nodes.items] == ["n1", "n2"]


async def test_kill_resets_open_watch(api: FakeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    w = watch.Watch()
    stream = w.stream(core.list_node, resource_version="0", timeout_seconds=30)

    async def consume() -> None:
        async with w:
            async for _ in stream:
                pass

    task = asyncio.create_task(consume())
    await _until(lambda: api.open_watches == 1)
    await api.kill()
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(task, 5)


async def test_cut_watches_breaks_stream_without_clean_end(api: FakeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    resp = await core.list_node(watch=True, resource_version="0", _preload_content=False)
    await _until(lambda: api.open_watches == 1)
    assert api.cut_watches() == 1
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.content.readline(), 5)
    resp.release()
    # The server itself keeps serving.
    assert (await core.list_node()).items == []


async def test_hang_times_out_clients_then_recovers(api: FakeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.hang(True)
    with pytest.raises(asyncio.TimeoutError):
        await core.list_node(_request_timeout=0.3)
    api.hang(False)
    assert (await core.list_node(_request_timeout=2)).items == []


async def test_hang_stalls_open_watches(api: FakeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    resp = await core.list_node(watch=True, resource_version="0", _preload_content=False)
    await _until(lambda: api.open_watches == 1)
    api.hang(True)
    api.apply(objects.node("n1", "127.2.1.1"))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(resp.content.readline(), 0.3)
    api.hang(False)
    line = await asyncio.wait_for(resp.content.readline(), 5)
    assert b'"ADDED"' in line
    resp.release()


async def test_fail_requests(api: FakeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    api.fail_requests(2, status=503)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            await core.list_node()
        assert err.value.status == 503
    assert (await core.list_node()).items == []


async def test_watch_timeout_ends_stream_cleanly(api: FakeApiServer, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    resp = await core.list_node(watch=True, resource_version="0", timeout_seconds=0.2, _preload_content=False)
    assert await asyncio.wait_for(resp.read(), 5) == b""
    resp.release()
    await _until(lambda: api.open_watches == 0)


async def test_watch_forever_survives_expiry_by_relisting_once(api: FakeApiServer, kube: client.ApiClient) -> None:
    """Without timeout_seconds the client retries a 410 once, with the same rv, then raises."""
    api.apply(objects.node("n1", "127.2.1.1"))
    api.apply(objects.node("n2", "127.2.1.2"))
    api.expire_resource_versions()
    w = watch.Watch()
    with pytest.raises(ApiException) as err:
        async with w:
            async for _ in w.stream(client.CoreV1Api(kube).list_node, resource_version="1"):
                pass
    assert err.value.status == 410


async def _until(condition, timeout: float = 5) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
