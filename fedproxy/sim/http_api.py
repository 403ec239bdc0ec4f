"""Request handling of the emulated API server: path routing, discovery documents, CRUD, Status errors.

Paths follow the Kubernetes REST layout:
`/api/v1[/namespaces/{ns}]/{plural}[/{name}[/status]]` and the same under `/apis/{group}/{version}`.
Errors are `metav1.Status` JSON with the reason and code a real server uses.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fedproxy.sim import resources as rs
from fedproxy.sim.patches import PatchError, json_patch, merge_patch
from fedproxy.sim.resources import Resource
from fedproxy.sim.selectors import SelectorError, parse_field_selector, parse_label_selector
from fedproxy.sim.store import ObjectStore, StoreError
from fedproxy.sim.watch_stream import WatchHub, WatchRequest, stream_watch

# What `/version` reports; fedproxy only logs it.
SERVER_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-fedproxy-sim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-04-17T00:00:00Z",
    "goVersion": "go1.22.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def status_response(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> web.Response:
    """A metav1.Status failure, as every error from a real API server."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


@dataclass(frozen=True)
class Target:
    """A parsed resource path."""

    resource: Resource
    namespace: str | None  # None: all namespaces (or a cluster-scoped resource)
    name: str | None
    subresource: str | None


def parse_path(path: str) -> tuple[str, str, list[str]] | None:
    """(group, version, rest) of an API path, or None if it is not under /api or /apis."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        return "", parts[1], parts[2:]
    if len(parts) >= 3 and parts[0] == "apis":
        return parts[1], parts[2], parts[3:]
    return None


def resolve(group: str, version: str, rest: list[str]) -> Target | None:
    ns: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    res = rs.BY_PATH.get((group, version, rest[0]))
    if res is None or (ns is not None and not res.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub not in (None, "status"):
        return None
    return Target(res, ns, name, sub)


def _resource_list(group: str, version: str, served: list[Resource]) -> dict[str, Any]:
    gv = f"{group}/{version}" if group else version
    out: list[dict[str, Any]] = []
    for r in served:
        entry = {
            "name": r.plural,
            "singularName": r.kind.lower(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(r.verbs),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        out.append(entry)
        out.append(
            {
                "name": f"{r.plural}/status",
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }
        )
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}


def _group_list(quirks: Quirks) -> dict[str, Any]:
    groups = []
    for name, versions in rs.group_versions().items():
        versions = [v for v in versions if any(quirks.serves(r) for r in rs.resources_in(name, v))]
        if not versions:
            continue
        vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        groups.append({"name": name, "versions": vs, "preferredVersion": vs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


@dataclass
class Quirks:
    """How this server departs from a complete, well-behaved one; read on every request, so tests flip them live."""

    crds: bool = True  # False: no CustomResourceDefinitions installed (CRD resources answer 404, as on a bare cluster)
    list_resource_version: bool = True  # False: list responses lack metadata.resourceVersion (a broken server)
    max_watch_seconds: float | None = None  # caps every watch's timeoutSeconds; 0 closes each watch at once

    def serves(self, resource: Resource) -> bool:
        return self.crds or not resource.crd


def _flag(value: str | None) -> bool:
    return value in ("true", "1", "True")


class ApiHandler:
    """Turns requests into store operations. Auth and fault injection happen before (middlewares)."""

    def __init__(
        self,
        store: ObjectStore,
        hub: WatchHub,
        bookmark_interval: Callable[[], float],
        gate: Callable[[], Awaitable[None]],
        quirks: Quirks | None = None,
    ) -> None:
        self._store = store
        self._hub = hub
        self._bookmark_interval = bookmark_interval
        self._gate = gate
        self._quirks = quirks or Quirks()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path == "/version":
            return web.json_response(SERVER_VERSION)
        if path == "/api":
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            return web.json_response(_group_list(self._quirks))
        parsed = parse_path(path)
        if parsed is not None and not parsed[2]:
            group, version, _ = parsed
            served = [r for r in rs.resources_in(group, version) if self._quirks.serves(r)]
            if served:
                return web.json_response(_resource_list(group, version, served))
        target = resolve(*parsed) if parsed else None
        if target is None or not self._quirks.serves(target.resource):
            return status_response(404, "NotFound", "the server could not find the requested resource")
        try:
            return await self._dispatch(request, target)
        except StoreError as exc:
            details = {"name": target.name or "", "kind": target.resource.plural}
            if target.resource.group:
                details["group"] = target.resource.group
            return status_response(exc.code, exc.reason, str(exc), details)
        except (SelectorError, PatchError, ValueError) as exc:
            return status_response(400, "BadRequest", str(exc))

    async def _dispatch(self, request: web.Request, t: Target) -> web.StreamResponse:
        res, method = t.resource, request.method
        if t.name is None:
            if method == "GET":
                return await self._list_or_watch(request, t)
            if method == "POST":
                obj = await self._body(request, t)
                return web.json_response(self._store.create(res, obj), status=201)
            return status_response(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        ns = t.namespace or ""
        if method == "GET":
            return web.json_response(self._store.get(res, ns, t.name))
        if method == "PUT":
            obj = await self._body(request, t)
            if obj.get("metadata", {}).get("name") != t.name:
                raise ValueError("the name of the object does not match the name on the URL")
            return web.json_response(self._store.update(res, obj))
        if method == "PATCH":
            current = self._store.get(res, ns, t.name)
            patch = await request.json()
            if request.content_type == "application/json-patch+json":
                patched = json_patch(current, patch)
            elif request.content_type in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                patched = merge_patch(current, patch)
            else:
                return status_response(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format: {request.content_type}",
                )
            if "resourceVersion" not in (patch.get("metadata") or {} if isinstance(patch, dict) else {}):
                # A patch applies to whatever is current; only an explicit rv in it is a precondition.
                patched.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
            return web.json_response(self._store.update(res, patched))
        if method == "DELETE":
            return web.json_response(self._store.delete(res, ns, t.name))
        return status_response(405, "MethodNotAllowed", f"{method} is not supported")

    async def _body(self, request: web.Request, t: Target) -> dict[str, Any]:
        try:
            obj = await request.json()
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON body: {exc}") from exc
        if not isinstance(obj, dict):
            raise ValueError("the body must be a JSON object")
        meta = obj.setdefault("metadata", {})
        if t.resource.namespaced and t.namespace is not None:
            if meta.get("namespace", t.namespace) != t.namespace:
                raise ValueError(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = t.namespace
        return obj

    async def _list_or_watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"))
        ns = t.namespace if t.resource.namespaced else None
        if _flag(q.get("watch")):
            rv = q.get("resourceVersion", "")
            if rv not in ("", "0") and not rv.isdigit():
                raise ValueError(f"invalid resource version: {rv!r}")
            timeout: float | None = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
            cap = self._quirks.max_watch_seconds
            if cap is not None:
                timeout = cap if timeout is None else min(timeout, cap)
            watch = WatchRequest(
                t.resource,
                ns,
                labels,
                fields,
                rv,
                timeout,
                _flag(q.get("allowWatchBookmarks")),
            )
            return await stream_watch(request, self._hub, self._store, watch, self._bookmark_interval(), self._gate)
        items, rv = self._store.list(t.resource, ns, labels, fields)
        if not t.resource.crd:
            # Built-in types are encoded without kind/apiVersion inside lists; CRD items keep them.
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return web.json_response(
            {
                "kind": t.resource.list_kind,
                "apiVersion": t.resource.api_version,
                "metadata": {"resourceVersion": str(rv)} if self._quirks.list_resource_version else {},
                "items": items,
            }
        )
