"""Faults: member restart, cut watches, 410 Gone, hung member, failing requests, bad objects."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from fedproxy.config import DiscoveryConfig
from fedproxy.sim import objects

from .conftest import FAST, cluster_config, config_with, eventually, member_objects

pytestmark = pytest.mark.reliability


def slice_with(*ips: str, name: str = "web-1") -> dict:
    return objects.endpoint_slice(
        "demo", name, "web", ports=[{"name": "http", "port": 8080}], endpoints=[objects.endpoint([ip]) for ip in ips]
    )


def slice_ips(snap, name: str = "web-1") -> set[str] | None:
    s = snap.endpointslices.get(("demo", name)) if snap else None
    return None if s is None else {a for e in s.endpoints for a in e.addresses}


async def synced(rec, name: str) -> None:
    await eventually(lambda: rec.snap(name) is not None and rec.snap(name).synced, what=f"{name} synced")


async def test_member_restart_keeps_state_right(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    east.apply(slice_with("127.0.1.7", name="web-2"))
    discovery, rec = await run_discovery(config_with(cluster_config(tmp_path, east)))
    await synced(rec, "east")
    assert slice_ips(rec.snap("east"), "web-2") == {"127.0.1.7"}

    await east.kill()
    # Changed while the member is down: an object deleted and one modified.
    east.delete("endpointslices", "demo", "web-2")
    east.apply(slice_with("127.0.1.1", "127.0.1.3"))
    await eventually(lambda: discovery.status()["east"]["errors"] > 0, what="errors noticed")
    await east.restart()
    await eventually(lambda: slice_ips(rec.snap("east")) == {"127.0.1.1", "127.0.1.3"}, what="modified slice")
    await eventually(lambda: ("demo", "web-2") not in rec.snap("east").endpointslices, what="deleted slice gone")
    assert rec.snap("east").connected
    # The watch is live again.
    east.apply(slice_with("127.0.1.4"))
    await eventually(lambda: slice_ips(rec.snap("east")) == {"127.0.1.4"}, what="event after restart")


async def test_cut_watches_resume(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    discovery, rec = await run_discovery(config_with(cluster_config(tmp_path, east)))
    await synced(rec, "east")
    await eventually(lambda: east.open_watches == 5, what="5 watches open")
    assert east.cut_watches() == 5
    east.apply(slice_with("127.0.1.9"))
    await eventually(lambda: slice_ips(rec.snap("east")) == {"127.0.1.9"}, what="event after cut")
    assert rec.snap("east").connected
    await eventually(lambda: east.open_watches == 5, what="watches reopened")


async def test_expired_resource_version_relists_without_stale_objects(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    east.apply(slice_with("127.0.1.7", name="web-2"))
    discovery, rec = await run_discovery(config_with(cluster_config(tmp_path, east)))
    await synced(rec, "east")
    await eventually(lambda: east.open_watches == 5, what="5 watches open")
    resyncs = discovery.status()["east"]["resyncs"]

    await east.kill()
    east.delete("endpointslices", "demo", "web-2")
    east.apply(slice_with("127.0.1.5"))
    east.expire_resource_versions()  # the deletion is compacted away: only a relist can notice it
    await east.restart()
    await eventually(lambda: ("demo", "web-2") not in rec.snap("east").endpointslices, what="stale slice dropped")
    assert slice_ips(rec.snap("east")) == {"127.0.1.5"}
    assert discovery.status()["east"]["resyncs"] > resyncs


async def test_expired_while_connected(tmp_path: Path, servers, run_discovery) -> None:
    """410 on a live watch: the ERROR event ends the stream; the loop relists."""
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    discovery, rec = await run_discovery(config_with(cluster_config(tmp_path, east)))
    await synced(rec, "east")
    await eventually(lambda: east.open_watches == 5, what="5 watches open")
    resyncs = discovery.status()["east"]["resyncs"]
    expired = REGISTRY.get_sample_value("fedproxy_discovery_resyncs_total", {"cluster": "east", "reason": "expired"})
    # Stall the streams (no bookmarks) while history moves on and is compacted, then cut them.
    east.hang(True)
    east.apply(slice_with("127.0.1.6"))
    east.apply(objects.node("node-2", "127.0.9.2"))
    east.expire_resource_versions()
    east.cut_watches()
    east.hang(False)
    await eventually(lambda: discovery.status()["east"]["resyncs"] >= resyncs + 5, what="every kind relisted")
    await eventually(
        lambda: slice_ips(rec.snap("east")) == {"127.0.1.6"} and "node-2" in rec.snap("east").nodes, what="relisted"
    )
    after = REGISTRY.get_sample_value("fedproxy_discovery_resyncs_total", {"cluster": "east", "reason": "expired"})
    assert (after or 0) >= (expired or 0) + 5
    assert rec.snap("east").connected


async def test_hung_member_disconnects_while_other_keeps_updating(tmp_path: Path, servers, run_discovery) -> None:
    east, west = servers("east"), servers("west")
    for s in (east, west):
        await s.start()
        s.apply_all(member_objects())
    # A read timeout long enough that west's updates have time to arrive (even on a busy CI machine) while
    # east's requests are still stalled, i.e. before discovery has noticed anything wrong with east: an update
    # that only arrived after east's timeouts would not show that the members are independent.
    patient = DiscoveryConfig(**{**FAST.__dict__, "request_timeout": 2.0})
    config = config_with(cluster_config(tmp_path, east), cluster_config(tmp_path, west), discovery=patient)
    discovery, rec = await run_discovery(config)
    await synced(rec, "east")
    await synced(rec, "west")
    await eventually(lambda: east.open_watches == 5, what="east's watches open")

    def east_unnoticed() -> bool:
        status = discovery.status()["east"]
        return status["errors"] == 0 and not any(k["failing"] for k in status["kinds"].values())

    east.hang(True)
    for i in range(2, 6):
        west.apply(slice_with(f"127.0.2.{i}"))
        await eventually(lambda i=i: slice_ips(rec.snap("west")) == {f"127.0.2.{i}"}, 1.5, "west update")
        assert east_unnoticed(), "west's update only arrived after east's stall was noticed"
    # Quiet for a read timeout, then disconnected after the grace period; the error comes with the failed reopen.
    await eventually(lambda: not rec.snap("east").connected and rec.snap("east").error, 6.0, "east disconnected")
    assert rec.snap("west").connected
    # Objects are kept for the state view; the status says why.
    assert ("demo", "web") in rec.snap("east").services
    assert rec.snap("east").error
    assert discovery.status()["east"]["connected"] is False

    # A change made while hung: after the resync the member is connected with fresh objects only.
    east.hang(False)
    east.cut_watches()
    east.delete("services", "demo", "web")
    await eventually(lambda: rec.snap("east").connected, 4.0, "east reconnected")
    assert ("demo", "web") not in rec.snap("east").services
    assert not rec.snap("east").error


async def test_unreachable_member_is_disconnected_after_grace(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    entry = cluster_config(tmp_path, east)
    await east.stop()
    discovery, rec = await run_discovery(config_with(entry))
    await eventually(lambda: rec.snap("east") is not None and not rec.snap("east").connected, 3.0, "disconnected")
    assert not rec.snap("east").synced
    await east.restart()
    east.apply_all(member_objects())
    await eventually(lambda: rec.snap("east").connected and rec.snap("east").synced, 4.0, "connected after start")


async def test_failing_requests_back_off_and_recover(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    east.fail_requests(8, 503)
    discovery, rec = await run_discovery(config_with(cluster_config(tmp_path, east)))
    await synced(rec, "east")
    status = discovery.status()["east"]
    assert status["errors"] >= 1 and "503" in status["last_error"]
    assert rec.snap("east").connected and not rec.snap("east").error


async def test_bad_objects_are_skipped(tmp_path: Path, servers, run_discovery, caplog) -> None:
    caplog.set_level(logging.WARNING, "fedproxy.discovery")
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    bad = objects.service("demo", "broken", cluster_ip="127.1.1.9", ports=[{"port": 80}])
    bad["spec"]["ports"][0]["port"] = 70000  # not a port number: resources.parse rejects it
    east.apply(bad)
    discovery, rec = await run_discovery(config_with(cluster_config(tmp_path, east)))
    await synced(rec, "east")
    snap = rec.snap("east")
    assert ("demo", "web") in snap.services and ("demo", "broken") not in snap.services
    assert "event=bad_object" in caplog.text and "demo/broken" in caplog.text

    # A good object turning bad on a watch event is dropped (its old version would be stale); others stay.
    good = objects.service("demo", "other", cluster_ip="127.1.1.8", ports=[{"port": 81}])
    east.apply(good)
    await eventually(lambda: ("demo", "other") in rec.snap("east").services, what="good service")
    east.patch("services", "demo", "other", {"spec": {"ports": [{"port": "eighty"}]}})
    await eventually(lambda: ("demo", "other") not in rec.snap("east").services, what="bad update dropped")
    east.apply(slice_with("127.0.1.2"))
    await eventually(lambda: slice_ips(rec.snap("east")) == {"127.0.1.2"}, what="watch still alive")
    assert rec.snap("east").connected


async def test_disconnect_uses_configured_grace(tmp_path: Path, servers, run_discovery) -> None:
    """With a long grace period a short outage does not disconnect the member."""
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    slow = DiscoveryConfig(**{**FAST.__dict__, "grace_period": 30.0})
    discovery, rec = await run_discovery(config_with(cluster_config(tmp_path, east), discovery=slow))
    await synced(rec, "east")
    await east.kill()
    await eventually(lambda: discovery.status()["east"]["errors"] >= 3, what="several failures")
    await eventually(lambda: rec.snap("east").error, what="failing is visible before the grace period ends")
    assert rec.snap("east").connected
    await east.restart()
    await eventually(lambda: not rec.snap("east").error, what="error cleared")


# A request budget far above what backoff allows in the window (about 5 attempts per kind) and far below what
# a loop without backoff makes (hundreds per kind on loopback).
PATIENT = DiscoveryConfig(**{**FAST.__dict__, "backoff_base": 0.2, "backoff_max": 0.5})
WINDOW, BUDGET = 1.0, 60


async def requests_in_window(server) -> int:
    before = server.requests_served
    await asyncio.sleep(WINDOW)
    return server.requests_served - before


async def test_list_without_resource_version_backs_off(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    east.omit_list_resource_version(True)
    discovery, rec = await run_discovery(config_with(cluster_config(tmp_path, east), discovery=PATIENT))
    await eventually(lambda: discovery.status()["east"]["errors"] >= 5, what="lists refused")
    assert "resourceVersion" in discovery.status()["east"]["last_error"]
    assert not discovery.status()["east"]["synced"]  # objects from a list that cannot be watched are not used
    assert await requests_in_window(east) < BUDGET

    east.omit_list_resource_version(False)
    await synced(rec, "east")
    assert rec.snap("east").connected and ("demo", "web") in rec.snap("east").services


async def test_watch_closed_at_once_backs_off(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    discovery, rec = await run_discovery(config_with(cluster_config(tmp_path, east), discovery=PATIENT))
    await synced(rec, "east")
    await eventually(lambda: east.open_watches == 5, what="5 watches open")

    east.limit_watches(0)  # every watch is answered, then ended at once
    east.cut_watches()
    await asyncio.sleep(0.3)  # the cut watches reconnect into the closing ones
    assert await requests_in_window(east) < BUDGET
    # Answered watches are no error: the member stays connected.
    assert rec.snap("east").connected and not rec.snap("east").error

    east.limit_watches(None)
    await eventually(lambda: east.open_watches == 5, what="watches stay open again")
    east.apply(slice_with("127.0.1.8"))
    await eventually(lambda: slice_ips(rec.snap("east")) == {"127.0.1.8"}, what="event after recovery")
