"""Pool membership: which members, with which endpoints and weights, a pool for one spec has (pure).

Theory of operation: a pool is built in two steps. This module is the first: from the catalog, the spec and
the admin overrides, the members that serve the spec's service port, each with its locality tier, its weight
(the route's percentage, else the admin override, else the configured weight), its endpoints and its declared
capacity; every member that adds nothing gets a reason instead (disconnected, drained, weight 0, no backend).
Health plays no part here: the endpoints of a pool are fixed by membership alone, so the set of endpoints in
service (slow start's arrivals, :mod:`.inservice`) can be followed without building pools. :mod:`.pool` then
weighs the endpoints by health, slow start and tier load.

:func:`pool_inputs` and :func:`changed_members` say what of a member a pool reads: pools (and memberships) of
services none of whose members changed are kept between rebuilds (issue 9).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..backends import cluster_backends
from ..catalog import Catalog, CatalogService, ClusterInfo
from ..config import Algorithm, BalancingConfig, HashConfig
from ..model import BackendChoice, Endpoint, ServiceKey, empty_map
from .tiers import tier_of

__all__ = [
    "NO_OVERRIDES",
    "Member",
    "Overrides",
    "PoolSpec",
    "changed_members",
    "pool_inputs",
    "pool_members",
    "service_settings",
]


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What a route, TCP listener or DNS view asks for; pools are keyed by it."""

    service: ServiceKey
    port: str | int | None = None
    backend: BackendChoice = "auto"
    cluster_weights: tuple[tuple[str, int], ...] = ()  # per-route overrides, sorted by cluster
    algorithm: Algorithm = "round_robin"
    hash: HashConfig | None = None


@dataclass(frozen=True, slots=True)
class Overrides:
    """Runtime traffic control from the admin API: drained members and weight overrides."""

    drained: frozenset[str] = frozenset()
    weights: Mapping[str, int] = field(default_factory=empty_map)


NO_OVERRIDES = Overrides()


@dataclass(frozen=True, slots=True)
class Member:
    """One member's share of a pool, before health: its tier, weight, endpoints and declared capacity."""

    rank: int  # locality tier (0 local, 1 zone, 2 region, 3 rest)
    name: str
    weight: float  # the route's percentage, else the admin override, else the configured weight
    endpoints: tuple[Endpoint, ...]
    capacity: float  # declared capacity, -1.0 when none (the tier then counts its healthy endpoints)


def service_settings(settings: BalancingConfig, service: ServiceKey) -> BalancingConfig:
    """``settings`` with the per-service overrides of ``balancing.services[service]`` applied."""
    own = settings.services.get(service)
    if own is None:
        return settings
    changes = {
        name: getattr(own, name)
        for name in ("panic_threshold", "fail_on_panic", "local_min_healthy", "tier_ramp", "algorithm")
        if getattr(own, name) is not None
    }
    return replace(settings, **changes) if changes else settings


def pool_members(
    spec: PoolSpec, catalog: Catalog, svc: CatalogService, settings: BalancingConfig, overrides: Overrides
) -> tuple[list[Member], dict[str, str]]:
    """The members of ``svc`` that add endpoints to the pool for ``spec``, sorted by name, and why the others
    add nothing (member -> reason, starting from the catalog's exclusions). ``settings``: for the tiers only.
    """
    local = catalog.clusters.get(catalog.local)
    route_weights = dict(spec.cluster_weights)
    reasons: dict[str, str] = dict(svc.excluded)
    members: list[Member] = []
    for name, side in sorted(svc.clusters.items()):
        info = catalog.clusters.get(name)
        if info is None or not info.connected:
            reasons[name] = "member disconnected"
            continue
        if name in overrides.drained:
            reasons[name] = "member drained"
            continue
        override = overrides.weights.get(name)
        if route_weights:
            weight = route_weights.get(name, 0)
        else:
            weight = info.weight if override is None else override
        if override == 0 or weight <= 0:
            reasons[name] = "weight 0"
            continue
        backends = cluster_backends(side, info, spec.port, spec.backend)
        if not backends.endpoints:
            reasons[name] = backends.reason
            continue
        capacity = -1.0 if info.capacity is None else float(info.capacity)
        members.append(
            Member(tier_of(local, info, settings.locality), name, float(weight), backends.endpoints, capacity)
        )
    return members, reasons


def pool_inputs(info: ClusterInfo) -> tuple:
    """What a pool reads of a member's ClusterInfo (not its error or last event, which change all the time)."""
    return (info.locality, info.connected, info.local, info.weight, info.pods_reachable, info.capacity)


def changed_members(old: Catalog, new: Catalog, old_ov: Overrides, new_ov: Overrides) -> set[str]:
    """Members whose pool inputs (:func:`pool_inputs`, presence, drain, weight override) differ."""
    changed = {n for n in old.clusters.keys() ^ new.clusters.keys()}
    changed.update(
        n for n, info in new.clusters.items() if n in old.clusters and pool_inputs(old.clusters[n]) != pool_inputs(info)
    )
    if old_ov != new_ov:
        changed |= old_ov.drained ^ new_ov.drained
        changed.update(
            n for n in old_ov.weights.keys() | new_ov.weights.keys() if old_ov.weights.get(n) != new_ov.weights.get(n)
        )
    return changed
