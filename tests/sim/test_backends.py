"""Loopback backends answer on their own 127.x addresses and say who they are."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from fedproxy.sim.backends import HttpEcho, TcpEcho


@pytest.fixture
async def http_echo() -> AsyncIterator[HttpEcho]:
    server = HttpEcho("127.0.9.5", 0, cluster="east-1", pod="pod-1")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_http_echo_identifies_itself(http_echo: HttpEcho) -> None:
    url = f"{http_echo.url}/hello?x=1"
    async with aiohttp.ClientSession() as http, http.get(url, headers={"x-test": "1"}) as resp:
        assert resp.headers["x-backend"] == "east-1/pod-1"
        body = await resp.json()
    assert body["cluster"] == "east-1" and body["pod"] == "pod-1"
    assert body["path"] == "/hello" and body["method"] == "GET" and body["query"] == {"x": "1"}
    assert body["headers"]["x-test"] == "1"
    assert http_echo.requests == 1


async def test_http_echo_special_routes(http_echo: HttpEcho) -> None:
    payload = b"y" * 100_000
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{http_echo.url}/status/503") as resp:
            assert resp.status == 503 and resp.headers["x-backend"] == "east-1/pod-1"
        async with http.get(f"{http_echo.url}/stream?bytes=200000") as resp:
            assert len(await resp.read()) == 200_000
        async with http.post(f"{http_echo.url}/echo", data=payload) as resp:
            assert await resp.read() == payload
        async with http.post(f"{http_echo.url}/upload", data=payload) as resp:
            body = await resp.json()
            assert body["body_sha256"] == hashlib.sha256(payload).hexdigest() and body["body_length"] == 100_000
        with pytest.raises(asyncio.TimeoutError):
            await http.get(f"{http_echo.url}/sleep?ms=2000", timeout=aiohttp.ClientTimeout(total=0.1))
        async with http.ws_connect(f"{http_echo.url}/ws") as ws:
            await ws.send_str("ping")
            assert (await ws.receive_str()) == "ping"


async def test_tcp_echo_prefix_and_echo() -> None:
    server = TcpEcho("127.0.9.6", 0, prefix=b"west-1/pod-3\n")
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.9.6", server.port)
        assert await reader.readline() == b"west-1/pod-3\n"
        writer.write(b"hello\n")
        assert await reader.readline() == b"hello\n"
        writer.close()
        await writer.wait_closed()
    finally:
        await server.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.9.6", server.port)


def test_backends_refuse_non_loopback() -> None:
    with pytest.raises(ValueError):
        HttpEcho("10.0.0.1", 80)
    with pytest.raises(ValueError):
        TcpEcho("0.0.0.0", 7)
