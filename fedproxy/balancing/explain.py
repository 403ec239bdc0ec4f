"""Explain a pool's decisions as JSON-able data, for the admin explain endpoint (pure, read-only).

For every tier: its endpoints with health and effective weight, its health, panic state and priority load;
the members that add nothing and why; and, for a request key, which tier the key rolls into and which endpoint
the picker would choose. For hash pools that pick is computed by the very function ``Pool.pick`` uses
(``Pool.roll``, ``Pool.tier_for`` and the picker's ``peek``), with the same active counts, so the answer
matches what the proxy does for that key at that moment; nothing here changes picker state.
"""

from __future__ import annotations

from typing import Any

from .pool import Pool
from .tiers import RANK_NAMES


def _tier(pool: Pool, i: int) -> dict[str, Any]:
    t = pool.tiers[i]
    active = pool.load.active
    return {
        "rank": t.rank,
        "locality": RANK_NAMES[t.rank] if 0 <= t.rank < len(RANK_NAMES) else str(t.rank),
        "load": t.load,
        "health": round(t.health, 2),
        "healthy": t.healthy_count,
        "total": len(t.endpoints),
        "panic": t.panic,
        "capacity": t.capacity,
        "clusters": sorted(t.clusters),
        "endpoints": [
            {
                "endpoint": str(ep),
                "cluster": ep.cluster,
                "address": ep.address,
                "port": ep.port,
                "kind": ep.kind,
                "healthy": t.healthy[j],
                "weight": round(t.weights[j], 6),
                "active": active.get(ep, 0),
            }
            for j, ep in enumerate(t.endpoints)
        ],
    }


def explain(pool: Pool, key: int | None = None) -> dict[str, Any]:
    """The pool as JSON-able data; with ``key``, the tier and (for hash pools) the endpoint it gets and why."""
    out: dict[str, Any] = {
        "service": str(pool.spec.service),
        "port": pool.spec.port,
        "backend": pool.spec.backend,
        "algorithm": pool.spec.algorithm,
        "reason": pool.reason,
        "failed": pool.failed,
        "tiers": [_tier(pool, i) for i in range(len(pool.tiers))],
        "cluster_reasons": dict(sorted(pool.cluster_reasons.items())),
        "breaker": pool.breaker.state(),
        "refresh_at": pool.refresh_at,
        # Failover / fail-back ramp in progress: tier loads move from "from" to "target" (by tier rank).
        "tier_ramp": None
        if pool.ramp_since is None
        else {"since": pool.ramp_since, "from": dict(pool.ramp_from), "target": dict(pool.target)},
        "slow_start": {str(ep): round(r, 4) for ep, r in sorted(pool.ramps.items(), key=lambda kv: str(kv[0]))},
    }
    if key is None:
        return out
    decision: dict[str, Any] = {"key": key}
    if pool.failed or not pool.tiers:
        decision.update(endpoint=None, why=pool.reason or "no tiers")
    elif pool.spec.algorithm != "hash":
        decision.update(
            endpoint=None,
            why=f"{pool.spec.algorithm}: the tier is a random roll against the loads and the endpoint depends "
            "on picker state, not on a key",
        )
    else:
        roll = pool.roll(key)
        first = pool.tier_for(roll) if len(pool.tiers) > 1 else 0
        decision["roll"] = roll
        decision["tier"] = pool.tiers[first].rank
        steps = []
        chosen = None
        for i in (first, *range(first + 1, len(pool.tiers)), *range(first)):
            picker = pool.tiers[i].picker
            ep, why = picker.peek(key) if picker is not None else (None, "no picker")
            steps.append({"tier": pool.tiers[i].rank, "endpoint": str(ep) if ep else None, "why": why})
            if ep is not None:
                chosen = ep
                break
        decision.update(endpoint=str(chosen) if chosen else None, steps=steps)
        decision["why"] = (
            f"roll {roll} lands in tier {pool.tiers[first].rank} (loads {[t.load for t in pool.tiers]}); "
            + (steps[-1]["why"] if steps else "")
        )
    out["decision"] = decision
    return out
