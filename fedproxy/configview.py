"""Views of a loaded config: JSON-able data, its hash, a summary, a diff, and the check-config command.

Theory of operation: ``to_data`` turns the settings tree into plain JSON-able data (sorted mappings, ServiceKey as
"namespace/name", admin.token hashed or masked), and every view is computed from it: ``mask_secrets`` for
GET /api/v1/config, ``config_hash`` (sha256 over normalized JSON, so reformatting the YAML keeps it), ``diff``
(one line per cluster or listener added, removed or changed, and per changed leaf elsewhere; for the reload
response) and ``summarize`` (a few lines for humans). ``check_config_main`` is ``fedproxy check-config``: load the
file with :mod:`fedproxy.configload`, print every problem or warning, else the hash and the summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Mapping
from typing import Any

from .config import Config
from .configcheck import quote
from .configload import config_warnings, load_config, parse_config
from .configwalk import key_path, settable
from .errors import ConfigError
from .model import ServiceKey


def to_data(config: Config, *, secret: str = "hash") -> dict[str, Any]:
    """Config -> JSON-able dicts; admin.token is hashed (``"hash"``) or replaced by ``"***"`` (``"mask"``)."""

    def plain(v: Any) -> Any:
        if isinstance(v, ServiceKey):
            return str(v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in settable(type(v))}
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    data: dict[str, Any] = plain(config)
    token = config.admin.token
    if token:
        masked = "***" if secret == "mask" else "sha256:" + hashlib.sha256(token.encode()).hexdigest()
        data["admin"]["token"] = masked
    return data


def mask_secrets(config: Config) -> dict[str, Any]:
    """The config as JSON-able data for GET /api/v1/config, with admin.token shown as "***"."""
    return to_data(config, secret="mask") | {"source": config.source}


def config_hash(config_or_text: Config | str) -> str:
    """12 hex chars of sha256 over the normalized config (so reformatting the YAML keeps the hash)."""
    config = parse_config(config_or_text) if isinstance(config_or_text, str) else config_or_text
    blob = json.dumps(to_data(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def summarize(config: Config) -> str:
    """A few lines for humans: clusters (local marked), listeners, DNS, admin."""
    clusters = ", ".join(c.name + (" (local)" if c.local else "") for c in config.clusters) or "none listed"
    lines = [f"clusters: {clusters}"]
    if config.karmada is not None:
        lines.append(f"karmada: members discovered through {config.karmada.kubeconfig}")
    for x in config.http.listeners:
        name = x.name or f"http-{x.port}"
        lines.append(f"http {name}: {x.address}:{x.port}, {len(x.routes)} route(s)")
    for t in config.tcp.listeners:
        name = t.name or f"tcp-{t.port}"
        lines.append(f"tcp {name}: {t.address}:{t.port} -> {t.service}")
    dns = config.dns
    if dns.enabled:
        domain = config.clusterset.domain
        lines.append(f"dns: {dns.address}:{dns.port} (udp+tcp) for {domain}, policy {dns.policy}")
    else:
        lines.append("dns: disabled")
    auth = "token" if config.admin.token else "no token (loopback only)"
    lines.append(f"admin: {config.admin.address}:{config.admin.port}, {auth}")
    return "\n".join(lines)


def _flatten(data: Any, path: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data, dict) and data:
        for k, v in data.items():
            _flatten(v, key_path(path, k), out)
    else:
        out[path] = data
    return out


def _leaf_diff(old: Any, new: Any, path: str) -> list[str]:
    a, b = _flatten(old, path, {}), _flatten(new, path, {})
    out = []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            if key == "admin.token":
                out.append("admin.token: changed")
            else:
                out.append(f"{key}: {json.dumps(a.get(key))} -> {json.dumps(b.get(key))}")
    return out


def _keyed_diff(label: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = [f"{label} {quote(k)} added" for k in new if k not in old]
    out += [f"{label} {quote(k)} removed" for k in old if k not in new]
    for k in old.keys() & new.keys():
        if old[k] != new[k]:
            keys = sorted(f for f in old[k].keys() | new[k].keys() if old[k].get(f) != new[k].get(f))
            out.append(f"{label} {quote(k)} changed: {', '.join(keys)}")
    return sorted(out, key=lambda s: (s.split('"')[1], s))


def diff(old: Config, new: Config) -> list[str]:
    """What changed between two configs, one human-readable line per item (for the reload response)."""
    a, b = to_data(old), to_data(new)
    out: list[str] = []
    out += _keyed_diff("cluster", {c["name"]: c for c in a["clusters"]}, {c["name"]: c for c in b["clusters"]})
    for kind in ("http", "tcp"):
        la = dict(zip(_names(kind, old), a[kind]["listeners"], strict=True))
        lb = dict(zip(_names(kind, new), b[kind]["listeners"], strict=True))
        out += _keyed_diff(f"{kind} listener", la, lb)
        rest_a = {k: v for k, v in a[kind].items() if k != "listeners"}
        rest_b = {k: v for k, v in b[kind].items() if k != "listeners"}
        out += _leaf_diff(rest_a, rest_b, kind)
    for section in a:
        if section not in ("clusters", "http", "tcp"):
            out += _leaf_diff(a[section], b[section], section)
    return out


def _names(kind: str, config: Config) -> list[str]:
    section = config.http if kind == "http" else config.tcp
    return [x.name or f"{kind}-{x.port}" for x in section.listeners]


def check_config_main(path: str) -> int:
    """`fedproxy check-config`: every problem on stderr prefixed by the file name (1), or the summary (0)."""
    try:
        config = load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 1
    for warning in config_warnings(config):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    print(f"{path}: OK (config {config_hash(config)})")
    print(summarize(config))
    return 0
