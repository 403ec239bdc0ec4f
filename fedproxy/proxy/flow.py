"""Back-pressure between two transports (after uvicorn's ``FlowControl``), shared by the HTTP and TCP proxies.

A proxy copies bytes from a *source* transport into a *sink* transport. When the sink's write buffer
goes above its high-water mark, asyncio calls ``pause_writing()`` on the sink's protocol; that protocol
forwards the call here and we stop reading the source, so memory stays bounded whatever the speed
difference. ``resume_writing()`` undoes it. One instance per direction; a splice uses two.

Reading can also be paused for reasons of the caller's own (an HTTP connection waiting for the response
before reading the next pipelined request): ``pause_reading``/``resume_reading`` keep a set of reasons,
and the source reads again only when none is left.
"""

from __future__ import annotations

import asyncio

WRITE = "write"  # the reason name used while the sink is above its high-water mark


class FlowControl:
    """Pauses reading ``source`` while the sink cannot take more; awaitable ``drain()`` for coroutines.

    ``source`` may be swapped (``set_source``) when the other side changes, e.g. a new upstream connection
    for the next request; the paused state moves to the new source.
    """

    __slots__ = ("source", "write_paused", "_reasons", "_waiter")

    def __init__(self, source: asyncio.Transport | None = None) -> None:
        self.source = source
        self.write_paused = False
        self._reasons: set[str] = set()
        self._waiter: asyncio.Future[None] | None = None

    @property
    def read_paused(self) -> bool:
        return bool(self._reasons)

    def set_source(self, source: asyncio.Transport | None) -> None:
        """Read from ``source`` from now on; the old source is resumed if we had paused it."""
        old, self.source = self.source, source
        if self._reasons:
            if old is not None and old is not source:
                _resume(old)
            if source is not None:
                _pause(source)

    # Called by the sink's protocol.
    def pause_writing(self) -> None:
        self.write_paused = True
        self.pause_reading(WRITE)

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.resume_reading(WRITE)

    def connection_lost(self) -> None:
        """The sink is gone: wake ``drain()`` waiters (they must check the connection themselves)."""
        self.write_paused = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Reasons of the caller's own.
    def pause_reading(self, reason: str) -> None:
        if not self._reasons and self.source is not None:
            _pause(self.source)
        self._reasons.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and self.source is not None:
            _resume(self.source)

    async def drain(self) -> None:
        """Wait until the sink takes writes again (returns at once when it does)."""
        if not self.write_paused:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter


def _pause(transport: asyncio.Transport) -> None:
    # A closing transport refuses pause/resume on some loops; it reads nothing more anyway.
    if not transport.is_closing():
        try:
            transport.pause_reading()
        except (RuntimeError, AttributeError):
            pass


def _resume(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        try:
            transport.resume_reading()
        except (RuntimeError, AttributeError):
            pass
