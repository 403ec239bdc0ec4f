"""Forwarding of names outside the clusterset domain to the configured upstreams (``dns.forward``; I/O).

Only used when ``dns.forward`` is set; otherwise such names are REFUSED. Each upstream is tried in order over
UDP with a short timeout and the first reply is relayed unchanged (it carries the client's own ID, since the
query is sent as received). When the client asked over TCP and an upstream's UDP reply has TC set, the same
upstream is asked again over TCP (RFC 7766 5), so the client gets the whole answer; over UDP the truncated reply
is relayed and the client retries over TCP itself.
"""

from __future__ import annotations

import asyncio

FORWARD_TIMEOUT = 2.0  # s per upstream; a stub resolver retries after ~5 s, so two upstreams fit
TC = 0x02  # in the third header byte


def parse_upstream(text: str) -> tuple[str, int]:
    """``"10.0.0.10"``, ``"10.0.0.10:5353"``, ``"[::1]:53"`` or ``"::1"`` -> (host, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host.rstrip("]"), int(port or 53)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


class _Reply(asyncio.DatagramProtocol):
    def __init__(self, want_id: bytes) -> None:
        self.want_id = want_id
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        # Only a response to this query: an off-path spoofer has to guess the ID and our ephemeral port.
        if data[:2] == self.want_id and len(data) >= 12 and data[2] & 0x80 and not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def _tcp(query: bytes, host: str, port: int) -> bytes:
    """One query over a fresh TCP connection (2-byte length framing); the reply must carry the query's ID."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(len(query).to_bytes(2, "big") + query)
        await writer.drain()
        size = int.from_bytes(await reader.readexactly(2), "big")
        reply = await reader.readexactly(size)
        if reply[:2] != query[:2] or len(reply) < 12:
            raise OSError("TCP reply does not answer the query")
        return reply
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def forward(
    query: bytes, upstreams: tuple[str, ...], timeout: float = FORWARD_TIMEOUT, tcp_on_truncation: bool = False
) -> bytes | None:
    """The first upstream's reply to ``query``, or None when none answered in time.

    ``tcp_on_truncation``: a UDP reply with TC set is replaced by the same upstream's TCP reply (kept as is when
    TCP fails: the client still learns that the answer is truncated).
    """
    loop = asyncio.get_running_loop()
    for upstream in upstreams:
        host, port = parse_upstream(upstream)
        try:
            transport, proto = await loop.create_datagram_endpoint(lambda: _Reply(query[:2]), remote_addr=(host, port))
        except OSError:
            continue
        try:
            transport.sendto(query)
            reply = await asyncio.wait_for(proto.done, timeout)
        except (TimeoutError, OSError):
            continue
        finally:
            transport.close()
        if tcp_on_truncation and reply[2] & TC:
            try:
                return await asyncio.wait_for(_tcp(query, host, port), timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                pass
        return reply
    return None
