"""Hostile HTTP/1.1 clients against the full proxy: malformed request lines, huge heads, slowloris and request
smuggling attempts are answered with an error and the connection closed; nothing reaches a backend (the echo
pods count every request they see). Each attack carries a pipelined follow-up request, the one a smuggler
would hide: it must not reach a backend either.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import Proxy, World

pytestmark = pytest.mark.reliability

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
HEAD_LIMIT = 8192

ATTACKS: dict[str, bytes] = {
    # Malformed request lines.
    "garbage": b"GARBAGE\r\n\r\n",
    "no-version": b"GET /\r\n\r\n",
    "bad-version": b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
    "nul-in-target": b"GET /\x00x HTTP/1.1\r\nHost: a\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad-method-char": b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
    "ctl-in-method": b"G\x7fT / HTTP/1.1\r\nHost: a\r\n\r\n",
    "huge-target": b"GET /" + b"a" * (HEAD_LIMIT * 2) + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    # Huge or broken heads.
    "huge-header": b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * (HEAD_LIMIT * 2) + b"\r\n\r\n",
    "many-headers": b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(3000)) + b"\r\n",
    "header-no-colon": b"GET / HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
    # Smuggling: conflicting or obfuscated framing.
    "cl-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "double-cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 40\r\n\r\nabc",
    "cl-negative": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "cl-plus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "cl-hex": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
    "te-obfuscated": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-not-last": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-obs-fold": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te-http10": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk-size-bad": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-negative": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"f" * 40
    + b"\r\nabc\r\n0\r\n\r\n",
    "chunk-no-crlf": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n",
}


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, half-close, read until the proxy closes (or ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        try:
            writer.write_eof()
        except OSError:
            pass
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def start(world: World) -> Proxy:
    return await world.start(
        world.yaml(http_extra=f"\n      max_header_bytes: {HEAD_LIMIT}\n      request_head_timeout: 0.5")
    )


async def test_http_attacks_are_rejected_and_not_forwarded(world: World) -> None:
    proxy = await start(world)
    failures = []
    for name, attack in ATTACKS.items():
        before = world.fleet.web_requests()
        out = await raw_exchange(proxy.http_port, attack + SMUGGLED)
        reached = world.fleet.web_requests() - before
        status = out[:12]
        if reached or not (status.startswith(b"HTTP/1.1 4") or status.startswith(b"HTTP/1.1 5") or out == b""):
            failures.append(f"{name}: backend saw {reached}, client got {out[:60]!r}")
        elif out.count(b"HTTP/1.1 ") > 1:
            failures.append(f"{name}: the pipelined request was answered after the error: {out[:200]!r}")
    assert not failures, "\n".join(failures)
    # The proxy is unharmed and still forwards normal requests.
    assert (await proxy.get())[0] == 200


async def test_well_formed_requests_still_pass(world: World) -> None:
    """The control group: the same shapes, well formed, do reach a backend (so the test above can fail)."""
    proxy = await start(world)
    good = [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ]
    for request in good:
        before = world.fleet.web_requests()
        second = b"GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        out = await raw_exchange(proxy.http_port, request + second)
        assert out.startswith(b"HTTP/1.1 200"), out[:100]
        assert world.fleet.web_requests() - before == 2


async def test_slowloris_gets_408_and_nothing_forwarded(world: World) -> None:
    proxy = await start(world)
    before = world.fleet.web_requests()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.http_port)
    started = time.monotonic()
    try:
        # One byte every 50 ms keeps the connection "active" but never completes the head.
        head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"y" * 200
        out = b""
        for byte in head:
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                break
            try:
                out += await asyncio.wait_for(reader.read(1024), 0.05)
            except TimeoutError:
                continue
            if out or reader.at_eof():
                break
        out += await asyncio.wait_for(reader.read(), 2)
    finally:
        writer.close()
    assert out.startswith(b"HTTP/1.1 408"), out[:80]
    assert time.monotonic() - started < 5, "the head deadline is for the whole head, not per byte"
    assert world.fleet.web_requests() == before
    # Many idle connections that never send anything are closed too.
    conns = [await asyncio.open_connection("127.0.0.1", proxy.http_port) for _ in range(20)]
    try:
        for r, _ in conns:
            data = await asyncio.wait_for(r.read(), 3)
            assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:80]
    finally:
        for _, w in conns:
            w.close()
    assert (await proxy.get())[0] == 200
