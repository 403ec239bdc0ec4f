"""Consistent hashing with bounded load: Maglev and a weighted ring (pure).

Theory of operation:
- ``hash_key(text)`` turns a request's affinity key (source IP, header or cookie value) into a stable 64-bit
  integer (BLAKE2b, not Python's per-process randomized ``hash()``), so every proxy replica and restart maps a
  key to the same endpoint.
- A *table* maps a key to a probe sequence of endpoint indices. ``Maglev`` (Eisenbud et al., NSDI 2016, with
  Envoy's weighted population) fills a prime-sized lookup table; a key's sequence starts at ``table[key % M]``
  and walks forward. ``Ring`` (Karger et al.) places ``replicas x weight`` points per endpoint on a 64-bit
  circle; a key's sequence starts at the first point clockwise. When one of n endpoints leaves, a ring remaps
  about 1/n of the keys; Maglev about twice that (the paper's trade for O(1) lookups).
- *Bounded load* (Mirrokni et al., HAProxy ``hash-balance-factor``): walking a key's sequence, an endpoint is
  skipped when it is not eligible (unhealthy, excluded, other member) or when one more request would take it
  over ``factor x average`` active requests, so one hot key cannot sink one endpoint. When every eligible
  endpoint is over the bound, the least loaded eligible one is used.

Tables are built over every endpoint of a tier (healthy or not) with their configured weights, so health
changes move only the keys of the endpoints that changed; builds are memoized on (names, weights, size)
because the runtime rebuilds pools on every catalog change while endpoint sets rarely change.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

MAGLEV_TABLE_SIZE = 65537  # Envoy's default table size (a prime; at least 100 x endpoints for even spread)
RING_REPLICAS = 100  # virtual nodes per endpoint at weight 1 (a common default; Envoy's minimum ring is 1024)
DEFAULT_BALANCE_FACTOR = 1.25  # HAProxy hash-balance-factor 125 %


def hash_key(data: str | bytes) -> int:
    """A stable 64-bit hash of ``data`` (same value in every process and on every host)."""
    if isinstance(data, str):
        data = data.encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _h2(name: bytes) -> tuple[int, int]:
    digest = hashlib.blake2b(name, digest_size=16).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")


class Maglev:
    """A Maglev lookup table of ``size`` slots over endpoints named ``names`` with relative ``weights``."""

    __slots__ = ("size", "table", "n")

    def __init__(self, names: Sequence[bytes], weights: Sequence[float], size: int = MAGLEV_TABLE_SIZE) -> None:
        self.size = size
        self.n = len(names)
        self.table = _maglev_table(tuple(names), tuple(float(w) for w in weights), size)

    def start(self, key: int) -> int:
        """The endpoint index a key maps to when every endpoint is eligible."""
        return self.table[key % self.size]

    def probe(self, key: int) -> Iterator[int]:
        """Endpoint indices in the key's preference order (repeats possible; callers stop after n distinct)."""
        table, size = self.table, self.size
        i = key % size
        for _ in range(size):
            yield table[i]
            i += 1
            if i == size:
                i = 0


@lru_cache(maxsize=64)
def _maglev_table(names: tuple[bytes, ...], weights: tuple[float, ...], size: int) -> tuple[int, ...]:
    """Envoy's weighted Maglev population: an endpoint of weight w fills a slot every max_w / w rounds."""
    n = len(names)
    if n == 0:
        return ()
    table = [-1] * size
    offsets = []
    skips = []
    for name in names:
        a, b = _h2(name)
        offsets.append(a % size)
        skips.append(b % (size - 1) + 1)
    wmax = max(weights) or 1.0
    norm = [w / wmax for w in weights]
    nexts = [0] * n
    targets = [0.0] * n
    filled = 0
    iteration = 0
    while filled < size:
        iteration += 1
        for i in range(n):
            if norm[i] <= 0 or iteration * norm[i] < targets[i]:
                continue
            targets[i] += 1.0
            off, skip, j = offsets[i], skips[i], nexts[i]
            c = (off + skip * j) % size
            while table[c] >= 0:
                j += 1
                c = (off + skip * j) % size
            table[c] = i
            nexts[i] = j + 1
            filled += 1
            if filled == size:
                break
        if iteration > size and filled == 0:  # every weight is 0: nothing can fill the table
            return ()
    return tuple(table)


class Ring:
    """A consistent-hash ring: ``replicas x weight / max weight`` points per endpoint (at least one)."""

    __slots__ = ("points", "owners", "n")

    def __init__(self, names: Sequence[bytes], weights: Sequence[float], replicas: int = RING_REPLICAS) -> None:
        self.n = len(names)
        self.points, self.owners = _ring(tuple(names), tuple(float(w) for w in weights), replicas)

    def start(self, key: int) -> int:
        i = bisect.bisect_left(self.points, key)
        return self.owners[i if i < len(self.points) else 0]

    def probe(self, key: int) -> Iterator[int]:
        points, owners = self.points, self.owners
        count = len(points)
        i = bisect.bisect_left(points, key)
        for _ in range(count):
            if i >= count:
                i = 0
            yield owners[i]
            i += 1


@lru_cache(maxsize=64)
def _ring(names: tuple[bytes, ...], weights: tuple[float, ...], replicas: int) -> tuple[list[int], list[int]]:
    wmax = max(weights, default=0.0) or 1.0
    pairs: list[tuple[int, int]] = []
    for i, (name, w) in enumerate(zip(names, weights, strict=True)):
        if w <= 0:
            continue
        for r in range(max(1, round(replicas * w / wmax))):
            pairs.append((hash_key(name + b"#" + str(r).encode()), i))
    pairs.sort()
    return [p for p, _ in pairs], [o for _, o in pairs]


Table = Maglev | Ring


def bounded_lookup(
    table: Table,
    key: int,
    eligible: Callable[[int], bool],
    active: Callable[[int], int],
    total_active: int,
    n_eligible: int,
    factor: float,
) -> tuple[int, str] | None:
    """The endpoint index for ``key`` and why, or None when nothing is eligible.

    An eligible endpoint is taken unless ``active + 1 > ceil(factor x (total_active + 1) / n_eligible)`` (one
    more request would put it over the bound; the ceiling as in Mirrokni et al. and HAProxy).
    ``factor <= 0`` disables the bound. Reads state, changes none.
    """
    if n_eligible <= 0 or table.n == 0:
        return None
    bound = math.ceil(factor * (total_active + 1) / n_eligible - 1e-9) if factor > 0 else float("inf")
    seen: set[int] = set()
    order: list[int] = []
    ineligible = overloaded = 0
    for i in table.probe(key):
        if i in seen:
            continue
        seen.add(i)
        order.append(i)
        if not eligible(i):
            ineligible += 1
        elif active(i) + 1 <= bound:
            return i, f"hash: candidate {len(order)} ({ineligible} not eligible, {overloaded} over the load bound)"
        else:
            overloaded += 1
        if len(order) == table.n:
            break
    # Every eligible endpoint is over the bound (tiny pools): least loaded, first in probe order on ties.
    best = None
    for i in order:
        if eligible(i) and (best is None or active(i) < active(best)):
            best = i
    return (best, "hash: every eligible endpoint over the load bound, least loaded") if best is not None else None
