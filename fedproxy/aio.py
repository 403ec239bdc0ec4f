"""Named, guarded, owned background tasks (after kopf's create_guarded_task and scheduler).

Every background task is created through a :class:`TaskOwner`, which logs a crash instead of
losing it and cancels and awaits everything it started on ``close()``. No bare ``create_task``
elsewhere in fedproxy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

log = logging.getLogger("fedproxy.aio")


class TaskOwner:
    """Owns a set of named tasks; ``close()`` cancels and awaits them all."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start ``coro`` as task ``name``; a task of the same name still running is an error."""
        old = self._tasks.get(name)
        if old is not None and not old.done():
            coro.close()
            raise RuntimeError(f"{self.name}: task {name!r} is already running")
        task = asyncio.get_running_loop().create_task(self._guard(name, coro), name=f"{self.name}:{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda t, n=name: self._forget(n, t))
        return task

    def _forget(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]

    async def _guard(self, name: str, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=task_crashed owner=%s task=%s", self.name, name)
            return None

    def names(self) -> set[str]:
        return {n for n, t in self._tasks.items() if not t.done()}

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def stop(self, name: str) -> None:
        """Cancel task ``name`` and wait for it to finish."""
        task = self._tasks.get(name)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def adjust(self, wanted: Mapping[str, Callable[[], Coroutine[Any, Any, Any]]]) -> None:
        """Reconcile (kopf's adjust_tasks): stop the tasks not in ``wanted``, start the missing ones."""
        for name in self.names() - set(wanted):
            await self.stop(name)
        for name, factory in wanted.items():
            if not self.running(name):
                self.spawn(name, factory())

    async def close(self) -> None:
        """Cancel every task this owner started and await them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


def install_uvloop() -> None:
    """Use uvloop's event loop (the data paths are designed for it: shared/PERFORMANCE.md)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
