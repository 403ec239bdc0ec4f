"""HTTPS listeners serving certificates from kubernetes.io/tls Secrets of an emulated member, end to end: a real
fedproxy Server (discovery with the real kubernetes-asyncio client, the runtime, the HTTP listener), an ssl
client on 127.0.0.1 checking what the server presents, and the admin API showing each Secret's state."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from fedproxy.configload import parse_config
from fedproxy.serve import Server
from fedproxy.sim import objects
from fedproxy.sim.apiserver import FakeApiServer
from fedproxy.sim.backends import HttpEcho
from fedproxy.sim.kubeconfig import write_kubeconfig
from tests.loopback import free_port, until

from .conftest import Pem, Pki, peer_common_name
from .test_https import Client, connect

SECRET = "{secret: web/front, cluster: east}"


def web_objects(port: int) -> list[dict]:
    return [
        objects.service("demo", "web", ports=[{"name": "http", "port": 80, "targetPort": port}]),
        objects.endpoint_slice(
            "demo", "web-1", "web", ports=[{"name": "http", "port": port}], endpoints=[objects.endpoint(["127.0.0.1"])]
        ),
        objects.service_export("demo", "web"),
    ]


def config_yaml(kubeconfig: Path, https: int, admin: int, certificates: list[str]) -> str:
    certs = "".join(f"\n          - {c}" for c in certificates)
    return f"""
clusters:
  - {{name: east, kubeconfig: {kubeconfig}, context: east, local: true, pods_reachable: true}}
discovery: {{grace_period: 2, backoff_base: 0.05, backoff_max: 0.3, request_timeout: 2, debounce: 0.01}}
http:
  access_log: "off"
  listeners:
    - name: https
      address: 127.0.0.1
      port: {https}
      drain_timeout: 1
      tls:
        certificates:{certs}
      routes:
        - service: demo/web
dns: {{enabled: false}}
admin: {{address: 127.0.0.1, port: {admin}, drain_timeout: 1}}
"""


@dataclass
class World:
    api: FakeApiServer
    server: Server
    https: int
    admin: int
    session: aiohttp.ClientSession

    def put_secret(self, cert: Pem | bytes, key: Pem | bytes) -> None:
        cert_pem = cert.cert_pem if isinstance(cert, Pem) else cert
        key_pem = key.key_pem if isinstance(key, Pem) else key
        self.api.apply(objects.tls_secret("web", "front", cert_pem, key_pem))

    async def state(self) -> dict[str, Any]:
        async with self.session.get(f"http://127.0.0.1:{self.admin}/api/v1/state") as r:
            return await r.json()

    async def secret_state(self) -> dict[str, Any]:
        (entry,) = (await self.state())["tls_secrets"]
        return entry

    async def ready(self) -> tuple[int, str]:
        async with self.session.get(f"http://127.0.0.1:{self.admin}/readyz") as r:
            return r.status, await r.text()

    async def metric(self, name: str) -> float | None:
        async with self.session.get(f"http://127.0.0.1:{self.admin}/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith(name + "{") and 'secret="east:web/front"' in line:
                    return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Callable[[list[str]], Awaitable[World]]]:
    made: list[World] = []
    api = FakeApiServer("east", bookmark_interval=0.2)
    echo = HttpEcho("127.0.0.1", 0, cluster="east", pod="p1")
    await api.start()
    await echo.start()
    api.apply_all(web_objects(echo.port))
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", [api])

    async def start(certificates: list[str]) -> World:
        https, admin = free_port(), free_port()
        server = Server(parse_config(config_yaml(kubeconfig, https, admin, certificates)))
        await server.startup()
        w = World(api, server, https, admin, aiohttp.ClientSession())
        made.append(w)
        return w

    yield start
    for w in made:
        await w.server.shutdown(0)
        await w.session.close()
    await echo.stop()
    await api.stop()


def peer_dns_names(client: Client) -> list[str]:
    der = client.sslobj.getpeercert(binary_form=True)
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.DNSName)


async def served_cn(port: int, name: str | None, ca: Pki | None = None) -> str:
    """The CN a new connection is given (verifying chain and name with ``ca``)."""
    c = await connect(port, name, ca)  # type: ignore[arg-type]
    try:
        return peer_common_name(c.sslobj)
    finally:
        await c.close()


async def test_secret_certificate_is_served_swapped_and_kept_when_broken(world: Any, ca: Pki) -> None:
    w: World = await world([SECRET])

    # Not arrived yet: not ready, and handshakes are refused rather than answered with some other certificate.
    async def missing() -> bool:
        return (await w.secret_state())["state"] == "missing"

    await until(missing)
    status, reason = await w.ready()
    assert status == 503 and "east:web/front" in reason
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await served_cn(w.https, "a.test")
    (listener,) = [x for x in (await w.state())["listeners"] if x["kind"] == "http"]
    assert listener["stats"]["tls"]["pending"] == ["east:web/front"]
    assert listener["stats"]["tls"]["handshakes_refused"] >= 1

    a1 = ca.issue("a.test", dns=("a.test", "www.a.test"))
    w.put_secret(a1, a1)
    assert await until(lambda: served_cn(w.https, "a.test", ca)) == "a.test"
    assert (await w.ready())[0] == 200
    old = await connect(w.https, "www.a.test", ca)
    assert peer_dns_names(old) == ["a.test", "www.a.test"]
    status, body = await old.get("www.a.test")
    assert status == 200 and b"x-backend: east/p1" in body.lower()
    assert (await w.secret_state())["serving"]["subject"] == "CN=a.test"

    # Replaced: new connections get the new certificate, the open keep-alive connection goes on with its own.
    a2 = ca.issue("a.test-v2", dns=("a.test", "www.a.test"))
    w.put_secret(a2, a2)

    async def swapped() -> bool:
        return await served_cn(w.https, "a.test", ca) == "a.test-v2"

    await until(swapped)
    assert (await old.get("www.a.test"))[0] == 200
    assert peer_common_name(old.sslobj) == "a.test"

    # Broken updates: reported in the state and the metric, the last good certificate keeps serving.
    other = ca.issue("other.test")
    broken = [
        ((ca.issue("a.test-v3", dns=("a.test",)), other), "does not match"),
        ((b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n", a2), "no PEM certificate"),
    ]
    for (cert, key), why in broken:
        w.put_secret(cert, key)

        async def reported(why: str = why) -> bool:
            entry = await w.secret_state()
            return entry["state"] == "invalid" and why in entry["error"]

        await until(reported)
        assert await served_cn(w.https, "a.test", ca) == "a.test-v2"
        assert await w.metric("fedproxy_tls_secret_ok") == 0
    assert (await w.ready())[0] == 200  # the certificate is still served: a bad update does not unready

    # Deleted: the same, and the old connection is still fine.
    w.api.delete("secrets", "web", "front")
    await until(missing)
    assert await served_cn(w.https, "a.test", ca) == "a.test-v2"
    assert (await old.get("a.test"))[0] == 200
    assert (await w.secret_state())["serving"]["subject"] == "CN=a.test-v2"
    await old.close()

    # Back: ok again.
    a4 = ca.issue("a.test-v4", dns=("a.test",))
    w.put_secret(a4, a4)

    async def back() -> bool:
        return await served_cn(w.https, "a.test", ca) == "a.test-v4"

    await until(back)
    assert await w.metric("fedproxy_tls_secret_ok") == 1
    assert await w.metric("fedproxy_tls_secret_not_after_timestamp_seconds") is not None


async def test_two_sni_names_one_from_a_file_one_from_a_secret(world: Any, ca: Pki) -> None:
    b = ca.issue("b.test")
    w: World = await world([SECRET, f"{{cert_file: {b.cert_file}, key_file: {b.key_file}}}"])

    # Before the Secret arrives the file certificate serves its name (and is the default for the others).
    assert await until(lambda: served_cn(w.https, "b.test", ca)) == "b.test"
    assert await served_cn(w.https, "a.test") == "b.test"
    assert (await w.ready())[0] == 503

    a = ca.issue("a.test")
    w.put_secret(a, a)

    async def secret_served() -> bool:
        return await served_cn(w.https, "a.test", ca) == "a.test"

    await until(secret_served)
    assert await served_cn(w.https, "b.test", ca) == "b.test"
    assert await served_cn(w.https, None) == "a.test"  # the first certificate of the config is the default again
    c = await connect(w.https, "b.test", ca)
    assert (await c.get("b.test"))[0] == 200
    await c.close()
    await until(lambda: _ready(w))


async def _ready(w: World) -> bool:
    return (await w.ready())[0] == 200


async def test_reload_adds_and_drops_a_secret_certificate(world: Any, ca: Pki) -> None:
    b = ca.issue("b.test")
    file_cert = f"{{cert_file: {b.cert_file}, key_file: {b.key_file}}}"
    w: World = await world([file_cert])
    a = ca.issue("a.test")
    w.put_secret(a, a)
    assert await until(lambda: served_cn(w.https, "b.test", ca)) == "b.test"
    assert not [r for r in w.api.request_log if "/secrets" in r]  # no Secret in the config: never asked

    kubeconfig = w.server.runtime.config.clusters[0].kubeconfig
    text = config_yaml(Path(kubeconfig), w.https, w.admin, [file_cert, SECRET])
    result = await w.server.runtime.reload(text)
    assert result.ok, result.problems

    async def both() -> bool:
        return await served_cn(w.https, "a.test", ca) == "a.test"

    await until(both)
    result = await w.server.runtime.reload(config_yaml(Path(kubeconfig), w.https, w.admin, [file_cert]))
    assert result.ok, result.problems
    assert (await w.state())["tls_secrets"] == []
    assert await served_cn(w.https, "a.test") == "b.test"  # the Secret's certificate is no longer served
