"""`fedproxy demo`: three emulated members with real backends behind a real fedproxy, on 127.0.0.1.

The demo writes a kubeconfig for the emulated API servers and a fedproxy config that uses it, then runs
fedproxy exactly as `fedproxy run --config` would (same Server class, same discovery through
kubernetes-asyncio), so what you see is what a real deployment does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from fedproxy.aio import install_uvloop
from fedproxy.configload import load_config
from fedproxy.serve import Server
from fedproxy.sim.pki import CertificateAuthority
from fedproxy.sim.topology import DEMO_GRPC, DEMO_SERVICES, Topology

log = logging.getLogger("fedproxy.demo")


def write_demo_certificate(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1 / web.demo.example: (ca, cert, key)."""
    ca = CertificateAuthority("fedproxy-demo-ca")
    leaf = ca.issue("localhost", ips=("127.0.0.1",), dns_names=("localhost", "web.demo.example"))
    paths = workdir / "demo-ca.pem", workdir / "tls.crt", workdir / "tls.key"
    for path, data in zip(paths, (ca.cert_pem, leaf.cert_pem, leaf.key_pem), strict=True):
        path.write_bytes(data)
    paths[2].chmod(0o600)
    return paths


def _https_listener(https: int, cert: Path | None, key: Path | None) -> str:
    if not https or cert is None or key is None:
        return ""
    return f"""\
    - name: front-door-tls
      address: 127.0.0.1
      port: {https}
      tls:
        certificates: [{{cert_file: {cert}, key_file: {key}}}]
      routes:
        - {{host: "web.demo.example", service: demo/web}}
        - {{path_prefix: /grpc.health.v1.Health/, service: demo/grpc, upstream_protocol: h2c}}
        - {{path_prefix: /, service: demo/nginx, retries: {{attempts: 2}}}}
"""


def _grpc_listener(grpc: int) -> str:
    """An h2c (prior knowledge) listener: gRPC clients' insecure channels; UNAVAILABLE is retried elsewhere."""
    if not grpc:
        return ""
    return f"""\
    - name: grpc
      address: 127.0.0.1
      port: {grpc}
      h2c: true
      routes:
        - {{path_prefix: /, service: demo/grpc, upstream_protocol: h2c, retries: {{attempts: 2}}}}
"""


def demo_config(
    kubeconfig: Path,
    http: int,
    tcp: int,
    dns: int,
    admin: int,
    https: int = 0,
    cert: Path | None = None,
    key: Path | None = None,
    grpc: int = 0,
) -> str:
    """The fedproxy config of the demo: east-1 is local (pods reachable), east-2 has a flat network
    to its pods (as with Submariner), west-1 is reached through NodePorts and LoadBalancer IPs.
    With ``https`` and a certificate, the front door is also served over TLS on that port (gRPC health checks
    included); with ``grpc``, an h2c listener on that port sends gRPC calls to demo/grpc."""
    return f"""\
# Written by `fedproxy demo`. Members are emulated Kubernetes API servers on 127.0.0.1.
clusters:
  - {{name: east-1, kubeconfig: {kubeconfig}, context: east-1, region: us-east, zone: us-east-1a, local: true}}
  - {{name: east-2, kubeconfig: {kubeconfig}, context: east-2, region: us-east, zone: us-east-1b,
      pods_reachable: true}}
  - {{name: west-1, kubeconfig: {kubeconfig}, context: west-1, region: us-west, zone: us-west-1a, weight: 2}}
discovery:
  grace_period: 5
http:
  listeners:
    - name: front-door
      address: 127.0.0.1
      port: {http}
      routes:
        - {{host: "web.demo.example", service: demo/web}}
        - {{path_prefix: /, service: demo/nginx, retries: {{attempts: 2}}}}
{_https_listener(https, cert, key)}{_grpc_listener(grpc)}tcp:
  listeners:
    - {{name: echo, address: 127.0.0.1, port: {tcp}, service: demo/echo}}
dns:
  address: 127.0.0.1
  port: {dns}
admin:
  address: 127.0.0.1
  port: {admin}
"""


def _instructions(http: int, tcp: int, dns: int, admin: int, workdir: Path, https: int = 0, grpc: int = 0) -> str:
    more = ""  # the HTTPS and gRPC lines
    if https:
        ca = workdir / "demo-ca.pem"
        more = f"""
  curl -s --cacert {ca} https://localhost:{https}/                  # HTTPS front door (TLS, ALPN h2/http1.1)
  curl -s --cacert {ca} --resolve web.demo.example:{https}:127.0.0.1 https://web.demo.example:{https}/"""
    if grpc:  # curl speaks enough gRPC for a unary call: one empty message, the answer's headers and trailers
        more += f"""
  printf '\\0\\0\\0\\0\\0' | curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \\
    --data-binary @- -D - -o /dev/null http://127.0.0.1:{grpc}/grpc.health.v1.Health/Check   # gRPC (h2c)
  grpc_health_probe -addr 127.0.0.1:{grpc}                          # the same, if you have grpc_health_probe"""
    return f"""
fedproxy demo is running: 3 emulated members (east-1 local, east-2 same region, west-1 other region).
Config: {workdir / "fedproxy.yaml"}   kubeconfig: {workdir / "kubeconfig.yaml"}

  curl -s http://127.0.0.1:{http}/                                 # HTTP front door -> demo/nginx (local first)
  curl -s -H 'x-fedproxy-cluster: west-1' http://127.0.0.1:{http}/  # pin one member
  curl -s -H 'Host: web.demo.example' http://127.0.0.1:{http}/      # host route -> demo/web{more}
  echo hello | nc -q1 127.0.0.1 {tcp}                               # TCP front door -> demo/echo
  dig @127.0.0.1 -p {dns} nginx.demo.svc.clusterset.local           # DNS, Lighthouse semantics
  dig @127.0.0.1 -p {dns} west-1.nginx.demo.svc.clusterset.local    # one member's address
  dig @127.0.0.1 -p {dns} SRV _http._tcp.nginx.demo.svc.clusterset.local
  curl -s http://127.0.0.1:{admin}/api/v1/state | python3 -m json.tool
  curl -s -XPOST http://127.0.0.1:{admin}/api/v1/clusters/east-1/drain   # then curl the front door again
  dashboard: http://127.0.0.1:{admin}/

Ctrl-C stops it.
"""


async def _failover(topology: Topology, after: float) -> None:
    """Kill the local member's pods, then bring them back, so traffic moves away and back."""
    await asyncio.sleep(after)
    print(f"\n[failover] killing every east-1 pod; traffic moves to east-2 / west-1 (next {after:.0f} s)\n")
    await topology.kill_pods("east-1")
    await asyncio.sleep(after)
    print("\n[failover] east-1 pods are back; traffic returns to the local member\n")
    await topology.restore_pods("east-1")
    await asyncio.Event().wait()


async def run_demo(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fedproxy-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Service ports are shifted (--port-offset) so nothing needs root: 80 -> 10080, 7 -> 10007 ...
    grpc = getattr(args, "grpc_port", 0)
    services = DEMO_SERVICES + ((DEMO_GRPC,) if grpc else ())
    topology = Topology(services=services, port_offset=args.port_offset)
    await topology.start()
    try:
        kubeconfig = topology.write_kubeconfig(workdir / "kubeconfig.yaml")
        path = workdir / "fedproxy.yaml"
        https = getattr(args, "https_port", 0)
        _ca, cert, key = write_demo_certificate(workdir) if https else (None, None, None)
        path.write_text(
            demo_config(
                kubeconfig, args.http_port, args.tcp_port, args.dns_port, args.admin_port, https, cert, key, grpc
            )
        )
        server = Server(load_config(str(path)), config_path=str(path))

        async def until() -> None:
            text = _instructions(args.http_port, args.tcp_port, args.dns_port, args.admin_port, workdir, https, grpc)
            print(text, flush=True)
            tasks = []
            if args.scenario == "failover":
                tasks.append(asyncio.ensure_future(_failover(topology, args.failover_after)))
            try:
                if args.duration > 0:
                    await asyncio.sleep(args.duration)
                else:
                    await asyncio.Event().wait()
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        await server.serve(until)
    finally:
        await topology.stop()


def demo_main(args: argparse.Namespace) -> int:
    install_uvloop()
    try:
        asyncio.run(run_demo(args))
    except OSError as exc:
        print(f"fedproxy demo: cannot start: {exc} (another demo running? try other --*-port values)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
