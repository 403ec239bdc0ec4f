"""Circuit breakers and the retry budget as pure counters (Envoy's defaults; shared/BALANCING.md).

One ``CircuitBreaker`` per pool counts what is in flight: upstream connections, requests waiting for a
connection ("pending"), requests, and retries. ``try_acquire(kind)`` either counts one more and returns None, or
returns the reason it refused (the proxy answers 503 with it and counts it in metrics); every successful acquire
is paired with one ``release(kind)``. A pool rebuilt from a new serving state takes over the previous pool's
breaker (see ``build_pool(previous=...)``), so the counts survive catalog changes.

``RetryBudget`` (Envoy retry_budget): at most ``percent`` % of active + pending requests may be retries, but a
floor of ``min_concurrency`` retries is always allowed so quiet pools can still retry. As in Envoy, a
configured budget replaces the ``max_retries`` breaker (``CircuitBreaker.try_retry``); ``retry_budget_percent: 0``
turns the budget off and ``max_retries`` back on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import BalancingConfig

LimitKind = Literal["connections", "pending", "requests", "retries"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-pool limits; defaults are Envoy's circuit breaker thresholds and retry budget."""

    max_connections: int = 1024
    max_pending: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    retry_budget_percent: float = 20.0
    retry_budget_min: int = 3

    @classmethod
    def from_config(cls, settings: BalancingConfig) -> Limits:
        """The limits in ``settings`` (fields it lacks keep their defaults)."""
        return cls(
            **{
                name: getattr(settings, name)
                for name in (
                    "max_connections",
                    "max_pending",
                    "max_requests",
                    "max_retries",
                    "retry_budget_percent",
                    "retry_budget_min",
                )
                if hasattr(settings, name)
            }
        )


# Which Limits field bounds each counter (looked up per request: a constant, not a dict built each time).
_LIMIT_FIELD = {"connections": "max_connections", "pending": "max_pending", "requests": "max_requests",
                "retries": "max_retries"}  # fmt: skip


class CircuitBreaker:
    """In-flight counters of one pool against its limits (0 or less = unlimited)."""

    __slots__ = ("limits", "counts", "refused")

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self.counts: dict[str, int] = {"connections": 0, "pending": 0, "requests": 0, "retries": 0}
        self.refused: dict[str, int] = {"connections": 0, "pending": 0, "requests": 0, "retries": 0}

    def _max(self, kind: str) -> int:
        return getattr(self.limits, _LIMIT_FIELD[kind])  # type: ignore[no-any-return]

    def try_acquire(self, kind: LimitKind) -> str | None:
        """Count one more ``kind``; None when allowed, else why not (e.g. "circuit open: 1024 requests")."""
        limit = self._max(kind)
        n = self.counts[kind]
        if 0 < limit <= n:
            self.refused[kind] += 1
            return f"circuit open: {n} {kind} (max {limit})"
        self.counts[kind] = n + 1
        return None

    def try_retry(self) -> str | None:
        """Count one more retry in flight; None when allowed, else the limit that refused it.

        With a retry budget (``retry_budget_percent`` > 0) the budget decides, over the requests and pending
        counted here, and ``max_retries`` is not used (Envoy: a retry budget overrides max_retries); without one,
        ``max_retries`` does. Returns "retry_budget" or "max_retries"; pair an allowed one with
        ``release("retries")``.
        """
        lim = self.limits
        n = self.counts["retries"]
        if lim.retry_budget_percent > 0:
            budget = RetryBudget.from_limits(lim)
            if not budget.can_retry(self.counts["requests"], self.counts["pending"], n):
                self.refused["retries"] += 1
                return "retry_budget"
        elif 0 < lim.max_retries <= n:
            self.refused["retries"] += 1
            return "max_retries"
        self.counts["retries"] = n + 1
        return None

    def release(self, kind: LimitKind) -> None:
        """One ``kind`` acquired earlier is done."""
        if self.counts[kind] > 0:
            self.counts[kind] -= 1

    def state(self) -> dict[str, object]:
        """Admin JSON: in flight, limits and refusals per kind."""
        return {k: {"active": self.counts[k], "max": self._max(k), "refused": self.refused[k]} for k in self.counts}


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Envoy retry budget: retries in flight <= max(min_concurrency, percent % of active + pending)."""

    percent: float = 20.0
    min_concurrency: int = 3

    @classmethod
    def from_limits(cls, limits: Limits) -> RetryBudget:
        return cls(limits.retry_budget_percent, limits.retry_budget_min)

    def can_retry(self, active: int, pending: int, retries_in_flight: int) -> bool:
        """True when one more retry fits the budget."""
        allowed = max(self.min_concurrency, int(self.percent * (active + pending) / 100.0))
        return retries_in_flight < allowed
