"""kubernetes.io/tls Secrets as certificate sources: references, the PEM pair a Secret holds, watch events (pure).

A listener's ``tls.certificates[]`` entry ``{secret: ns/name, cluster: NAME}`` names one Secret in one member.
The control process (or the only process) watches each named Secret with a ``metadata.name`` field selector
(:mod:`fedproxy.discovery.secrets`); every change arrives as a :class:`SecretEvent`, and
:class:`~fedproxy.tls.secretbook.SecretBook` turns events into the certificate material listeners serve.

The Secret format is Kubernetes' own (``type: kubernetes.io/tls``, ``data`` keys ``tls.crt`` and ``tls.key``,
base64-encoded PEM; core/v1 ``SecretTypeTLS``): :func:`parse_tls_secret` checks only that shape. Whether the PEM
is a usable certificate and key is checked by :func:`fedproxy.tls.certs.load_material`, the same checks as files.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import Config, TlsCertificate, TlsConfig

TLS_SECRET_TYPE = "kubernetes.io/tls"  # core/v1 SecretTypeTLS
CERT_KEY, KEY_KEY = "tls.crt", "tls.key"  # core/v1 TLSCertKey, TLSPrivateKeyKey


@dataclass(frozen=True, order=True, slots=True)
class SecretRef:
    """One watched Secret: the member holding it, its namespace and name."""

    cluster: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.cluster}:{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class SecretMaterial:
    """The decoded PEM pair of one kubernetes.io/tls Secret (shape checked, content not yet)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    resource_version: str = field(default="", compare=False)


EventKind = Literal["present", "absent", "invalid", "failing"]


@dataclass(frozen=True, slots=True)
class SecretEvent:
    """What the watch of one Secret learned.

    - ``present``: the Secret exists with a kubernetes.io/tls shape (``material`` set);
    - ``absent``: it does not exist (not found on list, or deleted);
    - ``invalid``: it exists but cannot be a certificate source (``problem`` says why: wrong type, missing key);
    - ``failing``: the watch cannot read it (``problem``: the API error, e.g. 403 when RBAC does not allow it).
    """

    ref: SecretRef
    kind: EventKind
    material: SecretMaterial | None = None
    problem: str = ""


def ref_of(spec: TlsCertificate) -> SecretRef | None:
    """The Secret a certificate entry names, or None for a file pair."""
    if spec.secret is None:
        return None
    return SecretRef(spec.cluster, spec.secret.namespace, spec.secret.name)


def tls_refs(tls: TlsConfig | None) -> tuple[SecretRef, ...]:
    """The Secrets one listener's TLS settings name, in config order."""
    if tls is None:
        return ()
    return tuple(r for r in (ref_of(c) for c in tls.certificates) if r is not None)


def secret_refs(config: Config) -> frozenset[SecretRef]:
    """Every Secret the HTTP listeners of ``config`` take certificates from (empty: no Secret watch at all)."""
    return frozenset(r for lst in config.http.listeners for r in tls_refs(lst.tls))


def refs_by_cluster(refs: Iterable[SecretRef]) -> dict[str, frozenset[SecretRef]]:
    out: dict[str, set[SecretRef]] = {}
    for r in refs:
        out.setdefault(r.cluster, set()).add(r)
    return {k: frozenset(v) for k, v in out.items()}


def _data(value: Any, key: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"data[{key}] is missing (a kubernetes.io/tls Secret holds {CERT_KEY} and {KEY_KEY})")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"data[{key}] is not base64") from None
    if not raw.strip():
        raise ValueError(f"data[{key}] is empty")
    return raw


def parse_tls_secret(obj: Mapping[str, Any]) -> SecretMaterial:
    """A Secret as the API returns it -> its PEM pair; ValueError naming what is wrong with its shape."""
    kind = obj.get("type") or "Opaque"  # the API defaults an unset type to Opaque
    if kind != TLS_SECRET_TYPE:
        raise ValueError(f"type is {kind!r}, not {TLS_SECRET_TYPE!r}")
    data = obj.get("data")
    if not isinstance(data, Mapping):
        data = {}
    meta = obj.get("metadata")
    rv = str(meta.get("resourceVersion") or "") if isinstance(meta, Mapping) else ""
    return SecretMaterial(_data(data.get(CERT_KEY), CERT_KEY), _data(data.get(KEY_KEY), KEY_KEY), rv)
