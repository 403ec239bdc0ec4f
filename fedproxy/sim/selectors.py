"""Label and field selectors, parsed and matched as the Kubernetes API server does.

Pure. Grammar follows k8s.io/apimachinery/pkg/labels: a comma-separated list of requirements
`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`. Field selectors support `=`, `==`
and `!=` on dotted paths (`metadata.name`, `metadata.namespace`, `spec.nodeName`...), the operators
real servers accept for every resource.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Op = Literal["=", "!=", "exists", "!exists", "in", "notin"]

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


class SelectorError(ValueError):
    """A selector string that a real API server would reject with 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "=":
            return present and labels[self.key] == self.values[0]
        if self.op == "!=":
            # Kubernetes: `k!=v` also matches objects without the label.
            return not present or labels[self.key] != self.values[0]
        if self.op == "in":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True)
class Selector:
    """A conjunction of requirements; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside `( ... )` value sets."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def parse_label_selector(text: str | None) -> Selector:
    """Parse a `labelSelector` query value; raises SelectorError on bad syntax."""
    if not text:
        return Selector()
    reqs: list[Requirement] = []
    for part in _split_top_level(text):
        if m := _SET_RE.match(part):
            if m.group(1):
                raise SelectorError(f"unable to parse requirement: {part!r}")
            values = tuple(v.strip() for v in m.group(4).split(",") if v.strip())
            op: Op = "in" if m.group(3) == "in" else "notin"
            reqs.append(Requirement(m.group(2), op, values))
        elif m := _EQ_RE.match(part):
            reqs.append(Requirement(m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),)))
        elif m := _EXISTS_RE.match(part):
            reqs.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")
    return Selector(tuple(reqs))


@dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    negate: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        cur: Any = obj
        for step in self.path:
            cur = cur.get(step) if isinstance(cur, Mapping) else None
        actual = "" if cur is None else str(cur)
        return (actual != self.value) if self.negate else (actual == self.value)


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(r.matches(obj) for r in self.requirements)


def parse_field_selector(text: str | None) -> FieldSelector:
    """Parse a `fieldSelector` query value (`metadata.name=x,metadata.namespace!=y`)."""
    if not text:
        return FieldSelector()
    reqs: list[FieldRequirement] = []
    for part in _split_top_level(text):
        m = _EQ_RE.match(part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        reqs.append(FieldRequirement(tuple(m.group(1).split(".")), m.group(2) == "!=", m.group(3)))
    return FieldSelector(tuple(reqs))
