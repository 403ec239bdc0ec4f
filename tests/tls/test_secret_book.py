"""Certificates from kubernetes.io/tls Secrets without a cluster: parsing the Secret, the book of last good pairs,
a listener's store with pending Secrets (pure: no event loop, no socket)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from fedproxy.config import TlsCertificate, TlsConfig
from fedproxy.model import ServiceKey
from fedproxy.sim import objects
from fedproxy.tls.certs import CertError, load_material, load_store
from fedproxy.tls.secretbook import SecretBook
from fedproxy.tls.secrets import SecretEvent, SecretMaterial, SecretRef, parse_tls_secret, secret_refs

from .conftest import Pem, Pki

REF = SecretRef("east", "web", "front")
NOW = dt.datetime.now(dt.UTC)


def material(pem: Pem, rv: str = "1") -> SecretMaterial:
    return SecretMaterial(pem.cert_pem, pem.key_pem, rv)


def present(pem: Pem, rv: str = "1", ref: SecretRef = REF) -> SecretEvent:
    return SecretEvent(ref, "present", material(pem, rv))


def test_parse_tls_secret_checks_the_shape() -> None:
    got = parse_tls_secret(objects.tls_secret("web", "front", b"CRT", b"KEY") | {"metadata": {"resourceVersion": "7"}})
    assert (got.cert_pem, got.key_pem, got.resource_version) == (b"CRT", b"KEY", "7")
    assert "KEY" not in repr(got)  # key bytes never end up in a log line
    cases = {
        "type is 'Opaque', not 'kubernetes.io/tls'": objects.secret("web", "front", {"tls.crt": b"a", "tls.key": b"b"}),
        "data[tls.key] is missing": objects.secret("web", "front", {"tls.crt": b"a"}, type="kubernetes.io/tls"),
        "data[tls.crt] is empty": objects.tls_secret("web", "front", b"", b"k"),
    }
    for want, obj in cases.items():
        with pytest.raises(ValueError, match=want.replace("[", r"\[").replace("]", r"\]")):
            parse_tls_secret(obj)
    garbled = objects.tls_secret("web", "front", b"a", b"b")
    garbled["data"]["tls.crt"] = "not base64!"
    with pytest.raises(ValueError, match="not base64"):
        parse_tls_secret(garbled)


def test_load_material_runs_the_file_checks(ca: Pki) -> None:
    a, b = ca.issue("a.test", dns=("a.test", "www.a.test")), ca.issue("b.test")
    cert = load_material(REF, material(a))
    assert cert.names == ("a.test", "www.a.test") and cert.subject == "CN=a.test" and cert.secret == REF
    assert cert.source == "secret east:web/front"
    with pytest.raises(CertError, match=r"data\[tls.key\] does not match the certificate in data\[tls.crt\]"):
        load_material(REF, SecretMaterial(a.cert_pem, b.key_pem))
    with pytest.raises(CertError, match=r"data\[tls.crt\] holds no PEM certificate"):
        load_material(REF, SecretMaterial(b"garbage", a.key_pem))
    with pytest.raises(CertError, match=r"data\[tls.key\] holds no PEM private key"):
        load_material(REF, SecretMaterial(a.cert_pem, a.cert_pem))


def test_book_keeps_the_last_good_pair_and_says_what_is_wrong(ca: Pki, caplog: pytest.LogCaptureFixture) -> None:
    a1, a2, other = ca.issue("a.test"), ca.issue("a-v2", dns=("a.test",)), ca.issue("other")
    book = SecretBook([REF])
    assert book.waiting() == [REF] and book.good() == {} and book.status()[0]["state"] == "pending"

    assert book.observe(present(a1), NOW) is True
    assert book.good() == {REF: material(a1)} and book.waiting() == []
    assert book.observe(present(a1, rv="2"), NOW) is False  # a relist of the same content: nothing to reload

    caplog.set_level(logging.INFO, logger="fedproxy.tls")
    bad_updates = [
        (SecretEvent(REF, "present", SecretMaterial(a2.cert_pem, other.key_pem, "3")), "does not match"),
        (SecretEvent(REF, "present", SecretMaterial(b"-----BEGIN garbage", a2.key_pem, "4")), "no PEM certificate"),
        (SecretEvent(REF, "invalid", problem="type is 'Opaque', not 'kubernetes.io/tls'"), "Opaque"),
        (SecretEvent(REF, "absent"), "Secret not found"),
        (SecretEvent(REF, "present", material(ca.issue("a.test", days=-1), "5")), "expired on"),
    ]
    for event, why in bad_updates:
        caplog.clear()
        assert book.observe(event, NOW) is False, why
        assert book.good() == {REF: material(a1)}, why  # still serving the first certificate
        (entry,) = book.status()
        assert entry["state"] in ("invalid", "missing") and why in entry["error"], entry
        assert entry["serving"]["subject"] == "CN=a.test"
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "east:web/front" in errors[0].getMessage(), why
        assert "previous certificate (CN=a.test" in errors[0].getMessage()

    # The watch cannot read it (RBAC): reported, nothing dropped; a later list clears it.
    assert book.observe(SecretEvent(REF, "failing", problem="HTTP 403 Forbidden"), NOW) is False
    assert book.status()[0]["watch_error"] == "HTTP 403 Forbidden" and book.good() == {REF: material(a1)}

    assert book.observe(present(a2, rv="6"), NOW) is True
    (entry,) = book.status()
    assert (entry["state"], entry["error"], entry["watch_error"]) == ("ok", "", "")
    assert entry["serving"]["subject"] == "CN=a-v2" and entry["resource_version"] == "6"
    assert book.good() == {REF: material(a2)}

    # Dropped from the config: no longer served.
    assert book.configure([]) is True and book.good() == {} and book.status() == []


def test_book_warns_about_a_certificate_expiring_soon(ca: Pki, caplog: pytest.LogCaptureFixture) -> None:
    book = SecretBook([REF])
    with caplog.at_level(logging.WARNING, logger="fedproxy.tls"):
        assert book.observe(present(ca.issue("soon.test", days=5)), NOW) is True
    assert any("event=tls_secret_expiring" in r.getMessage() for r in caplog.records)


def test_book_ignores_secrets_it_does_not_track(ca: Pki) -> None:
    book = SecretBook([REF])
    assert book.observe(present(ca.issue("x"), ref=SecretRef("east", "web", "other")), NOW) is False
    assert book.good() == {}


def test_store_serves_what_arrived_and_lists_the_pending(ca: Pki) -> None:
    f = ca.issue("file.test")
    tls = TlsConfig(
        (
            TlsCertificate(secret=ServiceKey("web", "front"), cluster="east"),
            TlsCertificate(f.cert_file, f.key_file),
        )
    )
    store = load_store(tls)
    assert store.pending == (REF,) and [c.subject for c in store.certs] == ["CN=file.test"]
    assert store.pick("anything").subject == "CN=file.test"  # the first that loaded is the default meanwhile
    s = ca.issue("secret.test")
    store = load_store(tls, {REF: material(s)})
    assert store.pending == () and [c.subject for c in store.certs] == ["CN=secret.test", "CN=file.test"]
    assert store.pick("file.test").subject == "CN=file.test" and store.pick(None).subject == "CN=secret.test"
    only_secret = TlsConfig((tls.certificates[0],))
    empty = load_store(only_secret)
    assert empty.certs == () and empty.pick("secret.test") is None


def test_secret_refs_of_a_config() -> None:
    from fedproxy.config import Config, HttpConfig, HttpListener

    tls = TlsConfig((TlsCertificate(secret=ServiceKey("web", "front"), cluster="east"), TlsCertificate("a", "b")))
    config = Config(http=HttpConfig(listeners=(HttpListener(port=1, tls=tls), HttpListener(port=2))))
    assert secret_refs(config) == {REF}
    assert secret_refs(Config()) == frozenset()


def test_secret_material_survives_the_worker_message_pickle() -> None:
    import pickle

    m = SecretMaterial(b"c", b"k", "9")
    back = pickle.loads(pickle.dumps({REF: m}))
    assert back == {REF: m} and back[REF].key_pem == b"k" and back[REF].resource_version == "9"
