"""The pure core of the emulator: store versions and history, selectors, patches (no event loop)."""

from __future__ import annotations

import pytest

from fedproxy.sim import objects
from fedproxy.sim.patches import PatchError, json_patch, merge_patch
from fedproxy.sim.resources import resource_named
from fedproxy.sim.selectors import SelectorError, parse_field_selector, parse_label_selector
from fedproxy.sim.store import AlreadyExists, Conflict, Expired, NotFound, ObjectStore, project_event

SVC = resource_named("services")


def test_writes_stamp_metadata_and_bump_version() -> None:
    store = ObjectStore()
    created = store.create(SVC, objects.service("demo", "a", cluster_ip="10.0.0.1"))
    meta = created["metadata"]
    assert meta["resourceVersion"] == "1" and meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z") and len(meta["uid"]) == 36
    updated = store.patch(SVC, "demo", "a", {"metadata": {"labels": {"x": "y"}}})
    assert updated["metadata"]["resourceVersion"] == "2"
    assert updated["metadata"]["generation"] == 1  # metadata-only change
    updated = store.patch(SVC, "demo", "a", {"spec": {"clusterIP": "10.0.0.2"}})
    assert updated["metadata"]["generation"] == 2
    assert updated["metadata"]["uid"] == meta["uid"]
    gone = store.delete(SVC, "demo", "a")
    assert gone["metadata"]["resourceVersion"] == "4" == str(store.resource_version)
    with pytest.raises(NotFound):
        store.get(SVC, "demo", "a")


def test_create_conflicts_and_optimistic_lock() -> None:
    store = ObjectStore()
    obj = store.create(SVC, objects.service("demo", "a"))
    with pytest.raises(AlreadyExists):
        store.create(SVC, objects.service("demo", "a"))
    store.update(SVC, obj)
    with pytest.raises(Conflict):
        store.update(SVC, obj)  # carries the now stale resourceVersion


def test_history_replay_and_expiry() -> None:
    store = ObjectStore(history=3)
    for i in range(5):
        store.create(SVC, objects.service("demo", f"s{i}"))
    assert [e.rv for e in store.events_since(3)] == [4, 5]
    with pytest.raises(Expired, match=r"too old resource version: 1 \(2\)"):
        store.events_since(1)
    store.expire_before()
    assert store.events_since(5) == []
    with pytest.raises(Expired, match=r"too old resource version: 4 \(5\)"):
        store.events_since(4)


def test_selector_transitions_are_added_and_deleted() -> None:
    store = ObjectStore()
    store.create(SVC, objects.service("demo", "a", labels={"app": "x"}))
    store.patch(SVC, "demo", "a", {"metadata": {"labels": {"app": "y"}}})
    store.patch(SVC, "demo", "a", {"metadata": {"labels": {"app": "x"}}})
    sel = parse_label_selector("app=x")
    seen = [project_event(e, SVC, None, sel, None) for e in store.events_since(0)]
    assert [s[0] if s else None for s in seen] == ["ADDED", "DELETED", "ADDED"]
    assert seen[1] is not None and seen[1][1]["metadata"]["resourceVersion"] == "2"


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a", {"a": ""}, True),
        ("!a", {"a": "x"}, False),
        ("a in (x, y),b notin (z)", {"a": "y"}, True),
        ("a in (x,y)", {"a": "z"}, False),
        ("a=b,c!=d,e in (x,y),!f,g", {"a": "b", "e": "x", "g": "1"}, True),
        ("", {"anything": "1"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector).matches(labels) is expected


def test_bad_selectors_are_rejected() -> None:
    with pytest.raises(SelectorError):
        parse_label_selector("a in x")
    with pytest.raises(SelectorError):
        parse_field_selector("metadata.name")


def test_field_selectors() -> None:
    obj = {"metadata": {"name": "a", "namespace": "demo"}}
    assert parse_field_selector("metadata.name=a,metadata.namespace!=kube-system").matches(obj)
    assert not parse_field_selector("metadata.namespace=other").matches(obj)


def test_patches() -> None:
    doc = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merge_patch(doc, {"a": {"b": None, "c": [3]}, "e": 2}) == {"a": {"c": [3]}, "d": 1, "e": 2}
    patched = json_patch(doc, [{"op": "add", "path": "/a/c/-", "value": 3}, {"op": "remove", "path": "/d"}])
    assert patched == {"a": {"b": 1, "c": [1, 2, 3]}}
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "replace", "path": "/missing", "value": 1}])
