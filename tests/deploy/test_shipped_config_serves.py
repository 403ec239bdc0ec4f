"""The config shipped in each overlay's ConfigMap, run for real against the member-cluster emulator.

Only what cannot work on a test machine is rewritten: listener addresses/ports (to free 127.0.0.1 ports), the
kubeconfig paths (to the emulator's kubeconfig; a member reached `in_cluster` gets that file and its own
context, the Karmada kubeconfig gets the emulator's `karmada` context) and the token file path. Everything else
(members, routes, DNS, admin overrides ConfigMap) is exactly what the manifests ship.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import pytest
import yaml

from fedproxy.configload import parse_config
from fedproxy.serve import Server
from fedproxy.sim.topology import KARMADA_NAME, Topology
from tests.loopback import free_port

from .conftest import shipped_config

TOKEN = "deploy-test-token"


def localize(text: str, kubeconfig: Path, token_file: Path) -> dict[str, Any]:
    """Shipped config text -> the same config with loopback listeners and the emulator's kubeconfig."""
    data = yaml.safe_load(text)
    for section in ("http", "tcp"):
        for listener in (data.get(section) or {}).get("listeners") or []:
            listener.update(address="127.0.0.1", port=free_port())
    data["dns"].update(address="127.0.0.1", port=free_port())
    data["admin"].update(address="127.0.0.1", port=free_port(), token_file=str(token_file))
    for c in data.get("clusters") or []:
        if c.pop("in_cluster", False):
            c.update(kubeconfig=str(kubeconfig), context=c["name"])
        elif c.get("kubeconfig"):
            c["kubeconfig"] = str(kubeconfig)  # contexts stay: the emulator names them after the members
    if data.get("karmada"):
        data["karmada"] = {"kubeconfig": str(kubeconfig), "context": KARMADA_NAME}
    return data


@pytest.fixture(params=["front-door", "karmada"])
async def running(request: pytest.FixtureRequest, render: Any, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    overlay = request.param
    text = shipped_config(render(f"overlays/{overlay}"))
    # A port offset of its own so a running `fedproxy demo` (offset 10000) and other tests do not collide.
    topology = Topology(port_offset=25000 + (os.getpid() % 40) * 10, karmada=overlay == "karmada")
    await topology.start()
    server: Server | None = None
    try:
        kubeconfig = topology.write_kubeconfig(tmp_path / "kubeconfig.yaml")
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        data = localize(text, kubeconfig, token_file)
        config = parse_config(yaml.safe_dump(data), source=f"{overlay}/fedproxy.yaml")
        server = Server(config)
        await server.startup()
        yield {"data": data, "topology": topology, "overlay": overlay}
    finally:
        if server is not None:
            await server.shutdown(0)
        await topology.stop()


async def wait_ready(session: aiohttp.ClientSession, admin: int, deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    last = ""
    while time.monotonic() < end:
        async with session.get(f"http://127.0.0.1:{admin}/readyz") as resp:
            if resp.status == 200:
                return
            last = await resp.text()
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never became 200: {last}")


async def until_served_by(session: aiohttp.ClientSession, url: str, member: str, deadline: float = 15.0) -> None:
    """Poll ``url`` pinned to ``member`` until that member answers (its watch may sync after readiness)."""
    end = time.monotonic() + deadline
    last = ""
    while time.monotonic() < end:
        async with session.get(url, headers={"x-fedproxy-cluster": member}) as resp:
            last = f"{resp.status} {await resp.text()}"
            if resp.status == 200 and member in last:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{member} never served {url}: {last}")


async def test_shipped_config_serves_http_dns_and_shares_overrides(running: dict[str, Any]) -> None:
    data, topology = running["data"], running["topology"]
    admin = data["admin"]["port"]
    http_port = data["http"]["listeners"][0]["port"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        await wait_ready(session, admin)

        # The probes need no token; the rest of the admin API does.
        async with session.get(f"http://127.0.0.1:{admin}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"http://127.0.0.1:{admin}/api/v1/state") as resp:
            assert resp.status == 401

        # HTTP front door: the catch-all route to demo/nginx, served by the local member (east-1) first.
        async with session.get(f"http://127.0.0.1:{http_port}/") as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.text()
        assert "east-1" in body

        # DNS: the clusterset.local name of an exported service answers with member addresses.
        query = dns.message.make_query("nginx.demo.svc.clusterset.local", "A")
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=data["dns"]["port"], timeout=3)
        assert answer.rcode() == dns.rcode.NOERROR
        assert answer.answer and answer.answer[0].items

        # A remote member (kubeconfig context, or discovered through Karmada) serves when pinned.
        await until_served_by(session, f"http://127.0.0.1:{http_port}/", "west-1")

        # A drain through the admin API lands in the shared overrides ConfigMap in east-1.
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(f"http://127.0.0.1:{admin}/api/v1/clusters/east-1/drain", headers=auth) as resp:
            assert resp.status == 200, await resp.text()
        ns, name = data["admin"]["overrides"]["configmap"].split("/")
        stored = topology.member("east-1").server.get("configmaps", ns, name)
        assert stored is not None and "east-1" in str(stored.get("data"))
