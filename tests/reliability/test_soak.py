"""A bounded soak: mixed HTTP/TCP/DNS traffic while the config is reloaded (POST /reload, alternating two valid
configs), pods come and go (gracefully: out of the EndpointSlice first, stopped after) and one member's API server
is killed and restarted (shorter and longer than the grace period). Afterwards file descriptors, memory and
asyncio tasks are back near the baseline taken after a warm-up.

Duration: ``FEDPROXY_SOAK_SECONDS`` (default 60). Tolerances (stated here and in docs/reliability.md):
open fds <= baseline + 8, RSS <= baseline + 30 MiB, asyncio tasks == baseline (after a settle of up to 5 s).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random

import aiohttp
import dns.asyncquery
import dns.message
import pytest

from .conftest import WEB_NAME, Proxy, World, eventually

pytestmark = pytest.mark.reliability

SOAK_SECONDS = float(os.environ.get("FEDPROXY_SOAK_SECONDS", "60"))
FD_TOLERANCE = 8
RSS_TOLERANCE = 30 * 1024 * 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def live_tasks() -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() if not t.done() and t is not asyncio.current_task()}


class Traffic:
    """Clients of every kind running until ``stop``; counts successes and failures per kind."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.ok = {"http": 0, "tcp": 0, "dns": 0}
        self.failures: dict[str, list[str]] = {"http": [], "tcp": [], "dns": []}
        self.stop = asyncio.Event()

    async def http(self, i: int) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as keep:
            n = 0
            while not self.stop.is_set():
                n += 1
                fresh = aiohttp.ClientSession(timeout=timeout) if n % 3 == 0 else None
                s = fresh or keep
                try:
                    async with s.get(f"{self.proxy.http_url}/soak/{i}/{n}") as r:
                        await r.read()
                        if r.status == 200:
                            self.ok["http"] += 1
                        else:
                            self.failures["http"].append(f"HTTP {r.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures["http"].append(repr(exc))
                finally:
                    if fresh is not None:
                        await fresh.close()
                await asyncio.sleep(0.01)

    async def tcp(self, i: int) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.proxy.tcp_port), 5)
                try:
                    await asyncio.wait_for(reader.readline(), 5)
                    writer.write(b"ping %d\n" % i)
                    await asyncio.wait_for(reader.readline(), 5)
                    self.ok["tcp"] += 1
                finally:
                    writer.close()
                    await writer.wait_closed()
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.failures["tcp"].append(repr(exc))
            await asyncio.sleep(0.02)

    async def dns(self) -> None:
        while not self.stop.is_set():
            try:
                q = dns.message.make_query(WEB_NAME, "A")
                await dns.asyncquery.udp(q, "127.0.0.1", port=self.proxy.dns_port, timeout=2)
                self.ok["dns"] += 1
            except Exception as exc:  # noqa: BLE001 - any failure is counted, the loop goes on
                self.failures["dns"].append(repr(exc))
            await asyncio.sleep(0.005)

    def tasks(self) -> list[asyncio.Future]:
        coros = [*(self.http(i) for i in range(4)), *(self.tcp(i) for i in range(2)), self.dns(), self.dns()]
        return [asyncio.ensure_future(c) for c in coros]


async def churn(world: World, proxy: Proxy, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Reloads every 2 s, a pod change every 0.5 s, a member outage every ~8 s (alternately short and long)."""
    rng = random.Random(11)
    fleet = world.fleet
    configs = [world.yaml(), world.yaml(west_weight=2, route_extra="\n          retries: {attempts: 2}")]
    tick = 0
    while not stop.is_set():
        tick += 1
        await asyncio.sleep(0.5)
        member = rng.choice(["east", "west"])
        pods = fleet.members[member].web_pods
        if len(pods) > 2 and rng.random() < 0.5:
            # Graceful removal: out of the slice first, stopped once fedproxy has seen it go.
            ip = rng.choice(sorted(pods))
            web, tcp = pods.pop(ip), fleet.members[member].tcp_pods.pop(ip)
            fleet.publish(member)
            await asyncio.sleep(0.3)
            await web.stop()
            await tcp.stop()
        elif len(pods) < 5:
            await fleet.add_pod(member)
        counts["pods"] += 1
        if tick % 4 == 0:
            async with world.session.post(f"{proxy.admin_url}/reload", data=configs[(tick // 4) % 2]) as r:
                assert r.status == 200, await r.text()
            counts["reloads"] += 1
        if tick % 16 == 8:
            server = world.server("west")
            await server.kill()
            await asyncio.sleep(0.5 if (tick // 16) % 2 == 0 else 2.5)  # inside, then past the 1.5 s grace
            await server.restart()
            counts["outages"] += 1


async def traffic_burst(proxy: Proxy, seconds: float) -> Traffic:
    t = Traffic(proxy)
    tasks = t.tasks()
    await asyncio.sleep(seconds)
    t.stop.set()
    await asyncio.gather(*tasks)
    return t


async def test_soak_mixed_traffic_reloads_and_churn_leaves_no_leaks(world: World) -> None:
    proxy = await world.start(world.yaml())
    fleet = world.fleet
    # Warm-up: first connections, pools, caches and metric series exist before the baseline is taken.
    await traffic_burst(proxy, 3)
    async with world.session.post(f"{proxy.admin_url}/reload", data=world.yaml()) as r:
        assert r.status == 200
    await asyncio.sleep(0.5)
    gc.collect()
    base_fds, base_rss, base_tasks = open_fds(), rss_bytes(), live_tasks()
    pods_at_start = {m: set(fleet.members[m].web_pods) for m in fleet.members}

    traffic = Traffic(proxy)
    counts = {"pods": 0, "reloads": 0, "outages": 0}
    clients = traffic.tasks()
    churner = asyncio.ensure_future(churn(world, proxy, traffic.stop, counts))
    await asyncio.sleep(SOAK_SECONDS)
    traffic.stop.set()
    await asyncio.gather(*clients, churner)

    # Put the fleet back as it was: the same pods, every member up.
    for m, wanted in pods_at_start.items():
        for ip in sorted(wanted - set(fleet.members[m].web_pods)):
            await fleet.add_pod(m, ip=ip, publish=False)
        for ip in sorted(set(fleet.members[m].web_pods) - wanted):
            await fleet.remove_pod(m, ip, publish=False)
        fleet.publish(m)
    await eventually(lambda: proxy.connected("east") and proxy.connected("west"), what="both members connected")
    await eventually(
        lambda: all(proxy.pool_addresses(m) == pods_at_start[m] for m in pods_at_start), what="pools as at the start"
    )

    summary = f"ok={traffic.ok} churn={counts} failures={ {k: len(v) for k, v in traffic.failures.items()} }"
    assert counts["reloads"] >= SOAK_SECONDS / 3 and counts["outages"] >= 1, summary
    assert min(traffic.ok.values()) > 0, summary
    # Local pods are removed gracefully and west outages leave east serving: no HTTP request may fail.
    assert traffic.failures["http"] == [], f"{summary} {traffic.failures['http'][:5]}"
    assert traffic.failures["dns"] == [], f"{summary} {traffic.failures['dns'][:5]}"
    assert len(traffic.failures["tcp"]) <= traffic.ok["tcp"] // 100, f"{summary} {traffic.failures['tcp'][:5]}"

    async def settled() -> bool:
        gc.collect()
        return open_fds() <= base_fds + FD_TOLERANCE and len(live_tasks()) <= len(base_tasks)

    try:
        await eventually(settled, timeout=5, what="fds and tasks back to baseline")
    except AssertionError:
        extra = sorted(t.get_name() for t in live_tasks() - base_tasks)
        raise AssertionError(
            f"fds {base_fds} -> {open_fds()}, tasks {len(base_tasks)} -> {len(live_tasks())} new: {extra[:10]}"
        ) from None
    rss = rss_bytes()
    assert rss <= base_rss + RSS_TOLERANCE, f"RSS {base_rss >> 20} MiB -> {rss >> 20} MiB; {summary}"
    print(f"soak: {summary} fds {base_fds}->{open_fds()} rss {base_rss >> 20}->{rss >> 20} MiB")
