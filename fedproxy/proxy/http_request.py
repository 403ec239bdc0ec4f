"""Per-request state of the client side of the HTTP proxy, and the retry decision (no sockets).

One ``Request`` is created per request head the client sends; it collects the head (raw header pairs plus
the few values the proxy acts on), the body bytes sent upstream that may be replayed on a retry, and the
response state. ``retry_kind`` maps an upstream failure to the RetryPolicy's names. ``affinity_key`` and
``bounded`` serve HTTP/1.1 and HTTP/2 requests alike.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import TYPE_CHECKING

from ..balancing.hashing import hash_key
from ..config import RetryPolicy
from . import http_head

if TYPE_CHECKING:
    from .router import Route

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
REPLAY_LIMIT = 64 * 1024  # bytes of request body kept for a retry; beyond it a started upload is not retried
_ID_PREFIX = os.urandom(3).hex().encode("ascii")  # per process: ids stay unique across workers and restarts
_ID_COUNTER = itertools.count(1)


def next_request_id() -> bytes:
    """A request id for a request without one: a random per-process prefix and a counter (no syscall)."""
    return b"%b%010x" % (_ID_PREFIX, next(_ID_COUNTER))


class Request:
    __slots__ = (
        "method",
        "target",
        "path",
        "headers",
        "host",
        "host_seen",
        "http10",
        "keep_alive",
        "websocket",
        "chunked",
        "request_id",
        "has_request_id",
        "cookie",
        "match_headers",
        "head_bytes",
        "body_done",
        "body_in",
        "pending",
        "replay",
        "replay_size",
        "sent_body",
        "bytes_out",
        "status",
        "started",
        "head_waiter",
        "done_waiter",
        "committed",
        "resp_pending",
        "resp_framing",
        "tunnel_pending",
        "tunnel_pending_up",
        "expect_continue",
        "slow",
        "drop",
    )

    def __init__(self, started: float) -> None:
        self.method = b""
        self.target = b""
        self.path = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.host = b""
        self.host_seen = False  # one Host header, no more: RFC 9112 3.2 (an HTTP/1.1 request without one is 400)
        self.http10 = False
        self.keep_alive = True
        self.websocket = False
        self.chunked = False  # request body is chunked (re-chunked upstream)
        self.request_id = b""
        self.has_request_id = False
        self.cookie = b""
        self.match_headers: dict[str, str] = {}  # only the names the router asked for
        self.head_bytes = 0
        self.body_done = False
        self.body_in = 0
        self.pending: list[bytes] = []  # framed body bytes not yet written upstream
        self.replay: list[bytes] | None = []  # framed body bytes written upstream, kept while small
        self.replay_size = 0
        self.sent_body = False  # any body byte went upstream on the current attempt
        self.bytes_out = 0
        self.status = 0
        self.started = started
        self.head_waiter: asyncio.Future[None] | None = None
        self.done_waiter: asyncio.Future[None] | None = None
        self.committed = False  # the response head went to the client: no retry, no error page
        self.resp_pending: list[bytes] = []
        self.resp_framing = b"length"
        self.tunnel_pending: list[bytes] = []  # client bytes after the upgrade request, before the 101
        self.tunnel_pending_up: list[bytes] = []  # upstream bytes after its 101, before the client has it
        self.expect_continue = False
        self.slow = False  # a body, an upgrade or an Expect: only the task path serves it (http_fast)
        self.drop: frozenset[bytes] | None = http_head.HOP_BY_HOP  # None: a Connection header lists more

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT

    def keep_for_replay(self, framed: bytes) -> None:
        """Remember body bytes sent upstream so a retry can send them again, up to REPLAY_LIMIT."""
        if self.replay is None:
            return
        self.replay_size += len(framed)
        if self.replay_size > REPLAY_LIMIT:
            self.replay = None
        else:
            self.replay.append(framed)


def retry_kind(error: str, status: int = 0) -> tuple[str, ...]:
    """The RetryPolicy ``on`` names an outcome matches ("refused" is also a "connect-failure")."""
    if error == "refused":
        return ("refused", "connect-failure")
    if error:
        return (error,)
    if status in (502, 503, 504):
        return ("gateway-error", "5xx")
    if status >= 500:
        return ("5xx",)
    return ()


def may_retry(req: Request, policy: RetryPolicy, retries: int, kinds: tuple[str, ...], request_sent: bool) -> bool:
    """BALANCING.md: only listed outcomes; a non-idempotent request only if no byte of it was sent; a body
    already streamed past the replay buffer cannot be sent again."""
    if retries >= policy.attempts or not any(k in policy.on for k in kinds):
        return False
    if request_sent and not req.idempotent:
        return False
    if req.websocket:
        return not request_sent
    return not (req.sent_body and req.replay is None)


def backoff(policy: RetryPolicy, retries: int, roll: float) -> float:
    """Jittered exponential backoff (Envoy: base 25 ms, cap 250 ms); ``roll`` in [0, 1)."""
    return min(policy.backoff_max, policy.backoff_base * (2**retries)) * (0.5 + roll / 2)


def affinity_key(
    route: Route, client_ip: str, match_headers: dict[str, str], cookie: bytes, cookies: dict[str, str] | None = None
) -> int | None:
    """The balancing key of the route's hash policy (None: no policy, or the request has no such value).

    ``cookies``: the request's cookies if already parsed (the router may have). The balancing package's hash,
    so the admin explain endpoint picks what the proxy picks for a key."""
    cfg = route.spec.hash
    if cfg is None:
        return None
    if cfg.on == "source_ip":
        text = client_ip
    elif cfg.on == "header":
        text = match_headers.get(cfg.name.lower(), "")
    else:
        text = (cookies or http_head.parse_cookies(cookie)).get(cfg.name, "") if cookie else ""
    return hash_key(text) if text else None


def bounded(timeout: float, deadline: float | None, now: float) -> float | None:
    """One wait's timeout: ``timeout`` (<= 0: none) cut to what is left before the request's ``deadline``."""
    left = None if deadline is None else max(0.0, deadline - now)
    t = timeout if timeout > 0 else None
    if t is None:
        return left
    return t if left is None else min(t, left)
