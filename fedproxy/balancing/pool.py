"""Pools: for one service port, the endpoints of every member in locality tiers, and a picker (pure).

Theory of operation (Envoy priority levels, see shared/BALANCING.md): members are put in tiers by locality
relative to the local member (local, same zone, same region, rest). Each tier gets a share of the traffic
("priority load") from its health; inside a tier a weighted picker chooses an endpoint. A pool is built
from immutable inputs (catalog, config, health view, overrides, now) and is replaced, never edited, when
any of them change; only picker state (round-robin position, active requests) lives inside it.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from ..catalog import Catalog, cluster_backends
from ..config import Algorithm, BalancingConfig, HashConfig
from ..model import BackendChoice, Endpoint, ServiceKey, empty_map
from .tiers import priority_loads, tier_of


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


@dataclass(frozen=True, slots=True)
class HealthView:
    """Endpoints that health (passive ejection or active checks) says are down, as of one moment."""

    unhealthy: frozenset[Endpoint] = frozenset()


NO_HEALTH = HealthView()
NO_OVERRIDES = Overrides()


@dataclass(slots=True)
class Tier:
    """One locality tier of a pool: its endpoints with their effective weights, and its traffic share."""

    rank: int  # 0 local, 1 zone, 2 region, 3 rest
    endpoints: tuple[Endpoint, ...]
    weights: tuple[float, ...]
    healthy: tuple[bool, ...]
    load: int = 0  # percent of traffic this tier takes (all tiers sum to 100 when any has endpoints)
    panic: bool = False
    # Smooth weighted round-robin state (nginx): current weight per endpoint.
    current: list[float] = field(default_factory=list)

    @property
    def healthy_count(self) -> int:
        return sum(self.healthy)


@dataclass(slots=True)
class Pool:
    spec: PoolSpec
    tiers: tuple[Tier, ...]
    reason: str = ""  # why the pool is empty ("" when it has endpoints)
    cluster_reasons: Mapping[str, str] = field(default_factory=empty_map)  # member -> why it adds nothing
    rng: random.Random = field(default_factory=random.Random)
    active: dict[Endpoint, int] = field(default_factory=dict)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for t in self.tiers for e in t.endpoints)

    @property
    def clusters(self) -> frozenset[str]:
        return frozenset(e.cluster for e in self.endpoints)

    def pick(
        self,
        hash_key: int | None = None,
        exclude: Collection[Endpoint] = (),
        cluster: str | None = None,
    ) -> Endpoint | None:
        """One endpoint, or None when there is nothing left to pick.

        ``exclude``: endpoints already tried (retries never reuse one). ``cluster``: pin to one member.
        ``hash_key``: an integer from the request's affinity key (only used by the hash algorithm).
        """
        tiers = [t for t in self.tiers if t.load > 0] or list(self.tiers)
        if cluster is not None or exclude:
            tiers = list(self.tiers)
        roll = self.rng.randrange(100)
        ordered: list[Tier] = []
        acc = 0
        for t in tiers:
            acc += t.load
            if roll < acc:
                ordered.insert(0, t)
            else:
                ordered.append(t)
        for t in ordered:
            ep = self._pick_in(t, exclude, cluster)
            if ep is not None:
                return ep
        return None

    def _pick_in(self, tier: Tier, exclude: Collection[Endpoint], cluster: str | None) -> Endpoint | None:
        use_all = tier.panic
        best = -1
        total = 0.0
        for i, ep in enumerate(tier.endpoints):
            if (not use_all and not tier.healthy[i]) or ep in exclude or (cluster and ep.cluster != cluster):
                continue
            w = tier.weights[i]
            tier.current[i] += w
            total += w
            if best < 0 or tier.current[i] > tier.current[best]:
                best = i
        if best < 0:
            return None
        tier.current[best] -= total
        return tier.endpoints[best]

    def started(self, ep: Endpoint) -> None:
        """A request (or connection) to ``ep`` began: least-request and circuit breakers count it."""
        self.active[ep] = self.active.get(ep, 0) + 1

    def finished(self, ep: Endpoint) -> None:
        n = self.active.get(ep, 0) - 1
        if n > 0:
            self.active[ep] = n
        else:
            self.active.pop(ep, None)


def build_pool(
    spec: PoolSpec,
    catalog: Catalog,
    settings: BalancingConfig,
    health: HealthView = NO_HEALTH,
    overrides: Overrides = NO_OVERRIDES,
    now: float = 0.0,
    seed: int | None = None,
) -> Pool:
    """Pool for ``spec`` from the catalog; members disconnected or drained add nothing (with a reason)."""
    svc = catalog.services.get(spec.service)
    if svc is None:
        return Pool(spec, (), reason=f"service {spec.service} is not exported by any member")
    local = catalog.clusters.get(catalog.local)
    route_weights = dict(spec.cluster_weights)
    by_rank: dict[int, list[tuple[Endpoint, float, bool]]] = {}
    reasons: dict[str, str] = dict(svc.excluded)
    for name, side in svc.clusters.items():
        info = catalog.clusters.get(name)
        if info is None or not info.connected:
            reasons[name] = "member disconnected"
            continue
        if name in overrides.drained:
            reasons[name] = "member drained"
            continue
        weight = route_weights.get(name, overrides.weights.get(name, info.weight))
        if route_weights and name not in route_weights:
            weight = 0
        if weight <= 0:
            reasons[name] = "weight 0"
            continue
        backends = cluster_backends(side, info, spec.port, spec.backend)
        if not backends.endpoints:
            reasons[name] = backends.reason
            continue
        rank = tier_of(local, info, settings.locality)
        n = len(backends.endpoints)
        for ep in backends.endpoints:
            # Each endpoint gets cluster weight / endpoints, so a member's share follows its weight
            # when route weights are set, and each pod's share is fair otherwise (BALANCING.md).
            w = weight / n if route_weights else float(weight)
            by_rank.setdefault(rank, []).append((ep, w, ep not in health.unhealthy))
    tiers = []
    for rank in sorted(by_rank):
        items = by_rank[rank]
        tiers.append(
            Tier(
                rank,
                tuple(i[0] for i in items),
                tuple(i[1] for i in items),
                tuple(i[2] for i in items),
                current=[0.0] * len(items),
            )
        )
    loads, panics = priority_loads(
        [(t.healthy_count, len(t.endpoints)) for t in tiers],
        settings.overprovisioning,
        settings.panic_threshold,
    )
    for t, load, panic in zip(tiers, loads, panics, strict=True):
        t.load, t.panic = load, panic
    reason = "" if tiers else ("no member has endpoints: " + "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items())))
    return Pool(spec, tuple(tiers), reason, reasons, random.Random(seed))
