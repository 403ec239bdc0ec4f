"""`fedproxy demo` end to end: the README's run command starts, serves through every listener, stops on SIGINT.

Runs the real console script in a subprocess, as a user would, on free loopback ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import grpc
import pytest

from tests.loopback import free_ports


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 3.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_ready(admin: int, proc: subprocess.Popen[bytes], deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"demo exited early with {proc.returncode}")
        try:
            status, _ = _get(f"http://127.0.0.1:{admin}/readyz", timeout=1)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("demo did not become ready")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, object]]:
    http, tcp, dns_port, admin, https, grpc_port = free_ports(6)
    # A port offset unlike the default demo's, so a demo the developer runs does not collide.
    offset = 20000 + (os.getpid() % 50) * 10
    exe = Path(sys.executable).with_name("fedproxy")
    cmd = [
        str(exe),
        "demo",
        f"--http-port={http}",
        f"--tcp-port={tcp}",
        f"--dns-port={dns_port}",
        f"--admin-port={admin}",
        f"--https-port={https}",
        f"--grpc-port={grpc_port}",
        f"--port-offset={offset}",
        f"--workdir={tmp_path}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_ready(admin, proc)
        yield {
            "proc": proc,
            "http": http,
            "tcp": tcp,
            "dns": dns_port,
            "admin": admin,
            "https": https,
            "grpc": grpc_port,
            "dir": tmp_path,
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def _wait_for(predicate, deadline: float = 10.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        try:
            last = predicate()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"condition not met: {last!r}")


def _check_grpc(demo: dict[str, object]) -> None:
    health = "/grpc.health.v1.Health/Check"
    with grpc.insecure_channel(f"127.0.0.1:{demo['grpc']}") as channel:
        reply, call = channel.unary_unary(health).with_call(b"", timeout=5)
        assert reply == b"\x08\x01"  # HealthCheckResponse{status: SERVING}
        assert dict(call.initial_metadata())["x-backend"].startswith("east-1/")
        assert channel.unary_unary("/demo.Echo/Echo")(b"hello", timeout=5) == b"hello"
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/demo.Nope/Nope")(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    ca = (Path(str(demo["dir"])) / "demo-ca.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(f"localhost:{demo['https']}", creds) as channel:
        reply, call = channel.unary_unary(health).with_call(b"", timeout=5)
        assert reply == b"\x08\x01" and dict(call.initial_metadata())["x-backend"].startswith("east-1/")


def test_demo_serves_every_listener_and_stops_on_sigint(demo: dict[str, object]) -> None:
    http, tcp, dns_port, admin = demo["http"], demo["tcp"], demo["dns"], demo["admin"]
    proc = demo["proc"]
    assert isinstance(proc, subprocess.Popen)

    # HTTP: local first -> east-1 answers while it is healthy.
    def local_answer() -> dict[str, object] | None:
        status, body = _get(f"http://127.0.0.1:{http}/hello")
        return json.loads(body) if status == 200 else None

    body = _wait_for(local_answer)
    assert body["cluster"] == "east-1"

    # Pinning a member by header reaches it (west-1 through its NodePorts). Readiness does not wait for every
    # member's endpoints to pass their first check, so west-1 may answer 503 for a moment: wait for it.
    def pinned_answer() -> dict[str, object] | None:
        status, body = _get(f"http://127.0.0.1:{http}/", {"x-fedproxy-cluster": "west-1"})
        return json.loads(body) if status == 200 else None

    assert _wait_for(pinned_answer)["cluster"] == "west-1"

    # HTTPS: the demo's generated CA verifies the front door's certificate for "localhost".
    ctx = ssl.create_default_context(cafile=str(Path(str(demo["dir"])) / "demo-ca.pem"))
    req = urllib.request.Request(f"https://localhost:{demo['https']}/secure")
    with urllib.request.urlopen(req, timeout=3, context=ctx) as resp:
        assert resp.status == 200 and json.loads(resp.read())["headers"]["X-Forwarded-Proto"] == "https"

    # TCP: the echo service answers with its backend's name, then echoes.
    with socket.create_connection(("127.0.0.1", tcp), timeout=3) as s:
        s.sendall(b"ping\n")
        data = b""
        while data.count(b"\n") < 2:
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"east-1/") and data.endswith(b"ping\n")

    # DNS: Lighthouse semantics, the local member's ClusterIP.
    q = dns.message.make_query("nginx.demo.svc.clusterset.local", "A")
    r = dns.query.udp(q, "127.0.0.1", port=dns_port, timeout=3)
    assert r.rcode() == dns.rcode.NOERROR
    assert [rr.address for rr in r.answer[0]] == ["127.1.1.1"]

    # Admin: state lists the three members, all connected.
    status, state = _get(f"http://127.0.0.1:{admin}/api/v1/state")
    members = {m["name"]: m for m in json.loads(state)["members"]}
    assert set(members) == {"east-1", "east-2", "west-1"}
    assert all(m["connected"] for m in members.values())

    # gRPC: a real grpcio client through the h2c listener and through the HTTPS one (ALPN h2), local first.
    _check_grpc(demo)
    # Connections are counted by protocol, TLS version and the certificate served (the demo's is "localhost").
    status, metrics = _get(f"http://127.0.0.1:{admin}/metrics")
    text = metrics.decode()
    for labels in (
        'certificate="-",listener="grpc",protocol="h2",tls_version="-"',
        'certificate="localhost",listener="front-door-tls",protocol="h2",tls_version="TLSv1.3"',
        'certificate="localhost",listener="front-door-tls",protocol="http/1.1",tls_version="TLSv1.3"',
    ):
        assert f"fedproxy_http_connections_total{{{labels}}}" in text, labels

    # The explain endpoint answers for every service of the demo, with the tiers it would use.
    for service in ("demo/nginx", "demo/echo", "demo/web", "demo/grpc"):
        status, explained = _get(f"http://127.0.0.1:{admin}/api/v1/explain?service={service}&key=user-1")
        assert status == 200, explained
        pools = json.loads(explained)["pools"]
        assert pools and all(p["service"] == service and p["tiers"] for p in pools)

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
