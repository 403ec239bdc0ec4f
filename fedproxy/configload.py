"""Loading the YAML file into :class:`fedproxy.config.Config`, with every problem reported at once.

Theory of operation: PyYAML composes the document (duplicate keys and alias bombs are rejected on the
node tree, with their key path); :mod:`fedproxy.configwalk` converts the plain data into the frozen dataclasses
by their type hints and runs the per-field checks of :mod:`fedproxy.configcheck`, replacing a bad value by its
default so that walking and the cross-field rules of :mod:`fedproxy.configrules` can go on. Certificate files
are read (``fedproxy.tls.certs.check_tls``) only once the shape is right, and admin.token_file once everything
else passed. All problems are raised together as one :class:`ConfigError`. What a loaded config looks like
(JSON data, hash, diff, summary, ``fedproxy check-config``) is :mod:`fedproxy.configview`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re

import yaml

from .config import Config
from .configcheck import quote
from .configrules import check_config
from .configwalk import Walker, key_path
from .errors import ConfigError
from .tls.certs import check_tls

log = logging.getLogger("fedproxy.config")

MAX_NODES = 100_000  # YAML nodes after alias expansion; a real config has a few hundred
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
                problems.append(f"{key_path(path, k)}: duplicate key (line {key.start_mark.line + 1})")
            seen.add(k)
            _check_nodes(value, key_path(path, k), problems, budget, depth + 1)
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
    walker = Walker()
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
