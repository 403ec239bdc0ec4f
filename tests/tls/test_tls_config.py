"""TLS settings in the YAML file: shape, readable files, key/cert match, expiry errors and warnings."""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fedproxy.configload import config_warnings, parse_config
from fedproxy.errors import ConfigError

from .conftest import Pem, Pki


def https_config(*pems: Pem, extra: str = "") -> str:
    certs = "".join(f"\n          - {{cert_file: {p.cert_file}, key_file: {p.key_file}}}" for p in pems)
    return f"""
dns: {{enabled: false}}
http:
  listeners:
    - port: 8443
      address: 127.0.0.1
      tls:
        min_version: TLS1.3
        certificates:{certs}
      routes:
        - service: demo/web{extra}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


def test_valid_tls_config_loads(ca: Pki) -> None:
    config = parse_config(https_config(ca.issue("a.test"), ca.issue("b.test")))
    tls = config.http.listeners[0].tls
    assert tls is not None and len(tls.certificates) == 2 and tls.min_version == "TLS1.3"
    assert tls.alpn == ("h2", "http/1.1")
    assert config_warnings(config) == []


def test_key_mismatch_is_an_error(ca: Pki) -> None:
    a, b = ca.issue("a.test"), ca.issue("b.test")
    found = problems(https_config(Pem(a.cert_file, b.key_file, "a")))
    assert len(found) == 1
    assert found[0].startswith("http.listeners[0].tls.certificates[0]: key_file") and "does not match" in found[0]


def test_unreadable_and_garbage_files(ca: Pki, tmp_path: object) -> None:
    a = ca.issue("a.test")
    found = problems(https_config(Pem("/nonexistent/x.crt", a.key_file, "x"), Pem(a.key_file, a.key_file, "y")))
    assert "certificates[0]: cannot read cert_file" in found[0]
    assert "certificates[1]: cert_file" in found[1] and "no PEM certificate" in found[1]


def test_expired_certificate_is_an_error(ca: Pki) -> None:
    found = problems(https_config(ca.issue("old.test", days=-1)))
    assert len(found) == 1 and "expired on" in found[0]


def test_near_expiry_is_a_warning_not_an_error(ca: Pki, caplog: pytest.LogCaptureFixture) -> None:
    soon = ca.issue("soon.test", days=5)
    with caplog.at_level(logging.WARNING, logger="fedproxy.config"):
        config = parse_config(https_config(soon))
    assert config.http.listeners[0].tls is not None
    assert any(
        "event=config_warning" in r.getMessage() and "expires in 4 day" in r.getMessage() for r in caplog.records
    )
    (warning,) = config_warnings(config)
    assert warning.startswith("http.listeners[0].tls.certificates[0]: certificate 'CN=soon.test' expires in")


def test_encrypted_key_is_refused(ca: Pki, tmp_path: object) -> None:
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP256R1())
    pem = ca.issue("enc.test", key=key)
    with open(pem.key_file, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"pw")))  # fmt: skip
    assert "is encrypted" in problems(https_config(pem))[0]


def test_secret_certificates_load_without_reading_anything(ca: Pki) -> None:
    b = ca.issue("b.test")
    config = parse_config(f"""
dns: {{enabled: false}}
clusters: [{{name: east, kubeconfig: /dev/null}}]
http:
  listeners:
    - port: 8443
      tls:
        certificates:
          - {{secret: web/tls, cluster: east}}
          - {{cert_file: {b.cert_file}, key_file: {b.key_file}}}
""")
    tls = config.http.listeners[0].tls
    assert tls is not None
    secret, file = tls.certificates
    assert str(secret.secret) == "web/tls" and secret.cluster == "east" and not secret.cert_file
    assert file.secret is None and file.cert_file == b.cert_file
    assert config_warnings(config) == []


def test_secret_certificates_need_a_configured_member_and_no_files() -> None:
    found = problems("""
dns: {enabled: false}
clusters: [{name: east, kubeconfig: /dev/null}]
http:
  listeners:
    - port: 8443
      tls:
        certificates:
          - {secret: web/a}
          - {secret: web/b, cluster: eastt}
          - {secret: web/c, cluster: east, cert_file: c.crt, key_file: c.key}
          - {secret: "no-namespace", cluster: east}
""")
    p = "http.listeners[0].tls.certificates"
    assert f"{p}[0].cluster: required with secret (the member holding the Secret)" in found
    assert any(f.startswith(f'{p}[1].cluster: unknown cluster "eastt"') for f in found)
    assert f"{p}[2]: set either secret or cert_file + key_file, not both" in found
    assert any(f.startswith(f"{p}[3].secret: ") and "namespace/name" in f for f in found)


def test_cluster_without_secret_is_an_error(ca: Pki) -> None:
    a = ca.issue("a.test")
    found = problems(https_config(a).replace(f"key_file: {a.key_file}}}", f"key_file: {a.key_file}, cluster: c}}"))
    assert found == [
        "http.listeners[0].tls.certificates[0].cluster: only used with secret (the member holding the Secret)"
    ]


def test_shape_errors() -> None:
    found = problems("""
dns: {enabled: false}
http:
  listeners:
    - port: 8443
      tls: {min_version: TLS1.1, alpn: [""], certificates: [{cert_file: a.crt}]}
      routes: [{service: demo/web, upstream_tls: {sni: "bad name"}}]
    - port: 8444
      tls: {}
tcp:
  listeners:
    - {port: 9443, service: demo/c, sni_routes: {"a..test": demo/a, "*": demo/b}}
""")
    joined = "\n".join(found)
    assert 'http.listeners[0].tls.min_version: must be one of "TLS1.2", "TLS1.3"' in joined
    assert "http.listeners[0].tls.alpn: " in joined
    assert "http.listeners[0].tls.certificates[0]: cert_file and key_file are both required" in joined
    assert "http.listeners[0].routes[0].upstream_tls.sni: " in joined
    assert 'tcp.listeners[0].sni_routes: "a..test" is not' in joined


def test_empty_certificates_and_sni_routes_load(ca: Pki) -> None:
    config = parse_config("""
dns: {enabled: false}
tcp:
  listeners:
    - {port: 9443, service: demo/c, sni_routes: {"a.test": demo/a, "*.b.test": demo/b, "*": demo/d}}
""")
    assert {k: str(v) for k, v in config.tcp.listeners[0].sni_routes.items()} == {
        "a.test": "demo/a", "*.b.test": "demo/b", "*": "demo/d",
    }  # fmt: skip
    assert problems("dns: {enabled: false}\nhttp: {listeners: [{port: 8443, tls: {}}]}") == [
        "http.listeners[0].tls.certificates: at least one certificate is required"
    ]
