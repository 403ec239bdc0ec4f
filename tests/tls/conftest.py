"""Fixtures for the TLS tests: a throwaway CA writing PEM files, TLS backends on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Pem:
    """A certificate and key written to files (paths as str for the config)."""

    cert_file: str
    key_file: str
    common_name: str

    @property
    def cert_pem(self) -> bytes:
        return Path(self.cert_file).read_bytes()

    @property
    def key_pem(self) -> bytes:
        return Path(self.key_file).read_bytes()


class Pki:
    """A CA issuing leaf certificates with chosen names and validity, written under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedproxy-test-ca")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = str(directory / "ca.pem")
        Path(self.ca_file).write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._n = 0

    def issue(
        self,
        common_name: str,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        days: float = 30,
        file_stem: str = "",
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> Pem:
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or (common_name,)]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=2))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self._n += 1
        stem = file_stem or f"leaf{self._n}"
        cert_file, key_file = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return Pem(str(cert_file), str(key_file), common_name)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        return ctx


@pytest.fixture
def ca(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def peer_common_name(sslobj: ssl.SSLObject | ssl.SSLSocket) -> str:
    """The CN of the certificate the server presented."""
    der = sslobj.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


class _NameServer(asyncio.Protocol):
    """A TLS backend that writes ``<name>\\n`` then echoes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.name.encode() + b"\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


@pytest.fixture
async def tls_backend() -> AsyncIterator[Callable[[str, Pem], Awaitable[int]]]:
    """``await tls_backend(name, pem)``: a TLS echo server on 127.0.0.1 presenting ``pem``; returns its port."""
    servers: list[asyncio.AbstractServer] = []

    async def make(name: str, pem: Pem) -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem.cert_file, pem.key_file)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _NameServer(name), "127.0.0.1", 0, ssl=ctx)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield make
    for server in servers:
        server.close()
        try:
            async with asyncio.timeout(1.0):
                await server.wait_closed()
        except TimeoutError:
            pass


# --- Serving state for proxies under test -------------------------------------------------------------------


def serving_state(config: object, services: dict[tuple[str, str], list[int]]) -> object:
    """The ServingState for one member ``c1`` exporting each (namespace, name) with pods on 127.0.0.1:<port>."""
    from types import MappingProxyType

    from fedproxy.balancing import build_state
    from fedproxy.catalog import build_catalog
    from fedproxy.model import (
        ClusterSnapshot,
        EndpointSlice,
        Service,
        ServiceExport,
        ServicePort,
        SliceEndpoint,
        SlicePort,
    )

    svcs, slices, exports = {}, {}, {}
    for (ns, name), ports in services.items():
        svcs[(ns, name)] = Service(ns, name, cluster_ips=("10.96.0.9",), ports=(ServicePort("p", 443),))
        exports[(ns, name)] = ServiceExport(ns, name)
        for i, port in enumerate(ports):
            slices[(ns, f"{name}-{i}")] = EndpointSlice(
                ns, f"{name}-{i}", name, ports=(SlicePort("p", port),), endpoints=(SliceEndpoint(("127.0.0.1",)),)
            )
    snap = ClusterSnapshot(
        "c1",
        services=MappingProxyType(svcs),
        endpointslices=MappingProxyType(slices),
        serviceexports=MappingProxyType(exports),
    )
    catalog = build_catalog([snap], config, 1)  # type: ignore[arg-type]
    return build_state(config, catalog, version=1)  # type: ignore[arg-type]
