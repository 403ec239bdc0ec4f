"""Credentials of a member's API server -> a kubernetes-asyncio ``ApiClient`` of its own.

Three sources, as a member can be configured:

- a kubeconfig file and context (token, client certificate, CA: whatever the context holds);
- the pod's service account (``in_cluster``: the token and CA Kubernetes mounts into every pod);
- a Karmada Cluster's ``spec.apiEndpoint`` with the ``token`` and ``caBundle`` of its ``spec.secretRef`` Secret.

Every member gets its own ``Configuration`` and ``ApiClient`` (its own connection pool); :class:`MemberClient`
closes both the client and any CA file written for it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from kubernetes_asyncio import client, config

from ..config import ClusterConfig
from ..model import Locality


@dataclass(frozen=True)
class Credentials:
    """How to reach one member's API server. Equality decides whether a reload restarts its watches."""

    kubeconfig: str = ""  # path to a kubeconfig file
    context: str = ""  # its context; "" = the file's current-context
    in_cluster: bool = False  # the pod's service account
    server: str = ""  # a direct API endpoint (Karmada spec.apiEndpoint)
    token: str = field(default="", repr=False)  # bearer token for ``server``
    ca_data: bytes = field(default=b"", repr=False)  # PEM CA bundle for ``server``; empty = system trust store
    insecure: bool = False  # Karmada spec.insecureSkipTLSVerification

    @property
    def describe(self) -> str:
        """A log-safe description (never the token)."""
        if self.in_cluster:
            return "in-cluster"
        if self.kubeconfig:
            return f"kubeconfig={self.kubeconfig} context={self.context or '(current)'}"
        return f"server={self.server}"


@dataclass(frozen=True)
class MemberSpec:
    """One member to watch: its name (the snapshot name), how to reach it, and what Karmada says of it."""

    name: str
    credentials: Credentials
    locality: Locality = Locality()
    ready: bool = True  # Karmada's Ready condition; configured members are always "ready"
    source: str = field(default="config", compare=False)  # "config" | "karmada"


def credentials_for(cluster: ClusterConfig) -> Credentials | None:
    """The credentials a config entry holds, or None when it only tunes a member discovered elsewhere."""
    if cluster.in_cluster:
        return Credentials(in_cluster=True)
    if cluster.kubeconfig:
        return Credentials(kubeconfig=cluster.kubeconfig, context=cluster.context)
    return None


class MemberClient:
    """An ``ApiClient`` plus the files written for it; ``close()`` releases both."""

    def __init__(self, api: client.ApiClient, temp_files: tuple[str, ...] = ()) -> None:
        self.api = api
        self._temp_files = temp_files

    @property
    def host(self) -> str:
        return str(self.api.configuration.host)

    async def close(self) -> None:
        await self.api.close()
        for path in self._temp_files:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _write_ca(data: bytes) -> str:
    # The client builds its ssl context from a CA *file* (ssl_ca_cert); it has no in-memory CA option.
    fd, path = tempfile.mkstemp(prefix="fedproxy-ca-", suffix=".crt")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


async def make_client(creds: Credentials) -> MemberClient:
    """A new client for ``creds``. Raises (ConfigException, OSError, ValueError) when they are unusable."""
    cfg = client.Configuration()
    temp: tuple[str, ...] = ()
    if creds.in_cluster:
        config.load_incluster_config(client_configuration=cfg)
    elif creds.kubeconfig:
        await config.load_kube_config(
            config_file=creds.kubeconfig, context=creds.context or None, client_configuration=cfg
        )
    elif creds.server:
        cfg.host = creds.server.rstrip("/")
        if creds.token:
            # kubernetes-asyncio >= 29 reads the bearer token under "BearerToken" (older ones: "authorization").
            cfg.api_key = {"BearerToken": creds.token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        if creds.ca_data:
            temp = (_write_ca(creds.ca_data),)
            cfg.ssl_ca_cert = temp[0]
        cfg.verify_ssl = not creds.insecure
    else:
        raise ValueError("no connection settings (kubeconfig, in_cluster or an API endpoint)")
    return MemberClient(client.ApiClient(cfg), temp)
