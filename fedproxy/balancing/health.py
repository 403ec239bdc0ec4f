"""Health: passive outlier detection, active-check state, arrivals for slow start (pure; ``now`` is an argument).

- ``OutlierDetector`` (Envoy outlier detection): ``consecutive_failures`` failures in a row (5xx or, for TCP,
  connect failures) eject an endpoint for ``base_ejection_time x k`` seconds, k being how many times in a row it
  was ejected, capped at ``max_ejection_time``, plus up to 10 % jitter from a seeded rng so a fleet of replicas
  does not readmit in lockstep. k decays by one per ``base_ejection_time`` spent back in service without an
  ejection (Envoy decrements its multiplier each interval a host stays healthy).
  The detector is global (one per process: HTTP, TCP and DNS share one view of health) and does not know pools,
  so ``max_ejection_percent`` is applied by each pool when it is built: of its endpoints ejected by the detector
  (``HealthView.ejected``), only the ``max(1, floor(pct x n / 100))`` ejected earliest count as down there; the
  others keep serving in that pool (:func:`capped_unhealthy`). ``failure()`` therefore reports the detector's
  decision, not a pool's.
- ``ActiveHealth`` (HAProxy checks): ``rise`` successes in a row bring a down endpoint up, ``fall`` failures
  take an up one down; endpoints start up (HAProxy's default).
- ``Arrivals``: since when each endpoint is in service, for slow start. The first observation is the baseline
  (nothing ramps at startup); endpoints seen later, or seen again after leaving, ramp from then.
  :class:`.inservice.InService` feeds it what entered and left service, from pool membership and health.

``HealthView`` is the one value the serving state is built from: ``unhealthy`` holds every endpoint that is down
for any reason (consumers that only need up/down read it alone); ``ejected`` the subset ejected by the outlier
detector with their ejection time (for the per-pool cap); ``since`` the start of each endpoint's slow-start window.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ..config import OutlierConfig
from ..model import Endpoint, empty_map

JITTER_FRACTION = 0.1  # readmission jitter: up to 10 % of the ejection time


@dataclass(frozen=True, slots=True)
class HealthView:
    """Endpoints health says are down as of one moment (see the module docstring for the fields)."""

    unhealthy: frozenset[Endpoint] = frozenset()
    ejected: Mapping[Endpoint, float] = field(default_factory=empty_map)  # outlier ejections -> ejected at
    since: Mapping[Endpoint, float] = field(default_factory=empty_map)  # in service since (slow start)

    def union(self, other: HealthView) -> HealthView:
        """Both views at once: down if either says so; the later ``since`` wins."""
        since = dict(self.since)
        for ep, t in other.since.items():
            since[ep] = max(t, since.get(ep, t))
        return HealthView(
            self.unhealthy | other.unhealthy,
            MappingProxyType({**self.ejected, **other.ejected}),
            MappingProxyType(since),
        )


def capped_unhealthy(endpoints: Sequence[Endpoint], health: HealthView, max_percent: float) -> frozenset[Endpoint]:
    """Down endpoints of one pool, with outlier ejections beyond ``max_percent`` of it readmitted here."""
    if not health.unhealthy:
        return frozenset()
    down = {ep for ep in endpoints if ep in health.unhealthy}
    ejected = [ep for ep in down if ep in health.ejected]
    allowed = max(1, math.floor(max_percent * len(endpoints) / 100.0))
    if len(ejected) > allowed:
        ejected.sort(key=lambda ep: (health.ejected[ep], str(ep)))
        down.difference_update(ejected[allowed:])
    return frozenset(down)


@dataclass(slots=True)
class _Outlier:
    failures: int = 0  # consecutive
    ejections: int = 0  # consecutive ejections (the ejection time multiplier)
    ejected_at: float | None = None
    until: float | None = None  # ejected until; None when in service
    back_at: float | None = None  # readmitted at


class OutlierDetector:
    """Passive outlier detection across every pool (Envoy consecutive_5xx with ejection backoff)."""

    def __init__(self, settings: OutlierConfig, seed: int | None = None, horizon: float = 3600.0) -> None:
        self.settings = settings
        self.rng = random.Random(seed)
        self.horizon = horizon  # s a readmitted endpoint's record is kept for slow start and the backoff
        self._eps: dict[Endpoint, _Outlier] = {}

    def _readmit(self, ep: Endpoint, st: _Outlier, now: float) -> None:
        if st.until is not None and st.until <= now:
            st.back_at, st.until, st.ejected_at, st.failures = st.until, None, None, 0

    def failure(self, ep: Endpoint, now: float) -> bool:
        """Count a failure of ``ep``; True when this one ejected it."""
        st = self._eps.get(ep)
        if st is None:
            st = self._eps[ep] = _Outlier()
        self._readmit(ep, st, now)
        if st.until is not None:
            return False  # already ejected: late results of requests started before do not extend it
        st.failures += 1
        if st.failures < self.settings.consecutive_failures:
            return False
        base = self.settings.base_ejection_time
        if st.back_at is not None and base > 0:
            st.ejections = max(0, st.ejections - int((now - st.back_at) // base))
        st.ejections += 1
        duration = min(self.settings.max_ejection_time, base * st.ejections)
        st.ejected_at, st.until, st.failures = now, now + duration * (1.0 + JITTER_FRACTION * self.rng.random()), 0
        return True

    def success(self, ep: Endpoint, now: float) -> None:
        """A success of ``ep`` resets its consecutive failures."""
        st = self._eps.get(ep)
        if st is not None:
            self._readmit(ep, st, now)
            st.failures = 0
            if st.until is None and st.ejections == 0 and st.back_at is None:
                del self._eps[ep]  # nothing worth remembering

    def view(self, now: float) -> HealthView:
        """Ejected endpoints as of ``now``; readmitted ones carry ``since`` = their readmission time."""
        down: dict[Endpoint, float] = {}
        since: dict[Endpoint, float] = {}
        for ep, st in list(self._eps.items()):
            self._readmit(ep, st, now)
            if st.until is not None and st.ejected_at is not None:
                down[ep] = st.ejected_at
            elif st.back_at is not None:
                if now - st.back_at > self.horizon:
                    del self._eps[ep]
                else:
                    since[ep] = st.back_at
        return HealthView(frozenset(down), MappingProxyType(down), MappingProxyType(since))

    def next_change(self, now: float) -> float | None:
        """When ``view()`` changes next without new results (the earliest readmission), or None."""
        times = [st.until for st in self._eps.values() if st.until is not None and st.until > now]
        return min(times, default=None)

    def retain(self, endpoints: Iterable[Endpoint]) -> None:
        """Forget endpoints no longer in any pool (pods that went away)."""
        keep = set(endpoints)
        for ep in [e for e in self._eps if e not in keep]:
            del self._eps[ep]

    def state(self, now: float) -> list[dict[str, object]]:
        """Admin JSON: every endpoint ejected now, with until and consecutive ejection count."""
        out = []
        for ep, st in sorted(self._eps.items(), key=lambda kv: str(kv[0])):
            if st.until is not None and st.until > now:
                out.append({"endpoint": str(ep), "cluster": ep.cluster, "until": st.until, "ejections": st.ejections})
        return out


class ActiveHealth:
    """Active-check results -> up/down per endpoint (HAProxy rise/fall; endpoints start up)."""

    def __init__(self, rise: int = 2, fall: int = 3) -> None:
        self.rise, self.fall = rise, fall
        self._down: set[Endpoint] = set()
        self._streak: dict[Endpoint, int] = {}  # results in a row that disagree with the current state

    def record(self, ep: Endpoint, ok: bool) -> bool:
        """One check result; True when it changed the endpoint's state."""
        is_down = ep in self._down
        if ok != is_down:  # agrees with the current state (up and ok, or down and failing)
            self._streak.pop(ep, None)
            return False
        n = self._streak.get(ep, 0) + 1
        if n < (self.rise if is_down else self.fall):
            self._streak[ep] = n
            return False
        self._streak.pop(ep, None)
        if is_down:
            self._down.discard(ep)
        else:
            self._down.add(ep)
        return True

    def changing(self, ep: Endpoint) -> bool:
        """True while results disagree with the state (HAProxy checks faster then: ``fastinter``)."""
        return ep in self._streak

    def down(self) -> frozenset[Endpoint]:
        return frozenset(self._down)

    def retain(self, endpoints: Iterable[Endpoint]) -> None:
        keep = set(endpoints)
        self._down &= keep
        for ep in [e for e in self._streak if e not in keep]:
            del self._streak[ep]

    def view(self) -> HealthView:
        return HealthView(self.down())


class Arrivals:
    """Since when each endpoint is in service, for slow start (see the module docstring).

    Fed either the whole in-service set each time (:meth:`observe`) or what changed (:meth:`update`, as
    :class:`.inservice.InService` does); one instance takes one of the two.
    """

    def __init__(self) -> None:
        self._known: set[Endpoint] | None = None  # observe(): the set last observed
        self._started = False  # the first update is the baseline
        self._since: dict[Endpoint, float] = {}

    def observe(self, endpoints: Iterable[Endpoint], now: float, window: float) -> None:
        """The endpoints in service now; new ones start ramping, ramps older than ``window`` are dropped."""
        current = set(endpoints)
        known = self._known if self._known is not None else set()
        self._known = current
        self.update(current - known, known - current, now, window)

    def update(self, entered: Iterable[Endpoint], left: Iterable[Endpoint], now: float, window: float) -> None:
        """What came into service and what went out of it since the last call (the first call is the baseline:
        nothing ramps); ramps older than ``window`` are dropped. Costs the changes plus the ramps in progress.
        """
        if self._started:
            for ep in entered:
                self._since[ep] = now
        self._started = True
        for ep in left:
            self._since.pop(ep, None)
        for ep in [e for e, t in self._since.items() if now - t >= window]:
            del self._since[ep]

    def view(self) -> HealthView:
        return HealthView(since=MappingProxyType(dict(self._since)))
