"""Serving `?watch=true`: the newline-delimited JSON event stream of kube-apiserver.

Theory of operation. Each open watch is a `WatchSession` registered with the server's `WatchHub`. Store
writes wake every session (`asyncio.Event`); a session then drains `store.events_since(cursor)`,
projects each event through its namespace and selectors (`project_event`) and writes one JSON line per
event. Between writes it sleeps until woken, the next bookmark is due, or `timeoutSeconds` runs out.

Faithful details: resourceVersion "" / "0" starts with synthetic ADDED events for the current state; an
expired resourceVersion is answered with HTTP 200 and a single ERROR event carrying a 410 Status, then the
stream ends (that is what a real server does; clients see it as `ApiException(410)`); bookmarks carry only
kind, apiVersion and metadata.resourceVersion.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fedproxy.sim.resources import Resource
from fedproxy.sim.selectors import FieldSelector, Selector
from fedproxy.sim.store import Expired, ObjectStore, StoreEvent, project_event


@dataclass(eq=False)  # identity semantics: sessions live in a set
class WatchSession:
    """One open watch stream; `closed` is set by the hub to end it (cleanly or after an abort)."""

    transport: asyncio.BaseTransport | None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def close(self, abort: bool) -> None:
        if abort and self.transport is not None:
            # abort() sends RST with no terminating chunk: what a crashed server or a cut link looks like.
            self.transport.abort()
        self.closed = True
        self.wake.set()


class WatchHub:
    """The open watches of one server, woken by its store's writes."""

    def __init__(self, store: ObjectStore) -> None:
        self._sessions: set[WatchSession] = set()
        self._unsubscribe = store.subscribe(self._on_write)

    def _on_write(self, _event: StoreEvent) -> None:
        for s in self._sessions:
            s.wake.set()

    def open(self, transport: asyncio.BaseTransport | None) -> WatchSession:
        session = WatchSession(transport)
        self._sessions.add(session)
        return session

    def discard(self, session: WatchSession) -> None:
        self._sessions.discard(session)

    def close_all(self, abort: bool) -> int:
        """End every open watch; with `abort`, drop their connections without a clean end."""
        sessions, self._sessions = self._sessions, set()
        for s in sessions:
            s.close(abort)
        return len(sessions)

    def wake_all(self) -> None:
        self._on_write(None)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass(frozen=True)
class WatchRequest:
    """The parsed query of one watch request."""

    resource: Resource
    namespace: str | None
    labels: Selector
    fields: FieldSelector
    resource_version: str
    timeout_seconds: float | None
    bookmarks: bool


def _line(event_type: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def expired_status(message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Expired",
        "code": 410,
    }


async def stream_watch(
    request: web.Request,
    hub: WatchHub,
    store: ObjectStore,
    watch: WatchRequest,
    bookmark_interval: float,
    gate: Callable[[], Awaitable[None]],
) -> web.StreamResponse:
    """Serve one watch until timeout, client disconnect, or the hub closes it.

    `gate` is awaited before each write; the server uses it to stall streams while "hung".
    """
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    session = hub.open(request.transport)
    res = watch.resource
    deadline = None if watch.timeout_seconds is None else time.monotonic() + watch.timeout_seconds
    next_bookmark = time.monotonic() + bookmark_interval
    try:
        if watch.resource_version in ("", "0"):
            items, cursor = store.list(res, watch.namespace, watch.labels, watch.fields)
            for obj in items:
                await gate()
                await resp.write(_line("ADDED", obj))
        else:
            cursor = int(watch.resource_version)
        while not session.closed:
            session.wake.clear()
            try:
                events = store.events_since(cursor)
            except Expired as exc:
                await gate()
                await resp.write(_line("ERROR", expired_status(str(exc))))
                break
            for ev in events:
                seen = project_event(ev, res, watch.namespace, watch.labels, watch.fields)
                if seen is not None:
                    await gate()
                    await resp.write(_line(*seen))
            # Advance past events this watch filtered out too, so a later compaction cannot expire it.
            cursor = max(cursor, store.resource_version)
            now = time.monotonic()
            if watch.bookmarks and now >= next_bookmark:
                await gate()
                mark = {"kind": res.kind, "apiVersion": res.api_version, "metadata": {"resourceVersion": str(cursor)}}
                await resp.write(_line("BOOKMARK", mark))
                next_bookmark = now + bookmark_interval
            if deadline is not None and now >= deadline:
                break
            wait_until = next_bookmark if watch.bookmarks else float("inf")
            if deadline is not None:
                wait_until = min(wait_until, deadline)
            try:
                timeout = None if wait_until == float("inf") else max(0.0, wait_until - now)
                await asyncio.wait_for(session.wake.wait(), timeout)
            except TimeoutError:
                pass
        transport = request.transport
        if transport is None or transport.is_closing():
            # Cut or killed: there is no clean end to write.
            return resp
        await resp.write_eof()
        return resp
    finally:
        hub.discard(session)
