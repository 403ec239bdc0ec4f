"""What one member contributes to a pool for one service port: the backend kinds (pure).

``auto`` takes, per member: pod endpoints where the proxy reaches pod IPs, else the LoadBalancer ingress IPs,
else node IP x nodePort (the Karmada + Pipy setup), else nothing, with the reason kept for the state view.
Pod ports follow kube-proxy: a pod listed only with ports of other names gets no traffic for this port.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import ClusterInfo, ClusterService, Pod
from .model import BackendChoice, BackendKind, Endpoint, Service, ServicePort


@dataclass(frozen=True, slots=True)
class Backends:
    """What one member contributes to a pool for one service port, and why when it is nothing."""

    cluster: str
    kind: BackendKind | None
    endpoints: tuple[Endpoint, ...] = ()
    reason: str = ""
    port: ServicePort | None = field(default=None, compare=False)


def select_port(service: Service, want: str | int | None) -> ServicePort | None:
    """The service port a route or listener means: its only port, a name, or a number."""
    if want is None or want == "":
        return service.ports[0] if len(service.ports) == 1 else None
    for p in service.ports:
        if (isinstance(want, int) and p.port == want) or (isinstance(want, str) and p.name == want):
            return p
    if isinstance(want, str) and want.isdigit():
        return select_port(service, int(want))
    return None


def _pod_port(pod: Pod, port: ServicePort, single: bool) -> int | None:
    """The pod's port for service port ``port`` (``single``: the service has only this port), None to skip it.

    The slice port of the same name, as kube-proxy. A lone slice port stands for the service's only port when
    one of the two is unnamed (single-port services need not name their port). A pod listed only with ports
    of other names is skipped (kube-proxy does not send it this port's traffic); a pod listed with no numbered
    port falls back to a numeric targetPort.
    """
    ports = pod.ports
    n = ports.get(port.name)
    if n is not None:
        return n
    if not ports:
        return port.target_port if isinstance(port.target_port, int) else None
    if single and len(ports) == 1 and (not port.name or "" in ports):
        return next(iter(ports.values()))
    return None


def usable_pods(side: ClusterService) -> tuple[Pod, ...]:
    """Ready pods; else serving-but-terminating ones (kube-proxy's ProxyTerminatingEndpoints fallback)."""
    ready = tuple(p for p in side.pods if p.ready)
    if ready:
        return ready
    return tuple(p for p in side.pods if p.serving and p.terminating)


def cluster_backends(
    side: ClusterService, info: ClusterInfo, want_port: str | int | None, choice: BackendChoice
) -> Backends:
    """One member's endpoints for one service port and backend choice (``auto`` per the issue's rules)."""
    svc = side.service
    port = select_port(svc, want_port)
    if port is None:
        names = ", ".join(p.name or str(p.port) for p in svc.ports) or "none"
        return Backends(side.cluster, None, reason=f"no port {want_port!r} (ports: {names})")
    kind: BackendKind
    if choice == "auto":
        if info.pods_reachable:
            kind = "pod"
        elif svc.lb_ingress:
            kind = "loadbalancer"
        elif port.node_port:
            kind = "nodeport"
        else:
            return Backends(
                side.cluster, None, reason="pods not reachable and no LoadBalancer IP or NodePort", port=port
            )
    else:
        kind = choice
    eps: tuple[Endpoint, ...]
    if kind == "pod":
        single = len(svc.ports) == 1
        eps = tuple(
            Endpoint(side.cluster, p.address, n, "pod", p.hostname, p.zone)
            for p in usable_pods(side)
            if (n := _pod_port(p, port, single)) is not None
        )
        reason = "" if eps else "no ready pod endpoints"
    elif kind == "nodeport":
        if not port.node_port:
            return Backends(side.cluster, kind, reason="service has no nodePort", port=port)
        eps = tuple(Endpoint(side.cluster, a, port.node_port, "nodeport") for a in side.node_addresses)
        reason = "" if eps else "no Ready node with a matching address"
    elif kind == "loadbalancer":
        eps = tuple(Endpoint(side.cluster, a, port.port, "loadbalancer") for a in svc.lb_ingress)
        reason = "" if eps else "no LoadBalancer ingress IP"
    else:
        eps = tuple(Endpoint(side.cluster, a, port.port, "clusterip") for a in svc.cluster_ips)
        reason = "" if eps else "headless service has no ClusterIP"
    return Backends(side.cluster, kind, eps, reason, port)
