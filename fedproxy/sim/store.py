"""The object store behind one emulated API server: objects, resourceVersions and the event history.

Pure (no asyncio, no sockets). Theory of operation, following etcd3 + the apiserver watch cache:
- One global resourceVersion counter per server; every write bumps it and stamps the object.
- Every write appends a `StoreEvent` to a bounded history. A watch "from N" replays the events with
  rv > N; if N predates the oldest retained event (history overflow or `expire_before`), the store
  raises `Expired`, which the HTTP layer turns into the 410 "too old resource version" ERROR event.
- Objects are kept as the JSON dicts a real server returns; readers always get deep copies.
Listeners registered with `subscribe` are called synchronously after each write (the HTTP layer uses
them to wake open watches).
"""

from __future__ import annotations

import copy
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fedproxy.sim.patches import merge_patch
from fedproxy.sim.resources import Resource, resource_for_kind
from fedproxy.sim.selectors import FieldSelector, Selector
from fedproxy.sim.validation import ValidationError, validate

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Obj = dict[str, Any]
Key = tuple[str, str, str]  # (plural, namespace or "", name)

# The watch cache of kube-apiserver keeps on the order of thousands of events per resource; one bound
# per server is enough to make "too old" reachable by overflow in tests.
DEFAULT_HISTORY = 10_000


class StoreError(Exception):
    """A request the API server answers with a Status: `code` and `reason` as in metav1.StatusReason."""

    code = 500
    reason = "InternalError"


class NotFound(StoreError):
    code, reason = 404, "NotFound"


class AlreadyExists(StoreError):
    code, reason = 409, "AlreadyExists"


class Conflict(StoreError):
    code, reason = 409, "Conflict"


class Invalid(StoreError):
    code, reason = 422, "Invalid"


class Expired(StoreError):
    """Watch from a compacted resourceVersion; message matches the real server's wording."""

    code, reason = 410, "Expired"


@dataclass(frozen=True)
class StoreEvent:
    """One write. `previous` is the object before the write (None for ADDED), used for selector
    transitions: an object that stops matching a watch's selector is seen as DELETED by that watch."""

    type: EventType
    rv: int
    resource: str
    obj: Obj
    previous: Obj | None


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: Obj) -> Obj:
    # metadata.generation tracks changes outside metadata and status, as the registry strategies do.
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


class ObjectStore:
    """Objects of every served resource of one emulated server, with a shared resourceVersion."""

    def __init__(self, history: int = DEFAULT_HISTORY, clock: Callable[[], str] = _now_rfc3339) -> None:
        self._objects: dict[Key, Obj] = {}
        self._events: deque[StoreEvent] = deque(maxlen=history)
        self._rv = 0
        # The oldest rv a watch may start from (kube's "oldest-1"): history holds every event after it.
        self._compacted = 0
        self._clock = clock
        self._listeners: list[Callable[[StoreEvent], None]] = []

    # Versions

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion (0 before the first write)."""
        return self._rv

    @property
    def compacted_version(self) -> int:
        """The oldest resourceVersion a watch can still start from; anything older is Expired (410)."""
        return self._compacted

    def expire_before(self, rv: int | None = None) -> None:
        """Compact: a watch from any resourceVersion < `rv` (default: the current one) gets 410."""
        rv = self._rv if rv is None else rv
        self._compacted = max(self._compacted, rv)
        while self._events and self._events[0].rv <= self._compacted:
            self._events.popleft()

    def subscribe(self, listener: Callable[[StoreEvent], None]) -> Callable[[], None]:
        """Call `listener` after each write; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # Reads

    def get(self, resource: Resource, namespace: str, name: str) -> Obj:
        key = (resource.plural, namespace if resource.namespaced else "", name)
        try:
            return copy.deepcopy(self._objects[key])
        except KeyError:
            raise NotFound(
                f'{resource.plural}{"." + resource.group if resource.group else ""} "{name}" not found'
            ) from None

    def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        labels: Selector | None = None,
        fields: FieldSelector | None = None,
    ) -> tuple[list[Obj], int]:
        """Matching objects sorted by (namespace, name), as etcd's key order, and the list's rv."""
        items = [
            copy.deepcopy(obj)
            for key, obj in sorted(self._objects.items())
            if key[0] == resource.plural and (namespace is None or key[1] == namespace) and matches(obj, labels, fields)
        ]
        return items, self._rv

    def events_since(self, rv: int) -> list[StoreEvent]:
        """Events with resourceVersion > rv, oldest first; Expired if history no longer covers rv."""
        if rv < self._compacted:
            raise Expired(f"too old resource version: {rv} ({self._compacted})")
        # Events are ordered by rv, so scan from the end; a watch is usually close to the head.
        out: list[StoreEvent] = []
        for ev in reversed(self._events):
            if ev.rv <= rv:
                break
            out.append(ev)
        out.reverse()
        return out

    # Writes

    def create(self, resource: Resource, obj: Obj) -> Obj:
        key = self._key(resource, obj)
        if key in self._objects:
            raise AlreadyExists(f'{resource.plural} "{key[2]}" already exists')
        new = self._stamp(resource, self._valid(resource, copy.deepcopy(obj), None), None)
        return self._commit("ADDED", resource, key, new, None)

    def update(self, resource: Resource, obj: Obj) -> Obj:
        """Replace; a non-empty metadata.resourceVersion must match the stored one (optimistic lock)."""
        key = self._key(resource, obj)
        old = self._objects.get(key)
        if old is None:
            raise NotFound(f'{resource.plural} "{key[2]}" not found')
        wanted = obj.get("metadata", {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {resource.plural} "{key[2]}": the object has been '
                "modified; please apply your changes to the latest version and try again"
            )
        new = self._stamp(resource, self._valid(resource, copy.deepcopy(obj), old), old)
        return self._commit("MODIFIED", resource, key, new, old)

    def apply(self, resource: Resource, obj: Obj) -> Obj:
        """Create, or replace regardless of resourceVersion (a test harness's "make it so")."""
        key = self._key(resource, obj)
        if key not in self._objects:
            return self.create(resource, obj)
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {}).pop("resourceVersion", None)
        return self.update(resource, obj)

    def patch(self, resource: Resource, namespace: str, name: str, patch: Obj) -> Obj:
        """Apply a JSON merge patch to a stored object."""
        current = self.get(resource, namespace, name)
        patched = merge_patch(current, patch)
        meta = patched.setdefault("metadata", {})
        meta["name"], meta["namespace"] = name, current["metadata"].get("namespace")
        if meta["namespace"] is None:
            del meta["namespace"]
        if "resourceVersion" not in (patch.get("metadata") or {}):
            meta.pop("resourceVersion", None)
        return self.update(resource, patched)

    def delete(self, resource: Resource, namespace: str, name: str) -> Obj:
        """Remove; the DELETED event carries the last state stamped with the deletion's rv."""
        key = (resource.plural, namespace if resource.namespaced else "", name)
        old = self._objects.get(key)
        if old is None:
            raise NotFound(f'{resource.plural} "{name}" not found')
        gone = copy.deepcopy(old)
        self._rv += 1
        gone["metadata"]["resourceVersion"] = str(self._rv)
        del self._objects[key]
        self._record(StoreEvent("DELETED", self._rv, resource.plural, gone, old))
        return copy.deepcopy(gone)

    def apply_all(self, objs: Iterable[Obj]) -> list[Obj]:
        """`apply` each object, finding its resource from apiVersion and kind."""
        return [self.apply(resource_for_kind(o["apiVersion"], o["kind"]), o) for o in objs]

    # Internals

    def _key(self, resource: Resource, obj: Obj) -> Key:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise Invalid(f"{resource.kind}: metadata.name: Required value: name is required")
        if resource.namespaced and not meta.get("namespace"):
            raise Invalid(f"{resource.kind} {name!r}: metadata.namespace: Required value")
        return (resource.plural, meta.get("namespace", "") if resource.namespaced else "", name)

    def _valid(self, resource: Resource, obj: Obj, old: Obj | None) -> Obj:
        try:
            validate(resource.plural, obj, old)
        except ValidationError as exc:
            raise Invalid(str(exc)) from None
        return obj

    def _stamp(self, resource: Resource, obj: Obj, old: Obj | None) -> Obj:
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        meta = obj.setdefault("metadata", {})
        if not resource.namespaced:
            meta.pop("namespace", None)
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = self._clock()
            meta["generation"] = 1
        else:
            # Server-owned fields survive a replace, as the registry's PrepareForUpdate does.
            for field in ("uid", "creationTimestamp"):
                meta[field] = old["metadata"][field]
            changed = _spec_part(obj) != _spec_part(old)
            meta["generation"] = old["metadata"]["generation"] + (1 if changed else 0)
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        return obj

    def _commit(self, kind: EventType, resource: Resource, key: Key, new: Obj, old: Obj | None) -> Obj:
        self._objects[key] = new
        self._record(StoreEvent(kind, self._rv, resource.plural, copy.deepcopy(new), old))
        return copy.deepcopy(new)

    def _record(self, event: StoreEvent) -> None:
        if len(self._events) == self._events.maxlen:
            # The oldest event falls out of history: watches from before it are now too old.
            self._compacted = self._events[0].rv
        self._events.append(event)
        for listener in list(self._listeners):
            listener(event)


def matches(obj: Obj | None, labels: Selector | None, fields: FieldSelector | None) -> bool:
    """Whether an object passes a watch's or list's selectors."""
    if obj is None:
        return False
    ok_labels = labels is None or labels.matches(obj.get("metadata", {}).get("labels") or {})
    return ok_labels and (fields is None or fields.matches(obj))


def project_event(
    event: StoreEvent,
    resource: Resource,
    namespace: str | None,
    labels: Selector | None,
    fields: FieldSelector | None,
) -> tuple[str, Obj] | None:
    """What a watch with this scope sees of a store event (cacher semantics), or None.

    An object moving into the selector is ADDED, moving out is DELETED (carrying its previous state
    stamped with the event's rv), as kube-apiserver's cacheWatcher does.
    """
    if event.resource != resource.plural:
        return None
    if namespace is not None and event.obj.get("metadata", {}).get("namespace") != namespace:
        return None
    if event.type == "DELETED":
        return ("DELETED", copy.deepcopy(event.obj)) if matches(event.obj, labels, fields) else None
    now, before = matches(event.obj, labels, fields), matches(event.previous, labels, fields)
    if now and before:
        return ("MODIFIED", copy.deepcopy(event.obj))
    if now:
        return ("ADDED", copy.deepcopy(event.obj))
    if before and event.previous is not None:
        gone = copy.deepcopy(event.previous)
        gone["metadata"]["resourceVersion"] = str(event.rv)
        return ("DELETED", gone)
    return None
