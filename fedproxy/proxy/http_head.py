"""HTTP/1.1 message heads as bytes: what the proxy forwards, strips and adds (pure: no sockets, no clock).

The parser (httptools/llhttp) gives raw (name, value) pairs; these functions rebuild heads with one join
and no per-request dict of every header. Hop-by-hop headers (RFC 9110 7.6.1: Connection and the names it
lists, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade) never cross the proxy; framing is set
by the proxy for each side. Bodies are re-chunked when their length is unknown (chunk data from the parser,
so trailers are dropped).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from http import HTTPStatus

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the proxy from what it saw, never trusted from the client as they are (appended to instead).
_FORWARDING = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-for", b"forwarded", b"via"})
VIA = b"1.1 fedproxy"
CHUNK_END = b"0\r\n\r\n"

Headers = list[tuple[bytes, bytes]]


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lowercase tokens of every Connection header ("close", "upgrade", extra hop-by-hop names)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    client_ip: str,
    host: bytes,
    request_id: bytes,
    has_request_id: bool,
    chunked: bool,
    websocket: bool,
    scheme: bytes = b"http",
    drop: frozenset[bytes] | None = None,
) -> bytes:
    """The head sent upstream: hop-by-hop stripped, forwarding headers appended, framing set by us.

    ``scheme`` is what the client used to reach this hop (``https`` on a TLS listener). ``drop``: the names
    to strip when the caller knows them (HOP_BY_HOP when there is no Connection header); None: found here."""
    if drop is None:
        drop = HOP_BY_HOP | connection_tokens(headers)
    out = [b"%b %b HTTP/1.1\r\n" % (method, target)]
    xff = b""
    fwd = b""
    via = b""
    for name, value in headers:
        low = name.lower()
        if low in drop:
            continue
        if low in _FORWARDING:
            if low == b"x-forwarded-for":
                xff = xff + b", " + value if xff else value
            elif low == b"forwarded":
                fwd = fwd + b", " + value if fwd else value
            elif low == b"via":
                via = via + b", " + value if via else value
            continue  # X-Forwarded-Proto/-Host are replaced with what this hop saw
        out.append(b"%b: %b\r\n" % (name, value))
    if xff or fwd or via:
        out.append(_forwarding(client_ip, host, scheme, xff, fwd, via))
    else:  # the common case: the same few lines for every request of a client connection
        out.append(forwarding_lines(client_ip, host, scheme))
    if not has_request_id:
        out.append(b"X-Request-Id: %b\r\n" % request_id)
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if websocket:
        out.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def _forwarding(client_ip: str, host: bytes, scheme: bytes, xff: bytes, fwd: bytes, via: bytes) -> bytes:
    """The forwarding headers this hop sends: X-Forwarded-*, Forwarded and Via, appended to what came in."""
    ip = client_ip.encode("ascii")
    node = b'"[%b]"' % ip if b":" in ip else ip
    here = b"for=%b;host=%b;proto=%b" % (node, _quote(host), scheme)
    return b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\nForwarded: %b\r\nVia: %b\r\n" % (
        xff + b", " + ip if xff else ip,
        scheme,
        host,
        fwd + b", " + here if fwd else here,
        via + b", " + VIA if via else VIA,
    )


@lru_cache(maxsize=4096)
def forwarding_lines(client_ip: str, host: bytes, scheme: bytes) -> bytes:
    """The forwarding header lines of a request that brought none: the same for every request of a client."""
    return _forwarding(client_ip, host, scheme, b"", b"", b"")


def _quote(host: bytes) -> bytes:
    # RFC 7239 4: a host with a port or brackets is not a token, so it is quoted.
    return b'"%b"' % host if (b":" in host or b"[" in host) else host


def response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    framing: bytes,
    keep_alive: bool,
    http10: bool,
    upgrade: bool = False,
    drop: frozenset[bytes] | None = None,
) -> bytes:
    """The head sent to the client. ``framing``: b"length" (Content-Length kept), b"chunked", b"none", b"close".
    ``drop`` as for ``request_head``."""
    if drop is None:
        drop = HOP_BY_HOP | connection_tokens(headers)
    out = [b"HTTP/1.1 %d %b\r\n" % (status, reason or _reason(status))]
    via = b""
    for name, value in headers:
        low = name.lower()
        if low in drop:
            continue
        if low == b"via":
            via = via + b", " + value if via else value
            continue
        if low == b"content-length" and framing != b"length":
            continue
        out.append(b"%b: %b\r\n" % (name, value))
    out.append(b"Via: %b\r\n" % (via + b", " + VIA if via else VIA))
    if upgrade:
        out.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    else:
        if framing == b"chunked":
            out.append(b"Transfer-Encoding: chunked\r\n")
        if not keep_alive:
            out.append(b"Connection: close\r\n")
        elif http10:
            out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def forwarded_head(head: bytes, keep_alive: bool) -> bytes:
    """The client's head from an upstream ``head`` as received (HTTP/1.1 status line, CRLF header lines, no
    blank line) that has no hop-by-hop header but a plain Connection and no Via: what ``response_head`` would
    send for a Content-Length response, in two slices and a join."""
    i = head.find(b"\nConnection:")
    if i < 0:
        i = head.lower().find(b"\nconnection:")
    if i >= 0:
        head = head[: i + 1] + head[head.find(b"\n", i + 1) + 1 :]
    return head + (b"Via: 1.1 fedproxy\r\n\r\n" if keep_alive else b"Via: 1.1 fedproxy\r\nConnection: close\r\n\r\n")


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def error_response(status: int, text: str, *, request_id: bytes = b"", keep_alive: bool = False) -> bytes:
    """A complete plain-text response the proxy itself answers (404, 408, 431, 502, 503, 504...)."""
    body = (text.rstrip("\n") + "\n").encode("utf-8", "replace")
    rid = b"X-Request-Id: %b\r\n" % request_id if request_id else b""
    conn = b"" if keep_alive else b"Connection: close\r\n"
    return (
        b"HTTP/1.1 %d %b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%b%bVia: %b\r\n\r\n%b"
        % (status, _reason(status), len(body), rid, conn, VIA, body)
    )


def parse_cookies(header: bytes) -> dict[str, str]:
    """``Cookie: a=1; b=2`` -> {"a": "1", "b": "2"} (first occurrence wins, values unquoted)."""
    jar: dict[str, str] = {}
    for part in header.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in jar:
            jar[name] = value.strip().strip('"')
    return jar
