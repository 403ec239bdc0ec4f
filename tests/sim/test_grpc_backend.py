"""The demo's gRPC pods (fedproxy.sim.grpc_backend) against a real grpcio client and raw bytes, on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from fedproxy.sim.grpc_backend import ECHO, HEALTH_CHECK, SERVING, GrpcEcho, frame


@pytest.fixture
async def pod() -> AsyncIterator[GrpcEcho]:
    server = GrpcEcho("127.0.0.1", 0, cluster="east-1", pod="pod-1")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_health_echo_and_unknown_methods_over_grpcio(pod: GrpcEcho) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{pod.port}") as channel:
        call = channel.unary_unary(HEALTH_CHECK.decode())(b"\n\x03any", timeout=5)
        assert await call == SERVING
        assert dict(await call.initial_metadata())["x-backend"] == "east-1/pod-1"
        assert await channel.unary_unary(ECHO.decode())(b"ping" * 1000, timeout=5) == b"ping" * 1000
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/demo.Echo/Missing")(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert pod.calls == 2


async def _h2_call(port: int, body: bytes) -> dict[bytes, bytes]:
    """One raw h2c call; the response headers and trailers merged."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    head = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", ECHO),
            (b"content-type", b"application/grpc"), (b"te", b"trailers")]  # fmt: skip
    conn.send_headers(1, head)
    conn.send_data(1, body, end_stream=True)
    writer.write(conn.data_to_send())
    seen: dict[bytes, bytes] = {}
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, "closed before the call ended"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    seen.update(ev.headers)  # type: ignore[arg-type]
                if isinstance(ev, h2.events.StreamEnded):
                    return seen
            writer.write(conn.data_to_send())
    finally:
        writer.close()


async def test_a_message_that_is_not_one_whole_uncompressed_frame_is_internal(pod: GrpcEcho) -> None:
    assert (await _h2_call(pod.port, frame(b"ok")))[b"grpc-status"] == b"0"
    assert (await _h2_call(pod.port, b"\x01" + frame(b"ok")[1:]))[b"grpc-status"] == b"13"  # compressed flag
    assert (await _h2_call(pod.port, frame(b"ok")[:-1]))[b"grpc-status"] == b"13"  # truncated


async def test_garbage_gets_goaway_and_the_server_keeps_serving(pod: GrpcEcho) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", pod.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not the HTTP/2 preface
    received = b""
    while True:
        data = await asyncio.wait_for(reader.read(65536), 5)
        if not data:
            break
        received += data
    writer.close()
    # The server's SETTINGS, then a GOAWAY frame (type 7) with PROTOCOL_ERROR (1), then the close.
    frames = []
    while len(received) >= 9:
        length = int.from_bytes(received[:3], "big")
        frames.append((received[3], received[9 : 9 + length]))
        received = received[9 + length :]
    goaway = [payload for kind, payload in frames if kind == 7]
    assert goaway and int.from_bytes(goaway[0][4:8], "big") == 1
    assert (await _h2_call(pod.port, frame(b"still here")))[b"grpc-status"] == b"0"
