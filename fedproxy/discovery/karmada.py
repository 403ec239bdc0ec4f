"""Members from a Karmada control plane: list+watch ``clusters.cluster.karmada.io/v1alpha1``.

Theory of operation. Each Cluster object names a member (its name becomes the snapshot name) and says how to
reach it: ``spec.apiEndpoint`` plus the ``token`` and ``caBundle`` keys of the Secret ``spec.secretRef`` points
at (Karmada's Push mode), ``spec.insecureSkipTLSVerification``, and where it runs (``spec.region``,
``spec.zone``). A Cluster whose ``Ready`` condition is False is reported disconnected. After every change of
the Cluster set, the whole current set is handed to ``apply`` (``Discovery.apply_karmada``), which starts, stops
or restarts member watches. A Cluster whose Secret cannot be read is left out (``event=bad_cluster``) and tried
again on the next change or resync; members already running keep their last good credentials.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from ..config import DiscoveryConfig, KarmadaConfig
from ..model import Locality
from .auth import Credentials, MemberClient, MemberSpec, make_client
from .watch import backoff_delay, checked_response

log = logging.getLogger("fedproxy.discovery")

GROUP, VERSION, PLURAL = "cluster.karmada.io", "v1alpha1", "clusters"


def _ready(cluster: Mapping[str, Any]) -> bool:
    """Only an explicit Ready=False counts: a Cluster Karmada has not probed yet is given the benefit."""
    for c in (cluster.get("status") or {}).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == "Ready":
            return c.get("status") != "False"
    return True


def _b64(data: Mapping[str, Any], key: str) -> bytes:
    value = data.get(key)
    if not value:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"secret key {key!r} is not base64") from exc


class KarmadaSource:
    """Turns the Karmada control plane's Cluster objects into member specs."""

    def __init__(
        self,
        config: KarmadaConfig,
        settings: DiscoveryConfig,
        apply: Callable[[Mapping[str, MemberSpec]], Awaitable[None]],
    ) -> None:
        self._config = config
        self._settings = settings
        self._apply = apply
        self._clusters: dict[str, Mapping[str, Any]] = {}  # name -> Cluster object
        self._specs: dict[str, MemberSpec] = {}  # name -> last good spec
        self._api: client.ApiClient | None = None

    @property
    def _timeouts(self) -> tuple[float, float]:
        return (self._settings.request_timeout, self._settings.request_timeout)

    async def run(self) -> None:
        """Until cancelled: connect, list, watch; resume, relist on 410, back off on errors."""
        mc: MemberClient | None = None
        attempt = 0
        rv = ""
        w = watch.Watch()
        try:
            while True:
                try:
                    if mc is None:
                        mc = await make_client(
                            Credentials(kubeconfig=self._config.kubeconfig, context=self._config.context)
                        )
                        self._api = mc.api
                    custom = client.CustomObjectsApi(mc.api)
                    if not rv:
                        rv = await self._relist(custom)
                    rv = await self._watch(w, custom, rv)
                    attempt = 0
                    continue
                except asyncio.CancelledError:
                    raise
                except ApiException as exc:
                    if exc.status == 410:
                        rv = ""
                        continue
                    error = f"HTTP {exc.status} {exc.reason}"
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                attempt += 1
                delay = backoff_delay(attempt, self._settings.backoff_base, self._settings.backoff_max)
                log.warning("event=karmada_error error=%r retry_in=%.2f", error, delay)
                await asyncio.sleep(delay)
        finally:
            await w.close()
            if mc is not None:
                await mc.close()

    async def _relist(self, custom: client.CustomObjectsApi) -> str:
        resp = await checked_response(
            await custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _preload_content=False, _request_timeout=self._timeouts
            )
        )
        try:
            data = json.loads(await resp.read())
        finally:
            resp.release()
        self._clusters = {
            c["metadata"]["name"]: c
            for c in data.get("items") or ()
            if isinstance(c, Mapping) and isinstance((c.get("metadata") or {}).get("name"), str)
        }
        self._specs.clear()  # a resync re-reads every Secret (token rotation)
        await self._publish()
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, w: watch.Watch, custom: client.CustomObjectsApi, rv: str) -> str:
        async def call(**kwargs: Any) -> Any:
            # No docstring on purpose: events stay raw dicts.
            return await checked_response(await custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs))

        stream = w.stream(
            call,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self._settings.watch_timeout,
            _request_timeout=self._timeouts,
        )
        try:
            async for event in stream:
                obj = event.get("raw_object") or {}
                meta = obj.get("metadata") or {}
                rv = str(meta.get("resourceVersion") or rv)
                name = meta.get("name")
                etype = event.get("type")
                if etype == "BOOKMARK" or not isinstance(name, str):
                    continue
                if etype == "DELETED":
                    self._clusters.pop(name, None)
                    self._specs.pop(name, None)
                else:
                    old = self._clusters.get(name)
                    self._clusters[name] = obj
                    if old is None or old.get("spec") != obj.get("spec"):
                        self._specs.pop(name, None)  # endpoint or secretRef changed: read the Secret again
                await self._publish()
        except TimeoutError:
            pass  # a quiet stream: reopen from rv (a hung server then fails the reopen)
        finally:
            if w.resp is not None:
                w.resp.release()
                w.resp = None
        return rv

    async def _publish(self) -> None:
        specs = {}
        for name, cluster in self._clusters.items():
            try:
                specs[name] = await self._spec(name, cluster)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event=bad_cluster cluster=%s reason=%r", name, str(exc))
                if name in self._specs:
                    specs[name] = self._specs[name]
        await self._apply(specs)

    async def _spec(self, name: str, cluster: Mapping[str, Any]) -> MemberSpec:
        spec = cluster.get("spec") or {}
        ready = _ready(cluster)
        zones = spec.get("zones") or []
        locality = Locality(str(spec.get("region") or ""), str(spec.get("zone") or (zones[0] if zones else "")))
        known = self._specs.get(name)
        if known is not None:
            return MemberSpec(name, known.credentials, locality, ready, source="karmada")
        endpoint = spec.get("apiEndpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise ValueError("spec.apiEndpoint is missing")
        ref = spec.get("secretRef") or {}
        token, ca = "", b""
        if ref.get("name"):
            assert self._api is not None
            resp = await checked_response(
                await client.CoreV1Api(self._api).read_namespaced_secret(
                    ref["name"],
                    ref.get("namespace") or "default",
                    _preload_content=False,
                    _request_timeout=self._timeouts,
                )
            )
            try:
                data = json.loads(await resp.read()).get("data") or {}
            finally:
                resp.release()
            token = _b64(data, "token").decode().strip()
            ca = _b64(data, "caBundle")
        creds = Credentials(
            server=endpoint, token=token, ca_data=ca, insecure=bool(spec.get("insecureSkipTLSVerification"))
        )
        result = MemberSpec(name, creds, locality, ready, source="karmada")
        self._specs[name] = result
        return result
