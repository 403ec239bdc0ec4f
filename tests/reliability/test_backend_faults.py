"""Backend (pod) faults under steady load: pods die without the API knowing (their EndpointSlice still says
ready), fedproxy retries idempotent requests elsewhere and ejects the dead; pods that come back are readmitted.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import aiohttp
import pytest

from .conftest import Proxy, World, eventually

pytestmark = pytest.mark.reliability

# Short ejections so readmission happens within the test; a dead pod is ejected after 2 failures.
BALANCING = """balancing:
  outlier:
    consecutive_failures: 2
    base_ejection_time: 0.5
    max_ejection_time: 1
    max_ejection_percent: 100
"""


class HttpLoad:
    """``n`` clients sending GETs back to back (keep-alive sessions and fresh connections mixed)."""

    def __init__(self, proxy: Proxy, n: int = 6) -> None:
        self.proxy = proxy
        self.n = n
        self.ok = 0
        self.failures: list[str] = []
        self.backends: collections.Counter[str] = collections.Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _client(self, i: int) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        keep_alive = i % 2 == 0
        session = aiohttp.ClientSession(timeout=timeout) if keep_alive else None
        try:
            while not self._stop.is_set():
                s = session or aiohttp.ClientSession(timeout=timeout)
                try:
                    async with s.get(f"{self.proxy.http_url}/load/{i}") as r:
                        await r.read()
                        if r.status == 200:
                            self.ok += 1
                            self.backends[r.headers.get("x-backend", "?")] += 1
                        else:
                            self.failures.append(f"HTTP {r.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures.append(repr(exc))
                finally:
                    if session is None:
                        await s.close()
                await asyncio.sleep(0.005)
        finally:
            if session is not None:
                await session.close()

    async def __aenter__(self) -> HttpLoad:
        self._tasks = [asyncio.ensure_future(self._client(i)) for i in range(self.n)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def served_by(self, predicate: Callable[[str], bool], count: int = 5) -> bool:
        """True once ``count`` more responses came from backends matching ``predicate``."""
        start = sum(v for k, v in self.backends.items() if predicate(k))
        await eventually(
            lambda: sum(v for k, v in self.backends.items() if predicate(k)) >= start + count, what="served"
        )
        return True


async def test_http_pods_killed_under_load_zero_failed_requests_then_readmitted(world: World) -> None:
    proxy = await world.start(world.yaml(extra=BALANCING))
    east = world.fleet.members["east"]
    first, second = sorted(east.web_pods)
    async with HttpLoad(proxy) as load:
        await load.served_by(lambda b: b == f"east/{first}")
        await east.web_pods[first].stop()  # dies; the slice still lists it ready
        await load.served_by(lambda b: b == f"east/{second}", 30)
        await east.web_pods[second].stop()  # the whole local tier dies: spill to west
        await load.served_by(lambda b: b.startswith("west/"), 30)
        await east.web_pods[first].start()
        await east.web_pods[second].start()
        # Readmitted after their ejection: east (local) takes the traffic again.
        await load.served_by(lambda b: b == f"east/{first}")
        await load.served_by(lambda b: b == f"east/{second}")
    assert load.failures == [], load.failures[:5]
    assert load.ok > 100


async def _tcp_round(port: int, payload: bytes) -> str:
    """One fresh TCP client: read the pod's identity line, echo ``payload``; returns the identity."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        who = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
        assert got == payload
        return who
    finally:
        writer.close()
        await writer.wait_closed()


async def test_tcp_pods_killed_new_clients_get_working_connections_then_readmitted(world: World) -> None:
    proxy = await world.start(world.yaml(extra=BALANCING))
    east = world.fleet.members["east"]
    first, second = sorted(east.tcp_pods)
    seen: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    cut = 0  # rounds already connected to a pod when it died: reset, as with any proxy
    kills = 0
    stop = asyncio.Event()

    async def client(i: int) -> None:
        nonlocal cut
        n = 0
        while not stop.is_set():
            n += 1
            epoch = kills
            try:
                seen[await _tcp_round(proxy.tcp_port, f"c{i}-{n}\n".encode() * 20)] += 1
            except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, AssertionError) as exc:
                if kills != epoch:
                    cut += 1
                else:
                    failures.append(repr(exc))
            await asyncio.sleep(0.005)

    async def kill(pod: str) -> None:
        nonlocal kills
        kills += 1
        await east.tcp_pods[pod].stop()

    async def served(prefix: str, count: int = 5) -> None:
        start = sum(v for k, v in seen.items() if k.startswith(prefix))
        await eventually(lambda: sum(v for k, v in seen.items() if k.startswith(prefix)) >= start + count, what=prefix)

    clients = [asyncio.ensure_future(client(i)) for i in range(4)]
    try:
        await served(f"east/{first}")
        await kill(first)
        await served(f"east/{second}", 20)
        await kill(second)
        await served("west/", 20)
        await east.tcp_pods[first].start()
        await east.tcp_pods[second].start()
        await served(f"east/{first}")
        await served(f"east/{second}")
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert failures == [], failures[:5]
    assert cut <= 8  # at most the 4 clients' rounds in flight at each of the 2 kills
