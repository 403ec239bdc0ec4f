"""``Discovery``: the set of watched members, reconciled from the config (and the Karmada source).

Theory of operation. Members come from ``config.clusters`` entries with connection settings (kubeconfig or
in-cluster) and, with ``config.karmada``, from the Karmada control plane's Cluster objects. Each member runs as
one owned task: it builds its ``ApiClient`` (retrying with backoff when that fails), then starts one list+watch
loop per resource kind and a monitor that applies the grace period. Members are independent tasks, so one
member's failure or hang never delays another's updates.

Every snapshot change marks discovery dirty; a notifier task waits ``discovery.debounce`` to gather a burst of
events, then calls ``on_change`` with every member's current snapshot (so an endpoint change reaches it within
the debounce plus a few milliseconds).

``update(config)`` reconciles (kopf's adjust_tasks): new members start, removed ones stop and their snapshots
are dropped, members whose connection settings changed restart; locality or Karmada readiness changes apply in
place.

With ``on_secret``, a member also watches the kubernetes.io/tls Secrets that the config's HTTPS listeners name
in it (:mod:`.secrets`, one narrowed watch per Secret, sharing the member's client), reconciled the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

from ..aio import TaskOwner
from ..config import Config
from ..model import ClusterSnapshot, Locality
from ..tls.secrets import SecretRef, refs_by_cluster, secret_refs
from .auth import MemberClient, MemberSpec, credentials_for, make_client
from .karmada import KarmadaSource
from .secrets import OnSecret, watch_secret
from .state import MemberState
from .watch import KINDS, KindWatcher, backoff_delay

log = logging.getLogger("fedproxy.discovery")

OnChange = Callable[[Mapping[str, ClusterSnapshot]], None]


@dataclass
class _Member:
    spec: MemberSpec
    state: MemberState
    secrets: frozenset[SecretRef] = frozenset()  # TLS Secrets to watch in this member
    secrets_changed: asyncio.Event = field(default_factory=asyncio.Event)


def configured_members(config: Config) -> dict[str, MemberSpec]:
    """The members ``config.clusters`` connects to directly (entries without settings only tune)."""
    out = {}
    for c in config.clusters:
        creds = credentials_for(c)
        if creds is not None:
            out[c.name] = MemberSpec(c.name, creds, Locality(c.region, c.zone))
    return out


class Discovery:
    """Watches every member and reports their snapshots through ``on_change``."""

    def __init__(
        self,
        config: Config,
        on_change: OnChange,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_secret: OnSecret | None = None,
    ) -> None:
        self._config = config
        self._on_change = on_change
        self._on_secret = on_secret
        self._clock = clock
        self._owner = TaskOwner("discovery")
        self._members: dict[str, _Member] = {}
        self._karmada_members: dict[str, MemberSpec] = {}
        self._karmada_running: Any = None  # the (karmada config, discovery settings) its task was started with
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()  # one reconcile at a time (config reloads vs. Karmada changes)

    # Lifecycle

    async def start(self) -> None:
        """Start watching every member; returns at once (snapshots fill in as lists complete)."""
        await self._reconcile()

    async def update(self, config: Config) -> None:
        """Apply a reloaded config: start, stop or restart members as it requires."""
        async with self._lock:
            # Set under the lock: a reconcile already waiting (the Karmada task's) must not see the new config,
            # or it would find its own task outdated and try to stop itself.
            self._config = config
            await self._reconcile_locked()

    async def close(self) -> None:
        """Stop every watch and close every client."""
        await self._owner.close()
        for m in self._members.values():
            m.state.forget_metrics()
        self._members.clear()

    # Reading

    def snapshots(self) -> Mapping[str, ClusterSnapshot]:
        """The current snapshot of every member (a read-only copy)."""
        return MappingProxyType({name: m.state.snapshot for name, m in self._members.items()})

    def status(self) -> dict[str, dict[str, Any]]:
        """Per member: connected, synced, last event age, resyncs, errors, last error (admin API, metrics)."""
        return {name: {"source": m.spec.source, **m.state.status()} for name, m in sorted(self._members.items())}

    # Reconciling

    async def apply_karmada(self, members: Mapping[str, MemberSpec]) -> None:
        """The Karmada source's current members (called by :class:`~.karmada.KarmadaSource`)."""
        async with self._lock:
            # Under the lock: a source stopped while waiting here (its config changed) never applies its members.
            self._karmada_members = dict(members)
            await self._reconcile_locked()

    def _wanted(self) -> dict[str, MemberSpec]:
        wanted = {}
        if self._config.karmada is not None:
            wanted.update(self._karmada_members)
        # A configured connection wins over what Karmada says of the same name.
        wanted.update(configured_members(self._config))
        return wanted

    async def _reconcile(self) -> None:
        async with self._lock:
            await self._reconcile_locked()

    async def _reconcile_locked(self) -> None:
        """Reconcile; the caller holds ``self._lock`` (one reconcile at a time)."""
        settings = self._config.discovery
        karmada_key = (self._config.karmada, settings) if self._config.karmada is not None else None
        if karmada_key != self._karmada_running:
            await self._owner.stop("karmada")
            self._karmada_running = karmada_key
            if karmada_key is None:
                self._karmada_members = {}
        wanted = self._wanted()
        secrets = refs_by_cluster(secret_refs(self._config)) if self._on_secret is not None else {}
        for name in list(self._members):
            member = self._members[name]
            spec = wanted.get(name)
            if spec is None or spec.credentials != member.spec.credentials:
                await self._owner.stop(f"member:{name}")
                del self._members[name]
                if spec is None:
                    member.state.forget_metrics()
                log.info("event=member_%s cluster=%s", "removed" if spec is None else "restart", name)
        for name, spec in wanted.items():
            member = self._members.get(name)
            if member is None:
                state = MemberState(name, settings, self._dirty.set, self._clock, spec.locality, spec.ready)
                self._members[name] = _Member(spec, state)
                log.info("event=member_added cluster=%s source=%s %s", name, spec.source, spec.credentials.describe)
            else:
                member.spec = spec
                member.state.settings = settings
                member.state.set_ready(spec.ready, spec.locality)
            current, tls = self._members[name], secrets.get(name, frozenset())
            if current.secrets != tls:
                current.secrets = tls
                current.secrets_changed.set()
        tasks: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {"notify": self._notifier}
        if karmada_key is not None:
            tasks["karmada"] = self._karmada_task
        for name, m in self._members.items():
            tasks[f"member:{name}"] = lambda m=m: self._run_member(m)
        await self._owner.adjust(tasks)
        self._dirty.set()

    def _karmada_task(self) -> Coroutine[Any, Any, None]:
        assert self._config.karmada is not None
        return KarmadaSource(self._config.karmada, self._config.discovery, self.apply_karmada).run()

    # Tasks

    async def _notifier(self) -> None:
        while True:
            await self._dirty.wait()
            # Gather a burst of events into one call; the bound on added latency is the debounce.
            await asyncio.sleep(self._config.discovery.debounce)
            self._dirty.clear()
            try:
                self._on_change(self.snapshots())
            except Exception:
                log.exception("event=on_change_failed")

    async def _run_member(self, member: _Member) -> None:
        spec, state = member.spec, member.state
        owner = TaskOwner(f"member:{spec.name}")
        secret_owner = TaskOwner(f"member:{spec.name}:tls")
        mc: MemberClient | None = None
        try:
            owner.spawn("monitor", self._monitor(state))
            attempt = 0
            while mc is None:
                try:
                    mc = await make_client(spec.credentials)
                except Exception as exc:  # unreadable kubeconfig, no service account...: retried, never fatal
                    attempt += 1
                    delay = backoff_delay(attempt, state.settings.backoff_base, state.settings.backoff_max)
                    log.warning("event=client_error cluster=%s error=%r retry_in=%.2f", spec.name, str(exc), delay)
                    state.failed(None, f"client setup: {exc}")
                    await asyncio.sleep(delay)
            state.host = mc.host
            for kind in KINDS:
                owner.spawn(kind, KindWatcher(state, mc.api, kind).run())
            # Until cancelled: the watches run in ``owner``; TLS Secret watches follow the config here.
            await self._run_secrets(member, mc, secret_owner)
        finally:
            await secret_owner.close()
            await owner.close()
            if mc is not None:
                await mc.close()

    async def _run_secrets(self, member: _Member, mc: MemberClient, owner: TaskOwner) -> None:
        while True:
            member.secrets_changed.clear()
            emit = self._on_secret
            wanted: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {}
            if emit is not None:
                for ref in member.secrets:
                    wanted[f"secret:{ref.namespace}/{ref.name}"] = partial(
                        watch_secret, ref, mc.api, member.state, emit
                    )
            await owner.adjust(wanted)
            await member.secrets_changed.wait()

    async def _monitor(self, state: MemberState) -> None:
        while True:
            state.check()
            await asyncio.sleep(max(0.05, min(1.0, state.settings.grace_period / 5)))
