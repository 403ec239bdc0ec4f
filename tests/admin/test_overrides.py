"""Overrides shared through a ConfigMap in an emulated member: every replica applies them, restarts keep them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fedproxy.admin.overrides import ConfigMapOverrides, decode, encode
from fedproxy.balancing import Overrides
from fedproxy.config import ClusterConfig, OverridesConfig
from fedproxy.model import ServiceKey
from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.kubeconfig import write_kubeconfig

from .conftest import World, eventually, free_port

SHARED = """
  overrides:
    configmap: fedproxy/overrides
    cluster: east"""


def test_encode_decode_round_trip() -> None:
    o = Overrides(frozenset({"west", "east"}), {"west": 3})
    data = encode(o)
    assert data == {"drained": "east,west", "weights": '{"west":3}'}
    assert decode(data) == (o, [])
    got, problems = decode({"drained": " a, ,b ", "weights": '{"a": -1, "b": 2, "c": true}'})
    assert got == Overrides(frozenset({"a", "b"}), {"b": 2})
    assert len(problems) == 2
    assert decode({"weights": "[1]"})[1] == ["weights: not a JSON object"]
    assert decode(None) == (Overrides(), [])


async def test_drain_on_one_replica_reaches_the_other_and_survives_restart(world: World) -> None:
    a = await world.start(world.yaml(extra_admin=SHARED))
    other_ports = (free_port(), free_port(), free_port())
    b = await world.start(world.yaml(extra_admin=SHARED, ports=other_ports))
    url_a = a.admin_url + "/api/v1/clusters"

    async with world.session.post(url_a + "/west/drain") as r:
        assert r.status == 200, await r.text()
    await eventually(lambda: "west" in b.runtime.overrides.drained)
    async with world.session.get(b.admin_url + "/api/v1/state") as r:
        members = {m["name"]: m for m in (await r.json())["members"]}
    assert members["west"]["drained"]
    cm = world.servers["east"].get("configmap", "fedproxy", "overrides")
    assert cm["data"]["drained"] == "west"

    async with world.session.post(b.admin_url + "/api/v1/clusters/east/weight", json={"weight": 7}) as r:
        assert r.status == 200
    await eventually(lambda: dict(a.runtime.overrides.weights) == {"east": 7})
    assert "west" in a.runtime.overrides.drained  # b's write kept a's drain (read-modify-write)

    # A restarted replica reads the ConfigMap before anything else asks.
    await b.admin.close()
    await b.runtime.shutdown(0.5)
    c = await world.start(world.yaml(extra_admin=SHARED, ports=other_ports))
    await eventually(lambda: c.runtime.overrides == Overrides(frozenset({"west"}), {"east": 7}))

    async with world.session.post(c.admin_url + "/api/v1/clusters/west/undrain") as r:
        assert r.status == 200
    await eventually(lambda: not a.runtime.overrides.drained)

    # An operator editing the ConfigMap by hand is applied too.
    world.servers["east"].patch("configmap", "fedproxy", "overrides", {"data": {"drained": "east"}})
    await eventually(lambda: a.runtime.overrides.drained == {"east"} and c.runtime.overrides.drained == {"east"})


class Applied:
    """The runtime side of a store: holds what it applies."""

    def __init__(self) -> None:
        self.overrides = Overrides()

    def set_overrides(self, overrides: Overrides) -> None:
        self.overrides = overrides


async def test_hung_server_is_noticed_within_the_read_timeout(tmp_path: Path) -> None:
    server = FakeApiServer("east", bookmark_interval=0.1)
    await server.start()
    applied = Applied()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", [server])
    store = ConfigMapOverrides(
        applied,
        OverridesConfig(ServiceKey("fedproxy", "overrides"), "east"),
        ClusterConfig(name="east", kubeconfig=str(kubeconfig), context="east"),
        request_timeout=0.5,
        watch_timeout=300,  # far beyond the test: only the read timeout can notice the hang
        backoff_base=0.05,
        backoff_max=0.3,
    )
    try:
        await store.start()
        await asyncio.wait_for(store.synced.wait(), 5)
        await eventually(lambda: server.open_watches == 1)
        await asyncio.sleep(0.7)  # a quiet but healthy stream (bookmarks) is no error
        assert store.last_error == ""

        server.hang(True)
        await eventually(lambda: store.last_error != "", 3.0)
        server.hang(False)
        server.apply(objects.configmap("fedproxy", "overrides", {"drained": "west"}))
        await eventually(lambda: applied.overrides.drained == {"west"}, 5.0)
        assert store.last_error == ""
    finally:
        await store.close()
        await server.stop()
