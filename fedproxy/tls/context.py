"""``ssl.SSLContext`` building: a listener's server context with SNI certificate choice, and upstream contexts.

Server side: one *base* context is given to ``loop.create_server`` and never replaced (asyncio keeps it for the
life of the listening socket). Its ``sni_callback`` runs during every handshake, looks the client's server
name up in the current :class:`ServerTls` snapshot and switches the connection to that certificate's own
context (``SSLObject.context = ...``, the documented way, see ``ssl.SSLContext.sni_callback``). Swapping the
snapshot (``ServerTls.update``) therefore changes what *new* handshakes get, while an established connection
keeps the context, certificate and keys it negotiated with. Protocol version floor and ALPN are decided from
the base context, so ``update`` sets them on it too (OpenSSL copies them into each new connection).

Certificates from kubernetes.io/tls Secrets arrive as PEM bytes; ``ssl`` loads chains only from files, so each
pair is written to an anonymous memory file (``memfd_create``, never linked into any directory; a 0600 temp file
deleted at once where that is missing) just for the ``load_cert_chain`` call. A listener with no certificate at
all (its only one is a Secret that has not arrived) refuses every handshake with an ``internal_error`` alert
from the SNI callback rather than presenting something else.

Upstream side: :class:`ResumingContext` remembers the last ``SSLSession`` per server name and offers it on the
next handshake. asyncio's ``create_connection`` has no ``session=`` argument, but both asyncio's and uvloop's
TLS protocols create their ``SSLObject`` through ``context.wrap_bio(...)``, which a subclass can give one.
(A client ``SSLContext`` does not resume by itself: OpenSSL's client-side session cache is off by default.)
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..config import TlsConfig, UpstreamTls
from .certs import CertStore, LoadedCert, load_store
from .secrets import SecretMaterial, SecretRef

log = logging.getLogger("fedproxy.tls")

VERSIONS = {"TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}
MAX_SESSIONS = 1024  # remembered upstream sessions per context (one per server name); oldest dropped first


def _server_context(tls: TlsConfig, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[tls.min_version]
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def load_pem_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``ctx.load_cert_chain`` from PEM bytes: through a memory-only file, or a private temp file removed at once."""
    data = key_pem.rstrip(b"\n") + b"\n" + cert_pem  # one file: the key, then the chain (load_cert_chain's format)
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd("fedproxy-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="fedproxy-tls-", suffix=".pem")  # O_EXCL, mode 0600
    try:
        os.write(fd, data)
        os.close(fd)
        fd = -1
        ctx.load_cert_chain(path)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)


def load_pair_into(ctx: ssl.SSLContext, cert: LoadedCert) -> None:
    """Load one checked pair (file or Secret) into ``ctx``."""
    if cert.secret is not None:
        load_pem_chain(ctx, cert.cert_pem, cert.key_pem)
    else:
        ctx.load_cert_chain(cert.cert_file, cert.key_file)


class ServerTls:
    """The TLS side of one listener: ``context`` for ``create_server``, ``update`` for new certificates.

    ``supported`` lists the application protocols the listener can actually serve; the configured ALPN list is
    filtered by it, so a listener never announces "h2" before an HTTP/2 protocol exists to take it. ``secrets``
    holds the PEM pairs of the Secrets the config names (those missing from it are pending).
    """

    def __init__(
        self,
        tls: TlsConfig,
        supported: tuple[str, ...] = ("http/1.1",),
        secrets: Mapping[SecretRef, SecretMaterial] | None = None,
    ) -> None:
        self.supported = supported
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.sni_callback = self._on_sni
        self.store: CertStore
        self.secrets: Mapping[SecretRef, SecretMaterial] = secrets or {}
        self.refused = 0  # handshakes refused because the listener had no certificate at all
        self._by_index: tuple[ssl.SSLContext, ...] = ()
        self.update(tls)

    @property
    def alpn(self) -> tuple[str, ...]:
        return self._alpn

    def update(
        self,
        tls: TlsConfig,
        store: CertStore | None = None,
        secrets: Mapping[SecretRef, SecretMaterial] | None = None,
    ) -> None:
        """Read the certificates (or use ``store``; Secret pairs from ``secrets``, else the last given) and serve
        them to new handshakes; CertError/SSLError leave the previous ones in place."""
        secrets = self.secrets if secrets is None else secrets
        store = load_store(tls, secrets) if store is None else store
        alpn = tuple(p for p in tls.alpn if p in self.supported)
        contexts = []
        for cert in store.certs:
            ctx = _server_context(tls, alpn)
            load_pair_into(ctx, cert)
            contexts.append(ctx)
        base = self.context
        base.minimum_version = VERSIONS[tls.min_version]
        if alpn:
            base.set_alpn_protocols(list(alpn))
        if store.certs:
            # The default certificate on the base context too, so a handshake is served even if the callback
            # is never reached.
            load_pair_into(base, store.certs[0])
        # One assignment: a handshake sees either the old snapshot or the new one.
        self._by_index, self.store, self._alpn, self.tls, self.secrets = tuple(contexts), store, alpn, tls, secrets

    def _on_sni(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        store, contexts = self.store, self._by_index
        if not contexts:
            self.refused += 1
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR  # no certificate yet: fail rather than present another
        index = store.table.lookup(server_name)
        sslobj.context = contexts[0 if index is None else index]
        # What handshake_facts reads back once the connection is made (the SSLObject is the connection's own).
        matched = store.table.match(server_name)
        cert = store.certs[matched] if matched is not None else None
        sslobj.fedproxy_sni = server_name or "-"  # type: ignore[attr-defined]
        sslobj.fedproxy_cert = (cert.names[0] if cert.names else cert.subject) if cert else "default"  # type: ignore[attr-defined]
        return None


def handshake_facts(transport: Any) -> tuple[str, str, str]:
    """(TLS version, server name the client sent, certificate served) of a connection; all "-" for cleartext.

    The certificate is named by its first name (as configured, wildcards kept), "default" when the client's
    name matched none; the name the client sent is "-" when it sent none. Both come from ``_on_sni``."""
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return "-", "-", "-"
    return sslobj.version() or "-", getattr(sslobj, "fedproxy_sni", "-"), getattr(sslobj, "fedproxy_cert", "default")


def negotiated_protocol(transport: Any) -> str:
    """The ALPN protocol a TLS transport agreed ("h2", "http/1.1"); "" for cleartext or when none was agreed."""
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return ""
    return sslobj.selected_alpn_protocol() or ""


class ResumingContext(ssl.SSLContext):
    """A client context that offers the last session it saw for the same server name (TLS resumption)."""

    sessions: OrderedDict[str, ssl.SSLSession]

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False, server_hostname: Any = None,
                 session: Any = None) -> ssl.SSLObject:  # fmt: skip
        if session is None and server_hostname and not server_side:
            session = self.sessions.get(str(server_hostname))
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def remember(self, server_hostname: str, session: ssl.SSLSession | None) -> None:
        """Keep ``session`` for the next connection to ``server_hostname`` (sessions without a ticket or id
        are not resumable and are skipped)."""
        if session is None or not (session.has_ticket or session.id):
            return
        self.sessions[server_hostname] = session
        self.sessions.move_to_end(server_hostname)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)


def upstream_context(tls: UpstreamTls, alpn: tuple[str, ...] = ()) -> ResumingContext:
    """A client context for one route's upstream TLS settings (verification, CA bundle, ALPN)."""
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sessions = OrderedDict()
    if tls.verify:
        if tls.ca_file:
            ctx.load_verify_locations(cafile=tls.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def upstream_server_name(tls: UpstreamTls, address: str) -> str:
    """The name sent as SNI and checked against the backend's certificate: ``sni``, else the address."""
    return tls.sni or address
