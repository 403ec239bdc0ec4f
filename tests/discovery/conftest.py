"""Fixtures: emulated members on ephemeral loopback ports, kubeconfigs written for them, a running Discovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest

from fedproxy.config import ClusterConfig, Config, DiscoveryConfig
from fedproxy.discovery import Discovery
from fedproxy.model import ClusterSnapshot
from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.kubeconfig import write_kubeconfig

# Short timings so every fault is noticed and recovered from within a second or two.
FAST = DiscoveryConfig(
    grace_period=1.0, debounce=0.01, backoff_base=0.05, backoff_max=0.3, watch_timeout=5, request_timeout=0.5
)


async def eventually(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def member_objects(cluster_ip: str = "127.1.1.1", pods: tuple[str, ...] = ("127.0.1.1",)) -> list[dict]:
    """One exported service demo/web with a slice of ``pods`` and one node."""
    return [
        objects.service("demo", "web", cluster_ip=cluster_ip, ports=[{"name": "http", "port": 80, "targetPort": 8080}]),
        objects.endpoint_slice(
            "demo",
            "web-1",
            "web",
            ports=[{"name": "http", "port": 8080}],
            endpoints=[objects.endpoint([ip]) for ip in pods],
        ),
        objects.service_export("demo", "web"),
        objects.node("node-1", "127.0.9.1"),
    ]


class Recorder:
    """Collects what ``on_change`` receives."""

    def __init__(self) -> None:
        self.calls = 0
        self.latest: Mapping[str, ClusterSnapshot] = {}

    def __call__(self, snapshots: Mapping[str, ClusterSnapshot]) -> None:
        self.calls += 1
        self.latest = snapshots

    def snap(self, name: str) -> ClusterSnapshot | None:
        return self.latest.get(name)


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., FakeApiServer]]:
    """A factory of started-on-demand emulated API servers; all stopped at the end."""
    made: list[FakeApiServer] = []

    def make(name: str, **kwargs: object) -> FakeApiServer:
        kwargs.setdefault("bookmark_interval", 0.2)
        server = FakeApiServer(name, **kwargs)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for s in made:
        await s.stop()


def cluster_config(tmp_path: Path, server: FakeApiServer, **kwargs: object) -> ClusterConfig:
    """A config entry reaching ``server`` through a real kubeconfig file."""
    path = write_kubeconfig(tmp_path / f"kubeconfig-{server.name}", [server])
    return ClusterConfig(name=server.name, kubeconfig=str(path), context=server.name, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def run_discovery() -> AsyncIterator[Callable[[Config], asyncio.Future]]:
    """Start a Discovery for a config; returns (discovery, recorder). Closed at the end, with no task left."""
    started: list[Discovery] = []

    async def run(config: Config, **kwargs: object) -> tuple[Discovery, Recorder]:
        recorder = Recorder()
        d = Discovery(config, recorder, **kwargs)  # type: ignore[arg-type]
        started.append(d)
        await d.start()
        return d, recorder

    before = asyncio.all_tasks()
    yield run  # type: ignore[misc]
    for d in started:
        await d.close()
    await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks() - before if not t.done() and t.get_name().startswith(("discovery:", "member:"))
    ]
    assert not leaked, f"tasks left running: {leaked}"


def config_with(*clusters: ClusterConfig, discovery: DiscoveryConfig = FAST, **kwargs: object) -> Config:
    return Config(clusters=clusters, discovery=discovery, **kwargs)  # type: ignore[arg-type]
