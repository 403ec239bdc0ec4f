"""The certificates of watched kubernetes.io/tls Secrets: the last good pair of each, and what is wrong now.

Theory of operation: every :class:`~.secrets.SecretEvent` from the Secret watches goes through
:meth:`SecretBook.observe`, which checks a new PEM pair exactly as files are checked (:func:`.certs.load_material`:
PEM parses, key matches the leaf; an expired certificate is refused, one expiring within ``EXPIRY_WARNING`` is
accepted with a warning). Only a pair that passes replaces the one served; a missing, malformed or unreadable
Secret is logged (``event=tls_secret_*`` at ERROR level) and shown by :meth:`status`, while the previous good pair
keeps serving. :meth:`good` is what listeners (and, with ``--workers``, the worker processes) are given: an
immutable mapping from each Secret to the PEM bytes that passed, replaced as a whole on every change.

Runs in the control process (or the only process); no I/O, the clock is an argument.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from .certs import CertError, LoadedCert, expiry_problem, load_material
from .secrets import SecretEvent, SecretMaterial, SecretRef

log = logging.getLogger("fedproxy.tls")

SecretState = Literal["pending", "ok", "missing", "invalid"]


@dataclass
class _Entry:
    state: SecretState = "pending"  # pending: nothing heard yet; ok: serving the Secret's current content
    error: str = ""  # why the Secret's current content is not served ("" when ok or pending)
    watch_error: str = ""  # the watch cannot read the Secret right now ("" when it can)
    serving: LoadedCert | None = None  # the last good pair (what listeners serve), None before the first
    material: SecretMaterial | None = None  # its PEM bytes
    seen: SecretMaterial | None = None  # the last content observed, good or not (not re-checked, not re-logged)
    resource_version: str = ""


def _keeping(entry: _Entry) -> str:
    if entry.serving is None:
        return "nothing (handshakes for this certificate's names get the listener's default, or fail)"
    return f"the previous certificate ({entry.serving.subject}, until {entry.serving.not_after:%Y-%m-%d} UTC)"


class SecretBook:
    """Per watched Secret: state, error and the last good certificate. Mutated only from the event loop."""

    def __init__(self, refs: Iterable[SecretRef] = ()) -> None:
        self._entries: dict[SecretRef, _Entry] = {}
        self._good: Mapping[SecretRef, SecretMaterial] = MappingProxyType({})
        self.configure(refs)

    def configure(self, refs: Iterable[SecretRef]) -> bool:
        """Track exactly ``refs`` (a config load or reload); True when :meth:`good` changed (a Secret dropped)."""
        wanted = set(refs)
        for ref in wanted - set(self._entries):
            self._entries[ref] = _Entry()
        dropped = set(self._entries) - wanted
        for ref in dropped:
            del self._entries[ref]
        return self._refresh_good() if dropped else False

    def good(self) -> Mapping[SecretRef, SecretMaterial]:
        """The PEM pair served for each Secret that has had a valid one (read-only; a new object per change)."""
        return self._good

    def waiting(self) -> list[SecretRef]:
        """Secrets whose certificate never arrived (or never was valid): their names cannot be served yet."""
        return sorted(ref for ref, e in self._entries.items() if e.serving is None)

    def observe(self, event: SecretEvent, now: dt.datetime) -> bool:
        """Apply one watch event; True when :meth:`good` changed (listeners must reload)."""
        entry = self._entries.get(event.ref)
        if entry is None:
            return False  # a watch that outlived its config entry
        ref = event.ref
        if event.kind == "failing":
            if entry.watch_error != event.problem:
                log.error(
                    "event=tls_secret_unreadable secret=%s error=%r serving=%r hint=%r",
                    ref,
                    event.problem,
                    _keeping(entry),
                    "fedproxy needs get/list/watch on this Secret (deploy/tls-secrets)",
                )
            entry.watch_error = event.problem
            return False
        if entry.watch_error:
            log.info("event=tls_secret_readable secret=%s", ref)
            entry.watch_error = ""
        if event.kind == "absent":
            entry.seen = None
            self._set(entry, ref, "missing", "Secret not found")
            return False
        if event.kind == "invalid" or event.material is None:
            entry.seen = None
            self._set(entry, ref, "invalid", event.problem or "not a kubernetes.io/tls Secret")
            return False
        return self._present(entry, ref, event.material, now)

    def _present(self, entry: _Entry, ref: SecretRef, material: SecretMaterial, now: dt.datetime) -> bool:
        entry.resource_version = material.resource_version
        if material == entry.material:
            self._set(entry, ref, "ok", "")  # back after a deletion, or a relist: same content, nothing to load
            return False
        if material == entry.seen:
            return False  # the same bad content again (a relist): already logged
        entry.seen = material
        try:
            cert = load_material(ref, material)
        except CertError as exc:
            self._set(entry, ref, "invalid", str(exc))
            return False
        found = expiry_problem(cert, now)
        if found is not None and found[0] == "error":
            self._set(entry, ref, "invalid", found[1])
            return False
        if found is not None:
            log.warning("event=tls_secret_expiring secret=%s problem=%r", ref, found[1])
        entry.serving, entry.material = cert, material
        entry.state, entry.error = "ok", ""
        log.info(
            "event=tls_secret_loaded secret=%s subject=%r names=%s not_after=%s resource_version=%s",
            ref,
            cert.subject,
            ",".join(cert.names),
            f"{cert.not_after:%Y-%m-%dT%H:%M:%SZ}",
            material.resource_version,
        )
        return self._refresh_good()

    def _set(self, entry: _Entry, ref: SecretRef, state: SecretState, error: str) -> None:
        if (state, error) == (entry.state, entry.error):
            return
        entry.state, entry.error = state, error
        if state == "ok":
            log.info("event=tls_secret_ok secret=%s", ref)
        else:
            log.error("event=tls_secret_%s secret=%s error=%r serving=%r", state, ref, error, _keeping(entry))

    def _refresh_good(self) -> bool:
        good = {ref: e.material for ref, e in self._entries.items() if e.material is not None}
        if good == dict(self._good):
            return False
        self._good = MappingProxyType(good)
        return True

    def status(self) -> list[dict[str, Any]]:
        """One JSON-able entry per watched Secret, sorted (the admin state's ``tls_secrets``)."""
        out = []
        for ref, e in sorted(self._entries.items()):
            serving = None
            if e.serving is not None:
                serving = {
                    "subject": e.serving.subject,
                    "names": list(e.serving.names),
                    "not_after": f"{e.serving.not_after:%Y-%m-%dT%H:%M:%SZ}",
                }
            out.append(
                {
                    "secret": str(ref),
                    "cluster": ref.cluster,
                    "namespace": ref.namespace,
                    "name": ref.name,
                    "state": e.state,
                    "error": e.error,
                    "watch_error": e.watch_error,
                    "resource_version": e.resource_version,
                    "serving": serving,
                }
            )
        return out

    def serving(self) -> Mapping[SecretRef, LoadedCert | None]:
        """The certificate served for each watched Secret (None before the first valid one), for metrics."""
        return {ref: e.serving for ref, e in sorted(self._entries.items())}

    def states(self) -> Mapping[SecretRef, SecretState]:
        return {ref: e.state for ref, e in sorted(self._entries.items())}
