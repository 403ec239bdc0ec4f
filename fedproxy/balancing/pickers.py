"""Pickers: choose one endpoint inside one tier (pure; state is only what a picker remembers between picks).

Every picker is built once per tier from ``(endpoints, weights, eligible)``: ``weights`` are the effective
weights (health, member share and slow start applied), ``eligible`` says which endpoints may be picked (the
healthy ones, or all of them in a panicking tier). ``pick(key, exclude, cluster)`` honours ``exclude``
(endpoints already tried: a retry never reuses one) and ``cluster`` (pin to one member) on a slower path;
the common call with neither allocates nothing.

- ``SmoothWeightedRoundRobin`` (nginx): each pick adds every weight to its endpoint's current value, takes the
  largest and subtracts the total; equal weights degrade to a plain rotation (O(1)). The start is randomized
  from the seed so replicas do not all hit the same endpoint first.
- ``LeastRequest`` (Envoy, HAProxy ``random(2)``): two weighted-random candidates; the second wins only when
  it scores strictly better by ``w / (active + 1) ^ bias`` and the two differ in active requests, so an idle
  pool follows the weights exactly and a loaded one steers away from the busier endpoint.
- ``WeightedRandom``: a draw on cumulative weights (binary search).
- ``ConsistentHash``: Maglev or ring with bounded load (see :mod:`.hashing`); ``peek`` is the same lookup
  without side effects, so the admin explain shows exactly what ``pick`` would do. Without a key it hashes a
  random one.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import accumulate

from ..model import Endpoint
from .hashing import DEFAULT_BALANCE_FACTOR, MAGLEV_TABLE_SIZE, RING_REPLICAS, Maglev, Ring, bounded_lookup


class Load:
    """Active requests per endpoint and per member, shared by a pool and the pools rebuilt after it."""

    __slots__ = ("active", "by_cluster")

    def __init__(self) -> None:
        self.active: dict[Endpoint, int] = {}
        self.by_cluster: dict[str, int] = {}

    def started(self, ep: Endpoint) -> None:
        self.active[ep] = self.active.get(ep, 0) + 1
        self.by_cluster[ep.cluster] = self.by_cluster.get(ep.cluster, 0) + 1

    def finished(self, ep: Endpoint) -> None:
        n = self.active.get(ep, 0)
        if n <= 0:
            return  # unpaired finish: never go negative
        if n > 1:
            self.active[ep] = n - 1
        else:
            del self.active[ep]
        c = self.by_cluster.get(ep.cluster, 0) - 1
        if c > 0:
            self.by_cluster[ep.cluster] = c
        else:
            self.by_cluster.pop(ep.cluster, None)


@dataclass(frozen=True, slots=True)
class PickerOptions:
    bias: float = 1.0  # least-request active-request bias (Envoy's default)
    hash_algorithm: str = "maglev"
    table_size: int = MAGLEV_TABLE_SIZE
    ring_replicas: int = RING_REPLICAS
    balance_factor: float = DEFAULT_BALANCE_FACTOR


def endpoint_name(ep: Endpoint) -> bytes:
    """The stable identity hashing places an endpoint by."""
    return f"{ep.cluster}/{ep.address}/{ep.port}/{ep.kind}".encode()


class Picker:
    """Common construction; subclasses implement ``pick``."""

    name = ""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        weights: Sequence[float],
        eligible: Sequence[bool],
        rng: random.Random,
        load: Load,
        options: PickerOptions = PickerOptions(),
        table_weights: Sequence[float] | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.rng = rng
        self.load = load
        self.options = options
        self.idx = [i for i, ok in enumerate(eligible) if ok and weights[i] > 0]
        self.eps = [self.endpoints[i] for i in self.idx]  # eligible endpoints
        self.w = [float(weights[i]) for i in self.idx]  # their weights

    def _candidates(self, exclude: Collection[Endpoint], cluster: str | None) -> list[int]:
        """Positions (into ``self.eps``) that pass ``exclude`` and ``cluster``."""
        return [k for k, ep in enumerate(self.eps) if ep not in exclude and (cluster is None or ep.cluster == cluster)]

    def pick(
        self, key: int | None = None, exclude: Collection[Endpoint] = (), cluster: str | None = None
    ) -> Endpoint | None:
        raise NotImplementedError

    def peek(self, key: int | None) -> tuple[Endpoint | None, str]:
        """What ``pick(key)`` would return, without changing state, when a key decides it."""
        return None, f"{self.name}: the pick depends on picker state, not on a key"


class SmoothWeightedRoundRobin(Picker):
    name = "round_robin"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.equal = len(set(self.w)) <= 1
        self.pos = self.rng.randrange(len(self.eps)) if self.eps else 0
        self.current = [0.0] * len(self.eps)
        self.total = sum(self.w)

    def pick(
        self, key: int | None = None, exclude: Collection[Endpoint] = (), cluster: str | None = None
    ) -> Endpoint | None:
        eps = self.eps
        n = len(eps)
        if not n:
            return None
        if self.equal:
            p = self.pos
            if not exclude and cluster is None:
                self.pos = p + 1 if p + 1 < n else 0
                return eps[p]
            for _ in range(n):
                ep = eps[p]
                p = p + 1 if p + 1 < n else 0
                if ep not in exclude and (cluster is None or ep.cluster == cluster):
                    self.pos = p
                    return ep
            return None
        cur, w = self.current, self.w
        if not exclude and cluster is None:
            best = 0
            for k in range(n):
                cur[k] += w[k]
                if cur[k] > cur[best]:
                    best = k
            cur[best] -= self.total
            return eps[best]
        cands = self._candidates(exclude, cluster)
        if not cands:
            return None
        total = 0.0
        best = cands[0]
        for k in cands:
            cur[k] += w[k]
            total += w[k]
            if cur[k] > cur[best]:
                best = k
        cur[best] -= total
        return eps[best]


class WeightedRandom(Picker):
    name = "random"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.cum = list(accumulate(self.w))
        self.total = self.cum[-1] if self.cum else 0.0

    def _draw(self) -> int:
        k = bisect.bisect_right(self.cum, self.rng.random() * self.total)
        return k if k < len(self.cum) else len(self.cum) - 1

    def _draw_in(self, cands: list[int]) -> int:
        cum = list(accumulate(self.w[k] for k in cands))
        j = bisect.bisect_right(cum, self.rng.random() * cum[-1])
        return cands[min(j, len(cands) - 1)]

    def pick(
        self, key: int | None = None, exclude: Collection[Endpoint] = (), cluster: str | None = None
    ) -> Endpoint | None:
        if not self.eps:
            return None
        if not exclude and cluster is None:
            return self.eps[self._draw()]
        cands = self._candidates(exclude, cluster)
        return self.eps[self._draw_in(cands)] if cands else None


class LeastRequest(WeightedRandom):
    name = "least_request"

    def _better(self, a: int, b: int) -> int:
        active = self.load.active
        ea, eb = active.get(self.eps[a], 0), active.get(self.eps[b], 0)
        if ea == eb:
            return a
        bias = self.options.bias
        if bias == 1.0:
            return b if self.w[b] * (ea + 1) > self.w[a] * (eb + 1) else a
        return b if self.w[b] / (eb + 1) ** bias > self.w[a] / (ea + 1) ** bias else a

    def pick(
        self, key: int | None = None, exclude: Collection[Endpoint] = (), cluster: str | None = None
    ) -> Endpoint | None:
        if not self.eps:
            return None
        if not exclude and cluster is None:
            return self.eps[self._better(self._draw(), self._draw())]
        cands = self._candidates(exclude, cluster)
        if not cands:
            return None
        return self.eps[self._better(self._draw_in(cands), self._draw_in(cands))]


class ConsistentHash(Picker):
    name = "hash"

    def __init__(self, endpoints, weights, eligible, rng, load, options=PickerOptions(), table_weights=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(endpoints, weights, eligible, rng, load, options, table_weights)
        names = [endpoint_name(ep) for ep in self.endpoints]
        tw = list(table_weights) if table_weights is not None else list(weights)
        if options.hash_algorithm == "ring":
            self.table: Maglev | Ring = Ring(names, tw, options.ring_replicas)
        else:
            self.table = Maglev(names, tw, options.table_size)
        self.ok = [False] * len(self.endpoints)
        for i in self.idx:
            self.ok[i] = True
        self.clusters = tuple(sorted({ep.cluster for ep in self.eps}))

    def _lookup(self, key: int, exclude: Collection[Endpoint], cluster: str | None) -> tuple[int, str] | None:
        eps, ok, active = self.endpoints, self.ok, self.load.active
        by_cluster = self.load.by_cluster
        total = 0
        for c in self.clusters:
            total += by_cluster.get(c, 0)
        n = len(self.eps)
        if not exclude and cluster is None:
            if self.table.n == 0:
                return None
            i = self.table.start(key)
            factor = self.options.balance_factor
            if ok[i] and (factor <= 0 or active.get(eps[i], 0) + 1 <= math.ceil(factor * (total + 1) / n - 1e-9)):
                return i, "hash: first candidate"

            def eligible(i: int) -> bool:
                return ok[i]
        else:
            n = sum(1 for ep in self.eps if ep not in exclude and (cluster is None or ep.cluster == cluster))

            def eligible(i: int) -> bool:
                ep = eps[i]
                return ok[i] and ep not in exclude and (cluster is None or ep.cluster == cluster)

        return bounded_lookup(
            self.table, key, eligible, lambda i: active.get(eps[i], 0), total, n, self.options.balance_factor
        )

    def pick(
        self, key: int | None = None, exclude: Collection[Endpoint] = (), cluster: str | None = None
    ) -> Endpoint | None:
        if not self.eps:
            return None
        found = self._lookup(self.rng.getrandbits(64) if key is None else key, exclude, cluster)
        return self.endpoints[found[0]] if found else None

    def peek(self, key: int | None) -> tuple[Endpoint | None, str]:
        if key is None:
            return None, "hash: no key (a request without one hashes a random key)"
        if not self.eps:
            return None, "hash: nothing eligible in this tier"
        found = self._lookup(key, (), None)
        return (self.endpoints[found[0]], found[1]) if found else (None, "hash: nothing eligible")


PICKERS: dict[str, type[Picker]] = {
    "round_robin": SmoothWeightedRoundRobin,
    "least_request": LeastRequest,
    "random": WeightedRandom,
    "hash": ConsistentHash,
}
