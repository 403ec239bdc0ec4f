"""Pools: for one service port, the endpoints of every member in locality tiers, and a picker (pure).

Theory of operation (Envoy priority levels, see shared/BALANCING.md and :mod:`.tiers`): members are put in
tiers by locality relative to the local member (local, same zone, same region, rest). Each tier gets a share
of the traffic ("priority load") from its health; inside a tier a picker from :data:`.pickers.PICKERS`
chooses an endpoint. A pool is built from immutable inputs (catalog, config, health view, overrides, now) and
is replaced, never edited, when any of them change; only picker state lives inside it, and the active-request
counts and circuit breaker are handed from a pool to the one rebuilt after it (``previous``).

Building takes two steps: membership (:mod:`.members`: which members, endpoints, weights and tiers, from the
catalog and the overrides alone), then the weighing here, from health and time.

Effective weights inside a tier (BALANCING.md). For member c with weight W_c (config, replaced by a non-zero
admin override), n_c endpoints of which h_c healthy, and degradation d_c = min(1, overprovisioning x h_c / n_c):
- default: every healthy endpoint weighs ``W_c x d_c``, so a member's share is ``W_c x h_c x d_c`` (each pod a
  fair share whichever member it is in, less for a degraded member, as Envoy's locality weights);
- per-route ``clusters: {east-1: 90, west-1: 10}``: every healthy endpoint weighs ``R_c x d_c / h_c``, so the
  members' shares follow the route's numbers whatever their pod counts; members the route does not name get
  nothing. Admin weight overrides do not change route percentages; an admin weight of 0 or a drain removes a
  member everywhere.
- a panicking tier weighs every endpoint as if healthy (d = 1, h = n).
- slow start (:mod:`.ramps`): an endpoint in ``HealthView.since`` less than a window ago weighs a ramped share.
  The ramp is fixed at build time; ``Pool.refresh_at`` says when the runtime should rebuild to move it on.
- consistent-hash tables use the weights without health or slow start, so keys only move when endpoints do.

Tier ramp (:mod:`.ramps`): when health moves the priority loads, the pool rebuilt with ``previous`` keeps the
old split and moves to the new one over a window; ``target`` holds the split health asks for,
``ramp_from``/``ramp_since`` the move in progress.
``local_min_healthy`` gives the local tier its own overprovisioning factor, ``100 / local_min_healthy``.
Per-service overrides (``balancing.services``) are applied first (:func:`.members.service_settings`).

The tier for a pick comes from a roll against the cumulative loads: a seeded random roll, or for hash pools
the key itself (so a key keeps its tier as well as its endpoint). When the rolled tier has nothing left (all
excluded), the following tiers are tried in order, then the preceding ones (retry redispatch).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from ..catalog import Catalog
from ..config import BalancingConfig
from ..model import Endpoint, empty_map
from .health import HealthView, capped_unhealthy
from .limits import CircuitBreaker, Limits
from .members import NO_OVERRIDES, Member, Overrides, PoolSpec, pool_members, service_settings
from .pickers import PICKERS, Load, Picker, PickerOptions
from .ramps import SLOW_START_MIN, SLOW_START_STEPS, slow_start_ratio, slow_start_step, tier_ramp
from .tiers import priority_loads, tier_health

__all__ = [
    "NO_HEALTH",
    "NO_OVERRIDES",
    "SLOW_START_MIN",
    "SLOW_START_STEPS",
    "HealthView",
    "Overrides",
    "Pool",
    "PoolSpec",
    "Tier",
    "build_pool",
    "service_settings",
]

NO_HEALTH = HealthView()


@dataclass(slots=True)
class Tier:
    """One locality tier of a pool: its endpoints with their effective weights, and its traffic share."""

    rank: int  # 0 local, 1 zone, 2 region, 3 rest
    endpoints: tuple[Endpoint, ...]
    weights: tuple[float, ...]  # effective weights (0 for endpoints that cannot be picked)
    healthy: tuple[bool, ...]
    load: int = 0  # percent of traffic this tier takes (all tiers sum to 100 when any has endpoints)
    panic: bool = False
    health: float = 0.0  # min(100, overprovisioning x healthy%)
    capacity: float = 0.0  # what spill into this tier is shared by
    picker: Picker | None = None
    clusters: frozenset[str] = frozenset()

    @property
    def healthy_count(self) -> int:
        return sum(self.healthy)


@dataclass(slots=True)
class Pool:
    spec: PoolSpec
    tiers: tuple[Tier, ...]
    reason: str = ""  # why the pool picks nothing ("" when it can pick)
    cluster_reasons: Mapping[str, str] = field(default_factory=empty_map)  # member -> why it adds nothing
    rng: random.Random = field(default_factory=random.Random)
    load: Load = field(default_factory=Load)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    refresh_at: float | None = None  # when slow start wants a rebuild (None: no ramp in progress)
    failed: bool = False  # fail_on_panic engaged: pick returns None
    cum: tuple[int, ...] = ()  # cumulative tier loads
    cluster_tier: Mapping[str, int] = field(default_factory=empty_map)
    # Tier ramp (failover / fail-back): the loads health asks for, by tier rank; the loads the ramp started
    # from and when (None: no ramp in progress, tier loads are the target).
    target: tuple[tuple[int, int], ...] = ()
    ramp_from: tuple[tuple[int, float], ...] = ()
    ramp_since: float | None = None
    ramps: Mapping[Endpoint, float] = field(default_factory=empty_map)  # slow start: endpoint -> weight ratio
    _addresses: frozenset[str] | None = field(default=None, repr=False, compare=False)

    @property
    def active(self) -> dict[Endpoint, int]:
        """Active requests per endpoint (started and not finished)."""
        return self.load.active

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for t in self.tiers for e in t.endpoints)

    @property
    def addresses(self) -> frozenset[str]:
        """The addresses of the pool's endpoints (computed once: rebuilds test health changes against it)."""
        if self._addresses is None:
            self._addresses = frozenset(e.address for t in self.tiers for e in t.endpoints)
        return self._addresses

    @property
    def clusters(self) -> frozenset[str]:
        return frozenset(e.cluster for e in self.endpoints)

    def tier_for(self, roll: int) -> int:
        """Index of the tier a roll in [0, 100) lands in."""
        for i, c in enumerate(self.cum):
            if roll < c:
                return i
        return 0

    def roll(self, hash_key: int | None) -> int:
        """Hash pools roll from the key (bits independent of the table slot), others from the seeded rng."""
        if hash_key is not None and self.spec.algorithm == "hash":
            return (hash_key >> 40) % 100
        return self.rng.randrange(100)

    def pick(
        self,
        hash_key: int | None = None,
        exclude: Collection[Endpoint] = (),
        cluster: str | None = None,
    ) -> Endpoint | None:
        """One endpoint, or None when there is nothing left to pick (``reason`` says why when it is the pool).

        ``exclude``: endpoints already tried (retries never reuse one). ``cluster``: pin to one member.
        ``hash_key``: an integer from the request's affinity key (only used by the hash algorithm).
        """
        tiers = self.tiers
        if self.failed or not tiers:
            return None
        if cluster is not None:
            i = self.cluster_tier.get(cluster)
            picker = tiers[i].picker if i is not None else None
            return picker.pick(hash_key, exclude, cluster) if picker is not None else None
        first = self.tier_for(self.roll(hash_key)) if len(tiers) > 1 else 0
        picker = tiers[first].picker
        if picker is not None:
            ep = picker.pick(hash_key, exclude, None)
            if ep is not None:
                return ep
        for i in (*range(first + 1, len(tiers)), *range(first)):
            picker = tiers[i].picker
            if picker is not None:
                ep = picker.pick(hash_key, exclude, None)
                if ep is not None:
                    return ep
        return None

    def started(self, ep: Endpoint) -> None:
        """A request (or connection) to ``ep`` began: least-request and bounded hashing count it."""
        self.load.started(ep)

    def finished(self, ep: Endpoint) -> None:
        """The request ``started`` for ``ep`` is over (pairs with ``started``; extra calls are ignored)."""
        self.load.finished(ep)


def build_pool(
    spec: PoolSpec,
    catalog: Catalog,
    settings: BalancingConfig,
    health: HealthView = NO_HEALTH,
    overrides: Overrides = NO_OVERRIDES,
    now: float = 0.0,
    seed: int | None = None,
    previous: Pool | None = None,
) -> Pool:
    """Pool for ``spec`` from the catalog; members disconnected or drained add nothing (with a reason).

    ``previous``: the pool this one replaces (same spec); its active counts and circuit breaker carry over.
    Linear in the endpoints (hash tables are memoized per endpoint set).
    """
    settings = service_settings(settings, spec.service)
    load = previous.load if previous is not None else Load()
    limits = Limits.from_config(settings)
    breaker = previous.breaker if previous is not None else CircuitBreaker(limits)
    breaker.limits = limits  # a reload may change them; the in-flight counts stay
    rng = random.Random(seed)
    svc = catalog.services.get(spec.service)
    if svc is None:
        reason = f"service {spec.service} is not exported by any member"
        return Pool(spec, (), reason=reason, rng=rng, load=load, breaker=breaker)
    route_weights = bool(spec.cluster_weights)
    members, reasons = pool_members(spec, catalog, svc, settings, overrides)
    all_eps = [ep for m in members for ep in m.endpoints]
    down = capped_unhealthy(all_eps, health, settings.outlier.max_ejection_percent)
    by_rank: dict[int, list[Member]] = {}
    for m in members:
        by_rank.setdefault(m.rank, []).append(m)
    op = settings.overprovisioning
    window = settings.slow_start
    ramp_ends: list[float] = []
    tiers: list[Tier] = []
    tier_members = []
    for rank in sorted(by_rank):
        eps_t: list[Endpoint] = []
        healthy_t: list[bool] = []
        cap_t = 0.0
        for m in by_rank[rank]:
            up = [ep not in down for ep in m.endpoints] if down else [True] * len(m.endpoints)
            eps_t.extend(m.endpoints)
            healthy_t.extend(up)
            cap_t += m.capacity if m.capacity >= 0 else sum(up)
        tiers.append(
            Tier(
                rank,
                tuple(eps_t),
                (),
                tuple(healthy_t),
                capacity=cap_t,
                clusters=frozenset(m.name for m in by_rank[rank]),
            )
        )
        tier_members.append(by_rank[rank])
    # "Prefer local" with a minimum healthy share: the local tier keeps everything down to local_min_healthy %
    # healthy, then spills in proportion (an overprovisioning factor of its own: 100 / local_min_healthy).
    min_local = settings.local_min_healthy
    ops = [100.0 / min_local if t.rank == 0 and min_local > 0 else op for t in tiers]
    loads, panics = priority_loads(
        [(t.healthy_count, len(t.endpoints)) for t in tiers],
        ops,
        settings.panic_threshold,
        [t.capacity for t in tiers],
    )
    target = tuple((t.rank, n) for t, n in zip(tiers, loads, strict=True))
    loads, ramp_from, ramp_since, tier_step = tier_ramp(tiers, target, loads, previous, now, settings.tier_ramp)
    if tier_step is not None:
        ramp_ends.append(tier_step)
    options = PickerOptions(
        hash_algorithm=settings.hash_algorithm,
        table_size=settings.maglev_table_size,
        balance_factor=settings.balance_factor,
    )
    picker_cls = PICKERS.get(spec.algorithm, PICKERS["round_robin"])
    cluster_tier: dict[str, int] = {}
    ramps: dict[Endpoint, float] = {}
    for ti, (t, load_pct, panic, group) in enumerate(zip(tiers, loads, panics, tier_members, strict=True)):
        t.load, t.panic = load_pct, panic
        t.health = tier_health(t.healthy_count, len(t.endpoints), ops[ti])
        weights: list[float] = []
        table_weights: list[float] = []
        eligible: list[bool] = []
        k = 0
        for m in group:
            cluster_tier[m.name] = ti
            tier_weight, eps = m.weight, m.endpoints
            n = len(eps)
            h = sum(t.healthy[k : k + n])
            if panic:
                h, degrade = n, 1.0
            else:
                degrade = min(1.0, op * h / n)
            per_ep = tier_weight * degrade / h if route_weights and h else tier_weight * degrade
            base = tier_weight / n if route_weights else tier_weight
            ramping = window > 0 and bool(health.since)  # else every ramp is 1: skip the per-endpoint lookups
            for j, ep in enumerate(eps):
                ok = panic or t.healthy[k + j]
                ramp = slow_start_ratio(ep, health, window, now) if ramping else 1.0
                if ramp < 1.0:
                    ramp_ends.append(slow_start_step(health.since[ep], now, window))
                    ramps[ep] = ramp
                weights.append(per_ep * ramp if ok else 0.0)
                table_weights.append(base)
                eligible.append(ok)
            k += n
        t.weights = tuple(weights)
        t.picker = picker_cls(t.endpoints, weights, eligible, rng, load, options, table_weights)
    reason = ""
    failed = False
    if not tiers:
        reason = "no member has endpoints: " + "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
    elif settings.fail_on_panic and any(t.panic and t.load > 0 for t in tiers):
        failed = True
        reason = "panic: " + ", ".join(
            f"tier {t.rank} has {t.healthy_count}/{len(t.endpoints)} healthy (< {settings.panic_threshold:g} %)"
            for t in tiers
            if t.panic and t.load > 0
        )
    cum: list[int] = []
    acc = 0
    for t in tiers:
        acc += t.load
        cum.append(acc)
    refresh_at = min(ramp_ends) if ramp_ends else None
    return Pool(
        spec,
        tuple(tiers),
        reason,
        reasons,
        rng,
        load,
        breaker,
        refresh_at,
        failed,
        tuple(cum),
        cluster_tier,
        target,
        ramp_from,
        ramp_since,
        ramps,
    )
