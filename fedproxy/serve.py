"""Process lifecycle (after uvicorn's Server): startup, serve until a signal, shutdown with a grace period.

Signals are handled here and only here: SIGINT/SIGTERM drain and exit 0, SIGHUP reloads the config file.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from .admin.server import AdminServer
from .aio import install_uvloop
from .config import Config
from .configload import load_config
from .errors import ConfigError
from .runtime import Runtime
from .workers import Supervisor

log = logging.getLogger("fedproxy.serve")


class Server:
    """One fedproxy process: the runtime (discovery, listeners) and the admin server."""

    def __init__(self, config: Config, *, config_path: str = "", workers: int = 1) -> None:
        self.runtime = Runtime(config, config_path=config_path, role="control" if workers > 1 else "all")
        self.supervisor = Supervisor(self.runtime, workers) if workers > 1 else None
        self.admin = AdminServer(self.runtime)
        self.stopping = asyncio.Event()

    async def startup(self) -> None:
        await self.runtime.startup()
        try:
            if self.supervisor is not None:
                await self.supervisor.start()
            await self.admin.start()
        except BaseException:
            await self.shutdown(0)
            raise

    async def shutdown(self, grace: float | None = None) -> None:
        grace = self.runtime.config.admin.drain_timeout if grace is None else grace
        self.runtime.draining = True
        if self.supervisor is not None:
            await self.supervisor.close(grace)
        await self.runtime.shutdown(grace)
        await self.admin.close()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)

    def remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _sighup(self) -> None:
        log.info("event=sighup action=reload")
        self.runtime.tasks.spawn("sighup-reload", self._reload())

    async def _reload(self) -> None:
        result = await self.runtime.reload()
        if not result.ok:
            for problem in result.problems:
                log.error("event=reload_rejected problem=%r", problem)

    async def serve(self, until: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start, wait for a stop signal (or ``until`` to return), then drain and stop."""
        await self.startup()
        self.install_signals()
        try:
            if until is None:
                await self.stopping.wait()
            else:
                waiter = asyncio.ensure_future(self.stopping.wait())
                other = asyncio.ensure_future(until())
                done, pending = await asyncio.wait({waiter, other}, return_when=asyncio.FIRST_COMPLETED)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self.remove_signals()
            log.info("event=shutdown grace=%s", self.runtime.config.admin.drain_timeout)
            await self.shutdown()


def run_main(config_path: str, *, workers: int = 1) -> int:
    """``fedproxy run``: load the config, serve in the foreground, exit 0 after a clean drain."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{config_path}: {problem}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{config_path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    install_uvloop()

    async def main() -> None:
        server = Server(config, config_path=config_path, workers=workers)
        await server.serve()

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"fedproxy: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
