"""A hand-built two-member world (east local in r1/a, west in r2) for the admin tests: snapshots and config."""

from __future__ import annotations

from types import MappingProxyType

from fedproxy.config import AdminConfig, ClusterConfig, Config, DnsConfig, HttpConfig, HttpListener, HttpRoute
from fedproxy.model import (
    ClusterSnapshot,
    EndpointSlice,
    Locality,
    Service,
    ServiceExport,
    ServiceKey,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)

WEB = ServiceKey("demo", "web")


def snapshot(name: str, pods: list[str], port: int, *, last_event: float = 0.0) -> ClusterSnapshot:
    """Member ``name`` exporting demo/web (one port "http" 80 -> ``port``) with ``pods`` ready."""
    svc = Service("demo", "web", cluster_ips=("10.0.0.1",), ports=(ServicePort("http", 80, target_port=port),))
    sl = EndpointSlice(
        "demo",
        "web-1",
        "web",
        ports=(SlicePort("http", port),),
        endpoints=tuple(SliceEndpoint((a,)) for a in pods),
    )
    return ClusterSnapshot(
        name,
        locality=Locality(),
        services=MappingProxyType({("demo", "web"): svc}),
        endpointslices=MappingProxyType({("demo", "web-1"): sl}),
        serviceexports=MappingProxyType({("demo", "web"): ServiceExport("demo", "web")}),
        last_event=last_event,
    )


def config(*, http_port: int = 0, token: str = "", routes: tuple[HttpRoute, ...] | None = None) -> Config:
    """east (local, r1/a) and west (r2), both with reachable pods; one HTTP listener routing / to demo/web."""
    routes = (HttpRoute(service=WEB),) if routes is None else routes
    return Config(
        clusters=(
            ClusterConfig("east", local=True, region="r1", zone="a"),
            ClusterConfig("west", region="r2", pods_reachable=True),
        ),
        http=HttpConfig(listeners=(HttpListener(port=http_port, address="127.0.0.1", routes=routes),)),
        dns=DnsConfig(address="127.0.0.1", port=0),
        admin=AdminConfig(address="127.0.0.1", port=0, token=token),
    )
