"""Route selection for one HTTP listener (pure: no sockets, no clock).

Theory of operation: ``build_router`` groups a listener's routes by host once, so ``match`` does one dict
lookup for an exact host, then the wildcard suffixes, then the any-host group; inside a group routes are
sorted by path-prefix length (longest first), and a route with header or cookie matches comes before a
route with the same prefix and none, so "canary if header X" rules sit in front of the catch-all. The first
route whose prefix, headers and cookies all match wins. Header names the router needs are precomputed
(``header_names``), so the connection collects only those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..balancing import PoolSpec, route_spec
from ..config import Config, HttpListener, HttpRoute


@dataclass(frozen=True, slots=True)
class Route:
    """One configured route with what the data path needs precomputed."""

    config: HttpRoute
    spec: PoolSpec
    name: str  # "host/prefix -> ns/name", for logs and metrics
    prefix: bytes
    headers: tuple[tuple[str, str], ...]  # (lowercase name, value) that must all match
    cookies: tuple[tuple[str, str], ...]
    pin_header: str  # lowercase
    service_name: str = ""  # str(spec.service), for metrics and logs without a format per request
    retries_on_status: bool = False  # the retry policy may retry a 5xx response (held until decided)

    def matches(self, path: bytes, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        if not path.startswith(self.prefix):
            return False
        for name, value in self.headers:
            if headers.get(name) != value:
                return False
        return all(cookies.get(name) == value for name, value in self.cookies)


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _as_text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def normalize_host(host: bytes | str) -> str:
    """Lowercase host without its port ("Example.COM:8080" -> "example.com", "[::1]:80" -> "[::1]")."""
    text = _as_text(host).strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end >= 0 else text
    name, _, _port = text.partition(":")
    return name.rstrip(".")


HOST_CACHE = 1024  # distinct Host values whose route groups are remembered per router


class Router:
    """Routes of one listener, precomputed; ``match`` is a few dict lookups and prefix tests."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = tuple(routes)
        self._exact: dict[str, tuple[Route, ...]] = {}
        self._wildcard: list[tuple[str, tuple[Route, ...]]] = []  # (".example.com", routes), longest first
        self._any: tuple[Route, ...] = ()
        self._by_host: dict[bytes | str, tuple[tuple[Route, ...], ...]] = {}  # Host as sent -> _groups(...)
        by_host: dict[str, list[Route]] = {}
        for r in routes:
            by_host.setdefault(r.config.host.lower().rstrip("."), []).append(r)

        def order(group: list[Route]) -> tuple[Route, ...]:
            # Longest prefix first; among equal prefixes, routes with conditions first (stable otherwise).
            return tuple(sorted(group, key=lambda r: (-len(r.prefix), not (r.headers or r.cookies))))

        for host, group in by_host.items():
            if host == "":
                self._any = order(group)
            elif host.startswith("*."):
                self._wildcard.append((host[1:], order(group)))
            else:
                self._exact[host] = order(group)
        self._wildcard.sort(key=lambda item: -len(item[0]))
        self.header_names: frozenset[str] = frozenset(
            {n for r in routes for n, _ in r.headers}
            | {r.pin_header for r in routes}
            | {r.config.hash.name.lower() for r in routes if r.config.hash and r.config.hash.on == "header"}
        )
        # The express lane (http_express) takes requests the router needs no header of: none but a pin header,
        # and only when that header is absent (``pin_needles``: how its line starts in a lowercased head).
        pins = {r.pin_header for r in routes if r.pin_header}
        self.needs_headers = bool(self.header_names - pins)
        self.pin_needles = tuple(b"\n%b:" % p.encode("latin-1") for p in sorted(pins))
        self.needs_cookies = any(
            r.cookies or (r.config.hash is not None and r.config.hash.on == "cookie") for r in routes
        )

    def match(
        self,
        host: bytes | str,
        path: bytes | str,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
    ) -> Route | None:
        """The route for a request, or None (404). ``headers`` keys are lowercase names."""
        hdrs = headers if headers is not None else {}
        jar = cookies if cookies is not None else {}
        path_b = _as_bytes(path)
        groups = self._by_host.get(host)
        if groups is None:
            groups = self._groups(normalize_host(host))
            if len(self._by_host) >= HOST_CACHE:
                self._by_host.clear()  # many distinct Host values: start over rather than grow
            self._by_host[host] = groups
        for group in groups:
            for route in group:
                if route.matches(path_b, hdrs, jar):
                    return route
        return None

    def _groups(self, name: str) -> tuple[tuple[Route, ...], ...]:
        """The route groups a normalized host name may match, most specific first."""
        groups: list[tuple[Route, ...]] = []
        exact = self._exact.get(name)
        if exact:
            groups.append(exact)
        for suffix, group in self._wildcard:
            # "*.example.com" matches "a.example.com" and "a.b.example.com", not "example.com" itself.
            if name.endswith(suffix) and len(name) > len(suffix):
                groups.append(group)
                break
        if self._any:
            groups.append(self._any)
        return tuple(groups)


def build_router(listener: HttpListener, config: Config) -> Router:
    """Precompute the listener's routes (pool specs included) for cheap per-request matching."""
    routes = []
    for r in listener.routes:
        host = r.host or "*"
        routes.append(
            Route(
                config=r,
                spec=route_spec(r, config),
                name=f"{host}{r.path_prefix}->{r.service}",
                prefix=r.path_prefix.encode("latin-1"),
                headers=tuple((k.lower(), v) for k, v in r.headers.items()),
                cookies=tuple(r.cookies.items()),
                pin_header=r.pin_header.lower(),
                service_name=str(r.service),
                retries_on_status=r.retries.attempts > 0 and bool({"5xx", "gateway-error"} & set(r.retries.on)),
            )
        )
    return Router(routes)
