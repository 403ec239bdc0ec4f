"""Active health checks (HAProxy-style): probe each endpoint of a configured service on an interval.

Off unless ``balancing.health_checks`` names the service. The outcome goes to the pure
:class:`~fedproxy.balancing.health.ActiveHealth` state machine (rise/fall); a state change makes the runtime
rebuild the pools. The probe is an HTTP/1.1 GET of ``path`` (any 2xx/3xx is up) or, with ``path: ""``, a TCP
connect. One task per (service, endpoint), reconciled with the pools on every state swap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .aio import TaskOwner
from .balancing import ServingState
from .balancing.health import ActiveHealth
from .config import HealthCheckConfig
from .model import Endpoint

log = logging.getLogger("fedproxy.probes")


async def probe_once(ep: Endpoint, check: HealthCheckConfig) -> bool:
    """One probe of ``ep``: True when it answered as a healthy endpoint within the timeout."""
    writer = None
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(ep.address, ep.port)
            if not check.path:
                return True
            host = f"[{ep.address}]" if ":" in ep.address else ep.address
            writer.write(
                f"GET {check.path} HTTP/1.1\r\nHost: {host}:{ep.port}\r\n"
                "User-Agent: fedproxy-health-check\r\nConnection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
            parts = line.split()
            return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] in (b"2", b"3")
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()


class Prober:
    """Owns one probing task per checked endpoint; reports rise/fall changes through ``on_change``."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.health = ActiveHealth()
        self.tasks = TaskOwner("probes")
        self.on_change = on_change
        # Every state swap starts a reconcile and each awaits task stops: without this, an older one resuming
        # after a newer one would spawn probes for endpoints the newer state no longer has.
        self._lock = asyncio.Lock()
        self._latest: ServingState | None = None

    async def reconcile(self, state: ServingState) -> None:
        """Probe exactly the endpoints of the services that have a health check in ``state.config``.

        Overlapping calls converge on the newest ``state``; a call superseded while it waited does nothing.
        """
        self._latest = state
        async with self._lock:
            if self._latest is state:
                await self._reconcile(state)

    async def _reconcile(self, state: ServingState) -> None:
        checks = state.config.balancing.health_checks
        wanted: dict[str, tuple[Endpoint, HealthCheckConfig]] = {}
        for spec, pool in state.pools.items():
            check = checks.get(spec.service)
            if check is None:
                continue
            for ep in pool.endpoints:
                wanted[f"{spec.service}|{ep}|{check.path}|{check.interval}"] = (ep, check)
        self.health.retain(ep for ep, _ in wanted.values())
        await self.tasks.adjust({name: (lambda e=ep, c=chk: self._loop(e, c)) for name, (ep, chk) in wanted.items()})

    async def _loop(self, ep: Endpoint, check: HealthCheckConfig) -> None:
        while True:
            ok = await probe_once(ep, check)
            if self.health.record(ep, ok):
                log.info("event=health_check_changed endpoint=%s up=%s", ep, ok)
                self.on_change()
            # HAProxy's fastinter: probe faster while a state change is in progress.
            await asyncio.sleep(check.interval / 2 if self.health.changing(ep) else check.interval)

    async def close(self) -> None:
        await self.tasks.close()
