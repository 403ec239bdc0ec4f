"""Patch formats the API server accepts: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

Pure. Strategic merge patch is served as a merge patch: lists are replaced whole instead of merged by
their patchMergeKey (documented in docs/emulator.md).
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied (the server answers 422 / 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts[:-1]:
        try:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        except (KeyError, IndexError, ValueError) as exc:
            raise PatchError(f"path segment {p!r} not found") from exc
    return cur


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 with the add, replace, remove and test operations."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op.get("path", ""))
        if not parts:
            raise PatchError("patching the document root is not supported")
        parent, last = _parent(doc, parts), parts[-1]
        kind = op.get("op")
        try:
            if kind == "test":
                actual = parent[int(last)] if isinstance(parent, list) else parent[last]
                if actual != op.get("value"):
                    raise PatchError(f"test failed at {op['path']}")
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind in ("add", "replace"):
                value = copy.deepcopy(op.get("value"))
                if isinstance(parent, list):
                    idx = len(parent) if last == "-" else int(last)
                    if kind == "add":
                        parent.insert(idx, value)
                    else:
                        parent[idx] = value
                else:
                    if kind == "replace" and last not in parent:
                        raise PatchError(f"replace of missing path {op['path']}")
                    parent[last] = value
            else:
                raise PatchError(f"unsupported JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise PatchError(f"cannot {kind} {op.get('path')}: {exc}") from exc
    return doc
