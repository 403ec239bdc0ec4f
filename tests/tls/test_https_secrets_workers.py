"""`fedproxy run --workers 2` with a certificate from a kubernetes.io/tls Secret: the control process watches the
Secret, the workers (which open no API connection) get the checked PEM pair in the world message and serve it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.backends import HttpEcho
from fedproxy.sim.kubeconfig import write_kubeconfig
from tests.loopback import children, free_port, kill_tree, until

from .conftest import Pki
from .test_https_secrets import SECRET, config_yaml, served_cn, web_objects

pytestmark = pytest.mark.slow


async def test_workers_serve_the_secret_certificate_from_the_control_process(tmp_path: Path, ca: Pki) -> None:
    api = FakeApiServer("east", bookmark_interval=0.2)
    echo = HttpEcho("127.0.0.1", 0, cluster="east", pod="p1")
    await api.start()
    await echo.start()
    proc = None
    log = tmp_path / "fedproxy.log"
    try:
        api.apply_all(web_objects(echo.port))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", [api])
        https, admin = free_port(), free_port()
        cfg = tmp_path / "fedproxy.yaml"
        cfg.write_text(config_yaml(kubeconfig, https, admin, [SECRET]))
        exe = Path(sys.executable).with_name("fedproxy")
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; waits go through to_thread
                [str(exe), "run", "--config", str(cfg), "--workers", "2"],
                stdout=out,
                stderr=out,
                env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
            )
        async with aiohttp.ClientSession() as s:

            async def readyz() -> tuple[int, str]:
                async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    return r.status, await r.text()

            async def waiting_for_secret() -> bool:
                status, reason = await readyz()
                return status == 503 and "east:web/front" in reason

            await until(waiting_for_secret)
            assert len(children(proc.pid)) == 2

            a1 = ca.issue("a.test")
            api.apply(objects.tls_secret("web", "front", a1.cert_pem, a1.key_pem))

            async def ready() -> bool:
                return (await readyz())[0] == 200

            await until(ready)

            async def all_serve(cn: str) -> bool:
                # New connections each time: the kernel spreads them over both workers' sockets.
                return [await served_cn(https, "a.test", ca) for _ in range(12)] == [cn] * 12

            await until(lambda: all_serve("a.test"))
            a2 = ca.issue("a.test-v2", dns=("a.test",))
            api.apply(objects.tls_secret("web", "front", a2.cert_pem, a2.key_pem))
            await until(lambda: all_serve("a.test-v2"))
            # Workers never talk to the member: every Secret request came from the one control process's watch.
            assert len([r for r in api.request_log if "/secrets" in r and "watch=" not in r]) == 1

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    except BaseException:
        print(log.read_text(errors="replace")[-5000:])
        raise
    finally:
        if proc is not None:
            kill_tree(proc)
        await echo.stop()
        await api.stop()
