"""Shared helpers for end-to-end tests that run fedproxy as a user would, on loopback."""

from __future__ import annotations

import asyncio
import socket
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
