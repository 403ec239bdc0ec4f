"""`FakeApiServer`: one emulated member-cluster API server on a loopback address, with fault injection.

The HTTP behaviour lives in `http_api` (routing, CRUD) and `watch_stream` (watches); this module owns the
lifecycle (AppRunner + TCPSite, never `web.run_app`), authentication and the faults:

- `kill()` / `restart()`: the process dies (listener closed, in-flight connections reset) and comes back
  on the same port with the same store, as a restarted apiserver behind a fixed address.
- `cut_watches()`: open watch connections are reset without the terminating chunk (a cut link).
- `hang(True)`: connections are accepted but nothing is answered, and open watches stall (an overloaded
  or partitioned server); `hang(False)` lets stalled requests proceed.
- `expire_resource_versions()`: compaction; a watch from any earlier resourceVersion gets 410.
- `fail_requests(n, status)`: the next n requests get a Status error.
- `omit_list_resource_version(True)`: list responses lack `metadata.resourceVersion` (a broken server).
- `limit_watches(seconds)`: every watch ends after at most that long (0: answered, then closed at once).
- `FakeApiServer(..., crds=False)`: a member without CRDs; ServiceExport, ServiceImport and Karmada
  Cluster requests answer 404 and those groups are missing from the discovery documents.

Only loopback addresses are accepted for binding: the emulator must never be reachable from outside.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from fedproxy.sim.http_api import ApiHandler, Quirks, status_response
from fedproxy.sim.pki import CertificateAuthority, KeyPair, server_ssl_context
from fedproxy.sim.resources import resource_for_kind, resource_named
from fedproxy.sim.store import ObjectStore
from fedproxy.sim.watch_stream import WatchHub

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Real servers send a bookmark about once a minute; tests pass a shorter interval.
DEFAULT_BOOKMARK_INTERVAL = 60.0


def require_loopback(host: str) -> None:
    """Refuse to bind anything but 127.0.0.0/8 (or ::1): the emulator is never exposed."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the emulator only binds loopback addresses, not {host}")


class FakeApiServer:
    """An emulated Kubernetes API server. Not thread-safe: use it from its event loop only."""

    def __init__(
        self,
        name: str = "sim",
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        tls: bool = False,
        client_cert_auth: bool = False,
        bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL,
        store: ObjectStore | None = None,
        crds: bool = True,
    ) -> None:
        require_loopback(host)
        self.name = name
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.store = store or ObjectStore()
        self.bookmark_interval = bookmark_interval
        self.requests_served = 0
        # "METHOD /path?query" of the latest requests, for tests asserting what a client asked (least privilege).
        self.request_log: deque[str] = deque(maxlen=10_000)
        self.quirks = Quirks(crds=crds)
        self.ca: CertificateAuthority | None = None
        self._ssl: ssl.SSLContext | None = None
        if tls or client_cert_auth:
            self.ca = CertificateAuthority(f"{name}-ca")
            leaf = self.ca.issue(f"{name}-apiserver", ips=(host,), dns_names=("localhost",))
            self._ssl = server_ssl_context(self.ca, leaf, verify_clients=client_cert_auth)
        self._hub = WatchHub(self.store)
        self._runner: web.AppRunner | None = None
        self._inflight: set[asyncio.BaseTransport] = set()
        self._unhung = asyncio.Event()
        self._unhung.set()
        self._fail_budget = 0
        self._fail_status = 500

    # Lifecycle

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def ca_pem(self) -> bytes | None:
        """The CA certificate clients must trust (None without TLS)."""
        return self.ca.cert_pem if self.ca else None

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def open_watches(self) -> int:
        return len(self._hub)

    def issue_client_cert(self, user: str, group: str | None = None) -> KeyPair:
        """A client certificate this server accepts (requires `client_cert_auth=True`)."""
        if self.ca is None:
            raise RuntimeError("client certificates need a TLS server")
        return self.ca.issue(user, client=True, organization=group)

    async def start(self) -> None:
        """Listen; port 0 picks an ephemeral port, kept for every later `restart()`."""
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._faults, self._auth])
        handler = ApiHandler(self.store, self._hub, lambda: self.bookmark_interval, self._gate, self.quirks)
        app.router.add_route("*", "/{tail:.*}", handler.handle)
        # handler_cancellation: a client that goes away cancels its watch at once instead of at the
        # next write, so stop() never waits on forgotten streams.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.port == 0:
            self.port = runner.addresses[0][1]
        log.debug("event=apiserver_start cluster=%s url=%s", self.name, self.url)

    async def stop(self) -> None:
        """Graceful stop: open watches end cleanly, then the listener closes."""
        self._hub.close_all(abort=False)
        self._unhung.set()
        await self._shutdown()

    async def kill(self) -> None:
        """Abrupt stop: in-flight connections are reset, watches cut, the listener closed."""
        self._hub.close_all(abort=True)
        for transport in list(self._inflight):
            transport.abort()
        await self._shutdown()

    async def restart(self) -> None:
        """Come back after `kill()`/`stop()` on the same host and port with the same store."""
        await self.start()

    async def _shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._inflight.clear()

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Faults

    def cut_watches(self) -> int:
        """Reset every open watch connection; returns how many were cut."""
        return self._hub.close_all(abort=True)

    def hang(self, on: bool = True) -> None:
        """While on, requests are accepted and never answered, and watches stop sending."""
        if on:
            self._unhung.clear()
        else:
            self._unhung.set()

    def expire_resource_versions(self) -> None:
        """Compact history: every resourceVersion before the current one is now too old (410)."""
        self.store.expire_before()

    def fail_requests(self, n: int, status: int = 500) -> None:
        """The next `n` requests (any path, before auth) are answered with a `status` Status."""
        self._fail_budget, self._fail_status = n, status

    def omit_list_resource_version(self, on: bool = True) -> None:
        """While on, list responses carry no `metadata.resourceVersion`."""
        self.quirks.list_resource_version = not on

    def limit_watches(self, seconds: float | None) -> None:
        """Every watch opened from now on ends after at most `seconds` (None: as the client asks)."""
        self.quirks.max_watch_seconds = seconds

    async def _gate(self) -> None:
        await self._unhung.wait()

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            self._inflight.add(transport)
        try:
            await self._unhung.wait()
            self.requests_served += 1
            self.request_log.append(f"{request.method} {request.path_qs}")
            if self._fail_budget > 0:
                self._fail_budget -= 1
                code = self._fail_status
                reason = {503: "ServiceUnavailable", 429: "TooManyRequests", 504: "Timeout"}.get(code, "InternalError")
                return status_response(code, reason, f"injected failure ({self.name})")
            return await handler(request)
        finally:
            if transport is not None:
                self._inflight.discard(transport)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Authorization") == f"Bearer {self.token}" or self._has_client_cert(request):
            return await handler(request)
        return status_response(401, "Unauthorized", "Unauthorized")

    def _has_client_cert(self, request: web.Request) -> bool:
        # The TLS handshake already verified the chain against our CA (CERT_OPTIONAL): any
        # presented certificate is a valid one.
        transport = request.transport
        return bool(transport is not None and transport.get_extra_info("peercert"))

    # Python API for tests and the demo; every write wakes open watches immediately.

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object by its apiVersion, kind, namespace and name."""
        return self.store.apply(resource_for_kind(obj["apiVersion"], obj["kind"]), obj)

    def apply_all(self, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.apply(o) for o in objs]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """`kind` is a kind, plural or short name ("Service", "services", "svc")."""
        return self.store.get(resource_named(kind), namespace, name)

    def delete(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return self.store.delete(resource_named(kind), namespace, name)

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch (RFC 7386) of a stored object."""
        return self.store.patch(resource_named(kind), namespace, name, patch)

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.store.list(resource_named(kind), namespace)[0]
