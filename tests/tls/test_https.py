"""TLS termination on the HTTP listener and TLS to upstreams, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import fedproxy.proxy.http as http_mod
from fedproxy.config import (
    ClusterConfig,
    Config,
    HttpConfig,
    HttpListener,
    HttpRoute,
    TlsCertificate,
    TlsConfig,
    UpstreamTls,
)
from fedproxy.model import ServiceKey
from fedproxy.proxy.http import HttpProxyServer
from fedproxy.sim.backends import HttpEcho

from .conftest import Pem, Pki, peer_common_name, serving_state

WEB = ServiceKey("demo", "web")
CLUSTERS = (ClusterConfig("c1", kubeconfig="unused", local=True),)


def listener(*pems: Pem, routes: tuple[HttpRoute, ...] = (HttpRoute(WEB),), tls: bool = True) -> HttpListener:
    certs = tuple(TlsCertificate(p.cert_file, p.key_file) for p in pems)
    return HttpListener(port=0, address="127.0.0.1", routes=routes, tls=TlsConfig(certs) if tls else None)


@pytest.fixture
async def proxy() -> AsyncIterator[Callable[..., Awaitable[HttpProxyServer]]]:
    started: list[HttpProxyServer] = []

    async def make(lst: HttpListener, ports: dict[ServiceKey, list[int]]) -> HttpProxyServer:
        config = Config(clusters=CLUSTERS, http=HttpConfig(listeners=(lst,)))
        state = serving_state(config, {(k.namespace, k.name): v for k, v in ports.items()})
        server = HttpProxyServer(lst, config, lambda: state, lambda ep, ok: None)  # type: ignore[arg-type,return-value]
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.close()


@pytest.fixture
async def echo() -> AsyncIterator[HttpEcho]:
    pod = HttpEcho("127.0.0.1", 0, cluster="c1", pod="p1")
    await pod.start()
    yield pod
    await pod.stop()


class Client:
    """One TLS connection to the proxy speaking keep-alive HTTP/1.1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @property
    def sslobj(self) -> Any:
        return self.writer.get_extra_info("ssl_object")

    async def get(self, host: str, path: str = "/") -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
        )
        return status, head + await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


async def connect(port: int, name: str, ca: Pki | None = None, alpn: tuple[str, ...] = ("http/1.1",)) -> Client:
    if ca is not None:
        ctx = ca.client_context()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    return Client(reader, writer)


async def test_sni_picks_the_certificate(ca: Pki, proxy: Any, echo: HttpEcho) -> None:
    a = ca.issue("a.test")
    b = ca.issue("wild.b.test", dns=("*.b.test",))
    server = await proxy(listener(a, b), {WEB: [echo.port]})
    for name, want in (("a.test", "a.test"), ("x.b.test", "wild.b.test"), ("A.TEST", "a.test")):
        c = await connect(server.port, name, ca)  # verifies chain and name
        assert peer_common_name(c.sslobj) == want
        status, body = await c.get(name)
        assert status == 200 and b"x-backend: c1/p1" in body.lower()
        assert b'"x-forwarded-proto": "https"' in body.lower() and b"proto=https" in body.lower()
        await c.close()
    # An unknown name (and no name at all) gets the default: the first certificate.
    for name in ("other.test", None):
        c = await connect(server.port, name, None)  # type: ignore[arg-type]
        assert peer_common_name(c.sslobj) == "a.test"
        await c.close()


async def test_alpn_announces_only_what_the_listener_serves(ca: Pki, proxy: Any, echo: HttpEcho) -> None:
    server = await proxy(listener(ca.issue("a.test")), {WEB: [echo.port]})
    c = await connect(server.port, "a.test", ca, alpn=("http/1.1",))
    assert c.sslobj.selected_alpn_protocol() == "http/1.1"
    await c.close()
    c = await connect(server.port, "a.test", ca, alpn=("h2", "http/1.1"))
    assert c.sslobj.selected_alpn_protocol() in HttpProxyServer.ALPN_SUPPORTED
    await c.close()


async def test_min_version_tls13(ca: Pki, proxy: Any, echo: HttpEcho) -> None:
    a = ca.issue("a.test")
    lst = HttpListener(port=0, address="127.0.0.1", routes=(HttpRoute(WEB),),
                       tls=TlsConfig((TlsCertificate(a.cert_file, a.key_file),), min_version="TLS1.3"))  # fmt: skip
    server = await proxy(lst, {WEB: [echo.port]})
    ctx = ca.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx, server_hostname="a.test")
    c = await connect(server.port, "a.test", ca)
    assert c.sslobj.version() == "TLSv1.3"
    await c.close()


def _copy(src: str, dst: str) -> None:
    Path(dst).write_bytes(Path(src).read_bytes())


async def test_certificate_swap_serves_new_connections_old_ones_keep_working(
    ca: Pki, proxy: Any, echo: HttpEcho, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_mod, "TLS_POLL", 0.05)
    a = ca.issue("a.test", file_stem="a")
    lst = listener(a)
    server = await proxy(lst, {WEB: [echo.port]})
    old = await connect(server.port, "a.test", ca)
    assert peer_common_name(old.sslobj) == "a.test"
    assert (await old.get("a.test"))[0] == 200

    # 1. Through update() (config reload): same paths, new content.
    ca.issue("a.test-v2", dns=("a.test",), file_stem="a")
    server.update(lst, server.config)
    new = await connect(server.port, "a.test", ca)
    assert peer_common_name(new.sslobj) == "a.test-v2"
    await new.close()
    assert (await old.get("a.test"))[0] == 200  # the old connection still works...
    assert peer_common_name(old.sslobj) == "a.test"  # ...with the certificate it negotiated

    # 2. Changed on disk only: the file watch picks it up.
    ca.issue("a.test-version-3", dns=("a.test",), file_stem="a")
    for _ in range(100):
        c = await connect(server.port, "a.test", ca)
        cn = peer_common_name(c.sslobj)
        await c.close()
        if cn == "a.test-version-3":
            break
        await asyncio.sleep(0.05)
    assert cn == "a.test-version-3"
    assert (await old.get("a.test"))[0] == 200

    # 3. A broken pair on disk (key of another certificate) keeps the last good one.
    other = ca.issue("other")
    _copy(other.key_file, a.key_file)
    server.update(lst, server.config)
    await asyncio.sleep(0.2)
    c = await connect(server.port, "a.test", ca)
    assert peer_common_name(c.sslobj) == "a.test-version-3"
    await c.close()
    await old.close()


async def test_garbage_on_the_tls_listener_is_closed(ca: Pki, proxy: Any, echo: HttpEcho) -> None:
    server = await proxy(listener(ca.issue("a.test")), {WEB: [echo.port]})
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05\x01\x00\x00\x01", bytes(range(256))):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(junk)
        writer.write_eof()  # a truncated hello would otherwise wait for the handshake timeout (by design)
        async with asyncio.timeout(5):
            await reader.read()  # an alert and/or EOF, not a hang
        writer.close()
    c = await connect(server.port, "a.test", ca)
    assert (await c.get("a.test"))[0] == 200
    await c.close()


# --- Upstream TLS ------------------------------------------------------------------------------------------


class _HttpsPod(asyncio.Protocol):
    """A minimal HTTPS backend: answers each request with whether this TLS session was resumed."""

    def __init__(self, log: list[bool]) -> None:
        self.log = log
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.log.append(bool(transport.get_extra_info("ssl_object").session_reused))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            body = f"resumed={self.log[-1]}".encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
async def https_pod(ca: Pki) -> AsyncIterator[tuple[int, list[bool]]]:
    pem = ca.issue("backend.test", dns=("backend.test",), ips=("127.0.0.1",))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem.cert_file, pem.key_file)
    log: list[bool] = []
    server = await asyncio.get_running_loop().create_server(lambda: _HttpsPod(log), "127.0.0.1", 0, ssl=ctx)
    yield int(server.sockets[0].getsockname()[1]), log
    server.close()
    try:
        async with asyncio.timeout(1):
            await server.wait_closed()
    except TimeoutError:
        pass


async def plain_get(port: int, path: str = "/") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]), data


async def test_upstream_tls_verify_with_ca_file(ca: Pki, tmp_path: Any, proxy: Any, https_pod: Any) -> None:
    port, log = https_pod
    other_ca = Pki(tmp_path / "other") if (tmp_path / "other").mkdir() is None else None
    assert other_ca is not None
    routes = (
        HttpRoute(WEB, path_prefix="/sni", upstream_tls=UpstreamTls(ca_file=ca.ca_file, sni="backend.test")),
        HttpRoute(WEB, path_prefix="/ip", upstream_tls=UpstreamTls(ca_file=ca.ca_file)),  # IP SAN
        HttpRoute(WEB, path_prefix="/wrong-ca", upstream_tls=UpstreamTls(ca_file=other_ca.ca_file)),
        HttpRoute(WEB, path_prefix="/wrong-name", upstream_tls=UpstreamTls(ca_file=ca.ca_file, sni="nope.test")),
        HttpRoute(WEB, path_prefix="/noverify", upstream_tls=UpstreamTls(verify=False, ca_file=other_ca.ca_file)),
    )
    server = await proxy(listener(routes=routes, tls=False), {WEB: [port]})
    for path, want in (("/sni", 200), ("/ip", 200), ("/wrong-ca", 502), ("/wrong-name", 502), ("/noverify", 200)):
        status, body = await plain_get(server.port, path)
        assert status == want, (path, body)


async def test_upstream_tls_sessions_are_resumed(ca: Pki, proxy: Any, https_pod: Any) -> None:
    port, log = https_pod
    route = HttpRoute(WEB, upstream_tls=UpstreamTls(ca_file=ca.ca_file, sni="backend.test"))
    server = await proxy(listener(routes=(route,), tls=False), {WEB: [port]})
    assert (await plain_get(server.port))[0] == 200
    server.upstreams.close()  # drop the idle keep-alive connection: the next request must connect again
    await asyncio.sleep(0.05)
    status, body = await plain_get(server.port)
    assert status == 200
    assert log == [False, True], log  # the second handshake resumed the first session


def _connections(listener: str, protocol: str, tls_version: str, certificate: str) -> float:
    labels = {"listener": listener, "protocol": protocol, "tls_version": tls_version, "certificate": certificate}
    return REGISTRY.get_sample_value("fedproxy_http_connections_total", labels) or 0.0


async def test_access_log_and_metrics_carry_protocol_tls_version_and_sni(
    ca: Pki, proxy: Any, echo: HttpEcho, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedproxy.access")  # before the proxy is built: it decides per config
    a, b = ca.issue("a.test"), ca.issue("wild.b.test", dns=("*.b.test",))
    server = await proxy(listener(a, b), {WEB: [echo.port]})
    name = server.name
    before = {cert: _connections(name, "http/1.1", "TLSv1.3", cert) for cert in ("a.test", "*.b.test", "default")}
    for sni in ("a.test", "x.b.test", "other.test", None):
        c = await connect(server.port, sni, None)  # type: ignore[arg-type]
        assert (await c.get(sni or "nameless"))[0] == 200
        await c.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "fedproxy.access"]
    assert len(lines) == 4
    for line, sni in zip(lines, ("a.test", "x.b.test", "other.test", "-"), strict=True):
        assert " protocol=http/1.1 tls=TLSv1.3 " in line and f" sni={sni} " in line, line
    # The certificate label is the served certificate's first name: bounded by the config, not by clients.
    after = {cert: _connections(name, "http/1.1", "TLSv1.3", cert) for cert in before}
    assert {cert: after[cert] - before[cert] for cert in before} == {"a.test": 1, "*.b.test": 1, "default": 2}
