"""Balancing through the real HTTP proxy on loopback: failover ramp under load, retry budget, explain = pick.

A small stand-in for the runtime drives the pools: passive health reports feed an OutlierDetector, ejections
rebuild the serving state with ``previous=`` (so counters and ramps carry over), and a refresh task rebuilds
every 50 ms as the runtime does at ``Pool.refresh_at``. Backends are fedproxy.sim HttpEcho servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import MappingProxyType

import aiohttp
import pytest
from prometheus_client import REGISTRY

from fedproxy.balancing import build_state, explain, hash_key
from fedproxy.balancing.health import OutlierDetector
from fedproxy.catalog import build_catalog
from fedproxy.config import (
    BalancingConfig,
    ClusterConfig,
    Config,
    HashConfig,
    HttpConfig,
    HttpListener,
    HttpRoute,
    OutlierConfig,
    RetryPolicy,
)
from fedproxy.model import (
    ClusterSnapshot,
    EndpointSlice,
    Service,
    ServiceExport,
    ServiceKey,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)
from fedproxy.proxy.http import HttpProxyServer
from fedproxy.sim.backends import HttpEcho

KEY = ServiceKey("demo", "web")
REGIONS = {"east-1": "us-east", "west-1": "us-west", "west-2": "us-west"}


def snapshot(cluster: str, pods: Sequence[HttpEcho]) -> ClusterSnapshot:
    svc = Service("demo", "web", cluster_ips=("10.96.0.20",), ports=(ServicePort("http", 80, target_port=8080),))
    slices = {
        ("demo", f"web-{i}"): EndpointSlice(
            "demo", f"web-{i}", "web", ports=(SlicePort("http", p.port),), endpoints=(SliceEndpoint((p.host,)),)
        )
        for i, p in enumerate(pods)
    }
    return ClusterSnapshot(
        cluster,
        services=MappingProxyType({("demo", "web"): svc}),
        endpointslices=MappingProxyType(slices),
        serviceexports=MappingProxyType({("demo", "web"): ServiceExport("demo", "web")}),
    )


class World:
    """Backends per member, the proxy, and the runtime's part: health -> rebuilt serving state."""

    def __init__(self, route: HttpRoute, balancing: BalancingConfig, pods: dict[str, list[HttpEcho]]) -> None:
        clusters = tuple(
            ClusterConfig(name, region=REGIONS[name], local=name == "east-1", pods_reachable=True) for name in pods
        )
        listener = HttpListener(0, address="127.0.0.1", routes=(route,))
        self.config = Config(clusters=clusters, http=HttpConfig((listener,), access_log="off"), balancing=balancing)
        self.pods = pods
        self.catalog = build_catalog([snapshot(c, p) for c, p in pods.items()], self.config, 1)
        self.loop = asyncio.get_running_loop()
        self.detector = OutlierDetector(balancing.outlier, seed=1)
        self.state = build_state(self.config, self.catalog, now=self.loop.time(), seed=7)
        self.server = HttpProxyServer(listener, self.config, lambda: self.state, self.report)
        self.refresher: asyncio.Task[None] | None = None

    @property
    def pool(self):  # type: ignore[no-untyped-def]
        return next(iter(self.state.pools.values()))

    def rebuild(self) -> None:
        now = self.loop.time()
        health = self.detector.view(now)
        self.state = build_state(self.config, self.catalog, health, now=now, previous=self.state, seed=7)

    def report(self, ep: object, ok: bool) -> None:
        now = self.loop.time()
        if ok:
            self.detector.success(ep, now)  # type: ignore[arg-type]
        elif self.detector.failure(ep, now):  # type: ignore[arg-type]
            self.rebuild()

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if (at := self.pool.refresh_at) is not None and at <= self.loop.time():
                self.rebuild()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def world() -> AsyncIterator:  # type: ignore[type-arg]
    made: list[World] = []
    echoes: list[HttpEcho] = []

    async def make(route: HttpRoute, balancing: BalancingConfig, counts: dict[str, int]) -> World:
        pods: dict[str, list[HttpEcho]] = {}
        for cluster, n in counts.items():
            for i in range(n):
                # One loopback address per pod: the catalog knows a pod by its address, as Kubernetes does.
                echo = HttpEcho(f"127.0.0.{len(echoes) + 10}", 0, cluster=cluster, pod=f"pod-{i}")
                await echo.start()
                echoes.append(echo)
                pods.setdefault(cluster, []).append(echo)
        w = World(route, balancing, pods)
        await w.server.start()
        w.refresher = asyncio.get_running_loop().create_task(w._refresh())
        made.append(w)
        return w

    yield make
    for w in made:
        if w.refresher is not None:
            w.refresher.cancel()
            await asyncio.gather(w.refresher, return_exceptions=True)
        await w.server.close()
    for echo in echoes:
        await echo.stop()


async def test_local_backends_killed_under_load_move_traffic_gradually_without_failures(world):
    ramp = 2.0
    balancing = BalancingConfig(
        tier_ramp=ramp, outlier=OutlierConfig(consecutive_failures=1, base_ejection_time=60, max_ejection_percent=100)
    )
    route = HttpRoute(KEY, retries=RetryPolicy(attempts=3))
    w = await world(route, balancing, {"east-1": 4, "west-1": 4})
    loop = asyncio.get_running_loop()
    samples: list[tuple[float, str]] = []  # (time since the kill, member that answered)
    failures: list[int] = []
    killed_at: float | None = None
    async with aiohttp.ClientSession() as session:
        start = loop.time()
        i = 0
        while loop.time() - start < 0.5 + ramp + 1.5:
            i += 1
            async with session.get(f"{w.url}/r{i}") as resp:
                await resp.read()
                if resp.status != 200:
                    failures.append(resp.status)
                elif killed_at is not None:
                    samples.append((loop.time() - killed_at, resp.headers["x-backend"].split("/")[0]))
            if killed_at is None and loop.time() - start >= 0.5:
                await asyncio.gather(w.pods["east-1"][0].stop(), w.pods["east-1"][1].stop())
                killed_at = loop.time()
            await asyncio.sleep(0.004)  # a steady rate, about 200 requests per second
    assert failures == []  # idempotent GETs: refused or reset tries were retried elsewhere

    def remote_share(lo: float, hi: float) -> float:
        got = [c for t, c in samples if lo <= t < hi]
        assert len(got) > 30, (lo, hi, len(got))
        return sum(c == "west-1" for c in got) / len(got)

    # Half the local pods down: the local tier's health is 1.4 x 50 % = 70, so 30 % spills, over the ramp.
    first, middle, late = remote_share(0.0, 0.5), remote_share(0.9, 1.4), remote_share(ramp + 0.2, ramp + 1.4)
    assert first < 0.15  # a jump would send 30 % at once
    assert first < middle < late
    assert 0.2 < late < 0.4
    assert [t.load for t in w.pool.tiers] == [70, 30]


async def test_retry_storm_is_capped_by_the_budget(world):
    route = HttpRoute(KEY, path_prefix="/", retries=RetryPolicy(attempts=3, on=("5xx",)))
    balancing = BalancingConfig(outlier=OutlierConfig(consecutive_failures=100000))
    w = await world(route, balancing, {"east-1": 4})
    before = REGISTRY.get_sample_value("fedproxy_retries_budget_exhausted_total", {"service": str(KEY)}) or 0.0
    clients, per_client = 20, 10

    async def client(session: aiohttp.ClientSession) -> list[int]:
        codes = []
        for _ in range(per_client):
            async with session.get(f"{w.url}/status/503") as resp:
                await resp.read()
                codes.append(resp.status)
        return codes

    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(client(session) for _ in range(clients)))
    requests = clients * per_client
    assert all(code == 503 for codes in results for code in codes)
    seen = sum(p.requests for p in w.pods["east-1"])
    retries = seen - requests
    # Without a budget every request would be tried 4 times (3 retries): 600 retries. The budget allows at
    # most max(3, 20 % of 20 in flight) = 4 retries in flight, so most failures are answered at once.
    assert 0 < retries < requests // 2, retries
    after = REGISTRY.get_sample_value("fedproxy_retries_budget_exhausted_total", {"service": str(KEY)})
    assert after is not None and after - before >= requests - retries - 3 * 4
    assert w.pool.breaker.counts == {"connections": 0, "pending": 0, "requests": 0, "retries": 0}


async def test_retries_are_not_capped_when_the_budget_allows_them(world):
    # The control for the test above: the same storm with a budget that allows everything retries 3 times.
    route = HttpRoute(KEY, retries=RetryPolicy(attempts=3, on=("5xx",), backoff_base=0.001, backoff_max=0.002))
    balancing = BalancingConfig(outlier=OutlierConfig(consecutive_failures=100000), retry_budget_min=1000)
    w = await world(route, balancing, {"east-1": 4})
    async with aiohttp.ClientSession() as session:
        for _ in range(10):
            async with session.get(f"{w.url}/status/503") as resp:
                await resp.read()
    assert sum(p.requests for p in w.pods["east-1"]) == 40


async def test_explain_pick_matches_the_proxy_pick_for_a_header_key(world):
    route = HttpRoute(KEY, hash=HashConfig(on="header", name="x-user"))
    balancing = BalancingConfig(maglev_table_size=1031)
    w = await world(route, balancing, {"east-1": 3, "west-1": 2, "west-2": 2})
    by_address = {ep.address: str(ep) for ep in w.pool.endpoints}
    address_of = {p.identity: p.host for pods in w.pods.values() for p in pods}
    answered: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for i in range(40):
            user = f"user-{i}"
            predicted = explain(w.pool, hash_key(user))["decision"]["endpoint"]
            async with session.get(f"{w.url}/", headers={"x-user": user}) as resp:
                assert resp.status == 200
                got = by_address[address_of[resp.headers["x-backend"]]]
            assert got == predicted, user
            answered.add(got)
    assert len(answered) >= 2  # the keys really spread: the test would notice a constant answer
