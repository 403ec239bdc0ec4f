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
from .pool import NO_HEALTH, NO_OVERRIDES, HealthView, Overrides, Pool, PoolSpec, build_pool


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
    and circuit breakers (in-flight requests finish on the pool they started with, which shares them)."""
    old = previous.pools if previous is not None else {}
    pools = {
        spec: build_pool(spec, catalog, config.balancing, health, overrides, now, seed, old.get(spec))
        for spec in pool_specs(config)
    }
    return ServingState(version, config, catalog, health, overrides, pools)
