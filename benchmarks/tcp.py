"""TCP scenario: bulk throughput (iperf3, one stream) and new connections per second, direct vs fedproxy vs
HAProxy in tcp mode.

Connection rate: `PARALLEL` loops in the harness process (uvloop, asyncio Protocols) each open a connection,
send a one-line HTTP/1.0 request to the nginx backend, read until the server closes, and start over. Every
connection crosses the proxy's accept, upstream connect and two transports: the part PERFORMANCE.md says
Python pays for.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time

from .context import Context, run_tool
from .env import LOAD_CORE
from .http import start_haproxy
from .report import Column, Table
from .tools import Child, cpu_seconds, ensure, pinned

PARALLEL = 32  # concurrent connect/close loops
REQUEST = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n"


class _OneShot(asyncio.Protocol):
    """Sends the request, completes `done` when the server closes (True if some response arrived)."""

    def __init__(self, done: asyncio.Future[bool]) -> None:
        self.done = done
        self.got = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.got = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.got and exc is None)


async def connection_rate(port: int, duration: float, parallel: int = PARALLEL) -> tuple[int, int]:
    """(completed connections, failed ones) over `duration` seconds against 127.0.0.1:port."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    counts = [0, 0]

    async def one_loop() -> None:
        while loop.time() < deadline:
            done: asyncio.Future[bool] = loop.create_future()
            try:
                transport, _ = await loop.create_connection(functools.partial(_OneShot, done), "127.0.0.1", port)
                ok = await asyncio.wait_for(done, 5.0)
                transport.close()
            except (OSError, TimeoutError):
                ok = False
            counts[0 if ok else 1] += 1

    await asyncio.gather(*(one_loop() for _ in range(parallel)))
    return counts[0], counts[1]


def columns() -> list[Column]:
    return [
        Column("mbps", "throughput MB/s", ratio=True),
        Column("conns", "new conns/s", ratio=True),
        Column("cpu_us", "CPU us/conn", "{:.1f}", better="lower"),
    ]


async def run(ctx: Context) -> Table:
    table = Table("tcp", "TCP L4: one iperf3 stream, and connect/request/close loops", columns(), reference="haproxy")
    table.notes.append(f"new conns/s: {PARALLEL} parallel loops in the harness (uvloop); CPU: the proxy's processes")
    env = ctx.env
    # name -> (bulk port, conn port, pid whose CPU is counted)
    subjects: dict[str, tuple[int, int, int]] = {}
    for name in ("direct", "fedproxy", "haproxy"):
        table.subject(name)
    started: list[Child] = []
    if env.backend is None:
        table.fail("direct", "conns", "no backend: nginx is not available")
    else:
        subjects["direct"] = (env.ports.iperf, env.ports.backend, env.backend.pid)
        if env.fedproxy_pid:
            subjects["fedproxy"] = (env.ports.bulk, env.ports.conn, env.fedproxy_pid)
        else:
            table.fail("fedproxy", "conns", env.fedproxy_error or "fedproxy not running")
        haproxy, ports, why = start_haproxy(ctx)
        if haproxy:
            started.append(haproxy)
            subjects["haproxy"] = (ports["bulk"], ports["conn"], haproxy.pid)
        else:
            table.fail("haproxy", "conns", why)
    iperf = ensure("iperf3") if env.iperf is not None else None
    if iperf is None:
        table.notes.append("throughput not measured: iperf3 not available")
    try:
        for r in range(ctx.rounds):
            for name, (bulk, conn, pid) in subjects.items():
                if iperf:
                    ctx.progress("tcp", r, f"{name} throughput")
                    await _throughput(ctx, table, iperf, name, bulk)
                ctx.progress("tcp", r, f"{name} connection rate")
                before, t0 = cpu_seconds(pid), time.monotonic()
                ok, failed = await connection_rate(conn, ctx.duration)
                elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - before
                if ok == 0 or failed > ok * 0.01:
                    table.fail(name, "conns", f"{failed} failed connections, {ok} completed")
                    continue
                table.add(name, "conns", ok / elapsed)
                table.add(name, "cpu_us", cpu / ok * 1e6)
    finally:
        for child in started:
            child.stop()
    return table


async def _throughput(ctx: Context, table: Table, iperf: str, name: str, port: int) -> None:
    cmd = pinned([iperf, "-c", "127.0.0.1", "-p", str(port), "-t", f"{ctx.duration:g}", "-J"], LOAD_CORE)
    code, out, err = await run_tool(cmd, ctx.duration + 30)
    try:
        doc = json.loads(out)
        if "error" in doc:
            raise ValueError(doc["error"])
        received = doc["end"]["sum_received"]
        table.add(name, "mbps", received["bytes"] / received["seconds"] / 1e6)
    except (ValueError, KeyError, TypeError) as exc:
        table.fail(name, "mbps", f"iperf3 exited {code}: {exc} {err.strip()[-200:]}")
