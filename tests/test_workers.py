"""`fedproxy run --workers 2`: one control process, two serving workers, fed by emulated members.

Checks what ARCHITECTURE.md promises: listeners shared through SO_REUSEPORT, one set of watches in the
control process, drains reach every worker, /metrics sums the workers, a dead worker is restarted while
the other serves, and SIGTERM stops everything with exit code 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedproxy.sim.demo import demo_config
from fedproxy.sim.topology import Topology
from tests.loopback import children, free_ports, kill_tree, until

pytestmark = pytest.mark.slow


def _dead(pid: int) -> bool:
    """Gone, or a zombie (its sockets are closed; its parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


async def test_two_workers_share_listeners_and_survive_a_worker_crash(tmp_path: Path) -> None:
    http, tcp, dns_port, admin = free_ports(4)
    topology = Topology(port_offset=30000 + (os.getpid() % 50) * 10)
    await topology.start()
    proc = None
    try:
        kubeconfig = topology.write_kubeconfig(tmp_path / "kubeconfig.yaml")
        cfg = tmp_path / "fedproxy.yaml"
        cfg.write_text(demo_config(kubeconfig, http, tcp, dns_port, admin))
        exe = Path(sys.executable).with_name("fedproxy")
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; waits go through to_thread
            [str(exe), "run", "--config", str(cfg), "--workers", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        )
        async with aiohttp.ClientSession() as s:

            async def ready() -> bool:
                async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    return r.status == 200

            await until(ready)
            workers = children(proc.pid)
            assert len(workers) == 2

            async def front() -> dict:
                # A new connection each time, so the kernel spreads them over both workers.
                async with aiohttp.ClientSession() as fresh, fresh.get(f"http://127.0.0.1:{http}/") as r:
                    assert r.status == 200, await r.text()
                    return json.loads(await r.text())

            answers = [await front() for _ in range(20)]
            assert {a["cluster"] for a in answers} == {"east-1"}

            # A drain sent to the control process reaches both workers.
            async with s.post(f"http://127.0.0.1:{admin}/api/v1/clusters/east-1/drain") as r:
                assert r.status == 200

            async def moved() -> bool:
                got = [await front() for _ in range(10)]
                return all(a["cluster"] != "east-1" for a in got)

            await until(moved)

            # /metrics sums the workers' request counters (workers move their counts there once a second).
            async def counted() -> bool:
                async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                    text = await r.text()
                total = sum(
                    sample.value
                    for fam in text_string_to_metric_families(text)
                    for sample in fam.samples
                    if sample.name == "fedproxy_http_requests_total"
                )
                return total >= 30

            await until(counted, deadline=5.0)

            # Kill one worker: it is restarted, and the front door keeps answering meanwhile.
            victim = sorted(workers)[0]
            os.kill(victim, signal.SIGKILL)
            # A connection the kernel queued on the victim's own SO_REUSEPORT socket in the instant it dies is
            # reset (docs/architecture.md); once it is dead (a zombie or reaped) every new one must be served.

            async def victim_dead() -> bool:
                return _dead(victim)

            await until(victim_dead)
            for _ in range(10):
                await front()

            async def restarted() -> bool:
                now = children(proc.pid)
                return len(now) == 2 and victim not in now

            await until(restarted)
            await until(ready)

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert children(proc.pid) == set()
    finally:
        if proc is not None:
            kill_tree(proc)
        await topology.stop()
