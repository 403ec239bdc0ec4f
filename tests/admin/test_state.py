"""The pure state view: serving state -> JSON, with no event loop and no sockets."""

from __future__ import annotations

import json

from fedproxy.admin.state import ListenerView, minimal_explain, state_json
from fedproxy.balancing import HealthView, Overrides, ServingState, build_state
from fedproxy.balancing.pool import NO_HEALTH, NO_OVERRIDES
from fedproxy.catalog import build_catalog
from fedproxy.model import Endpoint

from .scenario import config, snapshot


def world(overrides: Overrides = NO_OVERRIDES, health: HealthView = NO_HEALTH) -> ServingState:
    cfg = config()
    snaps = [snapshot("east", ["10.1.0.1", "10.1.0.2"], 8080, last_event=90.0), snapshot("west", ["10.2.0.1"], 8080)]
    catalog = build_catalog(snaps, cfg, 7)
    return build_state(cfg, catalog, health, overrides, 100.0, 7)


def test_members_services_pools() -> None:
    doc = state_json(
        world(),
        now=100.0,
        statuses={"west": {"last_event_age": 3.5, "resyncs": 2, "errors": 1, "last_error": "boom"}},
        listeners=[ListenerView("http", "http-0", "127.0.0.1", 0, 41000, {"requests": 3})],
        config_hash="abc",
    )
    json.dumps(doc)  # JSON-able as is
    assert doc["version"] == 7 and doc["config_hash"] == "abc" and doc["local"] == "east"
    east, west = doc["members"]
    assert east["name"] == "east" and east["local"] and east["locality"] == {"region": "r1", "zone": "a"}
    assert east["last_event_age"] == 10.0 and not east["drained"] and east["weight"] == 1
    assert west["last_event_age"] == 3.5 and west["resyncs"] == 2 and west["error"] == "boom"
    (svc,) = doc["services"]
    assert svc["service"] == "demo/web"
    assert [m["cluster"] for m in svc["members"]] == ["east", "west"]
    east_backend = svc["members"][0]["backends"][0]
    assert east_backend["backend"] == "pod" and len(east_backend["endpoints"]) == 2
    (pool,) = doc["pools"]
    assert pool["service"] == "demo/web"
    ranks = [(t["rank"], t["name"]) for t in pool["tiers"]]
    assert ranks == [(0, "local"), (3, "any")]
    assert sum(t["load"] for t in pool["tiers"]) == 100
    assert pool["tiers"][0]["load"] == 100  # a healthy local tier takes everything
    assert all(e["healthy"] for t in pool["tiers"] for e in t["endpoints"])
    assert doc["listeners"][0]["bound_port"] == 41000 and doc["listeners"][0]["stats"] == {"requests": 3}


def test_drain_and_weight_show_in_members_and_pools() -> None:
    doc = state_json(world(Overrides(frozenset({"east"}), {"west": 5})), now=100.0)
    east, west = doc["members"]
    assert east["drained"] and not west["drained"]
    assert west["weight"] == 5 and west["weight_override"] == 5 and west["configured_weight"] == 1
    (pool,) = doc["pools"]
    clusters = {e["cluster"] for t in pool["tiers"] for e in t["endpoints"]}
    assert clusters == {"west"}
    assert pool["cluster_reasons"]["east"] == "member drained"
    assert doc["overrides"] == {"drained": ["east"], "weights": {"west": 5}}


def test_unhealthy_endpoint_and_explain_shares() -> None:
    bad = Endpoint("east", "10.1.0.1", 8080, "pod")
    state = world(health=HealthView(frozenset({bad})))
    (pool,) = state_json(state, now=100.0)["pools"]
    flags = {(e["address"], e["healthy"]) for t in pool["tiers"] for e in t["endpoints"]}
    assert ("10.1.0.1", False) in flags and ("10.1.0.2", True) in flags
    explained = minimal_explain(next(iter(state.pools.values())))
    shares = {c: v for t in explained["tiers"] for c, v in t["members"].items()}
    assert abs(sum(shares.values()) - 100) < 0.5
    assert shares["east"] > 0  # one healthy local endpoint at 1.4 overprovisioning still takes 70 %


def test_same_state_same_json() -> None:
    a = json.dumps(state_json(world(), now=1.0), sort_keys=True)
    b = json.dumps(state_json(world(), now=1.0), sort_keys=True)
    assert a == b
