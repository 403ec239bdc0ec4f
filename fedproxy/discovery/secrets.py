"""Watching the kubernetes.io/tls Secrets that HTTPS listeners take certificates from.

Least privilege: each Secret named by a config (``tls.certificates[].secret`` with its ``cluster``) gets its own
list+watch in that member and namespace, narrowed to it by the field selector ``metadata.name=<name>``; never
a watch of all Secrets of a namespace or a cluster. RBAC can then grant get/list/watch on just those names
(``resourceNames``: Kubernetes authorizes a list or watch against them when it carries that field selector).
With no Secret in the config, no Secret request is ever made.

The loop is discovery's own (:class:`~.watch.KindWatcher`: list, watch from the list's resourceVersion, resume,
relist on 410, jittered backoff, read timeouts). It reports into a :class:`SecretSink` instead of a member's
snapshot; the sink turns what it hears into :class:`~fedproxy.tls.secrets.SecretEvent` values for the runtime.
A Secret watch's failures never count against the member's connectivity (the member's own kinds decide that).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from kubernetes_asyncio import client

from ..config import DiscoveryConfig
from ..tls.secrets import SecretEvent, SecretMaterial, SecretRef, parse_tls_secret
from .state import KindHealth, MemberState
from .watch import KindSpec, KindWatcher

KIND = "secrets"
OnSecret = Callable[[SecretEvent], None]


def _parse(_kind: str, obj: Any) -> tuple[tuple[str, str], SecretMaterial | str]:
    """(key, material) or (key, problem): a Secret that exists but cannot serve is a value, not a skipped object.
    Never raises (an object without a name gets a key no sink waits for)."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
    try:
        return key, parse_tls_secret(obj)
    except ValueError as exc:
        return key, str(exc)


def secret_spec(ref: SecretRef) -> KindSpec:
    """List and watch exactly one Secret (namespace + ``metadata.name`` field selector)."""

    def call(api: client.ApiClient) -> Any:
        return partial(
            client.CoreV1Api(api).list_namespaced_secret, ref.namespace, field_selector=f"metadata.name={ref.name}"
        )

    return KindSpec(call, parse=_parse)


class SecretSink:
    """MemberState's report methods for one Secret's watch loop, emitting SecretEvents."""

    def __init__(self, ref: SecretRef, member: MemberState, emit: OnSecret) -> None:
        self.ref = ref
        self.name = ref.cluster  # the loop logs it as the cluster
        self._member = member
        self._emit = emit
        self._key = (ref.namespace, ref.name)
        self.kinds = {KIND: KindHealth()}
        self._last: SecretEvent | None = None
        self._failing = False

    @property
    def settings(self) -> DiscoveryConfig:
        return self._member.settings  # a reload changes the member's settings in place

    # Reports from the loop

    def listed(self, kind: str, objects: Mapping[Any, Any], resource_version: str, reason: str) -> None:
        k = self.kinds[kind]
        k.resource_version = resource_version
        k.listed = k.resynced = True
        k.failing_since = None
        self._report(objects.get(self._key))

    def changed(self, kind: str, key: Any, value: Any | None, event_type: str) -> None:
        self.kinds[kind].failing_since = None
        if key == self._key:
            self._report(value)

    def progressed(self, kind: str, resource_version: str) -> None:
        if resource_version:
            self.kinds[kind].resource_version = resource_version
        self._healthy()

    def opened(self, kind: str) -> None:
        self._healthy()

    def suspect(self, kind: str) -> None:
        return None  # a quiet stream: the loop reopens it, and a failure then is reported

    def failed(self, kind: str | None, reason: str) -> None:
        self._failing = True
        self._emit(SecretEvent(self.ref, "failing", problem=reason))

    def expired(self, kind: str) -> None:
        self.kinds[kind].resource_version = ""

    def absent(self, kind: str) -> None:  # only for optional kinds; a Secret kind is always served
        self._report(None)

    # Events

    def _healthy(self) -> None:
        if self._failing and self._last is not None:
            self._failing = False
            self._emit(self._last)  # what was last known still holds: the book clears the watch error

    def _report(self, value: SecretMaterial | str | None) -> None:
        if value is None:
            event = SecretEvent(self.ref, "absent")
        elif isinstance(value, str):
            event = SecretEvent(self.ref, "invalid", problem=value)
        else:
            event = SecretEvent(self.ref, "present", material=value)
        self._failing = False
        self._last = event
        self._emit(event)


async def watch_secret(ref: SecretRef, api: client.ApiClient, member: MemberState, emit: OnSecret) -> None:
    """Watch one Secret until cancelled."""
    await KindWatcher(SecretSink(ref, member, emit), api, KIND, secret_spec(ref)).run()  # type: ignore[arg-type]
