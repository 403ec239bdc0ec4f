"""Certificate + key pairs from PEM files or kubernetes.io/tls Secrets: loading, checks and the SNI store.

Theory of operation: :func:`load_pair` reads one configured file pair with ``cryptography`` and raises
:class:`CertError` with a human message when the files cannot serve; :func:`load_material` runs the same checks
(PEM parses, unencrypted key, key matches the leaf) on the PEM bytes of a Secret. :func:`check_tls` runs
``load_pair`` over every file pair of a config and sorts what it finds into errors (the config is refused) and
warnings (it loads, but someone should act: a certificate expiring within ``EXPIRY_WARNING``); Secret pairs are
checked when they arrive (:mod:`.secretbook`). The clock is an argument. A :class:`CertStore` is one listener's
loaded pairs keyed by the names they serve (SAN DNS names, else the CN); the first loaded certificate is the
default, and Secrets that have not arrived yet are listed as ``pending``. ``stamp`` values (file mtimes and
sizes) let the server see that files changed on disk without re-reading them.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ..config import Config, TlsCertificate, TlsConfig
from .names import NameTable
from .secrets import CERT_KEY, KEY_KEY, SecretMaterial, SecretRef, ref_of

EXPIRY_WARNING = dt.timedelta(days=14)  # the threshold; cert-manager renews 30 days ahead by default
Stamp = tuple[tuple[int, int], ...]  # (mtime_ns, size) per file


class CertError(ValueError):
    """A configured certificate cannot be served; the message says why."""


@dataclass(frozen=True)
class LoadedCert:
    """One checked pair: where it came from, the names it serves and its validity window (UTC)."""

    cert_file: str  # "" for a Secret pair
    key_file: str
    names: tuple[str, ...]  # DNS SANs (wildcards kept as "*.x"), or the CN when there are none
    subject: str  # RFC 4514 string, for logs and the admin view
    not_before: dt.datetime
    not_after: dt.datetime
    stamp: Stamp
    secret: SecretRef | None = None  # the Secret it came from; its PEM is then in cert_pem / key_pem
    cert_pem: bytes = b""
    key_pem: bytes = field(default=b"", repr=False)

    @property
    def source(self) -> str:
        """Where the pair comes from, for logs and the admin view."""
        return f"secret {self.secret}" if self.secret is not None else f"file {self.cert_file}"


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


def _check_pem(cert_pem: bytes, key_pem: bytes, cert_what: str, key_what: str) -> x509.Certificate:
    """The leaf of a PEM chain whose first certificate matches the unencrypted PEM key; CertError otherwise."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertError(f"{cert_what} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertError(f"{key_what} is encrypted (fedproxy needs an unencrypted key)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{key_what} holds no PEM private key") from None
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise CertError(f"{key_what} does not match the certificate in {cert_what}")
    return leaf


def load_pair(spec: TlsCertificate) -> LoadedCert:
    """Read and check one configured file pair (PEM chain + unencrypted key); CertError when it cannot serve."""
    ref = ref_of(spec)
    if ref is not None:
        raise CertError(f"the certificate of Secret {ref} arrives through its watch (load_material), not from files")
    stamp = file_stamp(spec.cert_file, spec.key_file)
    cert_pem = _read(spec.cert_file, "cert_file")
    key_pem = _read(spec.key_file, "key_file")
    leaf = _check_pem(cert_pem, key_pem, f"cert_file {spec.cert_file!r}", f"key_file {spec.key_file!r}")
    return LoadedCert(
        spec.cert_file,
        spec.key_file,
        _names(leaf),
        leaf.subject.rfc4514_string(),
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
        stamp,
    )


def load_material(ref: SecretRef, material: SecretMaterial) -> LoadedCert:
    """Check the PEM pair of Secret ``ref`` as :func:`load_pair` checks files; CertError when it cannot serve."""
    leaf = _check_pem(material.cert_pem, material.key_pem, f"data[{CERT_KEY}]", f"data[{KEY_KEY}]")
    return LoadedCert(
        "",
        "",
        _names(leaf),
        leaf.subject.rfc4514_string(),
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
        (),
        ref,
        material.cert_pem,
        material.key_pem,
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
            if spec.secret is not None:
                continue  # checked when it arrives (SecretBook): the Secret may not even exist yet
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
    """One listener's certificates: ``pick(server_name)`` -> the pair to serve (exact, wildcard, default).

    ``certs`` are the pairs that can serve, in config order; ``pending`` the Secrets named by the config whose
    certificate has not arrived (or never was valid). With no ``certs`` at all, ``pick`` returns None.
    """

    certs: tuple[LoadedCert, ...]
    table: NameTable[int]
    pending: tuple[SecretRef, ...] = ()

    def pick(self, server_name: str | None) -> LoadedCert | None:
        index = self.table.lookup(server_name)
        if index is None:
            return self.certs[0] if self.certs else None
        return self.certs[index]

    @property
    def stamp(self) -> Stamp:
        return tuple(s for c in self.certs for s in c.stamp)


def load_store(tls: TlsConfig, secrets: Mapping[SecretRef, SecretMaterial] | None = None) -> CertStore:
    """Load every pair of ``tls`` (CertError on the first that fails), Secret pairs from ``secrets``.

    A Secret missing from ``secrets`` is pending: the listener serves the others meanwhile. The first pair that
    loaded is the default.
    """
    if not tls.certificates:
        raise CertError("at least one certificate is required")
    secrets = secrets or {}
    certs: list[LoadedCert] = []
    pending: list[SecretRef] = []
    for spec in tls.certificates:
        ref = ref_of(spec)
        if ref is None:
            certs.append(load_pair(spec))
        elif ref in secrets:
            try:
                certs.append(load_material(ref, secrets[ref]))
            except CertError as exc:
                raise CertError(f"Secret {ref}: {exc}") from None
        else:
            pending.append(ref)
    table: NameTable[int] = NameTable(default=0 if certs else None)
    for i, cert in enumerate(certs):
        for name in cert.names:
            table.add(name, i)
    return CertStore(tuple(certs), table, tuple(pending))


def current_stamp(tls: TlsConfig) -> Stamp:
    """The stamps of the files ``tls`` names now, comparable with ``CertStore.stamp`` (Secret pairs have none)."""
    return tuple(
        s for spec in tls.certificates if spec.secret is None for s in file_stamp(spec.cert_file, spec.key_file)
    )
