"""The request side of one proxied HTTP/2 stream, with no sockets: what the client asked, what goes upstream.

Theory of operation: ``Call`` is created once per request stream from its header block. It keeps the pseudo-headers
and the few fields the proxy acts on (request id, cookies, gRPC or not), the request body taken so far as a replay
buffer for retries (up to REPLAY_LIMIT, as the HTTP/1.1 path), and the outcome the access log reports (status,
grpc-status, bytes). ``upstream_headers`` builds the header block sent to an HTTP/2 upstream (RFC 9113 8.2.2
connection-specific fields dropped, X-Forwarded-* added); the balancing key is ``http_request.affinity_key``,
shared with HTTP/1.1. The HTTP/1.1 upstream head is built by ``http_head.request_head`` (h2_to_h1.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import grpc_status
from .h2_stream import Headers
from .http_request import REPLAY_LIMIT

if TYPE_CHECKING:
    from .h2_protocol import H2ServerProtocol

# RFC 9113 8.2.2: connection-specific fields never cross an HTTP/2 hop.
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})


class Call:
    """Per-stream state: the request as received, its replay buffer, and the response outcome."""

    def __init__(self, headers: Headers, body_done: bool, started: float) -> None:
        self.started = started
        self.method = self.scheme = self.authority = self.path = b""
        self.headers: Headers = []  # regular fields, lowercase names (h2 guarantees it)
        self.request_id = b""
        self.has_request_id = False
        self.cookie = b""
        for name, value in headers:
            if name.startswith(b":"):
                if name == b":method":
                    self.method = value
                elif name == b":path":
                    self.path = value
                elif name == b":authority":
                    self.authority = value
                elif name == b":scheme":
                    self.scheme = value
                continue
            if name == b"host" and not self.authority:
                self.authority = value
            elif name == b"x-request-id":
                self.request_id, self.has_request_id = value, True
            elif name == b"cookie":  # h2 may split cookies into several fields (RFC 9113 8.2.3)
                self.cookie = self.cookie + b"; " + value if self.cookie else value
            self.headers.append((name, value))
        if not self.has_request_id:
            self.request_id = os.urandom(8).hex().encode("ascii")
        self.grpc = grpc_status.is_grpc(self.headers)
        self.body_done = body_done
        self.no_body = body_done  # END_STREAM on the request headers
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.consumed = False  # any request body byte was taken from the client stream
        self.trailers: Headers | None = None
        self.body_in = self.bytes_out = 0
        self.status = 0
        self.grpc_status: int | None = None
        self.committed = False
        self.data_sent = False

    @property
    def path_only(self) -> bytes:
        q = self.path.find(b"?")
        return self.path if q < 0 else self.path[:q]

    def keep(self, data: bytes) -> None:
        self.consumed = True
        self.body_in += len(data)
        if self.replay is not None:
            self.replay_size += len(data)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
            else:
                self.replay.append(data)

    def replayable(self) -> bool:
        return self.replay is not None or not self.consumed


def upstream_headers(call: Call, conn: H2ServerProtocol, tls: bool) -> Headers:
    out: Headers = [(b":method", call.method), (b":scheme", b"https" if tls else b"http"),
                    (b":authority", call.authority), (b":path", call.path)]  # fmt: skip
    xff = b""
    for name, value in call.headers:
        if name in CONNECTION_SPECIFIC or name == b"host" or (name == b"te" and value != b"trailers"):
            continue
        if name == b"x-forwarded-for":
            xff = xff + b", " + value if xff else value
            continue
        out.append((name, value))
    ip = conn.client_ip.encode("ascii")
    out.append((b"x-forwarded-for", xff + b", " + ip if xff else ip))
    out.append((b"x-forwarded-proto", conn.scheme))
    if not call.has_request_id:
        out.append((b"x-request-id", call.request_id))
    return out
