"""Cross-field checks of the settings tree: rules that span fields and sections. Pure, no I/O.

Theory of operation: :func:`check_config` runs once on the whole tree after :mod:`fedproxy.configwalk` built it (a
bad value already replaced by its default, so every rule can run) and returns one message per problem with its key
path rather than raising, so that :mod:`fedproxy.configload` reports every problem of a file at once. The rules:
unique cluster and listener names, one local cluster, how each member is reached (kubeconfig or in_cluster unless
karmada discovers members), sockets that would collide, references to clusters (route weights, the member holding
a TLS Secret, the overrides ConfigMap), certificates as a Secret or as files, hash policies that need a name, and
admin authentication off loopback. Checks of one value alone (ranges, formats) are :mod:`fedproxy.configcheck`.
"""

from __future__ import annotations

import ipaddress

from .config import AdminConfig, Config, HashConfig
from .configcheck import quote, suggest

WILDCARDS = ("0.0.0.0", "::")


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def listener_sockets(config: Config) -> list[tuple[str, str, int]]:
    """(key path, address, port) of every socket fedproxy binds: HTTP, TCP, DNS (UDP + TCP), admin."""
    out = [(f"http.listeners[{i}]", x.address, x.port) for i, x in enumerate(config.http.listeners)]
    out += [(f"tcp.listeners[{i}]", x.address, x.port) for i, x in enumerate(config.tcp.listeners)]
    if config.dns.enabled:
        out.append(("dns", config.dns.address, config.dns.port))
    out.append(("admin", config.admin.address, config.admin.port))
    return out


def check_config(config: Config) -> list[str]:
    """Problems that span fields or sections, each with its key path; [] when the tree is consistent."""
    problems: list[str] = []
    static = config.karmada is None
    names: dict[str, int] = {}
    for i, c in enumerate(config.clusters):
        p = f"clusters[{i}]"
        if c.name and c.name in names:
            problems.append(f'{p}.name: "{c.name}" is already used by clusters[{names[c.name]}]')
        names.setdefault(c.name, i)
        if c.kubeconfig and c.in_cluster:
            problems.append(f"{p}: set either kubeconfig or in_cluster: true, not both")
        elif c.context and not c.kubeconfig:
            problems.append(f"{p}.context: needs kubeconfig (a context names an entry of that file)")
        elif static and not (c.kubeconfig or c.in_cluster):
            problems.append(
                f"{p}: needs kubeconfig (and optionally context) or in_cluster: true "
                "(without karmada every member must say how to reach it)"
            )
    locals_ = [i for i, c in enumerate(config.clusters) if c.local]
    for i in locals_[1:]:
        problems.append(f"clusters[{i}].local: only one cluster can be local (clusters[{locals_[0]}] is)")

    seen: list[tuple[str, str, int]] = []
    for path, address, prt in listener_sockets(config):
        if prt == 0:
            continue  # every port-0 socket gets its own free port
        for other, o_addr, o_port in seen:
            if prt == o_port and (address == o_addr or address in WILDCARDS or o_addr in WILDCARDS):
                problems.append(f"{path}: {address}:{prt} collides with {other} ({o_addr}:{o_port})")
                break
        seen.append((path, address, prt))

    used: dict[str, str] = {}
    kinds = (("http", config.http.listeners), ("tcp", config.tcp.listeners))
    for kind, listeners in kinds:
        for i, x in enumerate(listeners):
            name = x.name or f"{kind}-{x.port}"
            if name in used:
                why = "" if x.name else f' (the default "{kind}-<port>"; give each listener a name)'
                problems.append(f'{kind}.listeners[{i}].name: "{name}" is already used by {used[name]}{why}')
            used.setdefault(name, f"{kind}.listeners[{i}]")

    for i, lst in enumerate(config.http.listeners):
        for j, route in enumerate(lst.routes):
            p = f"http.listeners[{i}].routes[{j}]"
            if static:
                for name in route.clusters:
                    if name not in names:
                        hint = suggest(name, list(names)) or f" (known: {', '.join(names) or 'none'})"
                        problems.append(f"{p}.clusters.{name}: unknown cluster{hint}")
            problems += _check_hash(route.hash, f"{p}.hash")
    problems += _check_hash(config.balancing.hash, "balancing.hash")

    problems += _check_tls(config, names if static else None)

    export = config.clusterset.export
    if export.mode == "label" and not export.selector.strip():
        problems.append('clusterset.export.selector: required when mode is "label" (e.g. "app=flask")')
    if config.dns.locality and config.dns.policy == "spread":
        problems.append('dns.locality: true conflicts with policy "spread"')
    problems += _check_admin(config.admin, names if static else None)
    problems += _check_overrides_access(config)
    return problems


def _check_hash(h: HashConfig | None, path: str) -> list[str]:
    if h is not None and h.on in ("header", "cookie") and not h.name:
        return [f'{path}.name: required when on is "{h.on}"']
    return []


def _check_admin(admin: AdminConfig, clusters: dict[str, int] | None) -> list[str]:
    problems = []
    if admin.token and admin.token_file:
        problems.append("admin: set either token or token_file, not both")
    elif not (admin.token or admin.token_file) and not is_loopback(admin.address):
        problems.append(
            f"admin.address: {quote(admin.address)} is not loopback, so token or token_file is required "
            "(an unauthenticated admin API on the network lets anyone drain clusters or reload config)"
        )
    ov = admin.overrides
    if ov is not None and clusters is not None and ov.cluster not in clusters:
        problems.append(
            f"admin.overrides.cluster: unknown cluster {quote(ov.cluster)}{suggest(ov.cluster, list(clusters))}"
        )
    return problems


def _check_overrides_access(config: Config) -> list[str]:
    """The overrides ConfigMap is written with the member's own credentials, which a Karmada-discovered
    member without kubeconfig/in_cluster does not have (its secretRef token is for reading)."""
    ov = config.admin.overrides
    if ov is None:
        return []
    member = config.cluster(ov.cluster)
    if config.karmada is not None and (member is None or not (member.kubeconfig or member.in_cluster)):
        return [
            f"admin.overrides.cluster: {quote(ov.cluster)} needs kubeconfig or in_cluster: true in clusters[] "
            "(fedproxy writes the overrides ConfigMap with that member's own credentials)"
        ]
    return []


def _check_tls(config: Config, clusters: dict[str, int] | None) -> list[str]:
    """Shape of the TLS settings (files are read by fedproxy.tls.certs.check_tls at load time)."""
    problems = []
    for i, lst in enumerate(config.http.listeners):
        if lst.tls is None:
            continue
        for j, cert in enumerate(lst.tls.certificates):
            p = f"http.listeners[{i}].tls.certificates[{j}]"
            if cert.secret is not None and (cert.cert_file or cert.key_file):
                problems.append(f"{p}: set either secret or cert_file + key_file, not both")
            elif cert.secret is None and not (cert.cert_file and cert.key_file):
                problems.append(f"{p}: cert_file and key_file are both required")
            if cert.secret is None:
                if cert.cluster:
                    problems.append(f"{p}.cluster: only used with secret (the member holding the Secret)")
            elif not cert.cluster:
                problems.append(f"{p}.cluster: required with secret (the member holding the Secret)")
            elif clusters is not None and cert.cluster not in clusters:
                # With karmada, members are discovered at run time: the Secret waits for its member to appear.
                problems.append(
                    f"{p}.cluster: unknown cluster {quote(cert.cluster)}{suggest(cert.cluster, list(clusters))}"
                )
    return problems
