"""gRPC over TLS with ALPN "h2": a grpcio client with TLS -> fedproxy TLS listener -> h2c gRPC backend."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedproxy.config import ClusterConfig, Config, HttpConfig, HttpListener, HttpRoute, TlsCertificate, TlsConfig
from fedproxy.model import ServiceKey

SERVICE = ServiceKey("demo", "web")


def self_signed(directory: Path) -> tuple[str, str, bytes]:
    """A self-signed certificate for 127.0.0.1 and "grpc.test": (cert path, key path, cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "grpc.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("grpc.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(directory / "cert.pem"), str(directory / "key.pem"), pem


async def test_grpc_over_tls_alpn_h2(tmp_path: Path, http_proxy, http_world) -> None:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"tls:" + request

    backend = grpc.aio.server()
    backend.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}),)
    )
    port = backend.add_insecure_port("127.0.0.1:0")
    await backend.start()
    try:
        cert, key, pem = self_signed(tmp_path)
        tls = TlsConfig(certificates=(TlsCertificate(cert_file=cert, key_file=key),))
        route = HttpRoute(SERVICE, upstream_protocol="h2c")
        lst = HttpListener(port=0, address="127.0.0.1", name="grpcs", routes=(route,), tls=tls)
        cfg = Config(clusters=(ClusterConfig("east", local=True, pods_reachable=True),), http=HttpConfig((lst,)))
        px = await http_proxy(lst, cfg, http_world.state(cfg, {"east": [("127.0.0.1", port)]}))
        creds = grpc.ssl_channel_credentials(root_certificates=pem)
        options = (("grpc.ssl_target_name_override", "grpc.test"),)
        async with grpc.aio.secure_channel(f"127.0.0.1:{px.port}", creds, options=options) as channel:
            assert await channel.unary_unary("/test.Echo/Unary")(b"hello", timeout=5) == b"tls:hello"
        assert [ok for _, ok in px.reports] == [True]
    finally:
        await backend.stop(None)
