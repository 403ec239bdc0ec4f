"""Authentication and TLS: bearer tokens, the generated CA, client certificates."""

from __future__ import annotations

import aiohttp
import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.kubeconfig import kubeconfig_dict


async def test_missing_or_wrong_token_is_401(api: FakeApiServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api.url}/api/v1/nodes") as resp:
            assert resp.status == 401
            body = await resp.json()
        async with http.get(f"{api.url}/api/v1/nodes", headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
    assert body["kind"] == "Status" and body["reason"] == "Unauthorized" and body["code"] == 401


async def test_wrong_token_through_client(api: FakeApiServer) -> None:
    cfg = client.Configuration()
    await config.load_kube_config_from_dict(kubeconfig_dict([api]), client_configuration=cfg)
    cfg.api_key = {"authorization": "Bearer wrong"}
    async with client.ApiClient(cfg) as kube:
        with pytest.raises(ApiException) as err:
            await client.CoreV1Api(kube).list_node()
    assert err.value.status == 401


async def test_tls_with_generated_ca(make_client) -> None:  # type: ignore[no-untyped-def]
    server = FakeApiServer("secure", tls=True)
    await server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        kube = await make_client(server)
        assert (await client.CoreV1Api(kube).list_node()).items == []
        # A client that does not trust the emulator's CA is refused at the handshake.
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"{server.url}/version")
    finally:
        await server.stop()


async def test_client_certificate_auth(make_client) -> None:  # type: ignore[no-untyped-def]
    server = FakeApiServer("mtls", client_cert_auth=True)
    await server.start()
    try:
        cert = server.issue_client_cert("fedproxy", group="system:masters")
        kube = await make_client(server, client_certs={"mtls": cert})
        assert kube.configuration.api_key == {}
        assert (await client.CoreV1Api(kube).list_node()).items == []
    finally:
        await server.stop()


def test_only_loopback_binds() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FakeApiServer(host="0.0.0.0")
