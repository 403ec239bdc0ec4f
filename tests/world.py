"""An emulated world for end-to-end tests: member API servers from ``fedproxy.sim`` and fedproxy run in-process.

The suites that use it (tests/admin, tests/reliability) add their own pods, objects, config and readiness
condition; this module holds what they share: starting and stopping the members, the ``clusters:`` part of
the config, starting fedproxy from YAML text and stopping every one started, and polling for a condition.

Teardown order, as the suites nest these: fedproxy first, then the caller's pods, then the members.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedproxy.admin.server import AdminServer
from fedproxy.configload import parse_config
from fedproxy.runtime import Runtime
from fedproxy.serve import Server
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.kubeconfig import write_kubeconfig

MEMBERS = ("east", "west")


async def eventually(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "",
    *,
    retry_on: tuple[type[BaseException], ...] = (),
) -> None:
    """Poll ``check`` (sync or async) until truthy; fail naming ``what`` at the deadline.

    An exception of a ``retry_on`` type counts as "not yet"; any other fails the test at once.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            last = result
            if result:
                return
        except retry_on as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or check} (last: {last!r})")
        await asyncio.sleep(0.05)


@dataclass
class Members:
    """Running emulated members (name -> API server) and a kubeconfig with one context per member."""

    servers: dict[str, FakeApiServer]
    kubeconfig: Path


@asynccontextmanager
async def emulated_members(tmp_path: Path, names: Iterable[str] = MEMBERS) -> AsyncIterator[Members]:
    """Start one FakeApiServer per name (empty; the caller applies objects); stop them all on exit."""
    servers = {n: FakeApiServer(n, bookmark_interval=0.2) for n in names}
    try:
        for s in servers.values():
            await s.start()
        yield Members(servers, write_kubeconfig(tmp_path / "kubeconfig", list(servers.values())))
    finally:
        for s in servers.values():
            s.hang(False)  # a test may leave a member hung
            await s.stop()


def clusters_yaml(
    kubeconfig: Path,
    names: Iterable[str] = MEMBERS,
    *,
    local: str = "east",
    weights: Mapping[str, int] | None = None,
) -> str:
    """The entries under ``clusters:``, one per member: a context of ``kubeconfig``, east in region r1 and the
    others in r2, pods reachable. ``weights``: write a ``weight`` line for every member (1 when not given)."""
    return "".join(
        f"""
  - name: {name}
    kubeconfig: {kubeconfig}
    context: {name}
    region: {"r1" if name == "east" else "r2"}
    local: {"true" if name == local else "false"}"""
        + ("" if weights is None else f"\n    weight: {weights.get(name, 1)}")
        + "\n    pods_reachable: true"
        for name in names
    )


@dataclass
class Fedproxy:
    """A fedproxy running in-process: its runtime and its admin server."""

    runtime: Runtime
    admin: AdminServer

    @property
    def http_port(self) -> int:
        (srv,) = self.runtime.http.values()
        return srv.port

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


class Fedproxies:
    """Starts fedproxy from YAML text (saved as ``fedproxy-<n>.yaml`` under ``tmp_path``, so reloads read it);
    as an async context manager, stops every one it started on exit."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Server] = []

    async def start(self, text: str) -> Server:
        path = self.tmp_path / f"fedproxy-{len(self.started)}.yaml"
        path.write_text(text)
        server = Server(parse_config(text, source=str(path)), config_path=str(path))
        await server.startup()
        self.started.append(server)
        return server

    async def __aenter__(self) -> Fedproxies:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self.started:
            await server.admin.close()
            if server.runtime.listening:
                await server.runtime.shutdown(0.5)
