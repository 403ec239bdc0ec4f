"""HTTP scenario: wrk against the backend directly, fedproxy, an nginx reverse proxy and HAProxy in http mode.

Each subject is measured with keep-alive connections and with a new connection per request
(`Connection: close`): requests/s, p50 and p99 latency (`wrk --latency`), and the proxy's CPU time per
request (utime + stime of its process tree from /proc, before and after the run). Subjects are interleaved
inside each round so slow drift of the machine spreads over all of them.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

from .context import Context, run_tool
from .env import LOAD_CORE, SUT_CORE, nginx_preamble
from .report import Column, Table
from .tools import Child, cpu_seconds, ensure, free_port, pinned, wait_port

CONNECTIONS = 64  # wrk connections, as in shared/PERFORMANCE.md
MODES = {"ka": "keep-alive", "close": "new connection per request"}


def nginx_proxy_conf(workdir: Path, port: int, backend: int) -> str:
    return (
        nginx_preamble(workdir, "proxy-nginx")
        + f"""\
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""
    )


def haproxy_conf(http_port: int, backend: int, bulk_port: int, iperf: int, conn_port: int) -> str:
    """HTTP and TCP mode frontends in one process (the TCP scenario uses the same config)."""
    # HAProxy refuses to start when maxconn needs more descriptors (about 2 per connection) than it may open.
    maxconn = max(1000, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200) // 2)
    return f"""\
global
  maxconn {maxconn}
  nbthread 1
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen http
  mode http
  option http-keep-alive
  http-reuse always
  bind 127.0.0.1:{http_port}
  server s1 127.0.0.1:{backend}
listen bulk
  mode tcp
  bind 127.0.0.1:{bulk_port}
  server s1 127.0.0.1:{iperf}
listen conn
  mode tcp
  bind 127.0.0.1:{conn_port}
  server s1 127.0.0.1:{backend}
"""


def start_nginx_proxy(ctx: Context) -> tuple[Child | None, int, str]:
    nginx = ensure("nginx")
    if not nginx:
        return None, 0, "nginx not available"
    port = free_port()
    conf = ctx.workdir / "proxy-nginx.conf"
    conf.write_text(nginx_proxy_conf(ctx.workdir, port, ctx.env.ports.backend))
    cmd = [nginx, "-e", str(ctx.workdir / "proxy-nginx.err"), "-p", str(ctx.workdir), "-c", str(conf)]
    child = Child("nginx-proxy", pinned(cmd, SUT_CORE), ctx.workdir / "proxy-nginx.log").start()
    if not wait_port("127.0.0.1", port):
        child.stop()
        return None, 0, f"nginx reverse proxy did not start: {child.log_tail()}"
    return child, port, ""


def start_haproxy(ctx: Context) -> tuple[Child | None, dict[str, int], str]:
    """HAProxy with http, bulk (to iperf3) and conn (to the nginx backend) frontends; ports by name."""
    haproxy = ensure("haproxy")
    if not haproxy:
        return None, {}, "haproxy not available"
    ports = {"http": free_port(), "bulk": free_port(), "conn": free_port()}
    p = ctx.env.ports
    conf = ctx.workdir / "haproxy.cfg"
    conf.write_text(haproxy_conf(ports["http"], p.backend, ports["bulk"], p.iperf, ports["conn"]))
    child = Child("haproxy", pinned([haproxy, "-db", "-f", str(conf)], SUT_CORE), ctx.workdir / "haproxy.log").start()
    if not wait_port("127.0.0.1", ports["http"]):
        child.stop()
        return None, {}, f"haproxy did not start: {child.log_tail()}"
    return child, ports, ""


def start_floor(ctx: Context) -> tuple[Child | None, int, str]:
    """The Python floor (benchmarks/floor_proxy.py) on the system-under-test core, to the same backend."""
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).with_name("floor_proxy.py")), str(port), str(ctx.env.ports.backend)]
    child = Child("python-floor", pinned(cmd, SUT_CORE), ctx.workdir / "python-floor.log").start()
    if not wait_port("127.0.0.1", port):
        child.stop()
        return None, 0, f"the floor proxy did not start: {child.log_tail()}"
    return child, port, ""


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/s, p50/p99 in ms, completed requests and errors (socket errors + non-2xx/3xx) from wrk's text."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise ValueError(f"no Requests/sec in wrk output: {out[-300:]!r}")
    result = {"rps": float(rps.group(1))}
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            result[key] = _ms(m.group(1), m.group(2))
    total = re.search(r"(\d+) requests in", out)
    result["requests"] = float(total.group(1)) if total else 0.0
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    result["errors"] = float(errors)
    return result


def columns() -> list[Column]:
    out = []
    for mode, label in (("ka", "keep-alive"), ("close", "close")):
        out += [
            Column(f"{mode}_rps", f"{label} req/s", ratio=True),
            Column(f"{mode}_p50", f"{label} p50 ms", "{:.2f}", better="lower"),
            Column(f"{mode}_p99", f"{label} p99 ms", "{:.2f}", better="lower"),
            Column(f"{mode}_cpu_us", f"{label} CPU us/req", "{:.1f}", better="lower"),
        ]
    return out


async def run(ctx: Context) -> Table:
    table = Table("http", f"HTTP/1.1, {CONNECTIONS} connections, small responses", columns(), reference="nginx")
    table.notes.append("CPU us/req: the proxy's process tree (for direct: the backend nginx)")
    wrk = ensure("wrk")
    subjects: dict[str, tuple[int, int]] = {}  # name -> (port, pid whose CPU is counted)
    started: list[Child] = []
    env = ctx.env
    table.notes.append(
        "python floor: the least an asyncio proxy on uvloop does per request (benchmarks/floor_proxy.py: no "
        "routing, balancing, rewriting or metrics), the ceiling of any Python data path on this machine"
    )
    for name in ("direct", "fedproxy", "python floor", "nginx", "haproxy"):
        table.subject(name)
    if env.backend is not None:
        subjects["direct"] = (env.ports.backend, env.backend.pid)
    else:
        table.fail("direct", "ka_rps", "no backend: nginx is not available")
    if env.fedproxy_pid:
        subjects["fedproxy"] = (env.ports.http, env.fedproxy_pid)
    else:
        table.fail("fedproxy", "ka_rps", env.fedproxy_error or "fedproxy not running")
    if env.backend is not None:
        nginx, port, why = start_nginx_proxy(ctx)
        if nginx:
            started.append(nginx)
            subjects["nginx"] = (port, nginx.pid)
        else:
            table.fail("nginx", "ka_rps", why)
        floor, port, why = start_floor(ctx)
        if floor:
            started.append(floor)
            subjects["python floor"] = (port, floor.pid)
            table.fail("python floor", "close_rps", "not measured: the floor is a keep-alive reference")
        else:
            table.fail("python floor", "ka_rps", why)
        haproxy, hports, why = start_haproxy(ctx)
        if haproxy:
            started.append(haproxy)
            subjects["haproxy"] = (hports["http"], haproxy.pid)
        else:
            table.fail("haproxy", "ka_rps", why)
    if not wrk:
        for name in subjects:
            table.fail(name, "ka_rps", "wrk not available")
        subjects = {}
    try:
        for r in range(ctx.rounds):
            for name, (port, pid) in subjects.items():
                for mode, label in MODES.items():
                    if name == "python floor" and mode == "close":
                        continue  # a keep-alive reference (its Connection: close handling is not the point)
                    ctx.progress("http", r, f"{name} {label}")
                    await _measure(ctx, table, wrk or "", name, port, pid, mode)
    finally:
        for child in started:
            child.stop()
    return table


async def _measure(ctx: Context, table: Table, wrk: str, name: str, port: int, pid: int, mode: str) -> None:
    cmd = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{ctx.duration:g}s", "--latency", "--timeout", "5s"]
    if mode == "close":
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}/")
    before = cpu_seconds(pid)
    code, out, err = await run_tool(pinned(cmd, LOAD_CORE), ctx.duration + 30)
    cpu = cpu_seconds(pid) - before
    try:
        if code != 0:
            raise ValueError(f"wrk exited {code}: {err.strip()[-300:]}")
        result = parse_wrk(out)
    except ValueError as exc:
        table.fail(name, f"{mode}_rps", str(exc))
        return
    if result["requests"] == 0 or result["errors"] > result["requests"] * 0.01:
        table.fail(name, f"{mode}_rps", f"{result['errors']:.0f} errors for {result['requests']:.0f} requests")
        return
    table.add(name, f"{mode}_rps", result["rps"])
    for key in ("p50", "p99"):
        if key in result:
            table.add(name, f"{mode}_{key}", result[key])
    table.add(name, f"{mode}_cpu_us", cpu / result["requests"] * 1e6)
