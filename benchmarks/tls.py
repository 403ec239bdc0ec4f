"""HTTPS and gRPC scenarios (issue 13): fedproxy terminating TLS and proxying gRPC, against nginx and HAProxy.

- `https`: wrk over HTTPS keep-alive connections to fedproxy, nginx (`listen ... ssl`) and HAProxy
  (`bind ... ssl crt`), all terminating TLS with the same EC P-256 certificate and proxying to the plain-HTTP
  nginx backend of the shared environment: requests/s, p50, p99, CPU per request.
- `grpc`: h2load sending unary gRPC calls (one POST with a 5-byte-header message per call, `te: trailers`) over
  h2c with prior knowledge to fedproxy (`h2c: true` listener, `upstream_protocol: h2c` route), nginx
  (`listen ... http2` + `grpc_pass`) and HAProxy (`proto h2` on bind and server), all proxying to one
  gRPC backend (nginx pinned to the load core answering every call with a canned message and `grpc-status: 0`;
  a grpcio client checks each subject once). `direct` is h2load straight to the backend.

Each scenario starts its own fedproxy process (`fedproxy run --config`, pinned to the system-under-test core)
with the listeners it needs, discovering the shared emulated member; the references are started by PID and
stopped at the end. A subject that does not start or fails its measurement shows as failed; the run goes on.
"""

from __future__ import annotations

import asyncio
import re
import resource
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from fedproxy.sim import objects
from fedproxy.sim.pki import CertificateAuthority

from .context import Context, run_tool
from .env import CLUSTER, LOAD_CORE, NAMESPACE, SUT_CORE, nginx_preamble, slice_for
from .http import parse_wrk
from .report import Column, Table
from .tools import Child, cpu_seconds, ensure, free_port, pinned, wait_port

# h2load is not in tools.PACKAGES (not this module's file); registering it here lets `ensure` install it.

CONNECTIONS = 64  # wrk connections, as in the http scenario
H2_CONNECTIONS, H2_STREAMS = 16, 10  # h2load -c / -m
GRPC_PATH = "/bench.Echo/Unary"
GRPC_MESSAGE = b"\x00\x00\x00\x00\x04ping"  # uncompressed flag, 4-byte length, payload
GRPC_SERVICE_PORT = 50051


def write_certificate(workdir: Path) -> tuple[Path, Path, Path]:
    """Leaf certificate for 127.0.0.1/localhost: (cert, key, cert+key PEM for HAProxy)."""
    pair = CertificateAuthority("fedproxy-bench-ca").issue("localhost", ips=("127.0.0.1",), dns_names=("localhost",))
    cert, key, both = workdir / "tls.crt", workdir / "tls.key", workdir / "tls.pem"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    both.write_bytes(pair.cert_pem + pair.key_pem)
    return cert, key, both


def fedproxy_config(kubeconfig: Path, https: int, grpc: int, admin: int, cert: Path, key: Path) -> str:
    """HTTPS listener -> bench/http (HTTP/1.1 upstream); h2c listener -> bench/grpc (h2c upstream)."""
    return f"""\
clusters:
  - {{name: {CLUSTER}, kubeconfig: {kubeconfig}, context: {CLUSTER}, local: true, pods_reachable: true}}
discovery: {{grace_period: 60}}
http:
  access_log: "off"
  listeners:
    - name: https
      address: 127.0.0.1
      port: {https}
      tls: {{certificates: [{{cert_file: {cert}, key_file: {key}}}]}}
      routes: [{{path_prefix: /, service: {NAMESPACE}/http}}]
    - name: grpc
      address: 127.0.0.1
      port: {grpc}
      h2c: true
      routes: [{{path_prefix: /, service: {NAMESPACE}/grpc, upstream_protocol: h2c}}]
dns: {{enabled: false}}
admin: {{address: 127.0.0.1, port: {admin}}}
balancing: {{max_connections: 1000000, max_pending: 1000000, max_requests: 1000000}}
"""


def grpc_backend_conf(workdir: Path, port: int) -> str:
    """nginx answering every unary call with the file `grpc-root/<service>/<method>` (a gRPC message) and an OK
    status trailer: a gRPC backend in C, so the backend is not what limits the proxies (a grpcio server in
    Python answers a few thousand calls/s). A POST to a static file is a 405, turned into that file with 200."""
    return (
        nginx_preamble(workdir, "grpc-backend")
        + f"""\
  server {{
    listen 127.0.0.1:{port} http2 backlog=4096;
    root {workdir}/grpc-root;
    location / {{
      default_type application/grpc;
      add_trailer grpc-status 0 always;
      add_trailer grpc-message "" always;
      error_page 405 =200 $uri;
      # Read the request body before answering: answering first makes nginx reset the stream afterwards, which
      # nginx's grpc_pass in front sees as "upstream sent frame for unknown stream" (about 1 % of calls failed).
      mirror /drain;
      mirror_request_body on;
    }}
    location = /drain {{ internal; return 204; }}
  }}
}}
"""
    )


def nginx_conf(workdir: Path, https: int, grpc: int, backend: int, grpc_backend: int, cert: Path, key: Path) -> str:
    return (
        nginx_preamble(workdir, "tls-nginx")
        + f"""\
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; keepalive_requests 10000000; }}
  upstream grpcbackend {{ server 127.0.0.1:{grpc_backend}; keepalive 128; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{https} ssl backlog=4096;
    ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{grpc} http2 backlog=4096;
    location / {{ grpc_pass grpc://grpcbackend; }}
  }}
}}
"""
    )


def haproxy_conf(https: int, grpc: int, backend: int, grpc_backend: int, pem: Path) -> str:
    # HAProxy refuses to start when maxconn needs more descriptors (about 2 per connection) than it may open.
    maxconn = max(1000, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200) // 2)
    return f"""\
global
  maxconn {maxconn}
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen https
  option http-keep-alive
  http-reuse always
  bind 127.0.0.1:{https} ssl crt {pem}
  server s1 127.0.0.1:{backend}
listen grpc
  http-reuse always
  bind 127.0.0.1:{grpc} proto h2
  server s1 127.0.0.1:{grpc_backend} proto h2
"""


class Servers:
    """What the two scenarios measure: the grpc backend, a fedproxy with TLS/h2c listeners, nginx and HAProxy.

    `ports[subject] = {"https": port, "grpc": port}`, `pids[subject]` for CPU accounting, `errors[subject]`
    why a subject is missing. Started once per scenario; `stop()` ends every child by PID.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.children: list[Child] = []
        self.ports: dict[str, dict[str, int]] = {}
        self.pids: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.grpc_backend = 0

    async def start(self) -> None:
        ctx, work = self.ctx, self.ctx.workdir
        cert, key, pem = write_certificate(work)
        backend = ctx.env.ports.backend
        self.grpc_backend = free_port()
        self._start_grpc_backend()
        ctx.env.api.apply_all(
            [
                objects.service(
                    NAMESPACE, "grpc", cluster_ip="127.1.0.9", ports=[{"name": "p", "port": GRPC_SERVICE_PORT}]
                ),
                slice_for("grpc", [("127.0.0.1", self.grpc_backend)]),
                objects.service_export(NAMESPACE, "grpc"),
            ]
        )
        await self._start_fedproxy(cert, key)
        if ctx.env.backend is None:
            self.errors["nginx"] = self.errors["haproxy"] = "no backend: nginx is not available"
            return
        nginx = ensure("nginx")
        if nginx:
            p = {"https": free_port(), "grpc": free_port()}
            conf = work / "tls-nginx.conf"
            conf.write_text(nginx_conf(work, p["https"], p["grpc"], backend, self.grpc_backend, cert, key))
            child = self._start(
                "tls-nginx",
                pinned([nginx, "-e", str(work / "tls-nginx.err"), "-p", str(work), "-c", str(conf)], SUT_CORE),
            )
            self._check("nginx", child, p)
        else:
            self.errors["nginx"] = "nginx not available"
        haproxy = ensure("haproxy")
        if haproxy:
            p = {"https": free_port(), "grpc": free_port()}
            conf = work / "tls-haproxy.cfg"
            conf.write_text(haproxy_conf(p["https"], p["grpc"], backend, self.grpc_backend, pem))
            child = self._start("tls-haproxy", pinned([haproxy, "-db", "-f", str(conf)], SUT_CORE))
            self._check("haproxy", child, p)
        else:
            self.errors["haproxy"] = "haproxy not available"

    def _start_grpc_backend(self) -> None:
        nginx = ensure("nginx")
        if not nginx:
            self.errors["direct"] = "no gRPC backend: nginx is not available"
            return
        work = self.ctx.workdir
        (work / "grpc-root" / "bench.Echo").mkdir(parents=True, exist_ok=True)
        (work / "grpc-root" / "bench.Echo" / "Unary").write_bytes(GRPC_MESSAGE)
        conf = work / "grpc-backend.conf"
        conf.write_text(grpc_backend_conf(work, self.grpc_backend))
        cmd = [nginx, "-e", str(work / "grpc-backend.err"), "-p", str(work), "-c", str(conf)]
        child = self._start("grpc-backend", pinned(cmd, LOAD_CORE))
        if wait_port("127.0.0.1", self.grpc_backend) and grpc_call(self.grpc_backend) == "":
            self.ports["direct"], self.pids["direct"] = {"grpc": self.grpc_backend}, child.pid
        else:
            self.errors["direct"] = f"gRPC backend did not start or answer: {child.log_tail()}"

    def _start(self, name: str, cmd: list[str]) -> Child:
        child = Child(name, cmd, self.ctx.workdir / f"{name}.log").start()
        self.children.append(child)
        return child

    def _check(self, subject: str, child: Child, ports: dict[str, int]) -> None:
        if all(wait_port("127.0.0.1", port) for port in ports.values()):
            self.ports[subject], self.pids[subject] = ports, child.pid
        else:
            self.errors[subject] = f"{subject} did not start: {child.log_tail()}"

    async def _start_fedproxy(self, cert: Path, key: Path) -> None:
        work = self.ctx.workdir
        p = {"https": free_port(), "grpc": free_port()}
        admin = free_port()
        config = work / "tls-fedproxy.yaml"
        config.write_text(fedproxy_config(work / "kubeconfig.yaml", p["https"], p["grpc"], admin, cert, key))
        cmd = [sys.executable, "-m", "fedproxy.cli", "--log-level", "WARNING", "run", "--config", str(config)]
        child = self._start("tls-fedproxy", pinned(cmd, SUT_CORE))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not child.alive():
                self.errors["fedproxy"] = f"fedproxy exited: {child.log_tail()}"
                return
            https_ok = await asyncio.to_thread(_https_status, f"https://127.0.0.1:{p['https']}/") == 200
            if https_ok and await asyncio.to_thread(grpc_call, p["grpc"]) == "":
                self.ports["fedproxy"], self.pids["fedproxy"] = p, child.pid
                return
            await asyncio.sleep(0.3)
        self.errors["fedproxy"] = f"fedproxy not ready after 30 s: {child.log_tail()}"

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def _https_status(url: str) -> int:
    """Status of a GET over TLS without verification (the benchmark's certificate is self-issued)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def grpc_call(port: int) -> str:
    """'' if one unary call through 127.0.0.1:port is answered with the echo, else why not."""
    import grpc

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(GRPC_PATH)
            reply = call(b"ping", timeout=2)
    except grpc.RpcError as exc:
        return f"gRPC call failed: {exc.code()} {exc.details()}"  # type: ignore[attr-defined]
    return "" if reply == b"ping" else f"unexpected reply {reply[:50]!r}"


_H2_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_h2load(out: str) -> dict[str, float]:
    """Requests/s, mean request time (ms), succeeded requests and errors (failed+errored+timeout, non-2xx)."""
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    done = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out
    )
    if not rps or not done:
        raise ValueError(f"unexpected h2load output: {out[-300:]!r}")
    result = {"rps": float(rps.group(1)), "requests": float(done.group(1))}
    errors = sum(int(x) for x in done.groups()[1:])
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if codes:
        errors += sum(int(x) for x in codes.groups()[1:])
    result["errors"] = float(errors)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    if mean:
        result["mean"] = float(mean.group(1)) * _H2_UNITS[mean.group(2)]
    return result


def https_columns() -> list[Column]:
    return [
        Column("rps", "req/s", ratio=True),
        Column("p50", "p50 ms", "{:.2f}", better="lower"),
        Column("p99", "p99 ms", "{:.2f}", better="lower"),
        Column("cpu_us", "CPU us/req", "{:.1f}", better="lower"),
    ]


def grpc_columns() -> list[Column]:
    return [
        Column("rps", "calls/s", ratio=True),
        Column("mean", "mean ms", "{:.2f}", better="lower"),
        Column("cpu_us", "CPU us/call", "{:.1f}", better="lower"),
    ]


async def run_https(ctx: Context) -> Table:
    table = Table(
        "https",
        f"HTTPS keep-alive, {CONNECTIONS} connections, TLS terminated by the proxy",
        https_columns(),
        reference="nginx",
    )
    table.note("same EC P-256 certificate everywhere; HTTP/1.1 to the plain nginx backend; CPU: the proxy's processes")
    return await _run(ctx, table, "https", ("fedproxy", "nginx", "haproxy"), ensure("wrk"), "wrk")


async def run_grpc(ctx: Context) -> Table:
    title = f"gRPC unary over h2c, {H2_CONNECTIONS} connections x {H2_STREAMS} streams"
    table = Table("grpc", title, grpc_columns(), reference="nginx")
    table.note(
        "backend: nginx on the load core answering every call from a file with grpc-status 0; direct = h2load to it"
    )
    table.note("h2load counts HTTP status only; each subject first passed one real grpcio call")
    return await _run(ctx, table, "grpc", ("direct", "fedproxy", "nginx", "haproxy"), ensure("h2load"), "h2load")


async def _run(
    ctx: Context, table: Table, kind: str, names: tuple[str, ...], tool: str | None, tool_name: str
) -> Table:
    for name in names:
        table.subject(name)
    servers = Servers(ctx)
    try:
        await servers.start()
        subjects: dict[str, int] = {}
        for name in names:
            port = servers.ports.get(name, {}).get(kind)
            if port is None:
                table.fail(name, "rps", servers.errors.get(name, f"{name} not running"))
            elif kind == "grpc" and (why := await asyncio.to_thread(grpc_call, port)):
                table.fail(name, "rps", why)
            elif not tool:
                table.fail(name, "rps", f"{tool_name} not available")
            else:
                subjects[name] = port
        for r in range(ctx.rounds):
            for name, port in subjects.items():
                ctx.progress(kind, r, name)
                measure = _measure_https if kind == "https" else _measure_grpc
                await measure(ctx, table, tool or "", name, port, servers.pids[name])
    finally:
        await asyncio.to_thread(servers.stop)
    return table


async def _measure_https(ctx: Context, table: Table, wrk: str, name: str, port: int, pid: int) -> None:
    cmd = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{ctx.duration:g}s", "--latency", "--timeout", "5s"]
    cmd.append(f"https://127.0.0.1:{port}/")
    await _measure(ctx, table, name, pid, cmd, parse_wrk, ("p50", "p99"))


async def _measure_grpc(ctx: Context, table: Table, h2load: str, name: str, port: int, pid: int) -> None:
    body = ctx.workdir / "grpc-request.bin"
    body.write_bytes(GRPC_MESSAGE)
    cmd = [h2load, "-t1", f"-c{H2_CONNECTIONS}", f"-m{H2_STREAMS}", "-D", f"{ctx.duration:g}", "-d", str(body)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers", f"http://127.0.0.1:{port}{GRPC_PATH}"]
    await _measure(ctx, table, name, pid, cmd, parse_h2load, ("mean",))


async def _measure(
    ctx: Context,
    table: Table,
    name: str,
    pid: int,
    cmd: list[str],
    parse: Callable[[str], dict[str, float]],
    extra: tuple[str, ...],
) -> None:
    """Run the load tool, record rps + `extra` keys + CPU per request, or why the measurement failed."""
    before = cpu_seconds(pid)
    code, out, err = await run_tool(pinned(cmd, LOAD_CORE), ctx.duration + 30)
    cpu = cpu_seconds(pid) - before
    try:
        if code != 0:
            raise ValueError(f"{Path(cmd[0]).name} exited {code}: {(err or out).strip()[-300:]}")
        result = parse(out)
    except ValueError as exc:
        table.fail(name, "rps", str(exc))
        return
    if result["requests"] == 0 or result["errors"] > result["requests"] * 0.01:
        table.fail(name, "rps", f"{result['errors']:.0f} errors for {result['requests']:.0f} requests")
        return
    table.add(name, "rps", result["rps"])
    for key in extra:
        if key in result:
            table.add(name, key, result[key])
    table.add(name, "cpu_us", cpu / result["requests"] * 1e6)
