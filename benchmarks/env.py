"""The system under test: an emulated member cluster, the benchmark backends and a real `fedproxy run` process.

The harness process (pinned to core 1 with the load generators and backends) runs one `FakeApiServer` whose
Services and EndpointSlices point at the backends on 127.0.0.1; fedproxy runs as a separate process pinned
to core 0 and discovers them through kubernetes-asyncio exactly as it would real members. One environment is
started per run and shared by the scenarios (each scenario starts and stops its own reference servers).
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.kubeconfig import write_kubeconfig

from .tools import Child, ensure, free_port, log, pinned, wait_port

NAMESPACE = "bench"
CLUSTER = "bench-1"
DNS_NAMES = 10  # services answered in the DNS scenario: name-0 .. name-9
SUT_CORE, LOAD_CORE = 0, 1


def nginx_preamble(workdir: Path, name: str) -> str:
    """What every generated nginx config starts with: one worker in the foreground, no access log, every
    file under ``workdir``; the caller continues inside ``http {``."""
    return f"""\
worker_processes 1;
daemon off;
user root;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.err warn;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {workdir}/tmp-body; proxy_temp_path {workdir}/tmp-proxy;
  fastcgi_temp_path {workdir}/tmp-fcgi; uwsgi_temp_path {workdir}/tmp-uwsgi; scgi_temp_path {workdir}/tmp-scgi;
"""


def backend_nginx_conf(workdir: Path, port: int) -> str:
    """nginx answering a small static response: the fastest backend on offer, so it is not the bottleneck."""
    return (
        nginx_preamble(workdir, "backend-nginx")
        + f"""\
  # the idle-connection test holds connections without sending a request
  client_header_timeout 600s;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type text/plain; return 200 "ok\\n"; }}
  }}
}}
"""
    )


def _service(name: str, port: int, cluster_ip: str, pods: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """Service + EndpointSlice + ServiceExport for one exported service whose pods are `pods` (ip, port)."""
    return [
        objects.service(NAMESPACE, name, cluster_ip=cluster_ip, ports=[{"name": "p", "port": port}]),
        slice_for(name, pods),
        objects.service_export(NAMESPACE, name),
    ]


def slice_for(name: str, pods: list[tuple[str, int]]) -> dict[str, Any]:
    """The one EndpointSlice of service `name` listing `pods` (all on the same target port)."""
    eps = [objects.endpoint([ip], pod_name=f"{name}-{i}", namespace=NAMESPACE) for i, (ip, _) in enumerate(pods)]
    return objects.endpoint_slice(
        NAMESPACE, f"{name}-1", name, ports=[{"name": "p", "port": pods[0][1]}], endpoints=eps
    )


def dns_name(i: int) -> str:
    return f"name-{i}.{NAMESPACE}.svc.clusterset.local"


@dataclass
class Ports:
    backend: int = field(default_factory=free_port)
    iperf: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    bulk: int = field(default_factory=free_port)
    conn: int = field(default_factory=free_port)
    idle: int = field(default_factory=free_port)
    dns: int = field(default_factory=lambda: free_port(udp_too=True))
    admin: int = field(default_factory=free_port)


def fedproxy_config(kubeconfig: Path, p: Ports) -> str:
    """One local member with reachable pods; HTTP / -> bench/http; TCP listeners for bulk, rate and idle."""
    return f"""\
clusters:
  - {{name: {CLUSTER}, kubeconfig: {kubeconfig}, context: {CLUSTER}, local: true, pods_reachable: true}}
discovery: {{grace_period: 60}}
http:
  access_log: "off"
  listeners:
    - {{name: web, address: 127.0.0.1, port: {p.http}, routes: [{{path_prefix: /, service: {NAMESPACE}/http}}]}}
tcp:
  listeners:
    - {{name: bulk, address: 127.0.0.1, port: {p.bulk}, service: {NAMESPACE}/iperf}}
    - {{name: conn, address: 127.0.0.1, port: {p.conn}, service: {NAMESPACE}/http}}
    - {{name: idle, address: 127.0.0.1, port: {p.idle}, service: {NAMESPACE}/idle, max_connections: 0}}
dns: {{address: 127.0.0.1, port: {p.dns}}}
admin: {{address: 127.0.0.1, port: {p.admin}}}
# Per-pool circuit breakers sized for load tests, not for protecting a real backend.
balancing: {{max_connections: 1000000, max_pending: 1000000, max_requests: 1000000}}
"""


class Environment:
    """Emulator, backends (nginx, iperf3) and the fedproxy process; `start()` / `stop()`."""

    def __init__(self, workdir: Path, workers: int = 1) -> None:
        self.workdir = workdir
        self.workers = workers
        self.ports = Ports()
        self.api = FakeApiServer(CLUSTER)
        self.backend: Child | None = None
        self.iperf: Child | None = None
        self.fedproxy: Child | None = None
        self.fedproxy_error = ""

    async def start(self) -> None:
        p = self.ports
        nginx = ensure("nginx")
        if nginx:
            for d in ("tmp-body", "tmp-proxy", "tmp-fcgi", "tmp-uwsgi", "tmp-scgi"):
                (self.workdir / d).mkdir(exist_ok=True)
            conf = self.workdir / "backend-nginx.conf"
            conf.write_text(backend_nginx_conf(self.workdir, p.backend))
            cmd = [nginx, "-e", str(self.workdir / "backend-nginx.err"), "-p", str(self.workdir), "-c", str(conf)]
            self.backend = Child("backend-nginx", pinned(cmd, LOAD_CORE), self.workdir / "backend-nginx.log").start()
            if not wait_port("127.0.0.1", p.backend):
                log(f"event=backend_failed log={self.backend.log_tail()!r}")
        iperf = ensure("iperf3")
        if iperf:
            cmd = [iperf, "-s", "-B", "127.0.0.1", "-p", str(p.iperf)]
            self.iperf = Child("iperf3-server", pinned(cmd, LOAD_CORE), self.workdir / "iperf3.log").start()
            wait_port("127.0.0.1", p.iperf)
        await self.api.start()
        objs: list[dict[str, Any]] = [objects.namespace(NAMESPACE)]
        objs += _service("http", 80, "127.1.0.1", [("127.0.0.1", p.backend)])
        objs += _service("iperf", 5201, "127.1.0.2", [("127.0.0.1", p.iperf)])
        objs += _service("idle", 9, "127.1.0.3", [("127.0.0.1", p.backend)])
        for i in range(DNS_NAMES):
            objs += _service(f"name-{i}", 80, f"127.1.1.{i + 1}", [("127.0.0.1", p.backend)])
        self.api.apply_all(objs)
        kubeconfig = write_kubeconfig(self.workdir / "kubeconfig.yaml", [self.api])
        config = self.workdir / "fedproxy.yaml"
        config.write_text(fedproxy_config(kubeconfig, p))
        cmd = [sys.executable, "-m", "fedproxy.cli", "--log-level", "WARNING", "run", "--config", str(config)]
        if self.workers != 1:
            cmd += ["--workers", str(self.workers)]
        self.fedproxy = Child("fedproxy", pinned(cmd, SUT_CORE), self.workdir / "fedproxy.log").start()
        self.fedproxy_error = await self._wait_ready()
        if self.fedproxy_error:
            log(f"event=fedproxy_not_ready reason={self.fedproxy_error!r}")

    async def _wait_ready(self, timeout: float = 30.0) -> str:
        """'' once /readyz answers 200 and the HTTP listener proxies to the backend; else why not."""
        assert self.fedproxy is not None
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.ports.admin}/readyz"
        while time.monotonic() < deadline:
            if not self.fedproxy.alive():
                return f"fedproxy exited ({self.fedproxy.proc.returncode}): {self.fedproxy.log_tail()}"  # type: ignore[union-attr]
            try:
                ok = await asyncio.to_thread(_get_status, url) == 200
                front = f"http://127.0.0.1:{self.ports.http}/"
                if ok and (self.backend is None or await asyncio.to_thread(_get_status, front) == 200):
                    return ""
            except OSError:
                pass
            await asyncio.sleep(0.2)
        return f"not ready after {timeout:.0f} s: {self.fedproxy.log_tail()}"

    @property
    def fedproxy_pid(self) -> int | None:
        return self.fedproxy.pid if self.fedproxy and self.fedproxy.alive() and not self.fedproxy_error else None

    async def stop(self) -> None:
        for child in (self.fedproxy, self.iperf, self.backend):
            if child is not None:
                await asyncio.to_thread(child.stop)
        await self.api.stop()


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
