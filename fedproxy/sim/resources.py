"""The API resources the emulator serves: the subset of the Kubernetes discovery document fedproxy uses.

Pure data. Each entry mirrors what a real API server publishes in `/api/v1` or `/apis/{group}/{version}`
(name, kind, namespaced, verbs), so discovery-driven clients see the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

_READ = ("get", "list", "watch")
_ALL = ("create", "delete", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Resource:
    """One served resource type; `group` is "" for the core API."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = _ALL
    short_names: tuple[str, ...] = ()
    # Served from a CustomResourceDefinition: list items keep kind/apiVersion (unstructured JSON),
    # whereas built-in types' list items omit them, as a real server encodes them.
    crd: bool = False

    @property
    def api_version(self) -> str:
        """`apiVersion` as objects of this resource carry it ("v1", "discovery.k8s.io/v1")."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "services", "Service", True, short_names=("svc",)),
    Resource("", "v1", "endpoints", "Endpoints", True, short_names=("ep",)),
    Resource("", "v1", "pods", "Pod", True, short_names=("po",)),
    Resource("", "v1", "nodes", "Node", False, short_names=("no",)),
    Resource("", "v1", "secrets", "Secret", True),
    Resource("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    Resource("", "v1", "namespaces", "Namespace", False, short_names=("ns",)),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    Resource("multicluster.x-k8s.io", "v1alpha1", "serviceexports", "ServiceExport", True, crd=True),
    Resource("multicluster.x-k8s.io", "v1alpha1", "serviceimports", "ServiceImport", True, crd=True),
    Resource("cluster.karmada.io", "v1alpha1", "clusters", "Cluster", False, crd=True),
)

# (group, version, plural) -> Resource: the routing key of a request path.
BY_PATH: dict[tuple[str, str, str], Resource] = {(r.group, r.version, r.plural): r for r in RESOURCES}
# (apiVersion, kind) -> Resource: how `apply(obj)` finds where an object belongs.
BY_KIND: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in RESOURCES}


def group_versions() -> dict[str, list[str]]:
    """Non-core groups and their served versions, in declaration order."""
    out: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and r.version not in out.setdefault(r.group, []):
            out[r.group].append(r.version)
    return out


def resources_in(group: str, version: str) -> list[Resource]:
    return [r for r in RESOURCES if r.group == group and r.version == version]


def resource_for_kind(api_version: str, kind: str) -> Resource:
    """The resource holding objects of `kind`; KeyError names what is not served."""
    try:
        return BY_KIND[(api_version, kind)]
    except KeyError:
        raise KeyError(f"the emulator does not serve {api_version} {kind}") from None


def resource_named(name: str) -> Resource:
    """Look up by plural, kind or short name ("services", "Service", "svc")."""
    for r in RESOURCES:
        if name in (r.plural, r.kind, r.kind.lower(), *r.short_names):
            return r
    raise KeyError(f"the emulator does not serve a resource named {name!r}")
