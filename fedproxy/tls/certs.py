"""Certificate + key pairs from PEM files: loading, checks (readable, key matches, expiry) and the SNI store.

Theory of operation: :func:`load_pair` reads one configured pair with ``cryptography`` and raises
:class:`CertError` with a human message when the files cannot serve; :func:`check_tls` runs it over every TLS
listener of a config and sorts what it finds into errors (the config is refused) and warnings (it loads, but
someone should act: a certificate expiring within ``EXPIRY_WARNING``). The clock is an argument. A
:class:`CertStore` is one listener's loaded pairs keyed by the names they serve (SAN DNS names, else the CN);
the first certificate is the default. ``stamp`` values (file mtimes and sizes) let the server see that files
changed on disk without re-reading them.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ..config import Config, TlsCertificate, TlsConfig
from .names import NameTable

EXPIRY_WARNING = dt.timedelta(days=14)  # the threshold; cert-manager renews 30 days ahead by default
Stamp = tuple[tuple[int, int], ...]  # (mtime_ns, size) per file


class CertError(ValueError):
    """A configured certificate cannot be served; the message says why."""


@dataclass(frozen=True)
class LoadedCert:
    """One checked pair: file paths, the names it serves and its validity window (UTC)."""

    cert_file: str
    key_file: str
    names: tuple[str, ...]  # DNS SANs (wildcards kept as "*.x"), or the CN when there are none
    subject: str  # RFC 4514 string, for logs and the admin view
    not_before: dt.datetime
    not_after: dt.datetime
    stamp: Stamp


def file_stamp(*paths: str) -> Stamp:
    """(mtime_ns, size) of each path; (-1, -1) for a file that cannot be stat'ed (a change when it reappears)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((-1, -1))
    return tuple(out)


def _read(path: str, what: str) -> bytes:
    if not path:
        raise CertError(f"{what} is required")
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return f.read()
    except OSError as e:
        raise CertError(f"cannot read {what} {path!r}: {e.strerror or e}") from None


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        if dns or ips:
            return dns + ips
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return tuple(str(a.value).lower() for a in cns)


def load_pair(spec: TlsCertificate) -> LoadedCert:
    """Read and check one configured pair (PEM chain + unencrypted key); CertError when it cannot serve."""
    if spec.secret is not None:
        raise CertError(
            "certificates from kubernetes.io/tls Secrets are not supported yet; use cert_file and key_file "
            "(mount the Secret as files: they are re-read when they change)"
        )
    stamp = file_stamp(spec.cert_file, spec.key_file)
    cert_pem = _read(spec.cert_file, "cert_file")
    key_pem = _read(spec.key_file, "key_file")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertError(f"cert_file {spec.cert_file!r} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertError(f"key_file {spec.key_file!r} is encrypted (fedproxy needs an unencrypted key)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"key_file {spec.key_file!r} holds no PEM private key") from None
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise CertError(f"key_file {spec.key_file!r} does not match the certificate in {spec.cert_file!r}")
    return LoadedCert(
        spec.cert_file,
        spec.key_file,
        _names(leaf),
        leaf.subject.rfc4514_string(),
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
        stamp,
    )


def expiry_problem(cert: LoadedCert, now: dt.datetime) -> tuple[str, str] | None:
    """("error", message) when expired, ("warning", message) when it expires within EXPIRY_WARNING, else None."""
    if now >= cert.not_after:
        return "error", f"certificate {cert.subject!r} expired on {cert.not_after:%Y-%m-%d %H:%M} UTC"
    left = cert.not_after - now
    if left < EXPIRY_WARNING:
        return "warning", f"certificate {cert.subject!r} expires in {left.days} day(s) ({cert.not_after:%Y-%m-%d} UTC)"
    return None


def check_tls(config: Config, now: dt.datetime) -> tuple[list[str], list[str]]:
    """(errors, warnings) of every TLS certificate in ``config``, each prefixed with its key path."""
    errors: list[str] = []
    warnings: list[str] = []
    for i, lst in enumerate(config.http.listeners):
        if lst.tls is None:
            continue
        path = f"http.listeners[{i}].tls"
        if not lst.tls.certificates:
            errors.append(f"{path}.certificates: at least one certificate is required")
        for j, spec in enumerate(lst.tls.certificates):
            p = f"{path}.certificates[{j}]"
            try:
                cert = load_pair(spec)
            except CertError as e:
                errors.append(f"{p}: {e}")
                continue
            found = expiry_problem(cert, now)
            if found is not None:
                (errors if found[0] == "error" else warnings).append(f"{p}: {found[1]}")
    for i, lst in enumerate(config.http.listeners):
        for j, route in enumerate(lst.routes):
            up = route.upstream_tls
            if up is not None and up.ca_file and not os.access(os.path.expanduser(up.ca_file), os.R_OK):
                errors.append(f"http.listeners[{i}].routes[{j}].upstream_tls.ca_file: cannot read {up.ca_file!r}")
    return errors, warnings


@dataclass(frozen=True)
class CertStore:
    """One listener's certificates: ``pick(server_name)`` -> the pair to serve (exact, wildcard, default)."""

    certs: tuple[LoadedCert, ...]
    table: NameTable[int]

    def pick(self, server_name: str | None) -> LoadedCert:
        index = self.table.lookup(server_name)
        return self.certs[0 if index is None else index]

    @property
    def stamp(self) -> Stamp:
        return tuple(s for c in self.certs for s in c.stamp)


def load_store(tls: TlsConfig) -> CertStore:
    """Load every pair of ``tls`` (CertError on the first that fails); the first is the default."""
    certs = tuple(load_pair(spec) for spec in tls.certificates)
    if not certs:
        raise CertError("at least one certificate is required")
    table: NameTable[int] = NameTable(default=0)
    for i, cert in enumerate(certs):
        for name in cert.names:
            table.add(name, i)
    return CertStore(certs, table)


def current_stamp(tls: TlsConfig) -> Stamp:
    """The stamps of the files ``tls`` names now, comparable with ``CertStore.stamp``."""
    return tuple(s for spec in tls.certificates for s in file_stamp(spec.cert_file, spec.key_file))
