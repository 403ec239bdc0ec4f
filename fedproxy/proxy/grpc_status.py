"""gRPC status codes as the proxy sees them (pure: no sockets, no clock).

A gRPC response is an HTTP/2 response with ``content-type: application/grpc...`` whose outcome is the
``grpc-status`` field, sent either in the trailers or, for a *Trailers-Only* response, in the one header block
(gRPC over HTTP/2 spec, "Responses"). The proxy reads it for three things: the access log and metrics, the
retry decision (UNAVAILABLE before any message means the call was not processed), and passive health.
When the proxy itself fails a gRPC call it answers Trailers-Only with the status gRPC's own HTTP-to-gRPC mapping
gives (doc/http-grpc-status-mapping.md), so gRPC clients see UNAVAILABLE rather than a bare HTTP 503.
"""

from __future__ import annotations

from collections.abc import Iterable

OK = 0
CANCELLED = 1
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
INTERNAL = 13
UNIMPLEMENTED = 12
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# Retried by the proxy when no response message went to the client yet: UNAVAILABLE is the code gRPC
# defines as "most likely a transient condition, safe to retry" (the other codes may mean the call ran).
RETRIABLE = frozenset({UNAVAILABLE})

# grpc/doc/http-grpc-status-mapping.md: HTTP status of a non-gRPC answer -> the status a client reports.
_HTTP_TO_GRPC = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
                 429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}  # fmt: skip

Headers = Iterable[tuple[bytes, bytes]]


def is_grpc(headers: Headers) -> bool:
    """True for a request or response whose content-type is application/grpc (with any +proto/+json suffix)."""
    for name, value in headers:
        if name == b"content-type":
            return value.lower().startswith(b"application/grpc")
    return False


def status_of(headers: Headers) -> int | None:
    """The ``grpc-status`` in a header or trailer block, or None when absent or not a number."""
    for name, value in headers:
        if name == b"grpc-status":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def from_http(status: int) -> int:
    """The gRPC status a client derives from an HTTP status when no grpc-status came (mapping doc)."""
    if status == 200:
        return UNKNOWN  # a 200 without grpc-status is a broken server
    return _HTTP_TO_GRPC.get(status, UNKNOWN)


def retriable(grpc_status: int | None, data_sent: bool) -> bool:
    """A gRPC outcome the proxy may retry on another endpoint: UNAVAILABLE and no message passed on yet."""
    return grpc_status in RETRIABLE and not data_sent


def encode_message(text: str) -> bytes:
    """grpc-message value: percent-encoded UTF-8 (spec: every byte outside 0x20-0x7E and '%' is encoded)."""
    out = bytearray()
    for b in text.encode("utf-8"):
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def trailers_only(http_status: int, message: str) -> list[tuple[bytes, bytes]]:
    """The header block of a Trailers-Only gRPC error answering for an HTTP ``http_status`` failure."""
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % from_http(http_status)),
        (b"grpc-message", encode_message(message)),
    ]
