"""The demo topology: every backend kind answers, pods can die and come back, Karmada points at members."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from kubernetes_asyncio import client, config

from fedproxy.sim.topology import Topology

# Far from the demo's own ports (offset 0), so a running demo never collides with the tests.
OFFSET = 21000


@pytest.fixture
async def topo() -> AsyncIterator[Topology]:
    t = Topology(port_offset=OFFSET, karmada=True)
    await t.start()
    try:
        yield t
    finally:
        await t.stop()


async def _who(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.headers["x-backend"]


async def _tcp_prefix(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        return await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_every_backend_kind_answers(topo: Topology) -> None:
    p = OFFSET
    assert await _who(f"http://127.0.1.2:{8080 + p}/") == "east-1/pod-2"  # pod
    assert await _who(f"http://127.1.2.1:{80 + p}/") == "east-2/clusterip:nginx"  # ClusterIP
    assert await _who(f"http://127.2.3.1:{30080 + p}/") == "west-1/nodeport:west-1-node-1:nginx"
    assert await _who(f"http://127.3.3.1:{80 + p}/") == "west-1/lb:web"  # LoadBalancer
    assert await _who(f"http://127.0.3.3:{8081 + p}/") == "west-1/pod-3"  # web's pod port
    assert await _tcp_prefix("127.0.2.1", 7007 + p) == b"east-2/pod-1\n"
    assert await _tcp_prefix("127.1.1.2", 7 + p) == b"east-1/clusterip:echo\n"


async def test_objects_match_listeners(topo: Topology, tmp_path: Path) -> None:
    path = topo.write_kubeconfig(tmp_path / "kubeconfig")
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(path), context="west-1", client_configuration=cfg)
    async with client.ApiClient(cfg) as kube:
        services = await client.CoreV1Api(kube).list_namespaced_service("demo")
        by_name = {s.metadata.name: s for s in services.items}
        assert by_name["nginx"].spec.ports[0].port == 80 + OFFSET
        assert by_name["web"].status.load_balancer.ingress[0].ip == "127.3.3.1"
        slices = await client.DiscoveryV1Api(kube).list_namespaced_endpoint_slice(
            "demo", label_selector="kubernetes.io/service-name=nginx"
        )
        addresses = [e.addresses[0] for e in slices.items[0].endpoints]
        assert addresses == ["127.0.3.1", "127.0.3.2", "127.0.3.3"]
        nodes = await client.CoreV1Api(kube).list_node()
        assert nodes.items[0].metadata.labels["topology.kubernetes.io/zone"] == "us-west-1a"
        exports = await client.CustomObjectsApi(kube).list_namespaced_custom_object(
            "multicluster.x-k8s.io", "v1alpha1", "demo", "serviceexports"
        )
        assert sorted(e["metadata"]["name"] for e in exports["items"]) == ["echo", "nginx", "web"]


async def test_kill_and_restore_pods(topo: Topology) -> None:
    server = topo.member("east-2").server
    await topo.kill_pods("east-2")
    endpoints = server.get("EndpointSlice", "demo", "nginx-east-2")["endpoints"]
    assert [e["conditions"]["ready"] for e in endpoints] == [False, False]
    with pytest.raises(OSError):
        await _tcp_prefix("127.0.2.1", 7007 + OFFSET)
    with pytest.raises(OSError):  # kube-proxy stand-ins go with the last pod
        await _tcp_prefix("127.1.2.2", 7 + OFFSET)
    await topo.restore_pods("east-2")
    assert await _tcp_prefix("127.0.2.1", 7007 + OFFSET) == b"east-2/pod-1\n"
    assert await _tcp_prefix("127.1.2.2", 7 + OFFSET) == b"east-2/clusterip:echo\n"


async def test_stale_slices_option(topo: Topology) -> None:
    await topo.kill_pods("east-1", ["pod-1"], mark_not_ready=False)
    endpoints = topo.member("east-1").server.get("EndpointSlice", "demo", "echo-east-1")["endpoints"]
    assert all(e["conditions"]["ready"] for e in endpoints)
    with pytest.raises(OSError):
        await _tcp_prefix("127.0.1.1", 7007 + OFFSET)
    assert await _tcp_prefix("127.0.1.2", 7007 + OFFSET) == b"east-1/pod-2\n"


async def test_add_and_remove_pods(topo: Topology) -> None:
    name = await topo.add_pod("west-1")
    assert name == "pod-4" and topo.pod_ip("west-1", name) == "127.0.3.4"
    assert await _who(f"http://127.0.3.4:{8080 + OFFSET}/") == "west-1/pod-4"
    await topo.remove_pod("west-1", "pod-1")
    endpoints = topo.member("west-1").server.get("EndpointSlice", "demo", "nginx-west-1")["endpoints"]
    assert [e["addresses"][0] for e in endpoints] == ["127.0.3.2", "127.0.3.3", "127.0.3.4"]


async def test_karmada_control_plane(topo: Topology) -> None:
    assert topo.karmada is not None
    clusters = {c["metadata"]["name"]: c for c in topo.karmada.list("clusters")}
    assert sorted(clusters) == ["east-1", "east-2", "west-1"]
    east2 = clusters["east-2"]["spec"]
    assert east2["apiEndpoint"] == topo.member("east-2").server.url and east2["region"] == "us-east"
    secret = topo.karmada.get("secrets", east2["secretRef"]["namespace"], east2["secretRef"]["name"])
    assert base64.b64decode(secret["data"]["token"]).decode() == topo.member("east-2").server.token
