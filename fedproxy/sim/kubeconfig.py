"""Kubeconfig files for emulated servers, so fedproxy connects to them exactly as to real members.

One cluster, user and context per server, all named after the server (`FakeApiServer.name`). TLS servers
get `certificate-authority-data` (verification stays on); plain HTTP servers get just the URL.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.pki import KeyPair


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig_dict(
    servers: Iterable[FakeApiServer],
    current: str | None = None,
    client_certs: dict[str, KeyPair] | None = None,
) -> dict[str, Any]:
    """The kubeconfig as a dict; `client_certs` maps a server name to a certificate used instead of
    its bearer token."""
    servers = list(servers)
    if not servers:
        raise ValueError("a kubeconfig needs at least one server")
    client_certs = client_certs or {}
    clusters, users, contexts = [], [], []
    for s in servers:
        cluster: dict[str, Any] = {"server": s.url}
        if s.ca_pem is not None:
            cluster["certificate-authority-data"] = _b64(s.ca_pem)
        clusters.append({"name": s.name, "cluster": cluster})
        cert = client_certs.get(s.name)
        if cert is not None:
            user = {
                "client-certificate-data": _b64(cert.cert_pem),
                "client-key-data": _b64(cert.key_pem),
            }
        else:
            user = {"token": s.token}
        users.append({"name": s.name, "user": user})
        contexts.append({"name": s.name, "context": {"cluster": s.name, "user": s.name}})
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": clusters,
        "users": users,
        "contexts": contexts,
        "current-context": current or servers[0].name,
    }


def write_kubeconfig(
    path: str | os.PathLike[str],
    servers: Iterable[FakeApiServer],
    current: str | None = None,
    client_certs: dict[str, KeyPair] | None = None,
) -> Path:
    """Write the kubeconfig (mode 0600: it holds credentials) and return its path.

    Servers must be started first: the file records their actual ports.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(kubeconfig_dict(servers, current, client_certs), sort_keys=False)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return out
