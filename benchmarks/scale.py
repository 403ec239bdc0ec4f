"""Scale scenario: catalog rebuild time and memory vs clusters x services x endpoints, and fedproxy's memory per
idle client connection.

Rebuild: ClusterSnapshots are built in the harness process (pure values, no emulator), then
`build_catalog` + `build_state` are timed together (a config with one HTTP route per service, so every
service gets a pool). Memory: what the resulting Catalog and ServingState hold (tracemalloc, a separate
build so tracing does not slow the timed one). Idle connections: the RSS delta of the fedproxy process tree
after opening N client connections to its TCP listener (each proxied to the nginx backend) and leaving them
idle; N is 10,000 unless RLIMIT_NOFILE (fedproxy needs two descriptors per connection) says fewer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import resource
import statistics
import time
import tracemalloc

from fedproxy.balancing import build_state
from fedproxy.catalog import CatalogMemo, build_catalog
from fedproxy.config import ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute
from fedproxy.model import (
    ClusterSnapshot,
    EndpointSlice,
    Locality,
    Service,
    ServiceExport,
    ServiceKey,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)

from .context import Context
from .report import Column, Table
from .tools import rss_bytes

FULL_SIZES = ((1, 100, 10), (5, 1000, 20))  # (clusters, services, endpoints per service per cluster)
QUICK_SIZES = ((5, 1000, 20),)
IDLE_CONNECTIONS = 10_000
NS = "scale"


def snapshots(clusters: int, services: int, endpoints: int) -> list[ClusterSnapshot]:
    """`clusters` members each exporting `services` services with `endpoints` ready pods each."""
    out = []
    for c in range(clusters):
        svcs, slices, exports = {}, {}, {}
        for s in range(services):
            name = f"svc-{s}"
            svcs[(NS, name)] = Service(
                NS,
                name,
                cluster_ips=(f"10.{c}.{s // 250}.{s % 250 + 1}",),
                ports=(ServicePort("http", 80, "TCP", 8080),),
            )
            eps = tuple(
                SliceEndpoint((f"10.{100 + c}.{(s * endpoints + e) // 250 % 250}.{(s * endpoints + e) % 250 + 1}",))
                for e in range(endpoints)
            )
            slices[(NS, f"{name}-1")] = EndpointSlice(
                NS, f"{name}-1", name, ports=(SlicePort("http", 8080),), endpoints=eps
            )
            exports[(NS, name)] = ServiceExport(NS, name)
        out.append(
            ClusterSnapshot(
                f"member-{c}",
                Locality("r", f"z{c}"),
                services=svcs,
                endpointslices=slices,
                serviceexports=exports,
            )
        )
    return out


def config(clusters: int, services: int) -> Config:
    routes = tuple(HttpRoute(ServiceKey(NS, f"svc-{s}"), host=f"svc-{s}.example") for s in range(services))
    members = tuple(
        ClusterConfig(name=f"member-{c}", kubeconfig="/dev/null", local=c == 0, pods_reachable=True)
        for c in range(clusters)
    )
    return Config(clusters=members, http=HttpConfig(listeners=(HttpListener(port=8080, routes=routes),)))


def rebuild(snaps: list[ClusterSnapshot], cfg: Config) -> object:
    catalog = build_catalog(snaps, cfg, version=1)
    return build_state(cfg, catalog, now=0.0, version=1)


def incremental(snaps: list[ClusterSnapshot], cfg: Config, changes: int = 5) -> list[float]:
    """ms of build_catalog + build_state with the memo and previous state, after one EndpointSlice change each."""
    memo = CatalogMemo()
    state = build_state(cfg, build_catalog(snaps, cfg, 1, memo), now=0.0, version=1)
    snaps = list(snaps)
    times = []
    for i in range(changes):
        c = i % len(snaps)
        key = next(iter(snaps[c].endpointslices))
        sl = snaps[c].endpointslices[key]
        sl = dataclasses.replace(sl, endpoints=sl.endpoints[1:] + sl.endpoints[:1])  # a new object, as a watch event
        snaps[c] = snaps[c].with_object("endpointslices", key, sl)
        t0 = time.perf_counter()
        catalog = build_catalog(snaps, cfg, i + 2, memo)
        state = build_state(cfg, catalog, now=0.0, version=i + 2, previous=state)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def columns() -> list[Column]:
    return [
        Column("rebuild_ms", "rebuild ms", "{:,.1f}", better="lower"),
        Column("catalog_mib", "catalog+state MiB", "{:,.1f}", better="lower"),
        Column("conns", "idle conns", "{:,.0f}"),
        Column("kib_per_conn", "RSS KiB/conn", "{:.1f}", better="lower"),
        Column("mib_per_10k", "RSS MiB per 10k", "{:.1f}", better="lower"),
    ]


def measurements(rounds: int, quick: bool) -> int:
    """Timed measurements a run makes (for the time-left estimate)."""
    return rounds * len(QUICK_SIZES if quick else FULL_SIZES) + 1


async def run(ctx: Context) -> Table:
    table = Table("scale", "Scale: catalog rebuild, idle connection memory", columns())
    table.note("idle conns: measured once per run (first round): RSS growth of the fedproxy process tree")
    table.note("rebuild: build_catalog + build_state, one HTTP route (pool) per service, median of 3 per round")
    table.note("incremental: the same with a CatalogMemo and previous= after one EndpointSlice change, median of 5")
    sizes = QUICK_SIZES if ctx.quick else FULL_SIZES
    idle_name = "fedproxy idle TCP conns"
    for r in range(ctx.rounds):
        for clusters, services, endpoints in sizes:
            name = f"catalog {clusters}x{services:,}x{endpoints}"
            ctx.progress("scale", r, name)
            await asyncio.to_thread(_catalog_round, table, name, clusters, services, endpoints, r == 0)
            await asyncio.to_thread(_incremental_round, table, name, clusters, services, endpoints)
        if r == 0:
            # Once: the process keeps (and reuses) memory freed when the connections close, so a second
            # round in the same process would measure reuse, not what 10,000 connections cost.
            ctx.progress("scale", r, idle_name)
            await _idle_round(ctx, table, idle_name)
    return table


def _catalog_round(table: Table, name: str, clusters: int, services: int, endpoints: int, memory: bool) -> None:
    snaps, cfg = snapshots(clusters, services, endpoints), config(clusters, services)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        rebuild(snaps, cfg)
        times.append((time.perf_counter() - t0) * 1000)
    table.add(name, "rebuild_ms", statistics.median(times))
    if memory:  # deterministic: once is enough
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        state = rebuild(snaps, cfg)
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del state
        table.add(name, "catalog_mib", held / 2**20)


def _incremental_round(table: Table, name: str, clusters: int, services: int, endpoints: int) -> None:
    snaps, cfg = snapshots(clusters, services, endpoints), config(clusters, services)
    table.add(
        f"{name} incremental rebuild after one slice change", "rebuild_ms", statistics.median(incremental(snaps, cfg))
    )


class _Idle(asyncio.Protocol):
    pass


async def _idle_round(ctx: Context, table: Table, name: str) -> None:
    pid = ctx.env.fedproxy_pid
    if pid is None:
        table.fail(name, "kib_per_conn", ctx.env.fedproxy_error or "fedproxy not running")
        return
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    count = min(IDLE_CONNECTIONS, (nofile - 1000) // 2)
    if count < IDLE_CONNECTIONS:
        table.note(f"idle conns limited to {count:,} by RLIMIT_NOFILE {nofile} (2 descriptors each in fedproxy)")
    loop = asyncio.get_running_loop()
    port = ctx.env.ports.idle
    transports: list[asyncio.BaseTransport] = []
    await asyncio.sleep(0.5)
    before = rss_bytes(pid)
    try:
        for start in range(0, count, 200):  # batches: a listen backlog overflow would stall connects
            batch = await asyncio.gather(
                *(loop.create_connection(_Idle, "127.0.0.1", port) for _ in range(min(200, count - start))),
                return_exceptions=True,
            )
            for item in batch:
                if isinstance(item, BaseException):
                    raise item
                transports.append(item[0])
        await asyncio.sleep(max(2.0, ctx.duration / 2))  # upstream connects and buffers settle
        alive = sum(1 for t in transports if not t.is_closing())
        delta = rss_bytes(pid) - before
        if alive < count * 0.99:
            table.fail(name, "kib_per_conn", f"only {alive} of {count} connections stayed open")
            return
        table.add(name, "conns", alive)
        table.add(name, "kib_per_conn", delta / alive / 1024)
        table.add(name, "mib_per_10k", delta / alive * 10_000 / 2**20)
    except OSError as exc:
        table.fail(name, "kib_per_conn", f"after {len(transports)} connections: {exc}")
    finally:
        for t in transports:
            t.close()
        await asyncio.sleep(1.0)
