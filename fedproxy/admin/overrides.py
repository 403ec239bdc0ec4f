"""Where runtime overrides (drained members, weight overrides) live: this process, or a shared ConfigMap.

Default (:class:`MemoryOverrides`): in memory; a restart forgets them.

With ``admin.overrides: {configmap: ns/name, cluster: NAME}`` (:class:`ConfigMapOverrides`): an admin request
writes the ConfigMap in member NAME (with that member's credentials from the config), and every replica
watches it and applies what it holds, so a drain sent to one replica reaches all of them and survives a
restart. The ConfigMap format (docs/admin.md)::

    data:
      drained: "east-1,west-2"        # comma-separated member names
      weights: '{"east-1": 3}'        # JSON object, member -> weight (an int >= 0)

Writes are read-modify-write with the object's resourceVersion as precondition: two replicas changing
different members at once both win (the loser of the race gets 409, re-reads and applies its change again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from ..aio import TaskOwner
from ..balancing import Overrides
from ..config import ClusterConfig, OverridesConfig

log = logging.getLogger("fedproxy.admin.overrides")

Change = Callable[[Overrides], Overrides]

# Attempts at a conflicting (409) ConfigMap write before giving up; a conflict needs another replica writing
# the same object within one round trip, so a few tries are plenty.
WRITE_ATTEMPTS = 8


class OverridesStore(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def update(self, change: Change) -> Overrides:
        """Apply ``change`` to the current overrides, persist them, and return the new value."""
        ...


class Applier(Protocol):
    """The part of the runtime an overrides store drives."""

    overrides: Overrides

    def set_overrides(self, overrides: Overrides) -> None: ...


def encode(overrides: Overrides) -> dict[str, str]:
    """Overrides -> ConfigMap ``data``."""
    return {
        "drained": ",".join(sorted(overrides.drained)),
        "weights": json.dumps(dict(sorted(overrides.weights.items())), separators=(",", ":")),
    }


def decode(data: Mapping[str, str] | None) -> tuple[Overrides, list[str]]:
    """ConfigMap ``data`` -> (overrides, problems). A bad entry is skipped with a problem, never fatal."""
    data = data or {}
    problems: list[str] = []
    drained = frozenset(n.strip() for n in (data.get("drained") or "").split(",") if n.strip())
    weights: dict[str, int] = {}
    raw = data.get("weights") or ""
    if raw.strip():
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            parsed = None
            problems.append(f"weights: not JSON ({exc})")
        if parsed is not None and not isinstance(parsed, dict):
            problems.append("weights: not a JSON object")
        elif isinstance(parsed, dict):
            for name, w in parsed.items():
                if isinstance(w, int) and not isinstance(w, bool) and w >= 0:
                    weights[str(name)] = w
                else:
                    problems.append(f"weights.{name}: {w!r} is not an integer >= 0")
    return Overrides(drained, MappingProxyType(weights)), problems


class MemoryOverrides:
    """Overrides held by this process only."""

    def __init__(self, runtime: Applier) -> None:
        self.runtime = runtime

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def update(self, change: Change) -> Overrides:
        new = change(self.runtime.overrides)
        self.runtime.set_overrides(new)
        return new


async def kube_client(cluster: ClusterConfig) -> client.ApiClient:
    """An API client for ``cluster`` with the credentials the config gives it."""
    cfg = client.Configuration()
    if cluster.in_cluster:
        config.load_incluster_config(client_configuration=cfg)
    else:
        await config.load_kube_config(
            config_file=cluster.kubeconfig or None, context=cluster.context or None, client_configuration=cfg
        )
    return client.ApiClient(cfg)


class ConfigMapOverrides:
    """Overrides kept in one ConfigMap of one member and applied by every replica watching it."""

    def __init__(
        self,
        runtime: Applier,
        settings: OverridesConfig,
        cluster: ClusterConfig,
        *,
        request_timeout: float = 10.0,
        watch_timeout: int = 300,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.runtime = runtime
        self.namespace = settings.configmap.namespace
        self.name = settings.configmap.name
        self.cluster = cluster
        self.request_timeout = request_timeout
        self.watch_timeout = watch_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.tasks = TaskOwner("admin-overrides")
        self._client: client.ApiClient | None = None
        self._api: client.CoreV1Api | None = None
        self.last_error = ""
        self.synced = asyncio.Event()  # set once the ConfigMap was read (or found absent)

    @property
    def where(self) -> str:
        return f"{self.cluster.name}:{self.namespace}/{self.name}"

    async def start(self) -> None:
        self._client = await kube_client(self.cluster)
        self._api = client.CoreV1Api(self._client)
        self.tasks.spawn("watch", self._watch_loop())

    async def close(self) -> None:
        await self.tasks.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- reading ----------------------------------------------------------------------------------
    def _apply(self, data: Mapping[str, str] | None) -> None:
        new, problems = decode(data)
        for p in problems:
            log.warning("event=overrides_bad_entry configmap=%s problem=%r", self.where, p)
        if new != self.runtime.overrides:
            log.info(
                "event=overrides_applied configmap=%s drained=%s weights=%s",
                self.where,
                ",".join(sorted(new.drained)) or "-",
                json.dumps(dict(new.weights), sort_keys=True),
            )
            self.runtime.set_overrides(new)

    async def _read(self) -> tuple[Any | None, str]:
        """(the ConfigMap or None when absent, the resourceVersion to watch from)."""
        assert self._api is not None
        try:
            cm = await self._api.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=self.request_timeout
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            lst = await self._api.list_namespaced_config_map(
                self.namespace, field_selector=f"metadata.name={self.name}", _request_timeout=self.request_timeout
            )
            return None, lst.metadata.resource_version or ""
        return cm, cm.metadata.resource_version or ""

    async def _watch_loop(self) -> None:
        """Read, then watch from the read's resourceVersion, resuming from the last one seen; re-read after errors.

        Every request has a read timeout (``request_timeout``), so a hung server is noticed within one timeout
        instead of at the end of the watch: a stream that goes quiet that long is reopened (bookmarks keep a
        healthy one busy), and if the server hung, the reopen fails and the loop backs off.
        """
        assert self._api is not None
        failures = 0
        rv = ""  # "": read (again) before watching
        while True:
            try:
                if not rv:
                    cm, rv = await self._read()
                    self._apply(cm.data if cm is not None else None)
                    self.synced.set()
                    self.last_error = ""
                    failures = 0
                rv, healthy = await self._watch(rv)
                if healthy:
                    failures = 0
                    continue
                # Answered but closed at once: back off rather than reopen in a tight loop.
                failures += 1
                await asyncio.sleep(self._delay(failures))
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                rv = ""
                if exc.status == 410:  # the resourceVersion was compacted away: read again at once
                    continue
                failures += 1
                await self._failed(exc, failures)
            except Exception as exc:  # noqa: BLE001 - any failure of a member's API is retried
                rv = ""
                failures += 1
                await self._failed(exc, failures)

    async def _watch(self, rv: str) -> tuple[str, bool]:
        """Watch from ``rv`` until the stream ends or stays quiet past the read timeout.

        Returns (the resourceVersion to resume from, healthy): healthy when events arrived or the stream stayed
        open longer than ``backoff_base``. Raises when the request itself fails or times out.
        """
        assert self._api is not None
        api = self._api
        opened = False

        async def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal opened
            resp = await api.list_namespaced_config_map(*args, **kwargs)
            opened = True
            return resp

        loop = asyncio.get_running_loop()
        started = loop.time()
        delivered = False
        w = watch.Watch(return_type="V1ConfigMap")  # explicit: ``call`` has no docstring to derive it from
        try:
            stream = w.stream(
                call,
                self.namespace,
                field_selector=f"metadata.name={self.name}",
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,
                _request_timeout=(self.request_timeout, self.request_timeout),  # (connect, per read)
            )
            async for event in stream:
                delivered = True
                kind = event.get("type")
                obj = event.get("object")
                if kind in ("ADDED", "MODIFIED"):
                    self._apply(obj.data)
                elif kind == "DELETED":
                    self._apply(None)
        except TimeoutError:
            if not opened:
                raise
            # Quiet past the read timeout: reopen at once; if the server hung, the reopen fails.
            return w.resource_version or rv, True
        finally:
            await w.close()
        return w.resource_version or rv, delivered or loop.time() - started > self.backoff_base

    def _delay(self, failures: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2 ** min(failures - 1, 10)) * random.uniform(0.8, 1.2)

    async def _failed(self, exc: Exception, failures: int) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        delay = self._delay(failures)
        log.warning(
            "event=overrides_watch_error configmap=%s error=%r retry_in=%.2f", self.where, self.last_error, delay
        )
        await asyncio.sleep(delay)

    # -- writing ----------------------------------------------------------------------------------
    async def update(self, change: Change) -> Overrides:
        """Read the ConfigMap, apply ``change``, write it back (create when absent); apply locally at once."""
        assert self._api is not None
        for _ in range(WRITE_ATTEMPTS):
            cm, _rv = await self._read()
            current = decode(cm.data)[0] if cm is not None else self.runtime.overrides
            new = change(current)
            data = encode(new)
            try:
                if cm is None:
                    body = client.V1ConfigMap(
                        metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace), data=data
                    )
                    await self._api.create_namespaced_config_map(
                        self.namespace, body, _request_timeout=self.request_timeout
                    )
                else:
                    cm.data = {**(cm.data or {}), **data}
                    await self._api.replace_namespaced_config_map(
                        self.name, self.namespace, cm, _request_timeout=self.request_timeout
                    )
            except ApiException as exc:
                if exc.status == 409:  # someone else wrote first (or created it): re-read and retry
                    continue
                raise
            self._apply(data)
            return new
        raise RuntimeError(f"overrides ConfigMap {self.where}: too many conflicting writes")


def make_store(runtime: Any) -> OverridesStore:
    """The store the config asks for: a ConfigMap when ``admin.overrides`` is set, memory otherwise."""
    settings = runtime.config.admin.overrides
    if settings is None:
        return MemoryOverrides(runtime)
    cluster = runtime.config.cluster(settings.cluster)
    if cluster is None:
        # Config validation should refuse this; fall back to memory rather than fail the admin server.
        log.error("event=overrides_cluster_unknown cluster=%s fallback=memory", settings.cluster)
        return MemoryOverrides(runtime)
    d = runtime.config.discovery
    return ConfigMapOverrides(
        runtime,
        settings,
        cluster,
        request_timeout=d.request_timeout,
        watch_timeout=d.watch_timeout,
        backoff_base=d.backoff_base,
        backoff_max=d.backoff_max,
    )
