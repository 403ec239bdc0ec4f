"""The admin state view: serving state -> plain JSON-able dicts (pure: no I/O, no clock, ``now`` is an argument).

This is what ``GET /api/v1/state`` returns and the dashboard draws. The shape is a public contract,
documented in docs/admin.md: fields are only ever added, never renamed or removed. Every list is sorted so
that two calls over the same state give the same JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..backends import cluster_backends
from ..balancing import Pool, ServingState
from ..catalog import CatalogService, ClusterInfo
from ..model import Endpoint, empty_map

TIER_NAMES = {0: "local", 1: "zone", 2: "region", 3: "any"}
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ListenerView:
    """One listening socket as the admin shows it (built by the server from the runtime's listeners)."""

    kind: str  # "http" | "tcp" | "dns" | "admin"
    name: str
    address: str
    port: int  # configured (0 = ephemeral)
    bound_port: int | None  # the port actually bound, None when not listening
    stats: Mapping[str, Any] = field(default_factory=empty_map)


def status_field(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a discovery status entry, which may be a mapping or an object with attributes."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _age(last_event: float | None, now: float) -> float | None:
    if not last_event:
        return None
    return round(max(0.0, now - last_event), 3)


def endpoint_json(ep: Endpoint) -> dict[str, Any]:
    return {"cluster": ep.cluster, "address": ep.address, "port": ep.port, "kind": ep.kind}


def member_json(
    name: str,
    info: ClusterInfo | None,
    state: ServingState,
    status: Any,
    now: float,
) -> dict[str, Any]:
    """One member: what the catalog knows (None when discovery has produced nothing yet) + overrides."""
    cfg = state.config.cluster(name)
    configured_weight = info.weight if info is not None else (cfg.weight if cfg else 1)
    override = state.overrides.weights.get(name)
    locality = info.locality if info is not None else None
    region = locality.region if locality else (cfg.region if cfg else "")
    zone = locality.zone if locality else (cfg.zone if cfg else "")
    age = _age(info.last_event, now) if info is not None and info.last_event else None
    if age is None:
        age = status_field(status, "last_event_age")
    error = (info.error if info is not None else "") or status_field(status, "last_error", "") or ""
    return {
        "name": name,
        "connected": bool(info.connected) if info is not None else bool(status_field(status, "connected", False)),
        "synced": bool(info.synced) if info is not None else bool(status_field(status, "synced", False)),
        "locality": {"region": region, "zone": zone},
        "local": bool(info.local) if info is not None else bool(cfg and cfg.local),
        "weight": configured_weight if override is None else override,
        "configured_weight": configured_weight,
        "weight_override": override,
        "drained": name in state.overrides.drained,
        "last_event_age": age,
        "error": str(error),
        "resyncs": int(status_field(status, "resyncs", 0) or 0),
        "errors": int(status_field(status, "errors", 0) or 0),
    }


def member_names(state: ServingState, statuses: Mapping[str, Any]) -> list[str]:
    """Configured members, members found by discovery (karmada), and members named in overrides."""
    names = {c.name for c in state.config.clusters} | set(state.catalog.clusters) | set(statuses)
    return sorted(names)


def service_json(svc: CatalogService, clusters: Mapping[str, ClusterInfo]) -> dict[str, Any]:
    """One exported service: its ports and, per member and port, the backend ``auto`` would choose."""
    members = []
    for name, side in sorted(svc.clusters.items()):
        info = clusters.get(name) or ClusterInfo(name)
        backends = []
        for port in svc.ports or ():
            b = cluster_backends(side, info, port.name or port.port, "auto")
            backends.append(
                {
                    "port": port.name or port.port,
                    "backend": b.kind,
                    "endpoints": [endpoint_json(e) for e in b.endpoints],
                    "reason": b.reason,
                }
            )
        members.append(
            {
                "cluster": name,
                "type": side.service.type,
                "ready_pods": len(side.ready_pods),
                "connected": info.connected,
                "backends": backends,
            }
        )
    return {
        "service": str(svc.key),
        "headless": svc.headless,
        "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in svc.ports],
        "clusterset_ips": list(svc.clusterset_ips),
        "members": members,
        "conflicts": list(svc.conflicts),
        "excluded": dict(sorted(svc.excluded.items())),
    }


def pool_json(pool: Pool, unhealthy: frozenset[Endpoint] = frozenset()) -> dict[str, Any]:
    """One pool: its spec, its tiers (rank, load %, panic) and endpoints with weight and health."""
    spec = pool.spec
    tiers = []
    for t in pool.tiers:
        tiers.append(
            {
                "rank": t.rank,
                "name": TIER_NAMES.get(t.rank, str(t.rank)),
                "load": t.load,
                "panic": t.panic,
                "healthy": t.healthy_count,
                "total": len(t.endpoints),
                "endpoints": [
                    endpoint_json(ep)
                    | {
                        "weight": round(w, 4),
                        "healthy": ok and ep not in unhealthy,
                        "active": pool.active.get(ep, 0),
                    }
                    for ep, w, ok in zip(t.endpoints, t.weights, t.healthy, strict=True)
                ],
            }
        )
    return {
        "service": str(spec.service),
        "port": spec.port,
        "backend": spec.backend,
        "algorithm": spec.algorithm,
        "cluster_weights": dict(spec.cluster_weights),
        "hash": None if spec.hash is None else {"on": spec.hash.on, "name": spec.hash.name},
        "reason": pool.reason,
        "cluster_reasons": dict(sorted(pool.cluster_reasons.items())),
        "tiers": tiers,
    }


def listener_json(view: ListenerView) -> dict[str, Any]:
    return {
        "kind": view.kind,
        "name": view.name,
        "address": view.address,
        "port": view.port,
        "bound_port": view.bound_port,
        "stats": dict(view.stats),
    }


def _pool_sort_key(pool: Pool) -> tuple[str, str, str, str]:
    s = pool.spec
    return (str(s.service), str(s.port), s.backend, repr(s.cluster_weights) + s.algorithm)


def state_json(
    state: ServingState,
    *,
    now: float,
    statuses: Mapping[str, Any] | None = None,
    listeners: Iterable[ListenerView] = (),
    config_hash: str = "",
    ready: tuple[bool, str] = (True, "ok"),
    reloads: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole ``/api/v1/state`` document (schema in docs/admin.md)."""
    statuses = statuses or {}
    catalog = state.catalog
    names = member_names(state, statuses)
    members = [member_json(n, catalog.clusters.get(n), state, statuses.get(n), now) for n in names]
    services = [service_json(svc, catalog.clusters) for _, svc in sorted(catalog.services.items())]
    pools = [pool_json(p, state.health.unhealthy) for p in sorted(state.pools.values(), key=_pool_sort_key)]
    return {
        "schema": SCHEMA_VERSION,
        "version": state.version,
        "catalog_version": catalog.version,
        "config_hash": config_hash,
        "ready": {"ok": ready[0], "reason": ready[1]},
        "local": catalog.local,
        "domain": catalog.domain,
        "members": members,
        "services": services,
        "pools": pools,
        "listeners": [listener_json(v) for v in listeners],
        "overrides": overrides_json(state),
        "reloads": dict(reloads or {}),
    }


def overrides_json(state: ServingState) -> dict[str, Any]:
    return {"drained": sorted(state.overrides.drained), "weights": dict(sorted(state.overrides.weights.items()))}


def minimal_explain(pool: Pool) -> dict[str, Any]:
    """Where traffic of one pool goes, by tier and member, for when the balancing explain module is absent."""
    out = pool_json(pool)
    for tier in out["tiers"]:
        shares: dict[str, float] = {}
        total = sum(e["weight"] for e in tier["endpoints"] if e["healthy"] or tier["panic"]) or 1.0
        for e in tier["endpoints"]:
            if e["healthy"] or tier["panic"]:
                shares[e["cluster"]] = shares.get(e["cluster"], 0.0) + e["weight"] / total
        tier["members"] = {c: round(tier["load"] * s, 2) for c, s in sorted(shares.items())}
    return out
