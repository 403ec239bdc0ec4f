"""The admin endpoint over real sockets: a real Runtime fed by emulated members, talked to with aiohttp."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .conftest import World, eventually


async def who(world: World, url: str) -> str:
    async with world.session.get(url) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["cluster"]


async def test_probes_and_state(world: World) -> None:
    p = await world.start(world.yaml())
    async with world.session.get(p.admin_url + "/healthz") as r:
        assert r.status == 200 and (await r.text()).strip() == "ok"
    async with world.session.get(p.admin_url + "/readyz") as r:
        assert r.status == 200
    async with world.session.get(p.admin_url + "/api/v1/state") as r:
        assert r.status == 200
        doc = await r.json()
    assert [m["name"] for m in doc["members"]] == ["east", "west"]
    assert all(m["connected"] and m["synced"] for m in doc["members"])
    assert doc["local"] == "east" and doc["members"][0]["local"]
    assert [s["service"] for s in doc["services"]] == ["demo/web"]
    (pool,) = doc["pools"]
    assert pool["tiers"][0]["name"] == "local" and pool["tiers"][0]["load"] == 100
    kinds = {v["kind"]: v for v in doc["listeners"]}
    assert set(kinds) == {"http", "dns", "admin"}
    assert kinds["http"]["bound_port"] == int(p.http_url.rsplit(":", 1)[1])
    assert kinds["admin"]["bound_port"] == p.admin.port
    assert doc["version"] >= 1 and len(doc["config_hash"]) == 12
    async with world.session.get(p.admin_url + "/api/v1/config") as r:
        cfg = await r.json()
    assert [c["name"] for c in cfg["config"]["clusters"]] == ["east", "west"]


async def test_reload_switches_routing_while_a_long_request_finishes(world: World) -> None:
    p = await world.start(world.yaml(local="east"))
    assert await who(world, p.http_url + "/") == "east"
    long = asyncio.ensure_future(who(world, p.http_url + "/sleep?ms=800"))
    await eventually(lambda: world.echoes["east"].requests >= 2)  # the slow request reached east
    async with world.session.post(p.admin_url + "/reload", data=world.yaml(local="west")) as r:
        body = await r.json()
        assert r.status == 200, body
    assert body["ok"] and body["changes"]
    assert await who(world, p.http_url + "/") == "west"
    assert await long == "east"  # began on the old config, finished there
    assert p.runtime.reloads_ok == 1


async def test_reload_from_file(world: World) -> None:
    p = await world.start(world.yaml(local="east"))
    await asyncio.to_thread(Path(p.runtime.config_path).write_text, world.yaml(local="west"))
    async with world.session.post(p.admin_url + "/reload") as r:
        assert r.status == 200, await r.text()
    assert await who(world, p.http_url + "/") == "west"


async def test_bad_reload_lists_every_problem_and_keeps_serving(world: World) -> None:
    p = await world.start(world.yaml())
    before = p.runtime.config
    bad = world.yaml().replace(f"port: {world.ports[0]}", "port: -3")
    bad = bad.replace("grace_period: 2", "grace_period: soon")
    async with world.session.post(p.admin_url + "/reload", data=bad) as r:
        assert r.status == 400
        body = await r.json()
    assert body["ok"] is False
    problems = "\n".join(body["problems"])
    assert len(body["problems"]) >= 2, problems
    assert "grace_period" in problems and "port" in problems
    assert p.runtime.config is before
    assert await who(world, p.http_url + "/") == "east"
    async with world.session.post(p.admin_url + "/reload", data="clusters: [") as r:
        assert r.status == 400
    assert p.runtime.reloads_failed == 2


async def test_metrics_parse_and_move_with_traffic(world: World) -> None:
    p = await world.start(world.yaml())

    async def scrape() -> dict[str, float]:
        async with world.session.get(p.admin_url + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                out[key] = s.value
        return out

    def http_requests(m: dict[str, float]) -> float:
        return sum(v for k, v in m.items() if k.startswith("fedproxy_http_requests_total{"))

    first = await scrape()
    assert first["fedproxy_member_connected{cluster=east}"] == 1
    assert first["fedproxy_cluster_drained{cluster=west}"] == 0
    assert first["fedproxy_config_reloads_total{result=ok}"] == 0
    assert first["fedproxy_ready{}"] == 1
    assert any(k.startswith("fedproxy_config_info{") for k in first)
    for _ in range(3):
        await who(world, p.http_url + "/")
    second = await scrape()
    assert http_requests(second) >= http_requests(first) + 3
    async with world.session.post(p.admin_url + "/api/v1/clusters/west/drain") as r:
        assert r.status == 200
    async with world.session.post(p.admin_url + "/api/v1/clusters/west/weight", json={"weight": 4}) as r:
        assert r.status == 200
    third = await scrape()
    assert third["fedproxy_cluster_drained{cluster=west}"] == 1
    assert third["fedproxy_cluster_weight_override{cluster=west}"] == 4


async def test_token_required_except_probes(world: World) -> None:
    p = await world.start(world.yaml(token="s3cret-token"))
    for path in ("/api/v1/state", "/metrics", "/api/v1/config"):
        async with world.session.get(p.admin_url + path) as r:
            assert r.status == 401, path
            assert "unauthorized" in (await r.json())["error"]
        async with world.session.get(p.admin_url + path, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401, path
        async with world.session.get(p.admin_url + path, headers={"Authorization": "Bearer s3cret-token"}) as r:
            assert r.status == 200, path
    async with world.session.post(p.admin_url + "/api/v1/clusters/west/drain") as r:
        assert r.status == 401
    async with world.session.post(p.admin_url + "/reload") as r:
        assert r.status == 401
    assert "west" not in p.runtime.overrides.drained
    for path in ("/healthz", "/readyz"):
        async with world.session.get(p.admin_url + path) as r:
            assert r.status == 200, path
    async with world.session.get(p.admin_url + "/api/v1/config", headers={"Authorization": "Bearer s3cret-token"}) as r:
        text = await r.text()
    assert "s3cret-token" not in text and '"***"' in text


async def test_readiness_flips_during_shutdown_drain(world: World) -> None:
    p = await world.start(world.yaml())
    long = asyncio.ensure_future(who(world, p.http_url + "/sleep?ms=800"))
    await eventually(lambda: world.echoes["east"].requests >= 1)
    shutdown = asyncio.ensure_future(p.runtime.shutdown(5))
    try:

        async def not_ready() -> bool:
            async with world.session.get(p.admin_url + "/readyz") as r:
                return r.status == 503 and "draining" in await r.text()

        await eventually(not_ready, timeout=2)
        async with world.session.get(p.admin_url + "/healthz") as r:
            assert r.status == 200
        assert await long == "east"
    finally:
        await shutdown


async def test_drain_undrain_weight(world: World) -> None:
    p = await world.start(world.yaml())
    url = p.admin_url + "/api/v1"
    async with world.session.post(url + "/clusters/east/drain") as r:
        assert r.status == 200
        assert (await r.json())["drained"] is True
    async with world.session.get(url + "/state") as r:
        doc = await r.json()
    members = {m["name"]: m for m in doc["members"]}
    assert members["east"]["drained"] and not members["west"]["drained"]
    (pool,) = doc["pools"]
    assert {e["cluster"] for t in pool["tiers"] for e in t["endpoints"]} == {"west"}
    assert await who(world, p.http_url + "/") == "west"
    async with world.session.post(url + "/clusters/east/undrain") as r:
        assert r.status == 200
    assert await who(world, p.http_url + "/") == "east"
    async with world.session.post(url + "/clusters/east/weight", json={"weight": 0}) as r:
        assert r.status == 200
    assert await who(world, p.http_url + "/") == "west"
    async with world.session.post(url + "/clusters/east/weight", json={"weight": None}) as r:
        assert r.status == 200
    assert dict(p.runtime.overrides.weights) == {}
    async with world.session.post(url + "/clusters/east/weight", json={"weight": "heavy"}) as r:
        assert r.status == 400
    async with world.session.post(url + "/clusters/east/weight", data="nope") as r:
        assert r.status == 400
    for action in ("drain", "undrain"):
        async with world.session.post(url + f"/clusters/nowhere/{action}") as r:
            assert r.status == 404
    async with world.session.post(url + "/clusters/nowhere/weight", json={"weight": 1}) as r:
        assert r.status == 404


async def test_explain(world: World) -> None:
    p = await world.start(world.yaml())
    url = p.admin_url + "/api/v1/explain"
    async with world.session.get(url, params={"service": "demo/web"}) as r:
        assert r.status == 200, await r.text()
        doc = await r.json()
    assert doc["service"] == "demo/web" and len(doc["pools"]) == 1
    async with world.session.get(url, params={"service": "demo/web", "key": "user-1"}) as r:
        assert r.status == 200
    async with world.session.get(url, params={"service": "demo/nothing"}) as r:
        assert r.status == 404
    async with world.session.get(url, params={"service": "bad"}) as r:
        assert r.status == 400
