"""Overrides shared through a ConfigMap in an emulated member: every replica applies them, restarts keep them."""

from __future__ import annotations

from fedproxy.admin.overrides import decode, encode
from fedproxy.balancing import Overrides

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
