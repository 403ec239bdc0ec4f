"""What discovery knows of one member: its current snapshot, the health of each watch, counters and metrics.

Theory of operation. Each resource kind has its own list+watch loop (:mod:`.watch`); the loops report into one
:class:`MemberState` through ``listed`` / ``changed`` / ``healthy`` / ``failed``. Every change builds a new
immutable :class:`~fedproxy.model.ClusterSnapshot` and calls ``publish`` (the debounced fan-out to
``on_change``). Everything runs on one event loop, so these methods need no locks: none of them awaits.

Connectivity (issue 3): a kind is *failing* from its first failed attempt (or a hung read) until its next
successful list, watch open or event. The member is disconnected once every kind it serves has been failing for
``grace_period`` (measured from the most recent failure start: the last moment anything was healthy). Its
objects are kept for the state view. It is connected again only when every kind has been relisted since, so
nothing stale survives a resync. A member that never reached its API server is disconnected ``grace_period``
after it started.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import Counter, Gauge

from ..config import DiscoveryConfig
from ..model import OBJECT_KINDS, ClusterSnapshot, Locality, ObjectKind

log = logging.getLogger("fedproxy.discovery")
NOWHERE = Locality()

WATCH_EVENTS = Counter("fedproxy_discovery_watch_events_total", "Watch events received", ["cluster", "kind", "type"])
RESYNCS = Counter("fedproxy_discovery_resyncs_total", "Full relists of one resource kind", ["cluster", "reason"])
ERRORS = Counter("fedproxy_discovery_errors_total", "Failed list or watch attempts", ["cluster"])
CONNECTED = Gauge("fedproxy_discovery_connected", "1 while the member's watches are healthy", ["cluster"])
LAST_EVENT = Gauge(
    "fedproxy_discovery_last_event_timestamp_seconds", "Unix time of the member's last watch event", ["cluster"]
)


@dataclass
class KindHealth:
    """Bookkeeping of one (member, kind) loop."""

    resource_version: str = ""  # where the next watch resumes; "" = the next attempt lists
    listed: bool = False  # listed at least once since the member started
    resynced: bool = False  # relisted since the member was last disconnected
    failing_since: float | None = None  # monotonic start of the current failure streak
    absent: bool = False  # an optional CRD this member does not serve (404)


class MemberState:
    """Snapshot and health of one member. Mutated only from the event loop that runs its watches."""

    def __init__(
        self,
        name: str,
        settings: DiscoveryConfig,
        publish: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        locality: Locality = NOWHERE,
        ready: bool = True,
    ) -> None:
        self.name = name
        self.settings = settings
        self._publish = publish
        self._clock = clock
        now = clock()
        # Not yet healthy: a member that never answers is disconnected grace_period after it started.
        self.kinds: dict[ObjectKind, KindHealth] = {k: KindHealth(failing_since=now) for k in OBJECT_KINDS}
        self.ready = ready  # Karmada's Ready condition (True for configured members)
        self.healthy = True  # False from the grace-period expiry until every kind resynced
        self.resyncs = 0
        self.errors = 0
        self.last_error = ""
        self.host = ""
        self.snapshot = ClusterSnapshot(name=name, locality=locality, connected=ready, synced=False)
        CONNECTED.labels(name).set(1 if ready else 0)

    # Reports from the watch loops

    def listed(self, kind: ObjectKind, objects: Mapping[Any, Any], resource_version: str, reason: str) -> None:
        """A full list of ``kind`` succeeded: it replaces every object of that kind."""
        k = self.kinds[kind]
        k.resource_version = resource_version
        k.listed = k.resynced = True
        k.absent = False
        k.failing_since = None
        self.resyncs += 1
        RESYNCS.labels(self.name, reason).inc()
        log.debug("event=relist cluster=%s kind=%s reason=%s objects=%d", self.name, kind, reason, len(objects))
        # A complete list is news from the member too: "last event" is when we last heard from it.
        LAST_EVENT.labels(self.name).set(time.time())
        self._set(replace(self.snapshot.with_objects(kind, objects), last_event=self._clock()))

    def absent(self, kind: ObjectKind) -> None:
        """The member does not serve ``kind`` (its CRD is not installed): it simply has none."""
        k = self.kinds[kind]
        if not k.absent:
            log.info("event=kind_absent cluster=%s kind=%s", self.name, kind)
        k.absent = k.listed = k.resynced = True
        k.resource_version = ""
        k.failing_since = None
        self._set(self.snapshot.with_objects(kind, {}))

    def changed(self, kind: ObjectKind, key: Any, value: Any | None, event_type: str) -> None:
        """One watch event: ``value`` None removes ``key``."""
        now = self._clock()
        WATCH_EVENTS.labels(self.name, kind, event_type).inc()
        LAST_EVENT.labels(self.name).set(time.time())
        self.kinds[kind].failing_since = None
        snap = self.snapshot.with_object(kind, key, value)
        self._set(replace(snap, last_event=now))

    def progressed(self, kind: ObjectKind, resource_version: str) -> None:
        """A bookmark or an event: the watch is alive and resumes from ``resource_version``."""
        k = self.kinds[kind]
        if resource_version:
            k.resource_version = resource_version
        if k.failing_since is not None:
            k.failing_since = None
            self._refresh()

    def opened(self, kind: ObjectKind) -> None:
        """A watch request was answered (headers received): the server is alive."""
        self.progressed(kind, "")

    def suspect(self, kind: ObjectKind) -> None:
        """A watch stream went quiet past the read timeout: failing until the reconnect is answered."""
        k = self.kinds[kind]
        if k.failing_since is None:
            k.failing_since = self._clock()

    def failed(self, kind: ObjectKind | None, reason: str) -> None:
        """A list/watch attempt of ``kind`` failed (``None``: the client could not even be built)."""
        now = self._clock()
        self.errors += 1
        self.last_error = reason if kind is None else f"{kind}: {reason}"
        ERRORS.labels(self.name).inc()
        for k in self.kinds.values() if kind is None else (self.kinds[kind],):
            if k.failing_since is None:
                k.failing_since = now
        self._refresh()

    def expired(self, kind: ObjectKind) -> None:
        """The watch's resourceVersion is too old (410 Gone): the next attempt relists."""
        self.kinds[kind].resource_version = ""

    # Connectivity

    def check(self) -> None:
        """Apply the grace period; called periodically by the member's monitor."""
        if not self.healthy:
            return
        serving = [k for k in self.kinds.values() if not k.absent]
        starts = [k.failing_since for k in serving]
        if not starts or any(s is None for s in starts):
            return
        if self._clock() - max(s for s in starts if s is not None) >= self.settings.grace_period:
            self.healthy = False
            for k in self.kinds.values():
                # An absent CRD has nothing that could be stale; the others resync by relisting, not resuming.
                k.resynced = k.absent
                k.resource_version = ""
            log.warning("event=member_disconnected cluster=%s error=%r", self.name, self.last_error)
            self._refresh()

    def set_ready(self, ready: bool, locality: Locality) -> None:
        """Karmada's view of the member changed (Ready condition, region/zone)."""
        self.ready = ready
        if locality != self.snapshot.locality:
            self._set(replace(self.snapshot, locality=locality, version=self.snapshot.version + 1))
        else:
            self._refresh()

    @property
    def synced(self) -> bool:
        return all(k.listed for k in self.kinds.values())

    def _refresh(self) -> None:
        self._set(self.snapshot)

    def _set(self, snap: ClusterSnapshot) -> None:
        if not self.healthy and all(k.resynced for k in self.kinds.values()):
            self.healthy = True
            log.info("event=member_reconnected cluster=%s", self.name)
        connected = self.healthy and self.ready
        failing = any(k.failing_since is not None and not k.absent for k in self.kinds.values())
        error = self.last_error if failing or not connected else ""
        flags = (connected, self.synced, error)
        if flags != (snap.connected, snap.synced, snap.error):
            snap = replace(snap, connected=connected, synced=self.synced, error=error, version=snap.version + 1)
            CONNECTED.labels(self.name).set(1 if connected else 0)
        if snap is not self.snapshot:
            self.snapshot = snap
            self._publish()

    # Reporting

    def status(self) -> dict[str, Any]:
        """The member as the admin API and dashboards show it."""
        snap = self.snapshot
        age = None if not snap.last_event else round(self._clock() - snap.last_event, 3)
        return {
            "host": self.host,
            "connected": snap.connected,
            "synced": snap.synced,
            "ready": self.ready,
            "last_event_age": age,
            "resyncs": self.resyncs,
            "errors": self.errors,
            "last_error": self.last_error,
            "version": snap.version,
            "kinds": {
                kind: {
                    "listed": k.listed,
                    "absent": k.absent,
                    "failing": k.failing_since is not None,
                    "resource_version": k.resource_version,
                }
                for kind, k in self.kinds.items()
            },
        }

    def forget_metrics(self) -> None:
        """Drop this member's metric series (it was removed from the configuration)."""
        for metric in (CONNECTED, LAST_EVENT, ERRORS):
            try:
                metric.remove(self.name)
            except KeyError:
                pass
