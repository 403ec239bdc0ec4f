"""Which names exist under the clusterset domain and what they answer (pure; KEP-1645 DNS + Lighthouse).

Names (``<base>`` is ``<svc>.<ns>.svc.<domain>``):
- ``<domain>``: SOA, NS; ``dns-version.<domain>``: TXT "1.0.0"; ``ns.dns.<domain>``: the NS target.
- ClusterSetIP services: ``<base>`` A/AAAA is the ServiceImport IPs when set, fedproxy's listener with
  ``dns.answer: proxy``, else one cluster per query: the best policy tier, smooth weighted round-robin inside it.
  ``<cluster>.<base>`` (Lighthouse, ``dns.cluster_prefix``) is that cluster's address. ``<base>`` SRV lists every
  port of every answerable cluster, ``_<port>._<proto>.<base>`` SRV each named port; targets are the cluster names,
  priority the policy tier, weight the cluster weight, and the targets' addresses ride in the additional section.
  ``<svc>.<ns>.svc.<region>.<domain>`` and ``<svc>.<ns>.svc.<zone>.<region>.<domain>`` (kubefed) rotate inside
  that region or zone only.
- Headless services: ``<base>`` is every ready pod of every connected cluster; ``<hostname>.<cluster>.<base>`` one
  pod (dashed IP when it has no hostname); SRV targets are the pod names. No ready pod: NXDOMAIN (spec).
A member answers nothing while it is disconnected, drained, or has no ready endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import dns.name
import dns.rdata
import dns.rdatatype
import dns.rdtypes.IN.SRV

from ..backends import cluster_backends, usable_pods
from ..balancing import ServingState
from ..balancing.tiers import tier_of
from ..catalog import CatalogService, ClusterInfo, ClusterService, Pod
from ..config import Config, DnsConfig
from ..model import BackendChoice, Endpoint, ServiceKey, ServicePort
from .table import IN, AnswerTable, RoundRobinState, TableBuilder, address_rrsets, family_addresses, rrset

SRV = dns.rdatatype.SRV
DNS_VERSION = "1.0.0"  # the MCS DNS specification's dns-version TXT record


@dataclass(slots=True)
class Member:
    """One cluster able to answer for one service: its addresses, SRV ports, weight and policy tier."""

    name: str
    info: ClusterInfo
    weight: int
    tier: int
    addresses: tuple[str, ...]
    ports: dict[ServicePort, int] = field(default_factory=dict)  # service port -> port a client dials


def policy_of(cfg: DnsConfig) -> str:
    return "locality" if cfg.locality else cfg.policy


def _tier(policy: str, local: ClusterInfo | None, info: ClusterInfo, order: tuple[str, ...]) -> int:
    if policy == "spread":
        return 0
    if policy == "locality":
        return tier_of(local, info, order)
    return 0 if local is not None and info.name == local.name else 1  # local_first (Lighthouse)


def _want(port: ServicePort) -> str | int:
    return port.name or port.port


def _cluster_addresses(
    svc: CatalogService, side: ClusterService, info: ClusterInfo, choice: BackendChoice, unhealthy: frozenset[Endpoint]
) -> tuple[tuple[str, ...], dict[ServicePort, int]]:
    """A member's healthy addresses for ``choice`` and the port each service port has there."""
    addresses: dict[str, None] = {}
    ports: dict[ServicePort, int] = {}
    for port in svc.ports:
        backends = cluster_backends(side, info, _want(port), choice)
        eps = [e for e in backends.endpoints if e not in unhealthy]
        if eps:
            ports[port] = eps[0].port
            addresses.update(dict.fromkeys(e.address for e in eps))
    if not svc.ports:  # a portless service: the addresses still exist, only SRV has nothing to say
        s = side.service
        kind = {"pod": [p.address for p in usable_pods(side)], "loadbalancer": list(s.lb_ingress)}
        addresses.update(dict.fromkeys(kind.get(choice, s.cluster_ips)))
    return tuple(addresses), ports


def members(state: ServingState, svc: CatalogService, cfg: DnsConfig, policy: str) -> list[Member]:
    """The clusters that may answer for ``svc``, by name; the rules of the module docstring."""
    catalog = state.catalog
    local = catalog.clusters.get(catalog.local) if catalog.local else None
    out = []
    for name, side in sorted(svc.clusters.items()):
        info = catalog.clusters.get(name)
        if info is None or not info.connected or name in state.overrides.drained or not usable_pods(side):
            continue
        addresses, ports = _cluster_addresses(svc, side, info, cfg.backend, state.health.unhealthy)
        if not addresses:
            continue
        weight = state.overrides.weights.get(name, info.weight)
        tier = _tier(policy, local, info, tuple(state.config.balancing.locality))
        out.append(Member(name.lower(), info, weight, tier, addresses, ports))
    return out


def proxied_addresses(config: Config, cfg: DnsConfig) -> dict[ServiceKey, tuple[str, ...]]:
    """Services fronted by one of fedproxy's own listeners -> the address ``dns.answer: proxy`` answers."""
    out: dict[ServiceKey, dict[str, None]] = {}

    def note(service: ServiceKey, address: str) -> None:
        addr = cfg.advertise_address or address
        if addr and addr not in ("0.0.0.0", "::"):  # a wildcard bind is not an address a client can dial
            out.setdefault(service, {})[addr] = None

    for lst in config.http.listeners:
        for route in lst.routes:
            note(route.service, lst.address)
    for tl in config.tcp.listeners:
        note(tl.service, tl.address)
    return {k: tuple(v) for k, v in out.items()}


def _choices(ms: list[Member], rdtype: int) -> list[tuple[str, int, tuple[str, ...]]]:
    """Members of the best tier that has an address of the family and takes new traffic (weight 0 takes none)."""
    live = [m for m in ms if m.weight > 0 and family_addresses(m.addresses, rdtype)]
    if not live:
        return []
    best = min(m.tier for m in live)
    return [(m.name, m.weight, m.addresses) for m in live if m.tier == best]


def _srv_name(port: ServicePort, base: dns.name.Name) -> dns.name.Name:
    return dns.name.Name([f"_{port.name}".lower(), f"_{port.protocol}".lower()]).concatenate(base)


def _srv(
    b: TableBuilder,
    name: dns.name.Name,
    records: list[tuple[int, int, int, dns.name.Name]],
    extra: list,
    cluster: str = "*",
) -> None:
    rds = [dns.rdtypes.IN.SRV.SRV(IN, SRV, p, min(w, 65535), port, t) for p, w, port, t in records]
    if rds:
        b.add(name, SRV, [rrset(name, b.ttl, SRV, rds)], extra, cluster)


def _cluster_srv(b: TableBuilder, svc: CatalogService, m: Member, target: dns.name.Name) -> None:
    """SRV at ``<cluster>.<base>`` and ``_<port>._<proto>.<cluster>.<base>``: that cluster's ports only."""
    extra = address_rrsets(target, b.ttl, m.addresses)
    plain = []
    for port in svc.ports:
        if port not in m.ports:
            continue
        record = (0, m.weight, m.ports[port], target)
        plain.append(record)
        if port.name:
            _srv(b, _srv_name(port, target), [record], extra, m.name)
    _srv(b, target, plain, extra, m.name)


def _clusterset_service(
    b: TableBuilder,
    svc: CatalogService,
    ms: list[Member],
    cfg: DnsConfig,
    proxied: Mapping[ServiceKey, tuple[str, ...]],
) -> None:
    base = dns.name.Name([svc.key.name, svc.key.namespace, "svc"]).concatenate(b.origin)
    fixed = proxied.get(svc.key) if cfg.answer == "proxy" else None
    fixed = fixed or svc.clusterset_ips
    if fixed:
        b.addresses(base, fixed)
    else:
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            b.rotate(base, rdtype, _choices(ms, rdtype))
    targets = {m.name: dns.name.Name([m.name]).concatenate(base) for m in ms}
    if cfg.cluster_prefix:
        for m in ms:
            b.addresses(targets[m.name], m.addresses, cluster=m.name)
            _cluster_srv(b, svc, m, targets[m.name])
    plain: list[tuple[int, int, int, dns.name.Name]] = []
    for port in svc.ports:
        for_port = [m for m in ms if port in m.ports]  # a port only some clusters expose: only those
        if cfg.cluster_prefix:
            records = [(m.tier, m.weight, m.ports[port], targets[m.name]) for m in for_port]
            extra = [rs for m in for_port for rs in address_rrsets(targets[m.name], b.ttl, m.addresses)]
        else:  # strict spec: the target is the service name itself (Kubernetes DNS spec for ClusterIP SRV)
            records = [(0, 1, port.port, base)] if for_port else []
            extra = []
        if port.name:
            _srv(b, _srv_name(port, base), records, extra)
        plain += records
    all_extra = [rs for m in ms for rs in address_rrsets(targets[m.name], b.ttl, m.addresses)]
    _srv(b, base, list(dict.fromkeys(plain)), all_extra if cfg.cluster_prefix else [])
    # kubefed-style scoped names: rotate inside one region, or one zone of a region.
    scopes: dict[tuple[str, ...], list[Member]] = {}
    for m in ms:
        region, zone = m.info.locality.region.lower(), m.info.locality.zone.lower()
        if region:
            scopes.setdefault((region,), []).append(m)
            if zone:
                scopes.setdefault((zone, region), []).append(m)
    for labels, scoped in scopes.items():
        name = dns.name.Name([svc.key.name, svc.key.namespace, "svc", *labels]).concatenate(b.origin)
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            b.rotate(name, rdtype, _choices(scoped, rdtype))


def pod_label(pod: Pod) -> str:
    """A pod's DNS label: its hostname, else its IP with dashes (the Kubernetes DNS spec's 1-2-3-4 form)."""
    return (pod.hostname or pod.address.replace(".", "-").replace(":", "-")).lower()


def _headless_service(b: TableBuilder, state: ServingState, svc: CatalogService, cfg: DnsConfig) -> None:
    catalog = state.catalog
    base = dns.name.Name([svc.key.name, svc.key.namespace, "svc"]).concatenate(b.origin)
    all_addresses: dict[str, None] = {}
    pods: list[tuple[dns.name.Name, Pod, ClusterService]] = []
    for cluster, side in sorted(svc.clusters.items()):
        info = catalog.clusters.get(cluster)
        if info is None or not info.connected or cluster in state.overrides.drained:
            continue
        published = [p for p in side.pods if p.ready or side.service.publish_not_ready]
        if not published:
            continue
        cluster_name = dns.name.Name([cluster.lower()]).concatenate(base)
        if cfg.cluster_prefix:
            b.addresses(cluster_name, [p.address for p in published], cluster=cluster.lower())
        for pod in published:
            all_addresses[pod.address] = None
            pod_name = dns.name.Name([pod_label(pod)]).concatenate(cluster_name)
            b.addresses(pod_name, [pod.address], cluster=cluster.lower())
            pods.append((pod_name, pod, side))
    if not all_addresses:
        return  # no ready endpoint: the name does not exist (KEP-1645)
    b.addresses(base, list(all_addresses))
    extra = [rs for name, pod, _ in pods for rs in address_rrsets(name, b.ttl, [pod.address])]
    plain = []
    per_cluster: dict[str, list[tuple[int, int, int, dns.name.Name]]] = {}
    for port in svc.ports:
        records = []
        for name, pod, side in pods:
            number = pod.ports.get(port.name, port.target_port if isinstance(port.target_port, int) else port.port)
            records.append((0, 1, number, name))
            per_cluster.setdefault(side.cluster.lower(), []).append(records[-1])
        plain += records
        if port.name:
            _srv(b, _srv_name(port, base), records, extra)
            if cfg.cluster_prefix:  # _<port>._<proto>.<cluster>.<base>: that cluster's pods
                for cluster in {side.cluster.lower() for _, _, side in pods}:
                    mine = [r for r, (_, _, side) in zip(records, pods, strict=True) if side.cluster.lower() == cluster]
                    cluster_base = dns.name.Name([cluster]).concatenate(base)
                    _srv(b, _srv_name(port, cluster_base), mine, _extra_for(mine, extra), cluster)
    _srv(b, base, list(dict.fromkeys(plain)), extra)
    if cfg.cluster_prefix:
        for cluster, records in per_cluster.items():
            _srv(b, dns.name.Name([cluster]).concatenate(base), records, _extra_for(records, extra), cluster)


def _extra_for(records: list[tuple[int, int, int, dns.name.Name]], extra: list) -> list:
    """The additional-section rrsets of ``extra`` that belong to the targets of ``records``."""
    targets = {r[3] for r in records}
    return [rs for rs in extra if rs.name in targets]


def is_headless(svc: CatalogService) -> bool:
    """Headless when the Service is, or when a member's ServiceImport says ``spec.type: Headless`` (MCS)."""
    if svc.headless:
        return True
    return any(s.service_import is not None and s.service_import.type == "Headless" for s in svc.clusters.values())


@dataclass(slots=True)
class ServiceMemo:
    """One table build's per-service records, reused by the next build for services whose inputs are equal.

    A catalog change usually touches one service, and encoding with dnspython is most of a build (issue 9: 20
    rebuilds/s blocked answering), so a build encodes only the services that changed. ``context`` is what
    every service's records depend on (zone, DNS settings); when it differs nothing is reused.
    """

    context: tuple = ()
    services: dict[ServiceKey, tuple[tuple, dict, frozenset[bytes]]] = field(default_factory=dict)


def _inputs(state: ServingState, svc: CatalogService, cfg: DnsConfig, policy: str, proxied: Mapping) -> tuple:
    """Everything the records of ``svc`` are computed from (equal inputs: equal records)."""
    if is_headless(svc):
        catalog, drained = state.catalog, state.overrides.drained
        seen = tuple((c, catalog.connected(c), c in drained) for c in sorted(svc.clusters))
        return ("headless", svc, seen, None)
    ms = members(state, svc, cfg, policy)
    fixed = proxied.get(svc.key) if cfg.answer == "proxy" else None
    shape = tuple((m.name, m.info.locality, m.weight, m.tier, m.addresses, tuple(m.ports.items())) for m in ms)
    return ("clusterset", svc.key, svc.ports, svc.clusterset_ips, fixed, shape, ms)


def build_table(
    state: ServingState,
    rr_state: RoundRobinState,
    config: DnsConfig | None = None,
    rr_seed: int = 0,
    memo: ServiceMemo | None = None,
) -> AnswerTable:
    """Every name of the clusterset domain for this serving state, as prebuilt wire answers.

    ``rr_state`` is the caller's long-lived round-robin state; counters of names that still rotate are kept.
    ``config`` defaults to ``state.config.dns``; ``rr_seed`` offsets where new rotations start (0: no offset).
    ``memo``: the caller's :class:`ServiceMemo`, read and updated (None: encode everything).
    """
    cfg = config if config is not None else state.config.dns
    catalog = state.catalog
    origin = dns.name.from_text(catalog.domain or "clusterset.local").canonicalize()
    b = TableBuilder(origin, cfg.ttl, cfg.negative_ttl, state.version)
    ns_name = dns.name.Name(["ns", "dns"]).concatenate(origin)
    b.add(origin, dns.rdatatype.SOA, [rrset(origin, cfg.ttl, dns.rdatatype.SOA, [b.soa_rdata])])
    ns_rdata = dns.rdata.from_text(IN, dns.rdatatype.NS, str(ns_name))
    b.add(origin, dns.rdatatype.NS, [rrset(origin, cfg.ttl, dns.rdatatype.NS, [ns_rdata])])
    b.addresses(ns_name, [cfg.advertise_address] if cfg.advertise_address else [])
    version_name = dns.name.Name(["dns-version"]).concatenate(origin)
    txt = dns.rdata.from_text(IN, dns.rdatatype.TXT, f'"{DNS_VERSION}"')
    b.add(version_name, dns.rdatatype.TXT, [rrset(version_name, cfg.ttl, dns.rdatatype.TXT, [txt])])
    policy = policy_of(cfg)
    proxied = proxied_addresses(state.config, cfg) if cfg.answer == "proxy" else {}
    context = (origin, cfg)
    previous = memo.services if memo is not None and memo.context == context else {}
    kept: dict[ServiceKey, tuple[tuple, dict, frozenset[bytes]]] = {}
    for key, svc in sorted(catalog.services.items()):
        if not svc.clusters:
            continue
        b.service = str(key)
        inputs = _inputs(state, svc, cfg, policy, proxied)
        old = previous.get(key)
        if old is not None and old[0][:-1] == inputs[:-1]:  # the last item is the members list: derived data
            kept[key] = old
            b.merge(old[1], old[2])
            continue
        part = b.fragment()
        if inputs[0] == "headless":
            _headless_service(part, state, svc, cfg)
        elif inputs[-1]:
            _clusterset_service(part, svc, inputs[-1], cfg, proxied)
        kept[key] = (inputs, part.entries, frozenset(part.names))
        b.merge(part.entries, part.names)
    if memo is not None:
        memo.context, memo.services = context, kept
    b.service = ""
    return b.finish(rr_state, cfg.max_udp_payload, state.version, rr_seed)
