"""TLS passthrough: a TCP listener with sni_routes splices by the ClientHello's server name (real sockets)."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import pytest

from fedproxy.config import ClusterConfig, Config, TcpConfig, TcpListener
from fedproxy.model import ServiceKey
from fedproxy.proxy.tcp import DECODE_ERROR_ALERT, TcpProxyServer

from .conftest import Pki, peer_common_name, serving_state

A, B, DEFAULT = ServiceKey("demo", "a"), ServiceKey("demo", "b"), ServiceKey("demo", "c")


@pytest.fixture
async def passthrough(ca: Pki, tls_backend: Any) -> AsyncIterator[TcpProxyServer]:
    ports = {
        A: await tls_backend("backend-a", ca.issue("a.test")),
        B: await tls_backend("backend-b", ca.issue("wild.b.test", dns=("*.b.test",))),
        DEFAULT: await tls_backend("backend-c", ca.issue("c.test")),
    }
    lst = TcpListener(port=0, address="127.0.0.1", service=DEFAULT,
                      sni_routes=MappingProxyType({"a.test": A, "*.b.test": B}))  # fmt: skip
    config = Config(clusters=(ClusterConfig("c1", kubeconfig="x", local=True),), tcp=TcpConfig(listeners=(lst,)))
    state = serving_state(config, {(k.namespace, k.name): [p] for k, p in ports.items()})
    server = TcpProxyServer(lst, config, lambda: state, lambda ep, ok: None)  # type: ignore[arg-type,return-value]
    await server.start()
    yield server
    await server.close()


async def tls_hello(port: int, name: str, ca: Pki | None) -> tuple[str, bytes]:
    """Connect through the proxy with TLS to ``name``: (peer certificate CN, first line the backend sent)."""
    if ca is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx = ca.client_context()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    try:
        line = await reader.readline()
        writer.write(b"ping\n")
        assert await reader.readline() == b"ping\n"
        return peer_common_name(writer.get_extra_info("ssl_object")), line
    finally:
        writer.close()


async def test_routes_by_sni_without_terminating(ca: Pki, passthrough: TcpProxyServer) -> None:
    # The client verifies the *backend's* certificate: the proxy never terminates TLS.
    assert await tls_hello(passthrough.port, "a.test", ca) == ("a.test", b"backend-a\n")
    assert await tls_hello(passthrough.port, "x.b.test", ca) == ("wild.b.test", b"backend-b\n")
    assert await tls_hello(passthrough.port, "c.test", ca) == ("c.test", b"backend-c\n")  # unmatched -> service
    assert await tls_hello(passthrough.port, "b.test", None) == ("c.test", b"backend-c\n")  # wildcard is 1 label


async def raw(port: int, data: bytes, eof: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if eof:
        writer.write_eof()
    async with asyncio.timeout(5):
        out = await reader.read()
    writer.close()
    return out


async def test_malformed_hellos_are_closed(ca: Pki, passthrough: TcpProxyServer) -> None:
    # A handshake record whose message is not a ClientHello: a decode_error alert, then close.
    assert await raw(passthrough.port, b"\x16\x03\x01\x00\x04\x02\x00\x00\x00") == DECODE_ERROR_ALERT
    assert await raw(passthrough.port, b"GET / HTTP/1.1\r\n\r\n") == b""  # not TLS: just closed
    assert await raw(passthrough.port, b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c" + bytes(10)) == b""  # truncated + EOF
    assert await raw(passthrough.port, os.urandom(3000)) in (b"", DECODE_ERROR_ALERT)
    assert passthrough.stats()["bad_client_hello"] == 4
    # The listener still serves.
    assert await tls_hello(passthrough.port, "a.test", ca) == ("a.test", b"backend-a\n")


async def test_fragmented_hello_is_routed(ca: Pki, passthrough: TcpProxyServer) -> None:
    """A ClientHello split into one-byte-ish records and sent in pieces still reaches the right backend."""
    from .test_clienthello import refragment

    ctx = ca.client_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="a.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = refragment(outgoing.read(), [5, 1, 100])
    reader, writer = await asyncio.open_connection("127.0.0.1", passthrough.port)
    for i in range(0, len(hello), 7):
        writer.write(hello[i : i + 7])
        await writer.drain()
    # Finish the handshake by hand over the memory BIOs.
    async with asyncio.timeout(5):
        while True:
            incoming.write(await reader.read(65536))
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
        writer.write(outgoing.read())
        assert peer_common_name(obj) == "a.test"
        data = b""
        while b"\n" not in data:
            try:
                data += obj.read()
            except ssl.SSLWantReadError:
                incoming.write(await reader.read(65536))
    assert data.startswith(b"backend-a\n")
    writer.close()
