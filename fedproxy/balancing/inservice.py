"""In service: which endpoints are in some pool and not down, followed across rebuilds, for slow start (pure).

Theory of operation. Slow start ramps an endpoint from when it came into service: into a pool (a pod became
ready, a member reconnected or was undrained) or back up (active checks, outlier readmission).
:class:`.health.Arrivals` keeps since when; :class:`InService` tells it what entered service and what left.

The endpoints of a pool follow from membership alone (:mod:`.members`: catalog, spec, overrides), not from
health, so this runs before the serving state is built and the state is built once, with the arrivals in its
health view. The in-service set is the union of every pool's endpoints minus the ones health says are down.

Cost: what changed. The endpoints for a spec are computed again only when its pool could have other ones: a
new spec, another CatalogService object for its service, or a change of one of the service's members' pool
inputs or overrides (the test the serving state uses to keep pools, :func:`.members.changed_members`). An
endpoint's in-service state is looked at again only when a pool's endpoints gained or lost it or its own
down flag changed. A rebuild where none of that changed looks at no endpoint (``examined`` counts them), only
at the ramps in progress to expire them.
"""

from __future__ import annotations

from ..catalog import Catalog, CatalogService
from ..config import Config
from ..model import Endpoint
from .health import Arrivals, HealthView
from .members import NO_OVERRIDES, Overrides, PoolSpec, changed_members, pool_members
from .serving import pool_specs

__all__ = ["InService"]


class InService:
    """The in-service endpoints as of the last :meth:`observe`, and the slow-start arrivals they give."""

    def __init__(self) -> None:
        self.arrivals = Arrivals()
        self._config: Config | None = None
        self._specs: list[PoolSpec] = []
        self._catalog = Catalog()
        self._overrides = NO_OVERRIDES
        self._pools: dict[PoolSpec, frozenset[Endpoint]] = {}  # spec -> the endpoints of its pool
        self._count: dict[Endpoint, int] = {}  # endpoint -> how many pools hold it
        self._down: frozenset[Endpoint] = frozenset()
        self.examined = 0  # endpoints whose in-service state the last observe looked at
        self.recomputed = 0  # specs whose pool endpoints the last observe computed (again)

    def observe(
        self,
        config: Config,
        catalog: Catalog,
        overrides: Overrides,
        unhealthy: frozenset[Endpoint],
        now: float,
        window: float,
    ) -> HealthView:
        """Follow the in-service set to (config, catalog, overrides, unhealthy) and return the arrivals view
        (``since`` of each endpoint less than ``window`` s in service; the first call is the baseline).
        """
        changes: list[tuple[frozenset[Endpoint], frozenset[Endpoint]]] = []  # (old, new) endpoints of a pool
        if config is not self._config:
            self._config, self._specs = config, pool_specs(config)
            keep = set(self._specs)
            for spec in [s for s in self._pools if s not in keep]:
                changes.append((self._pools.pop(spec), frozenset()))
        members = changed_members(self._catalog, catalog, self._overrides, overrides)
        old_services = self._catalog.services
        recomputed = 0
        for spec in self._specs:
            svc = catalog.services.get(spec.service)
            old = self._pools.get(spec)
            if (
                old is not None
                and svc is old_services.get(spec.service)
                and (svc is None or not members or members.isdisjoint(svc.clusters))
            ):
                continue
            new = self._pools[spec] = _endpoints(spec, catalog, svc, config, overrides)
            recomputed += 1
            if old is None:
                old = frozenset()
            if new != old:
                changes.append((old, new))
        touched: set[Endpoint] = set()
        for old, new in changes:
            touched |= old ^ new
        if unhealthy is not self._down and unhealthy != self._down:
            touched |= self._down ^ unhealthy
        count, down = self._count, self._down
        before = {ep for ep in touched if ep in count and ep not in down}
        for old, new in changes:
            for ep in old - new:
                n = count[ep] - 1
                if n:
                    count[ep] = n
                else:
                    del count[ep]
            for ep in new - old:
                count[ep] = count.get(ep, 0) + 1
        after = {ep for ep in touched if ep in count and ep not in unhealthy}
        self._catalog, self._overrides, self._down = catalog, overrides, unhealthy
        self.examined, self.recomputed = len(touched), recomputed
        self.arrivals.update(after - before, before - after, now, window)
        return self.arrivals.view()


def _endpoints(
    spec: PoolSpec, catalog: Catalog, svc: CatalogService | None, config: Config, overrides: Overrides
) -> frozenset[Endpoint]:
    """The endpoints of the pool for ``spec``, as :func:`.pool.build_pool` puts them in its tiers."""
    if svc is None:
        return frozenset()
    members, _ = pool_members(spec, catalog, svc, config.balancing, overrides)
    return frozenset(ep for m in members for ep in m.endpoints)
