"""ClientHello parsing for SNI routing: the server name and ALPN list from a client's first bytes (pure).

Theory of operation: the caller keeps every byte it has read from the client and calls
:func:`parse_client_hello` on all of them after each read. TLS records (RFC 8446 5.1) are walked and their
handshake fragments joined, because a ClientHello may be split over several records (large key shares,
deliberate fragmentation by middlebox-evading clients) and a record over several reads. The result is a value:

- :class:`ClientHello` once the whole message is there (``server_name`` "" when the client sent none);
- :class:`Incomplete` while more bytes are needed (the caller reads on, up to its own size and time limits);
- :class:`HelloError` for anything that is not a well-formed ClientHello (the caller closes the connection).

Nothing here raises on bad input: every length is checked before it is used, and a final guard turns an
unforeseen slicing error into a :class:`HelloError` too. Only the fields routing needs are decoded; the rest of
the message (ciphers, key shares) is skipped by its length prefix and left to the TLS server behind us.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_HANDSHAKE = 22  # TLS ContentType handshake (RFC 8446 5.1)
HANDSHAKE_CLIENT_HELLO = 1  # HandshakeType client_hello (RFC 8446 4)
EXT_SERVER_NAME = 0  # RFC 6066 3
EXT_ALPN = 16  # RFC 7301 3.1
MAX_RECORD = 1 << 14  # TLSPlaintext.length limit (RFC 8446 5.1)
# A ClientHello larger than this is refused: real ones are 0.5-2 KiB (a few KiB with post-quantum key shares);
# the bound keeps what a client can make us buffer before we pick a backend small.
MAX_HELLO = 64 * 1024


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What routing needs from a complete ClientHello."""

    server_name: str  # lowercase host_name from SNI, "" when absent
    alpn: tuple[str, ...] = ()  # protocols the client offers, in its order
    legacy_version: int = 0x0303  # ClientHello.legacy_version (0x0303 for TLS 1.2 and 1.3)


@dataclass(frozen=True, slots=True)
class Incomplete:
    """More bytes are needed; ``have`` is how many of the handshake message's bytes arrived so far."""

    have: int = 0


@dataclass(frozen=True, slots=True)
class HelloError:
    """Not a well-formed TLS ClientHello; ``reason`` is a short token for logs and metrics."""

    reason: str


ParseResult = ClientHello | Incomplete | HelloError


def parse_client_hello(data: bytes, max_size: int = MAX_HELLO) -> ParseResult:
    """Parse the ClientHello at the start of ``data`` (everything read from the client so far). Never raises."""
    try:
        return _parse(bytes(data), max_size)
    except (IndexError, ValueError, UnicodeDecodeError):  # pragma: no cover - every length is checked first
        return HelloError("malformed")


def _parse(data: bytes, max_size: int) -> ParseResult:
    message = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            if pos == 0 and data and data[0] != RECORD_HANDSHAKE:
                return HelloError("not_tls")  # fail on the first byte: plaintext HTTP, SSLv2 hellos...
            return Incomplete(len(message))
        ctype, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if ctype != RECORD_HANDSHAKE:
            return HelloError("not_tls" if pos == 0 else "unexpected_record")
        if major != 3:
            return HelloError("bad_record_version")
        if length == 0 or length > MAX_RECORD:
            return HelloError("bad_record_length")
        end = pos + 5 + length
        message += data[pos + 5 : end]
        complete = end <= len(data)
        pos = end
        if len(message) >= 4:
            if message[0] != HANDSHAKE_CLIENT_HELLO:
                return HelloError("not_client_hello")
            body_len = int.from_bytes(message[1:4], "big")
            if body_len > max_size:
                return HelloError("too_large")
            if len(message) >= 4 + body_len:
                return _client_hello(bytes(message[4 : 4 + body_len]))
        if not complete:
            return Incomplete(len(message))
        if len(message) > max_size:
            return HelloError("too_large")


class _Reader:
    """Bounds-checked reads of length-prefixed fields; ``ok`` turns False on the first overrun."""

    __slots__ = ("buf", "pos", "end", "ok")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf, self.pos, self.end, self.ok = buf, pos, len(buf) if end is None else end, True

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.left():
            self.ok = False
            self.pos = self.end
            return b""
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int) -> int:
        raw = self.take(size)
        return int.from_bytes(raw, "big") if len(raw) == size else 0

    def vector(self, len_size: int) -> _Reader:
        """The sub-reader over a vector with a ``len_size``-byte length prefix."""
        n = self.uint(len_size)
        start = self.pos
        self.take(n)
        return _Reader(self.buf, start, start + n if self.ok else start)


def _client_hello(body: bytes) -> ClientHello | HelloError:
    r = _Reader(body)
    version = r.uint(2)
    r.take(32)  # random
    session_id = r.vector(1)
    suites = r.vector(2)
    compression = r.vector(1)
    if not r.ok or session_id.left() > 32:
        return HelloError("malformed")
    if suites.left() < 2 or suites.left() % 2 or compression.left() < 1:
        return HelloError("malformed")
    if version >> 8 != 3:
        return HelloError("bad_version")
    server_name = ""
    alpn: tuple[str, ...] = ()
    if r.left() == 0:
        return ClientHello("", (), version)  # no extensions at all (allowed before TLS 1.3)
    exts = r.vector(2)
    if not r.ok or r.left():
        return HelloError("malformed")
    seen: set[int] = set()
    while exts.left():
        etype = exts.uint(2)
        data = exts.vector(2)
        if not exts.ok:
            return HelloError("malformed")
        if etype in seen:
            return HelloError("duplicate_extension")  # RFC 8446 4.2
        seen.add(etype)
        if etype == EXT_SERVER_NAME:
            name = _server_name(data)
            if isinstance(name, HelloError):
                return name
            server_name = name
        elif etype == EXT_ALPN:
            protocols = _alpn(data)
            if isinstance(protocols, HelloError):
                return protocols
            alpn = protocols
    return ClientHello(server_name, alpn, version)


def _server_name(r: _Reader) -> str | HelloError:
    names = r.vector(2)
    if not r.ok or r.left() or names.left() == 0:
        return HelloError("bad_sni")
    host = ""
    while names.left():
        kind = names.uint(1)
        value = names.vector(2)
        if not names.ok:
            return HelloError("bad_sni")
        if kind == 0 and not host:  # host_name; RFC 6066 allows one name per type
            raw = value.take(value.left())
            if not raw or not raw.isascii() or any(c <= 0x20 or c == 0x7F for c in raw):
                return HelloError("bad_sni")
            host = raw.decode("ascii").lower().rstrip(".")
    return host


def _alpn(r: _Reader) -> tuple[str, ...] | HelloError:
    protocols = r.vector(2)
    if not r.ok or r.left() or protocols.left() == 0:
        return HelloError("bad_alpn")
    out = []
    while protocols.left():
        p = protocols.vector(1)
        if not protocols.ok or p.left() == 0:
            return HelloError("bad_alpn")
        out.append(p.take(p.left()).decode("latin-1"))
    return tuple(out)
