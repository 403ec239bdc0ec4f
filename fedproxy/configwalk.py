"""The walker: plain data (as from YAML or JSON) -> the frozen dataclass tree of :mod:`fedproxy.config`.

Theory of operation: ``Walker`` reads each dataclass's type hints and converts the value of every field by its
type: ``Literal`` choices, strict ``bool``, ``int``/``float`` (finite), ``tuple[...]`` from lists,
``Mapping[...]`` (read-only), ``ServiceKey`` from "namespace/name", unions (the branch whose plain-data shape
matches), nested dataclasses (or a scalar short form, ``SHORT_FORMS``). After converting a value it runs that
field's check from :mod:`fedproxy.configcheck`. A problem is recorded with its key path, never raised, and the bad
value is replaced by its default (or a placeholder when the field is required), so that walking and the cross-field
rules go on and :mod:`fedproxy.configload` reports every problem at once.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

from .config import Config, ExportConfig, HashConfig
from .configcheck import FIELD_CHECKS, quote, suggest
from .model import ServiceKey

_BAD = object()  # a value that failed conversion (its problem is already recorded)
# A scalar may stand for a whole section: `export: serviceexport`, `hash: source_ip`.
SHORT_FORMS: dict[type, str] = {ExportConfig: "mode", HashConfig: "on"}


def key_path(path: str, key: str) -> str:
    """The key path of ``key`` under ``path`` as messages show it: ``http.listeners[0].routes``."""
    return f"{path}.{key}" if path else key


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def settable(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields a config file sets (``Config.source`` is filled in by the loader, never read from YAML)."""
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
        return Walker().dataclass({}, tp, "")
    return {int: 0, float: 0.0, ServiceKey: ServiceKey("", "")}.get(tp, "")


class Walker:
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
        fields = settable(cls)
        names = [f.name for f in fields]
        for key in data:
            if key not in names:
                self.error(key_path(path, str(key)), f"unknown key{suggest(str(key), names)}")
        kwargs: dict[str, Any] = {}
        for f in fields:
            p, tp = key_path(path, f.name), _hints(cls)[f.name]
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
            p = key_path(path, str(key))
            k = self.value(key, key_tp, p) if isinstance(key, str) else self.error(p, "key must be a string")
            v = self.value(item, value_tp, p)
            if k is not _BAD and v is not _BAD:
                out[k] = v
        return types.MappingProxyType(out) if len(out) == len(data) else _BAD
