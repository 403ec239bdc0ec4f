"""Shared helpers for end-to-end tests that run fedproxy as a user would, on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

T = TypeVar("T")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while chosen, then released)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 right now (for configs whose DNS listener shares it).

    The kernel picks it; the small window until fedproxy binds it is the usual test-suite race.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


async def until(predicate: Callable[[], Awaitable[T]], deadline: float = 15.0) -> T:
    """Poll ``predicate`` until it returns something truthy; connection errors count as "not yet"."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last: object = None
    while loop.time() < end:
        try:
            last = await predicate()
            if last:
                return last  # type: ignore[return-value]
        except (aiohttp.ClientError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met: {last!r}")


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (a `fedproxy run --workers N` control process: its workers)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process we started and its children (by PID), if it is still running; then reap it."""
    if proc.poll() is None:
        for child in children(proc.pid):
            os.kill(child, signal.SIGKILL)
        proc.kill()
    proc.wait()
