"""The API server's own validation of written objects, for the types where fedproxy depends on it (pure).

Only what a real kube-apiserver refuses with 422 Invalid and a client could plausibly send is checked here, with
the real field paths and wording (k8s.io/kubernetes pkg/apis/core/validation: ``ValidateSecret``,
``ValidateSecretUpdate``):

- a Secret's ``type`` is immutable (so a kubernetes.io/tls Secret cannot turn Opaque in place: it has to be
  deleted and created anew, which a watcher sees as DELETED then ADDED);
- a ``kubernetes.io/tls`` Secret must hold both ``tls.crt`` and ``tls.key`` (their content is not checked: a
  garbage certificate is accepted, as the real server does);
- ``data`` values must be base64 (the JSON encoding of ``[]byte``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
TLS_TYPE = "kubernetes.io/tls"
TLS_KEYS = ("tls.crt", "tls.key")


class ValidationError(ValueError):
    """The object is refused; the message is the real server's ``field: reason`` list."""


def _secret(obj: Obj, old: Obj | None) -> None:
    problems = []
    obj.setdefault("type", "Opaque")  # defaulted on create, as the API does
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        raise ValidationError("data: Invalid value: must be a map of base64 strings")
    for key, value in data.items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            problems.append(f"data[{key}]: Invalid value: illegal base64 data")
    if obj["type"] == TLS_TYPE:
        problems += [f"data[{k}]: Required value" for k in TLS_KEYS if k not in data]
    if old is not None and obj["type"] != old.get("type", "Opaque"):
        problems.append("type: Invalid value: field is immutable")
    if problems:
        name = (obj.get("metadata") or {}).get("name", "")
        raise ValidationError(f'Secret "{name}" is invalid: ' + ", ".join(problems))


VALIDATORS: dict[str, Callable[[Obj, Obj | None], None]] = {"secrets": _secret}


def validate(plural: str, obj: Obj, old: Obj | None) -> None:
    """Raise ValidationError when a real server would refuse writing ``obj`` (over ``old``, None on create)."""
    check = VALIDATORS.get(plural)
    if check is not None:
        check(obj, old)
