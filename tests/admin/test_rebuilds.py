"""Rebuild counters in the admin state: with slow start on, one rebuild builds the serving state once.

A real Runtime over two emulated members; a pod joins east while ``balancing.slow_start`` is on, so rebuilds
carry arrivals (the runtime once built the state a second time for them).
"""

from __future__ import annotations

from typing import Any

from fedproxy.sim import objects

from .conftest import World, eventually


async def test_slow_start_rebuilds_build_the_state_once(world: World) -> None:
    p = await world.start(world.yaml() + "balancing:\n  slow_start: 30\n")
    port = world.echoes["east"].port

    async def get(path: str, **params: str) -> Any:
        async with world.session.get(p.admin_url + path, params=params) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    before = (await get("/api/v1/state"))["rebuilds"]
    world.servers["east"].apply_all(
        [
            objects.endpoint_slice(
                "demo",
                "web-1",
                "web",
                ports=[{"name": "http", "port": port}],
                endpoints=[objects.endpoint(["127.0.0.1"]), objects.endpoint(["127.0.0.2"])],
            )
        ]
    )
    joined = f"east/127.0.0.2:{port}"

    async def ramping() -> bool:
        (pool,) = (await get("/api/v1/explain", service="demo/web"))["pools"]
        return 0.0 < pool["slow_start"].get(joined, 1.0) < 1.0

    await eventually(ramping)
    after = (await get("/api/v1/state"))["rebuilds"]
    assert after["rebuilds"] > before["rebuilds"]
    assert after["state_builds"] == after["rebuilds"]  # one build per rebuild, arrivals or not
    assert after["arrivals_examined"] > before["arrivals_examined"]  # the joining pod was looked at
