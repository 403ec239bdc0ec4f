"""The admin HTTP server: reload, probes, metrics, state and explain API, overrides, dashboard.

An aiohttp application on ``admin.address:admin.port`` (port 0: ephemeral, see ``.port``), run through
AppRunner + TCPSite. Every handler reads the runtime at request time (never a copy taken at start), so a
reload or an override is visible on the next request. Endpoints and the state schema: docs/admin.md.

Auth: with ``admin.token`` set, everything but the probes (/healthz, /readyz) and the dashboard's static
page (which holds no data and asks for the token itself) needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..balancing import Overrides, Pool
from ..balancing.metrics import PoolCollector
from ..configview import config_hash, mask_secrets
from ..model import ServiceKey
from .metrics import CONTENT_TYPE, RuntimeCollector, discovery_statuses, render
from .overrides import Change, OverridesStore, make_store
from .state import ListenerView, minimal_explain, state_json

log = logging.getLogger("fedproxy.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
STATIC_FILES = {"dashboard.html": "text/html", "dashboard.js": "application/javascript", "dashboard.css": "text/css"}
MAX_RELOAD_BODY = 4 * 1024 * 1024  # bytes; a config is a few KiB, this only bounds abuse


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"ok": False, "error": message, **extra}, status)


def _plain(value: Any) -> Any:
    """Any explain() result -> JSON-able data (dataclasses become dicts; the rest is left to ``default=str``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class AdminServer:
    """The admin endpoint of one runtime. ``start()`` binds, ``close()`` stops it and the overrides watch."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.port: int | None = None
        self.overrides: OverridesStore = make_store(runtime)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RuntimeCollector(runtime, self.config_hash, runtime.clock))
        self.registry.register(PoolCollector(runtime.get_state))  # slow-start and tier-ramp gauges
        self._runner: web.AppRunner | None = None
        self._hash_of: tuple[object, str] = (None, "")

    # -- lifecycle ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=MAX_RELOAD_BODY)
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_post("/reload", self.reload)
        r.add_get("/api/v1/state", self.state)
        r.add_get("/api/v1/config", self.config)
        r.add_get("/api/v1/explain", self.explain)
        r.add_post("/api/v1/clusters/{name}/drain", self.drain)
        r.add_post("/api/v1/clusters/{name}/undrain", self.undrain)
        r.add_post("/api/v1/clusters/{name}/weight", self.weight)
        r.add_get("/", self.dashboard)
        r.add_get("/static/{file}", self.static)
        return app

    async def start(self) -> None:
        """Bind the admin address (OSError when it cannot) and start the overrides store."""
        admin = self.runtime.config.admin
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, admin.address, admin.port, reuse_address=True)
        try:
            await site.start()
            await self.overrides.start()
        except BaseException:
            await self.overrides.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("event=admin_listening address=%s port=%s", admin.address, self.port)

    async def close(self) -> None:
        await self.overrides.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- auth ----------------------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.runtime.config.admin.token
        if token and request.path not in OPEN_PATHS and not request.path.startswith("/static/"):
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                return _json(
                    {"ok": False, "error": "unauthorized: send Authorization: Bearer <admin.token>"},
                    401,
                )
        return await handler(request)

    # -- probes --------------------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        ok, reason = self.runtime.ready()
        return web.Response(text=f"{reason}\n", status=200 if ok else 503)

    # -- metrics ---------------------------------------------------------------------------------------
    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=render(self.registry), headers={"Content-Type": CONTENT_TYPE})

    # -- config ----------------------------------------------------------------------------------------
    def config_hash(self) -> str:
        cfg = self.runtime.config
        # Cached per config object: a reload swaps the object, and hashing walks the whole tree.
        if self._hash_of[0] is not cfg:
            self._hash_of = (cfg, config_hash(cfg))
        return self._hash_of[1]

    async def reload(self, request: web.Request) -> web.Response:
        text: str | None = None
        if request.can_read_body:
            body = await request.text()
            text = body if body.strip() else None
        result = await self.runtime.reload(text)
        source = "body" if text is not None else "file"
        if result.ok:
            log.info("event=admin_reload source=%s changes=%d", source, len(result.changes))
            return _json({"ok": True, "changes": list(result.changes), "config_hash": self.config_hash()})
        log.warning("event=admin_reload_rejected source=%s problems=%d", source, len(result.problems))
        return _json({"ok": False, "problems": list(result.problems)}, 400)

    async def config(self, request: web.Request) -> web.Response:
        return _json({"config_hash": self.config_hash(), "config": mask_secrets(self.runtime.config)})

    # -- state -------------------------------------------------------------------------------------------
    def listener_views(self) -> list[ListenerView]:
        rt = self.runtime
        views: list[ListenerView] = []
        for kind, servers in (("http", rt.http), ("tcp", rt.tcp)):
            for (_, address, port), srv in sorted(servers.items()):
                lst = getattr(srv, "listener", None)
                stats = srv.stats() if hasattr(srv, "stats") else {}
                name = getattr(lst, "name", "") or f"{kind}-{port}"
                views.append(ListenerView(kind, name, address, port, getattr(srv, "port", None), stats))
        dns_cfg = rt.config.dns
        if dns_cfg.enabled:
            dns = rt.dns
            stats = dns.stats() if dns is not None and hasattr(dns, "stats") else {}
            bound = getattr(dns, "port", None) if dns is not None else None
            views.append(ListenerView("dns", "dns", dns_cfg.address, dns_cfg.port, bound, stats))
        admin = rt.config.admin
        views.append(ListenerView("admin", "admin", admin.address, admin.port, self.port))
        return views

    def state_document(self) -> dict[str, Any]:
        rt = self.runtime
        book = getattr(rt, "tls_book", None)
        tls_secrets = book.status() if book is not None else []  # certificates from kubernetes.io/tls Secrets
        return state_json(
            rt.get_state(),
            now=rt.clock(),
            statuses=discovery_statuses(rt),
            listeners=self.listener_views(),
            config_hash=self.config_hash(),
            ready=rt.ready(),
            reloads={"ok": rt.reloads_ok, "failed": rt.reloads_failed, "last_error": list(rt.last_reload_error)},
        ) | {"tls_secrets": tls_secrets, "rebuilds": rt.rebuild_stats.as_dict()}

    async def state(self, request: web.Request) -> web.Response:
        return _json(self.state_document())

    async def explain(self, request: web.Request) -> web.Response:
        raw = request.query.get("service", "")
        try:
            key = ServiceKey.parse(raw)
        except ValueError as exc:
            return _error(400, f"service: {exc}")
        state = self.runtime.get_state()
        pools: list[Pool] = [p for spec, p in state.pools.items() if spec.service == key]
        if not pools and key not in state.catalog.services:
            return _error(404, f"unknown service {key}")
        hash_key = request.query.get("key")
        try:
            from ..balancing.explain import explain as balancing_explain  # written by the balancing engineer
        except ImportError:
            balancing_explain = None
        out = []
        for pool in pools:
            if balancing_explain is not None:
                out.append(_plain(balancing_explain(pool, hash_key)))
            else:
                out.append(minimal_explain(pool))
        return _json({"service": str(key), "key": hash_key, "pools": out})

    # -- overrides ---------------------------------------------------------------------------------------
    def _known_member(self, name: str) -> bool:
        rt = self.runtime
        state = rt.get_state()
        return rt.config.cluster(name) is not None or name in state.catalog.clusters or name in discovery_statuses(rt)

    async def _override(self, request: web.Request, change: Change, what: str) -> web.Response:
        name = request.match_info["name"]
        if not self._known_member(name):
            return _error(404, f"unknown member {name!r}")
        try:
            new = await self.overrides.update(change)
        except Exception as exc:  # noqa: BLE001 - the shared ConfigMap may be unreachable
            log.error("event=override_failed cluster=%s action=%s error=%r", name, what, str(exc))
            return _error(503, f"cannot store the override: {exc}")
        log.info("event=override cluster=%s action=%s", name, what)
        return _json(
            {
                "ok": True,
                "cluster": name,
                "drained": name in new.drained,
                "weight": new.weights.get(name),
                "overrides": {"drained": sorted(new.drained), "weights": dict(sorted(new.weights.items()))},
            }
        )

    async def drain(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._override(request, lambda o: dataclasses.replace(o, drained=o.drained | {name}), "drain")

    async def undrain(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await self._override(request, lambda o: dataclasses.replace(o, drained=o.drained - {name}), "undrain")

    async def weight(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, 'body must be JSON: {"weight": N} or {"weight": null}')
        if not isinstance(body, dict) or "weight" not in body:
            return _error(400, 'body must be JSON: {"weight": N} or {"weight": null}')
        w = body["weight"]
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 0):
            return _error(400, f"weight: {w!r} is not an integer >= 0 or null")

        def change(o: Overrides) -> Overrides:
            weights = dict(o.weights)
            if w is None:
                weights.pop(name, None)
            else:
                weights[name] = w
            return dataclasses.replace(o, weights=weights)

        return await self._override(request, change, f"weight={w}")

    # -- dashboard -----------------------------------------------------------------------------------------
    async def dashboard(self, request: web.Request) -> web.Response:
        return self._static_file("dashboard.html")

    async def static(self, request: web.Request) -> web.Response:
        return self._static_file(request.match_info["file"])

    def _static_file(self, name: str) -> web.Response:
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            raise web.HTTPNotFound()
        data = resources.files("fedproxy.admin").joinpath("static", name).read_bytes()
        return web.Response(body=data, content_type=content_type, headers={"Cache-Control": "no-cache"})
