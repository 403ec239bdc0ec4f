"""The runtime: wires discovery -> catalog -> serving state -> listeners, and owns reload and shutdown.

One reference, ``self.state`` (a :class:`ServingState`), is what every listener reads per request or
connection. Any input change (member snapshots, config, health, runtime overrides) builds a new state and
swaps it, together with the listeners' routers, in one synchronous step: a request sees either the old
world or the new one, never a mix, and keeps the state it started with.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from .aio import TaskOwner
from .balancing import HealthView, Overrides, ServingState, build_state
from .balancing.health import OutlierDetector
from .balancing.inservice import InService
from .catalog import Catalog, CatalogMemo, build_catalog
from .config import Config
from .configload import load_config, parse_config
from .configview import diff
from .discovery import Discovery
from .dns.server import DnsServer
from .errors import ConfigError
from .model import ClusterSnapshot, Endpoint
from .probes import Prober
from .proxy.http import HttpProxyServer
from .proxy.tcp import TcpProxyServer
from .tls.secretbook import SecretBook
from .tls.secrets import SecretEvent, SecretMaterial, SecretRef, secret_refs

log = logging.getLogger("fedproxy.runtime")


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class RebuildStats:
    """What rebuilds of the serving state cost, for the admin state (``rebuilds`` in /api/v1/state)."""

    rebuilds: int = 0  # serving states built and swapped in by ``_rebuild``
    state_builds: int = 0  # build_state calls made by those rebuilds: one each
    arrivals_examined: int = 0  # endpoints slow start looked at (only those whose pools or health changed)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _listener_key(kind: str, lst: Any) -> tuple[str, str, int]:
    return (kind, lst.address, lst.port)


Role = Literal["all", "control", "worker"]


class Runtime:
    """Owns the current config, snapshots, health, overrides, serving state and every listener.

    ``role``: "all" (one process does everything, the default), "control" (discovery, catalog, active
    checks, overrides; no listeners: workers serve) or "worker" (listeners only; the catalog, overrides and
    active-check health arrive from the control process through :meth:`apply_remote`).
    """

    def __init__(
        self,
        config: Config,
        *,
        config_path: str = "",
        reuse_port: bool = False,
        clock: Callable[[], float] = time.monotonic,
        role: Role = "all",
    ) -> None:
        self.role = role
        self.remote_catalog: Catalog | None = None
        self.remote_health = HealthView()
        self.workers_ready: Callable[[], tuple[bool, str]] | None = None  # set by the worker supervisor
        self.config = config
        self.config_path = config_path or config.source
        self.reuse_port = reuse_port
        self.clock = clock
        self.tasks = TaskOwner("runtime")
        self.snapshots: Mapping[str, ClusterSnapshot] = {}
        self.overrides = Overrides()
        self.detector = OutlierDetector(config.balancing.outlier)
        self.health = HealthView()
        self.in_service = InService()  # slow start: since when each endpoint is in service
        self.rebuild_stats = RebuildStats()
        self.prober = Prober(self._rebuild)
        self._version = 0
        self._catalog_memo = CatalogMemo()  # rebuilds cost what changed (issue 9)
        self.state: ServingState = build_state(config, build_catalog((), config, 0))
        # Certificates of kubernetes.io/tls Secrets: checked here (control or only process), served by listeners.
        self.tls_book = SecretBook(secret_refs(config) if role != "worker" else ())
        self.tls_secrets: Mapping[SecretRef, SecretMaterial] = self.tls_book.good()
        self.on_tls: list[Callable[[Mapping[SecretRef, SecretMaterial]], None]] = []  # the worker supervisor
        self.discovery = Discovery(config, self._on_snapshots, clock=clock, on_secret=self._on_secret)
        self.http: dict[tuple[str, str, int], HttpProxyServer] = {}
        self.tcp: dict[tuple[str, str, int], TcpProxyServer] = {}
        self.dns: DnsServer | None = None
        self.listening = False
        self.draining = False
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_error: list[str] = []
        self._health_timer: asyncio.TimerHandle | None = None
        self._listeners_lock = asyncio.Lock()
        # Reloads await (sockets, discovery); two overlapping ones (SIGHUP and POST /reload) would interleave
        # their swaps, and a failed one's rollback would undo a later one that reported success.
        self._reload_lock = asyncio.Lock()
        self.on_state: list[Callable[[ServingState], None]] = []  # admin/metrics subscribe here

    # -- the one reference listeners read --------------------------------------------------------
    def get_state(self) -> ServingState:
        return self.state

    def _rebuild(self) -> None:
        """Build a new serving state from the current inputs and swap it in, with routers and DNS."""
        self._version += 1
        if self.remote_catalog is not None:
            catalog = self.remote_catalog
        else:
            catalog = build_catalog(self.snapshots.values(), self.config, self._version, self._catalog_memo)
        now = self.clock()
        health = self.detector.view(now).union(self.prober.health.view()).union(self.remote_health)
        window = self.config.balancing.slow_start
        if window > 0:
            # Slow start: what is newly in service follows from pool membership, known before the state is built
            # (only what changed since the last rebuild is looked at).
            arrivals = self.in_service.observe(self.config, catalog, self.overrides, health.unhealthy, now, window)
            self.rebuild_stats.arrivals_examined += self.in_service.examined
            if arrivals.since:
                health = health.union(arrivals)
        state = build_state(self.config, catalog, health, self.overrides, now, self._version, previous=self.state)
        self.rebuild_stats.state_builds += 1
        self.rebuild_stats.rebuilds += 1
        self.health = health
        self.state = state
        if self.dns is not None:
            self.dns.update(state)
        for cb in self.on_state:
            cb(state)
        if self.listening and self.role != "worker":
            self.tasks.spawn(f"probes-{self._version}", self.prober.reconcile(state))
        self._schedule_refresh(now)

    def _schedule_refresh(self, now: float) -> None:
        """Readmissions and slow-start ramps change the pools with time: rebuild then, not per request."""
        if self._health_timer is not None:
            self._health_timer.cancel()
            self._health_timer = None
        times = [t for p in self.state.pools.values() if (t := p.refresh_at) is not None]
        if (when := self.detector.next_change(now)) is not None:
            times.append(when)
        if times and self.listening:
            delay = max(0.0, min(times) - now) + 0.001
            self._health_timer = asyncio.get_running_loop().call_later(delay, self._rebuild)

    def _on_snapshots(self, snapshots: Mapping[str, ClusterSnapshot]) -> None:
        self.snapshots = dict(snapshots)
        self._rebuild()

    def _on_secret(self, event: SecretEvent) -> None:
        if self.tls_book.observe(event, dt.datetime.now(dt.UTC)):
            self._set_tls_secrets(self.tls_book.good())

    def _set_tls_secrets(self, secrets: Mapping[SecretRef, SecretMaterial]) -> None:
        """New Secret certificates: every HTTPS listener reloads what changed (new handshakes only)."""
        self.tls_secrets = secrets
        for srv in self.http.values():
            srv.set_tls_secrets(secrets)
        for cb in self.on_tls:
            cb(secrets)

    def report(self, ep: Endpoint, ok: bool) -> None:
        """Outcome of one upstream attempt (HTTP request, TCP connect); ejections rebuild the pools."""
        now = self.clock()
        if ok:
            self.detector.success(ep, now)
        elif self.detector.failure(ep, now):
            log.warning("event=endpoint_ejected endpoint=%s", ep)
            self._rebuild()

    # -- runtime overrides (admin) ------------------------------------------------------------------
    def set_overrides(self, overrides: Overrides) -> None:
        self.overrides = overrides
        self._rebuild()

    def drain_cluster(self, name: str) -> None:
        self.set_overrides(replace(self.overrides, drained=self.overrides.drained | {name}))
        log.info("event=cluster_drained cluster=%s", name)

    def undrain_cluster(self, name: str) -> None:
        self.set_overrides(replace(self.overrides, drained=self.overrides.drained - {name}))
        log.info("event=cluster_undrained cluster=%s", name)

    def set_weight(self, name: str, weight: int | None) -> None:
        weights = dict(self.overrides.weights)
        if weight is None:
            weights.pop(name, None)
        else:
            weights[name] = weight
        self.set_overrides(replace(self.overrides, weights=weights))
        log.info("event=cluster_weight cluster=%s weight=%s", name, weight)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Start discovery and every listener; raises OSError when a listener cannot bind."""
        self.listening = True
        self._rebuild()
        if self.role != "control":
            await self._apply_listeners(self.config)
        if self.role != "worker":
            await self.discovery.start()

    async def apply_remote(
        self,
        config: Config,
        catalog: Catalog,
        overrides: Overrides,
        health: HealthView,
        tls_secrets: Mapping[SecretRef, SecretMaterial] | None = None,
    ) -> None:
        """Worker side: the control process sent a newer world; adopt it (listeners follow the config)."""
        self.remote_catalog, self.overrides, self.remote_health = catalog, overrides, health
        if tls_secrets is not None and tls_secrets != self.tls_secrets:
            self._set_tls_secrets(tls_secrets)  # before new listeners start: they take ``self.tls_secrets``
        if config != self.config:
            old = self.config
            self.config = config
            if config.balancing.outlier != old.balancing.outlier:
                self.detector = OutlierDetector(config.balancing.outlier)
            self._rebuild()
            await self._apply_listeners(config)
        else:
            self._rebuild()

    def ready(self) -> tuple[bool, str]:
        """Kubernetes readiness: listeners bound and at least one member synced (or none configured)."""
        if self.draining:
            return False, "draining"
        if not self.listening:
            return False, "listeners not bound"
        if self.workers_ready is not None:
            ok, why = self.workers_ready()
            if not ok:
                return False, why
        snaps = self.snapshots
        if (self.config.clusters or self.config.karmada) and not any(s.synced for s in snaps.values()):
            return False, "no member synced yet"
        waiting = self.tls_book.waiting()
        if waiting:
            # As Envoy keeps a listener warming until its SDS secrets arrive: not ready before every certificate
            # could be served once. Later problems keep the last good certificate and readiness.
            return False, f"TLS certificates not loaded yet from Secrets: {', '.join(map(str, waiting))}"
        return True, "ok"

    async def _apply_listeners(self, config: Config) -> None:
        """Reconcile listeners with ``config``: update in place, start new ones, drain removed ones."""
        async with self._listeners_lock:
            wanted_http = {_listener_key("http", lst): lst for lst in config.http.listeners}
            wanted_tcp = {_listener_key("tcp", lst): lst for lst in config.tcp.listeners}
            started: list[Any] = []
            try:
                for key, lst in wanted_http.items():
                    if key not in self.http:
                        srv = HttpProxyServer(
                            lst,
                            config,
                            self.get_state,
                            self.report,
                            reuse_port=self.reuse_port,
                            tls_secrets=self.tls_secrets,
                        )
                        await srv.start()
                        started.append(srv)
                        self.http[key] = srv
                for key, lst in wanted_tcp.items():
                    if key not in self.tcp:
                        tsrv = TcpProxyServer(lst, config, self.get_state, self.report, reuse_port=self.reuse_port)
                        await tsrv.start()
                        started.append(tsrv)
                        self.tcp[key] = tsrv
                if config.dns.enabled and self.dns is None:
                    self.dns = DnsServer(config.dns, self.get_state, reuse_port=self.reuse_port)
                    await self.dns.start()
                    started.append(self.dns)
                    self.dns.update(self.state)
                elif config.dns.enabled and self.dns is not None:
                    # Same address and port (a move closed it first in reload): new policy, TTLs, forwarders.
                    self.dns.reconfigure(config.dns, self.state)
            except BaseException:
                for srv in started:
                    await srv.close()
                raise
            for key, lst in wanted_http.items():
                self.http[key].update(lst, config)
            for key, tlst in wanted_tcp.items():
                self.tcp[key].update(tlst, config)
            for key in set(self.http) - set(wanted_http):
                old_http = self.http.pop(key)
                self.tasks.spawn(f"drain-{key}", old_http.drain(old_http.listener.drain_timeout))
            for key in set(self.tcp) - set(wanted_tcp):
                old_tcp = self.tcp.pop(key)
                self.tasks.spawn(f"drain-{key}", old_tcp.drain(old_tcp.listener.drain_timeout))
            if self.dns is not None and not config.dns.enabled:
                dns, self.dns = self.dns, None
                await dns.close()

    async def reload(self, text: str | None = None) -> ReloadResult:
        """Validate a whole new config (the file, or ``text``), then swap it in; a bad one changes nothing.

        Overlapping calls run one after the other, in call order.
        """
        async with self._reload_lock:
            return await self._reload(text)

    async def _reload(self, text: str | None) -> ReloadResult:
        try:
            new = parse_config(text, source="<admin>") if text is not None else load_config(self.config_path)
        except ConfigError as exc:
            self.reloads_failed += 1
            self.last_reload_error = exc.problems
            # Key paths only: a problem's text may quote a value from the file, and values can be secrets.
            keys = ",".join(p.split(":", 1)[0] for p in exc.problems)
            log.warning("event=reload_rejected problems=%d keys=%s", len(exc.problems), keys)
            return ReloadResult(False, problems=exc.problems)
        except OSError as exc:
            self.reloads_failed += 1
            self.last_reload_error = [f"{self.config_path}: {exc.strerror or exc}"]
            return ReloadResult(False, problems=self.last_reload_error)
        changes = diff(self.config, new)
        old = self.config
        dns_moved = (old.dns.address, old.dns.port, old.dns.enabled) != (new.dns.address, new.dns.port, new.dns.enabled)
        try:
            if dns_moved and self.dns is not None:
                dns, self.dns = self.dns, None
                await dns.close()
            self.config = new
            if new.balancing.outlier != old.balancing.outlier:
                self.detector = OutlierDetector(new.balancing.outlier)
            # Runtime overrides survive a reload unless the file now speaks about those members.
            self._rebuild()
            if self.role != "control":
                await self._apply_listeners(new)
            # Track the new config's Secrets before discovery opens their watches; a dropped one stops serving.
            if self.tls_book.configure(secret_refs(new)):
                self._set_tls_secrets(self.tls_book.good())
            await self.discovery.update(new)
        except OSError as exc:
            # A listener could not bind: go back to the old config, which still has all its sockets.
            self.config = old
            self._rebuild()
            await self._apply_listeners(old)
            self.reloads_failed += 1
            self.last_reload_error = [f"cannot open a listener: {exc}"]
            return ReloadResult(False, problems=self.last_reload_error)
        self.reloads_ok += 1
        self.last_reload_error = []
        log.info("event=reloaded changes=%d", len(changes))
        return ReloadResult(True, changes=changes)

    async def shutdown(self, grace: float | None = None) -> None:
        """Readiness false, stop accepting, let in-flight work finish up to ``grace`` s, close everything."""
        self.draining = True
        grace = self.config.admin.drain_timeout if grace is None else grace
        if self._health_timer is not None:
            self._health_timer.cancel()
        servers: list[Any] = [*self.http.values(), *self.tcp.values()]
        await asyncio.gather(*(s.drain(grace) for s in servers), return_exceptions=True)
        # Not listening any more: a rebuild from now on (discovery, probes) neither spawns probe reconciles nor
        # arms the refresh timer, so nothing is left scheduled on the loop once this returns.
        self.listening = False
        if self._health_timer is not None:
            self._health_timer.cancel()
            self._health_timer = None
        if self.dns is not None:
            await self.dns.close()
        await self.discovery.close()
        # Runtime tasks first: a probe reconcile still running would spawn probes into a closed prober.
        await self.tasks.close()
        await self.prober.close()
        self.http.clear()
        self.tcp.clear()
        self.dns = None
