"""Loading the YAML file into :class:`fedproxy.config.Config`, with every problem reported at once.

Theory of operation: PyYAML composes the document (duplicate keys and alias bombs are rejected on the
node tree, with their key path), a generic walker converts plain data into the frozen dataclasses by
reading their type hints (``Literal`` choices, strict ``bool``, ``int``/``float``, ``tuple[...]``,
``Mapping[...]``, ``ServiceKey``, unions, nested dataclasses) and runs the per-field checks of
:mod:`fedproxy.configcheck`; a bad value is replaced by its default so that walking and the
cross-field checks can go on. All problems are raised together as one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .config import Config, ExportConfig, HashConfig
from .configcheck import FIELD_CHECKS, quote, suggest
from .configrules import check_config
from .errors import ConfigError
from .model import ServiceKey
from .tls.certs import check_tls

log = logging.getLogger("fedproxy.config")

MAX_NODES = 100_000  # YAML nodes after alias expansion; a real config has a few hundred
_BAD = object()  # a value that failed conversion (its problem is already recorded)
# A scalar may stand for a whole section: `export: serviceexport`, `hash: source_ip`.
SHORT_FORMS: dict[type, str] = {ExportConfig: "mode", HashConfig: "on"}
_BOOL_TAG = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """SafeLoader where only true/false/yes/no are booleans: YAML 1.1 reads the key `on:` as True."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE)$"), list("yYnNtTfF")
)


MAX_DEPTH = 64  # nesting levels; the schema itself is under 10 deep


def _check_nodes(node: yaml.Node, path: str, problems: list[str], budget: list[int], depth: int = 0) -> None:
    """Duplicate keys (with their path and line), alias bombs and cycles, on the composed tree."""
    budget[0] -= 1
    if budget[0] < 0:
        return
    if depth > MAX_DEPTH:
        shown = path if len(path) <= 60 else path[:60] + "..."
        problems.append(f"{shown}: nested more than {MAX_DEPTH} levels deep (recursive alias?)")
        budget[0] = -1  # stop here: the node tree may be cyclic
        return
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            k = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            if k in seen and key.tag != "tag:yaml.org,2002:merge":
                problems.append(f"{_join(path, k)}: duplicate key (line {key.start_mark.line + 1})")
            seen.add(k)
            _check_nodes(value, _join(path, k), problems, budget, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_nodes(item, f"{path}[{i}]", problems, budget, depth + 1)


def _yaml(text: str) -> object:
    try:
        loader = _Loader(text)
    except yaml.YAMLError as e:  # the reader rejects control characters up front
        raise ConfigError([f"YAML error: {' '.join(str(e).split())}"]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems: list[str] = []
        budget = [MAX_NODES]
        _check_nodes(node, "", problems, budget)
        if budget[0] < 0 and not problems:
            problems.append(f"(top level): more than {MAX_NODES} values (runaway anchors/aliases?)")
        if problems:
            raise ConfigError(problems)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"YAML error: {where}{e.problem or e.context}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"YAML error: {' '.join(str(e).split())}"]) from None
    except RecursionError:
        raise ConfigError([f"YAML error: nested too deeply (more than {MAX_DEPTH} levels allowed)"]) from None
    finally:
        loader.dispose()


def load_config(path: str) -> Config:
    """Read, parse and validate the file at ``path``; ConfigError lists every problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read {path}: {getattr(e, 'strerror', None) or e}"]) from None
    return parse_config(text, source=path)


def parse_config(text: str, source: str = "") -> Config:
    """Parse YAML text and validate it; an empty document is all defaults."""
    return validate(_yaml(text), source)


def validate(data: object, source: str = "") -> Config:
    """Plain data (as from YAML/JSON) -> Config; ConfigError listing every problem with its key path."""
    walker = _Walker()
    if data is not None and not isinstance(data, dict):
        raise ConfigError([f"(top level): must be a mapping of sections, got {quote(data)}"])
    config = walker.dataclass(data or {}, Config, "")
    problems = walker.problems + check_config(config)
    if not problems and _uses_tls(config):
        # Certificate files are read only once the shape is right (paths known, no secret+file mix).
        tls_errors, tls_warnings = check_tls(config, dt.datetime.now(dt.UTC))
        problems += tls_errors
        for warning in tls_warnings:
            log.warning("event=config_warning problem=%r", warning)
    token = config.admin.token
    if config.admin.token_file and not config.admin.token:
        token = _read_token(config.admin.token_file, problems)
    if problems:
        raise ConfigError(problems)
    dns = config.dns
    if dns.locality and dns.policy == "local_first":
        dns = dataclasses.replace(dns, policy="locality")
    return dataclasses.replace(config, source=source, dns=dns, admin=dataclasses.replace(config.admin, token=token))


def _uses_tls(config: Config) -> bool:
    return any(x.tls is not None or any(r.upstream_tls for r in x.routes) for x in config.http.listeners)


def config_warnings(config: Config, now: dt.datetime | None = None) -> list[str]:
    """Problems that do not refuse the config but need a human (a certificate expiring within 14 days)."""
    if not _uses_tls(config):
        return []
    return check_tls(config, now or dt.datetime.now(dt.UTC))[1]


def _read_token(path: str, problems: list[str]) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError, ValueError) as e:
        problems.append(f"admin.token_file: cannot read {quote(path)}: {getattr(e, 'strerror', None) or e}")
        return ""
    if not token:
        problems.append(f"admin.token_file: {quote(path)} is empty")
    return token


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _settable(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if not (cls is Config and f.name == "source")]


def _is_section(tp: Any) -> bool:
    """A dataclass read from a YAML mapping (ServiceKey is a dataclass too, but written "ns/name")."""
    return dataclasses.is_dataclass(tp) and tp is not ServiceKey


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(quote(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is tuple:
        return "a list"
    if origin is Mapping or _is_section(tp):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    names |= {type(None): "null", ServiceKey: '"namespace/name"'}
    return names.get(tp, str(tp))


def _kind_matches(value: object, tp: Any) -> bool:
    """Whether ``value`` has the plain-data shape of ``tp`` (to pick a branch of a union)."""
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp in (str, ServiceKey) or get_origin(tp) is Literal:
        return isinstance(value, str)
    if get_origin(tp) is tuple:
        return isinstance(value, list)
    return isinstance(value, dict)


def _placeholder(tp: Any) -> Any:
    """A stand-in for a required value that failed, so that walking and cross-checks can go on."""
    if _is_section(tp):
        return _Walker().dataclass({}, tp, "")
    return {int: 0, float: 0.0, ServiceKey: ServiceKey("", "")}.get(tp, "")


class _Walker:
    """Converts plain data into the dataclass tree, recording each problem with its key path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def error(self, path: str, message: str) -> object:
        self.problems.append(f"{path or '(top level)'}: {message}")
        return _BAD

    def dataclass(self, data: object, cls: type, path: str) -> Any:
        if cls in SHORT_FORMS and isinstance(data, str):
            data = {SHORT_FORMS[cls]: data}
        if not isinstance(data, dict):
            self.error(path, f"must be a mapping, got {quote(data)}")
            data = {}
        fields = _settable(cls)
        names = [f.name for f in fields]
        for key in data:
            if key not in names:
                self.error(_join(path, str(key)), f"unknown key{suggest(str(key), names)}")
        kwargs: dict[str, Any] = {}
        for f in fields:
            p, tp = _join(path, f.name), _hints(cls)[f.name]
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name not in data:
                if required:
                    self.error(p, "required")
                    kwargs[f.name] = _placeholder(tp)
                continue
            value = self.value(data[f.name], tp, p)
            if value is _BAD:
                if required:
                    kwargs[f.name] = _placeholder(tp)
                continue
            check = FIELD_CHECKS.get((cls, f.name))
            if check is not None and value is not None and (message := check(value)):
                self.error(p, message)
            kwargs[f.name] = value
        return cls(**kwargs)

    def value(self, data: object, tp: Any, path: str) -> Any:
        origin, args = get_origin(tp), get_args(tp)
        if origin in (Union, types.UnionType):
            if data is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            if len(options) > 1:
                matching = [a for a in options if _kind_matches(data, a)]
                if not matching:
                    return self.error(path, f"must be {_describe(tp)}, got {quote(data)}")
                options = matching
            return self.value(data, options[0], path)
        if tp is ServiceKey:
            if not isinstance(data, str):
                return self.error(path, f'must be "namespace/name", got {quote(data)}')
            try:
                return ServiceKey.parse(data)
            except ValueError as e:
                return self.error(path, str(e))
        if _is_section(tp):
            return self.dataclass({} if data is None else data, tp, path)
        if origin is Literal:
            if isinstance(data, str) and data in args:
                return data
            hint = suggest(data, [str(a) for a in args]) if isinstance(data, str) else ""
            return self.error(path, f"must be {_describe(tp)}, got {quote(data)}{hint}")
        if origin is tuple:
            return self.sequence(data, args[0], path)
        if origin is Mapping:
            return self.mapping(data, args[0], args[1], path)
        if not _kind_matches(data, tp):
            return self.error(path, f"must be {_describe(tp)}, got {quote(data)}")
        if tp is float:
            if data != data or data in (float("inf"), float("-inf")):
                return self.error(path, f"must be a finite number, got {data}")
            return float(data)  # type: ignore[arg-type]
        return data

    def sequence(self, data: object, item_tp: Any, path: str) -> Any:
        if data is None:
            return ()
        if not isinstance(data, list):
            return self.error(path, f"must be a list, got {quote(data)}")
        items, ok = [], True
        for i, item in enumerate(data):
            value = self.value(item, item_tp, f"{path}[{i}]")
            if value is _BAD:
                ok = False
                value = _placeholder(item_tp)
            items.append(value)
        # Dataclass items keep a placeholder so that later indexes in messages stay right.
        return tuple(items) if ok or _is_section(item_tp) else _BAD

    def mapping(self, data: object, key_tp: Any, value_tp: Any, path: str) -> Any:
        if data is None:
            return types.MappingProxyType({})
        if not isinstance(data, dict):
            return self.error(path, f"must be a mapping, got {quote(data)}")
        out: dict[Any, Any] = {}
        for key, item in data.items():
            p = _join(path, str(key))
            k = self.value(key, key_tp, p) if isinstance(key, str) else self.error(p, "key must be a string")
            v = self.value(item, value_tp, p)
            if k is not _BAD and v is not _BAD:
                out[k] = v
        return types.MappingProxyType(out) if len(out) == len(data) else _BAD


# Views of a loaded config -------------------------------------------------------------------------------


def to_data(config: Config, *, secret: str = "hash") -> dict[str, Any]:
    """Config -> JSON-able dicts; admin.token is hashed (``"hash"``) or replaced by ``"***"`` (``"mask"``)."""

    def plain(v: Any) -> Any:
        if isinstance(v, ServiceKey):
            return str(v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in _settable(type(v))}
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
            _flatten(v, _join(path, k), out)
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
