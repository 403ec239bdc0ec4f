"""Fixtures: emulated API servers on ephemeral ports and real kubernetes-asyncio clients bound to them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.kubeconfig import write_kubeconfig

ClientFactory = Callable[..., Awaitable[client.ApiClient]]


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer("east-1", bookmark_interval=0.2)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[ClientFactory]:
    """Build ApiClients through a written kubeconfig, exactly as fedproxy's discovery does."""
    clients: list[client.ApiClient] = []

    async def make(server: FakeApiServer, **kubeconfig_kwargs: object) -> client.ApiClient:
        path = write_kubeconfig(tmp_path / f"kubeconfig-{server.name}", [server], **kubeconfig_kwargs)  # type: ignore[arg-type]
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(path), context=server.name, client_configuration=cfg)
        api_client = client.ApiClient(cfg)
        clients.append(api_client)
        return api_client

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def kube(api: FakeApiServer, make_client: ClientFactory) -> client.ApiClient:
    return await make_client(api)


@pytest.fixture
def demo() -> list[dict]:
    """A few services across two namespaces, a slice and an export."""
    return [
        objects.service(
            "demo",
            "nginx",
            type="NodePort",
            cluster_ip="127.1.1.1",
            ports=[{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
            labels={"app": "nginx", "tier": "web"},
        ),
        objects.service(
            "demo",
            "echo",
            cluster_ip="127.1.1.2",
            ports=[{"name": "tcp-echo", "port": 7, "targetPort": 7007}],
            labels={"app": "echo"},
        ),
        objects.service("other", "db", cluster_ip="127.1.1.3", ports=[{"port": 5432}], labels={"app": "db"}),
        objects.endpoint_slice(
            "demo",
            "nginx-abc",
            "nginx",
            ports=[{"name": "http", "port": 8080}],
            endpoints=[objects.endpoint(["127.0.1.1"], node_name="n1", zone="z")],
        ),
        objects.service_export("demo", "nginx"),
    ]


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves background tasks behind (every server must be stopped by its fixture)."""
    yield
    current = asyncio.current_task()
    for _ in range(50):
        leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not leftover:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"test leaked tasks: {leftover}")
