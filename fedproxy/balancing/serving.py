"""The serving state: one immutable value the listeners read through a single reference (pure).

``build_state`` turns (config, catalog, health, overrides, now) into every pool a route or TCP listener
needs. The runtime swaps the reference when any input changes; a request keeps the state (and so the pool)
it started with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..catalog import Catalog
from ..config import Algorithm, Config, HashConfig, HttpRoute, TcpListener
from ..model import ServiceKey, empty_map
from .health import HealthView
from .members import NO_OVERRIDES, Overrides, PoolSpec, changed_members, pool_inputs
from .pool import NO_HEALTH, Pool, build_pool


def _algorithm(config: Config, service: ServiceKey) -> Algorithm:
    own = config.balancing.services.get(service)
    if own is not None and own.algorithm is not None:
        return own.algorithm
    return config.balancing.algorithm


def route_spec(route: HttpRoute, config: Config) -> PoolSpec:
    """The pool an HTTP route balances over (a route hash config makes it a hash pool)."""
    own = config.balancing.services.get(route.service)
    algorithm = "hash" if route.hash is not None else _algorithm(config, route.service)
    weights = route.clusters or (own.clusters if own is not None else {})
    return PoolSpec(
        service=route.service,
        port=route.service_port,
        backend=route.backend,
        cluster_weights=tuple(sorted(weights.items())),
        algorithm=algorithm,
        hash=route.hash or (config.balancing.hash if algorithm == "hash" else None),
    )


def tcp_spec(listener: TcpListener, config: Config) -> PoolSpec:
    """The pool a TCP listener balances over."""
    own = config.balancing.services.get(listener.service)
    algorithm = "hash" if listener.hash_source_ip else _algorithm(config, listener.service)
    # A TCP listener can only hash on the source IP: there are no headers or cookies at L4.
    hash_cfg = HashConfig(on="source_ip") if algorithm == "hash" else None
    return PoolSpec(
        service=listener.service,
        port=listener.service_port,
        backend=listener.backend,
        cluster_weights=tuple(sorted(own.clusters.items())) if own is not None else (),
        algorithm=algorithm,
        hash=hash_cfg,
    )


def pool_specs(config: Config) -> list[PoolSpec]:
    specs = [route_spec(r, config) for lst in config.http.listeners for r in lst.routes]
    specs += [tcp_spec(lst, config) for lst in config.tcp.listeners]
    specs += [tcp_spec(replace(x, service=svc), config) for x in config.tcp.listeners for svc in x.sni_routes.values()]
    return list(dict.fromkeys(specs))


@dataclass(frozen=True)
class ServingState:
    version: int
    config: Config
    catalog: Catalog
    health: HealthView = NO_HEALTH
    overrides: Overrides = NO_OVERRIDES
    pools: Mapping[PoolSpec, Pool] = field(default_factory=empty_map)

    def pool(self, spec: PoolSpec) -> Pool:
        """The pool for ``spec`` (built with the state; an unknown spec gets an empty pool with a reason)."""
        pool = self.pools.get(spec)
        if pool is None:
            return Pool(spec, (), reason=f"no pool for {spec.service}")
        return pool


def _changed_addresses(old: HealthView, new: HealthView) -> frozenset[str]:
    """Addresses of the endpoints whose health (down, ejected at, in service since) differs between the views."""
    if old is new:
        return frozenset()
    eps = set(old.unhealthy ^ new.unhealthy)
    for a, b in ((old.ejected, new.ejected), (old.since, new.since)):
        if a is not b:
            eps.update(ep for ep, t in b.items() if a.get(ep) != t)
            eps.update(ep for ep in a if ep not in b)
    return frozenset(ep.address for ep in eps)


class _Reuse:
    """Decides which pools of the previous state can be kept as they are (issue 9: rebuilds cost what changed).

    A pool is a function of its spec, its service's CatalogService, the pool-relevant ClusterInfo of the local
    member and of the service's members, the overrides of those members, the health of its endpoints, the
    balancing settings, and ``now`` while a slow-start or tier ramp is in progress (``refresh_at`` set). When
    none of these changed, the previous pool is kept: the same object, so picker state carries on too.
    """

    __slots__ = ("old_services", "new_services", "members", "addresses")

    def __init__(self, previous: ServingState, catalog: Catalog, health: HealthView, overrides: Overrides) -> None:
        self.old_services = previous.catalog.services
        self.new_services = catalog.services
        self.members = changed_members(previous.catalog, catalog, previous.overrides, overrides)
        self.addresses = _changed_addresses(previous.health, health)

    @staticmethod
    def possible(previous: ServingState | None, config: Config, catalog: Catalog) -> bool:
        """False when every pool depends on what changed (settings, the local member)."""
        if previous is None:
            return False
        old_cfg, old_cat = previous.config.balancing, previous.catalog
        if old_cfg is not config.balancing and old_cfg != config.balancing:
            return False
        if old_cat.local != catalog.local:
            return False
        old_local, new_local = old_cat.clusters.get(old_cat.local), catalog.clusters.get(catalog.local)
        if old_local is None or new_local is None:
            return old_local is new_local
        return pool_inputs(old_local) == pool_inputs(new_local)

    def keeps(self, pool: Pool) -> bool:
        if pool.refresh_at is not None:
            return False
        svc = self.new_services.get(pool.spec.service)
        if svc is not self.old_services.get(pool.spec.service):
            return False
        if svc is not None and self.members and not self.members.isdisjoint(svc.clusters):
            return False
        return not (self.addresses and pool.tiers and not self.addresses.isdisjoint(pool.addresses))


def build_state(
    config: Config,
    catalog: Catalog,
    health: HealthView = NO_HEALTH,
    overrides: Overrides = NO_OVERRIDES,
    now: float = 0.0,
    version: int = 0,
    previous: ServingState | None = None,
    seed: int | None = None,
) -> ServingState:
    """Every pool the config needs; pools of ``previous`` with the same spec hand over their active counts
    and circuit breakers (in-flight requests finish on the pool they started with, which shares them).

    A pool of ``previous`` whose inputs are all unchanged is kept as is (see :class:`_Reuse`): a rebuild after
    one EndpointSlice change rebuilds one pool. Kept pools equal rebuilt ones (tests/balancing/test_rebuild.py).
    """
    old = previous.pools if previous is not None else {}
    reuse = (
        _Reuse(previous, catalog, health, overrides)
        if previous is not None and _Reuse.possible(previous, config, catalog)  # (the None test narrows for mypy)
        else None
    )
    specs = list(old) if previous is not None and previous.config is config else pool_specs(config)
    pools: dict[PoolSpec, Pool] = {}
    for spec in specs:
        prev = old.get(spec)
        if prev is not None and reuse is not None and reuse.keeps(prev):
            pools[spec] = prev
        else:
            pools[spec] = build_pool(spec, catalog, config.balancing, health, overrides, now, seed, prev)
    return ServingState(version, config, catalog, health, overrides, pools)
