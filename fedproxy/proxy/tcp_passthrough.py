"""TLS passthrough on a TCP listener (``sni_routes``, docs/tls.md): route by the ClientHello's server name.

The client is read (not paused) until its ClientHello is whole (``tcp_splice.Client.data_received`` parses
what has arrived and completes the connection's ``hello`` future); the bytes are kept and written to the
upstream first, so the backend terminates TLS itself. The server name picks the pool (exact, ``*.suffix``,
default); a malformed hello gets a TLS alert and the client is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from ..balancing import PoolSpec, tcp_spec
from ..config import Config, TcpListener
from ..tls.clienthello import ClientHello, HelloError
from ..tls.names import NameTable

if TYPE_CHECKING:
    from .tcp_splice import Client

log = logging.getLogger("fedproxy.proxy.tcp")

HELLO_TIMEOUT = 10.0  # s a passthrough client has to send its ClientHello (like request_head_timeout)
# TLS alert record: fatal (2), decode_error (50), sent to a client whose ClientHello we could not parse.
DECODE_ERROR_ALERT = bytes((21, 3, 3, 0, 2, 2, 50))


def sni_table(listener: TcpListener, config: Config, default: PoolSpec) -> NameTable[PoolSpec] | None:
    """Server name -> pool spec for a passthrough listener (None when it has no ``sni_routes``); names that
    match no route go to ``default`` (the listener's own service) unless the routes name a default."""
    if not listener.sni_routes:
        return None
    table = NameTable(
        (name, tcp_spec(dataclasses.replace(listener, service=svc), config))
        for name, svc in listener.sni_routes.items()
    )
    if table.default is None:
        table.default = default
    return table


async def route_by_hello(conn: Client, table: NameTable[PoolSpec], fallback: PoolSpec) -> PoolSpec | None:
    """The pool spec for ``conn``'s server name, once its ClientHello is whole; None (the client is closed,
    with a TLS alert when what it sent was not a valid hello) when the hello is bad, cut short or late."""
    assert conn.hello is not None
    try:
        async with asyncio.timeout(HELLO_TIMEOUT):
            found = await conn.hello
    except TimeoutError:
        found = HelloError("timeout")
    if isinstance(found, ClientHello):
        return table.lookup(found.server_name) or fallback
    counts = conn.s.owner.counts
    counts["bad_client_hello"] = counts.get("bad_client_hello", 0) + 1
    log.info("event=tcp_bad_client_hello listener=%s reason=%s bytes=%d", conn.s.name, found.reason, len(conn.early))
    t = conn.transport
    if found.reason not in ("eof", "timeout", "not_tls") and t is not None and not t.is_closing():
        t.write(DECODE_ERROR_ALERT)  # RFC 8446 6.2: tell a TLS client why, then close
    conn.finish("bad_client_hello")
    return None
