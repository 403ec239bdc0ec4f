"""One list+watch loop per (member, resource kind), as client-go's reflector runs them.

Theory of operation. A loop lists its kind once (replacing every object of that kind in the snapshot), then
watches from the list's resourceVersion with ``allowWatchBookmarks`` and ``timeoutSeconds``. When a watch ends
(server timeout, cut connection) it resumes from the last resourceVersion it saw; when that is too old (410
Gone, either as an HTTP status or as an ERROR event in the stream) it relists. Failed attempts are retried with
jittered exponential backoff. Every request carries a client-side read timeout, so a hung server shows up as an
error instead of a silent stall; a quiet-but-healthy stream that hits it is simply reopened.

API objects are parsed with :func:`fedproxy.resources.parse`; one that does not parse is logged
(``event=bad_object``) and skipped, never stopping the loop. Objects stay JSON dicts (no model classes):
requests use ``_preload_content=False`` and the watch is given no return type.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from ..model import ObjectKind
from ..resources import parse
from .state import MemberState

log = logging.getLogger("fedproxy.discovery")

MCS_GROUP, MCS_VERSION = "multicluster.x-k8s.io", "v1alpha1"

ListCall = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class KindSpec:
    """How to list and watch one kind; ``optional`` kinds (CRDs) may be absent from a member. ``parse`` turns an
    API object into (snapshot key, value) and raises ValueError for one it cannot use (default: resources.parse)."""

    call: Callable[[client.ApiClient], ListCall]
    optional: bool = False
    parse: Callable[[str, Any], tuple[Any, Any]] | None = None


def _custom(plural: str) -> Callable[[client.ApiClient], ListCall]:
    # Cluster-wide listing also covers namespaced custom resources (GET /apis/{group}/{version}/{plural}).
    def make(api: client.ApiClient) -> ListCall:
        return partial(client.CustomObjectsApi(api).list_cluster_custom_object, MCS_GROUP, MCS_VERSION, plural)

    return make


KINDS: Mapping[ObjectKind, KindSpec] = {
    "services": KindSpec(lambda api: client.CoreV1Api(api).list_service_for_all_namespaces),
    "endpointslices": KindSpec(lambda api: client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces),
    "nodes": KindSpec(lambda api: client.CoreV1Api(api).list_node),
    "serviceexports": KindSpec(_custom("serviceexports"), optional=True),
    "serviceimports": KindSpec(_custom("serviceimports"), optional=True),
}


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff (AWS architecture blog): uniform in [delay/2, delay], delay = base*2^n."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return random.uniform(delay / 2, delay)


def _meta_key(kind: ObjectKind, obj: Any) -> Any:
    """The snapshot key from metadata alone (for deletions and objects that do not parse), or None."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        return None
    return meta["name"] if kind == "nodes" else (str(meta.get("namespace") or ""), meta["name"])


async def checked_response(resp: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    """Raise ApiException for a non-2xx answer (``_preload_content=False`` does not)."""
    if 200 <= resp.status < 300:
        return resp
    try:
        body = (await resp.read())[:500]
    finally:
        resp.release()
    reason = resp.reason or ""
    try:
        status = json.loads(body)
        reason = f"{status.get('reason')}: {status.get('message')}"
    except (ValueError, AttributeError):
        pass
    raise ApiException(status=resp.status, reason=reason)


class ResyncNeeded(Exception):
    """The member was disconnected while a watch request was in flight: relist instead of resuming."""


class KindWatcher:
    """The list+watch loop of one kind of one member. ``spec`` defaults to ``KINDS[kind]``; with one of its own
    (the Secrets of TLS certificates, :mod:`.secrets`) ``state`` is any object with MemberState's report methods."""

    def __init__(
        self, state: MemberState, api: client.ApiClient, kind: ObjectKind, spec: KindSpec | None = None
    ) -> None:
        self.state = state
        self.kind = kind
        self._spec = KINDS[kind] if spec is None else spec
        self._call = self._spec.call(api)
        self._parse_obj = self._spec.parse or parse

    @property
    def _timeouts(self) -> tuple[float, float]:
        t = self.state.settings.request_timeout
        return (t, t)  # (connect, per-read): a hung server is noticed within one timeout

    async def run(self) -> None:
        """Loop until cancelled; never raises anything else."""
        attempt = 0
        reason = "initial"
        w = watch.Watch()
        try:
            while True:
                health = self.state.kinds[self.kind]
                try:
                    if not health.resource_version:
                        await self._relist("reconnect" if health.listed and not health.resynced else reason)
                        reason = "resync"
                    if await self._watch(w):
                        attempt = 0
                        continue
                    # Answered but closed at once with nothing delivered: reopening at once would hammer a
                    # misbehaving member in a tight loop, so this backs off like a failure (not counted as one:
                    # the server did answer).
                    attempt += 1
                    delay = backoff_delay(attempt, self.state.settings.backoff_base, self.state.settings.backoff_max)
                    log.info(
                        "event=watch_closed_early cluster=%s kind=%s retry_in=%.2f", self.state.name, self.kind, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                except asyncio.CancelledError:
                    raise
                except ResyncNeeded:
                    continue
                except ApiException as exc:
                    if exc.status == 410:
                        log.info("event=watch_restart cluster=%s kind=%s reason=410", self.state.name, self.kind)
                        self.state.expired(self.kind)
                        reason = "expired"
                        continue
                    if exc.status == 404 and self._spec.optional:
                        self.state.absent(self.kind)
                        # Re-check now and then: the CRD may be installed later.
                        await asyncio.sleep(self.state.settings.backoff_max)
                        continue
                    error = f"HTTP {exc.status} {exc.reason}"
                except TimeoutError:
                    error = "timed out"
                except Exception as exc:  # any transport failure: connection refused, reset, bad TLS...
                    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                attempt += 1
                delay = backoff_delay(attempt, self.state.settings.backoff_base, self.state.settings.backoff_max)
                log.info(
                    "event=watch_error cluster=%s kind=%s error=%r retry_in=%.2f",
                    self.state.name,
                    self.kind,
                    error,
                    delay,
                )
                self.state.failed(self.kind, error)
                await asyncio.sleep(delay)
        finally:
            await w.close()

    async def _relist(self, reason: str) -> None:
        resp = await checked_response(await self._call(_preload_content=False, _request_timeout=self._timeouts))
        try:
            body = await resp.read()
        finally:
            resp.release()
        data = json.loads(body)
        objects: dict[Any, Any] = {}
        for item in data.get("items") or ():
            parsed = self._parse(item)
            if parsed is not None:
                objects[parsed[0]] = parsed[1]
        rv = str((data.get("metadata") or {}).get("resourceVersion") or "")
        if not rv:
            # Without a version there is nothing to watch from, and the loop would relist at once, forever:
            # an error, so the member gets the normal backoff (and the objects are not trusted).
            raise ValueError("list response has no metadata.resourceVersion")
        self.state.listed(self.kind, objects, rv, reason)

    async def _watch(self, w: watch.Watch) -> bool:
        """Watch until the stream ends; True when it was healthy: it delivered events or stayed open longer than
        ``backoff_base`` (the loop then reopens at once and resets the backoff). False for a watch that was
        answered but closed at once, empty (the loop backs off)."""
        opened = False
        started = asyncio.get_running_loop().time()

        async def call(**kwargs: Any) -> aiohttp.ClientResponse:
            # No docstring on purpose: kubernetes_asyncio then keeps events as raw dicts (no model classes).
            nonlocal opened
            resp = await checked_response(await self._call(**kwargs))
            if not health.resource_version:
                resp.release()
                raise ResyncNeeded
            opened = True
            self.state.opened(self.kind)
            return resp

        health = self.state.kinds[self.kind]
        stream = w.stream(
            call,
            resource_version=health.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.state.settings.watch_timeout,
            _request_timeout=self._timeouts,
        )
        delivered = False
        try:
            async for event in stream:
                delivered = True
                self._on_event(event)
        except TimeoutError:
            if not opened:
                raise
            # A quiet stream past the read timeout: reopen at once; if the server hung, that reopen fails.
            self.state.suspect(self.kind)
            return True  # it stayed open for a whole read timeout
        finally:
            if w.resp is not None:
                w.resp.release()
                w.resp = None
        lasted = asyncio.get_running_loop().time() - started
        return delivered or (opened and lasted > self.state.settings.backoff_base)

    def _on_event(self, event: Mapping[str, Any]) -> None:
        etype = str(event.get("type") or "")
        raw = event.get("raw_object")
        meta = raw.get("metadata") if isinstance(raw, Mapping) else None
        rv = str(meta.get("resourceVersion") or "") if isinstance(meta, Mapping) else ""
        if etype == "BOOKMARK":
            self.state.progressed(self.kind, rv)
            return
        if etype == "DELETED":
            key = _meta_key(self.kind, raw)
            if key is not None:
                self.state.changed(self.kind, key, None, etype)
        elif etype in ("ADDED", "MODIFIED"):
            parsed = self._parse(raw)
            if parsed is not None:
                self.state.changed(self.kind, parsed[0], parsed[1], etype)
            else:
                # The object exists but is unusable: keeping its previous version would serve stale data.
                key = _meta_key(self.kind, raw)
                if key is not None and key in getattr(self.state.snapshot, self.kind):
                    self.state.changed(self.kind, key, None, etype)
        else:
            log.warning("event=unknown_watch_event cluster=%s kind=%s type=%r", self.state.name, self.kind, etype)
        self.state.progressed(self.kind, rv)

    def _parse(self, obj: Any) -> tuple[Any, Any] | None:
        try:
            return self._parse_obj(self.kind, obj)
        except ValueError as exc:
            key = _meta_key(self.kind, obj)
            log.warning(
                "event=bad_object cluster=%s kind=%s object=%s reason=%r",
                self.state.name,
                self.kind,
                "/".join(key) if isinstance(key, tuple) else key,
                str(exc),
            )
            return None
