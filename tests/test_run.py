"""`fedproxy run --config FILE`: the production entry point, as the container image runs it.

SIGHUP re-reads the file (a bad file is rejected and the old config keeps serving), SIGTERM drains and
exits 0, and a config that does not validate makes it exit 1 before binding anything.
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

from fedproxy.sim.demo import demo_config
from fedproxy.sim.topology import Topology
from tests.loopback import free_ports, until

EXE = str(Path(sys.executable).with_name("fedproxy"))


def test_run_rejects_a_bad_config_with_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dns: {port: 70000, ttll: 1}\n")
    out = subprocess.run([EXE, "run", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "dns.port" in out.stderr and "dns.ttll" in out.stderr


async def test_sighup_reloads_and_sigterm_drains(tmp_path: Path) -> None:
    http, tcp, dns_port, admin = free_ports(4)
    topology = Topology(port_offset=25000 + (os.getpid() % 50) * 10)
    await topology.start()
    proc = None
    try:
        kubeconfig = topology.write_kubeconfig(tmp_path / "kubeconfig.yaml")
        cfg = tmp_path / "fedproxy.yaml"
        original = demo_config(kubeconfig, http, tcp, dns_port, admin)
        cfg.write_text(original)
        # stderr to a file, not a pipe: nobody reads a pipe until exit, and a full one would block the process.
        log_path = tmp_path / "stderr.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; waits go through to_thread
                [EXE, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=log_file
            )
        async with aiohttp.ClientSession() as s:

            async def cluster_of(path: str = "/") -> str:
                async with s.get(f"http://127.0.0.1:{http}{path}") as r:
                    return json.loads(await r.text())["cluster"] if r.status == 200 else ""

            assert await until(cluster_of) == "east-1"

            # SIGHUP with a file that routes everything to west-1 only.
            cfg.write_text(original.replace("service: demo/nginx,", "service: demo/nginx, clusters: {west-1: 1},"))
            proc.send_signal(signal.SIGHUP)

            async def moved() -> bool:
                return await cluster_of() == "west-1"

            await until(moved)

            # A broken file on SIGHUP changes nothing: traffic keeps the last good config.
            cfg.write_text("http: {listeners: [{port: 70000}]}\n")
            proc.send_signal(signal.SIGHUP)

            async def rejected() -> bool:
                async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                    return 'fedproxy_config_reloads_total{result="failed"} 1.0' in await r.text()

            # Polled, not slept: on a loaded machine the reload may take longer than any fixed pause.
            await until(rejected)
            assert await cluster_of() == "west-1"

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert "reload_rejected" in log_path.read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        await topology.stop()


@pytest.fixture(autouse=True)
def _no_multiproc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
