"""TLS Secrets named by the config are watched one by one in their member (field selector), through discovery's
list+watch loop and the real kubernetes-asyncio client against an emulated member."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fedproxy.config import HttpConfig, HttpListener, TlsCertificate, TlsConfig
from fedproxy.model import ServiceKey
from fedproxy.sim import objects
from fedproxy.tls.secrets import SecretEvent, SecretRef

from .conftest import cluster_config, config_with, eventually, member_objects

REF = SecretRef("east", "web", "front")


def tls_listener(*secrets: str, port: int = 8443) -> HttpListener:
    certs = tuple(TlsCertificate(secret=ServiceKey.parse(s), cluster="east") for s in secrets)
    return HttpListener(port=port, tls=TlsConfig(certs))


def secret_requests(log: list[str]) -> list[tuple[str, dict[str, list[str]]]]:
    out = []
    for line in log:
        url = urlsplit(line.split(" ", 1)[1])
        if "secrets" in url.path:
            out.append((url.path, parse_qs(url.query)))
    return out


async def test_one_watch_per_named_secret_with_its_changes(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    east.apply(objects.tls_secret("web", "unrelated", b"c", b"k"))
    base = config_with(cluster_config(tmp_path, east))
    config = config_with(cluster_config(tmp_path, east), http=HttpConfig(listeners=(tls_listener("web/front"),)))
    events: list[SecretEvent] = []
    discovery, rec = await run_discovery(config, on_secret=events.append)

    def last() -> SecretEvent | None:
        mine = [e for e in events if e.ref == REF]
        return mine[-1] if mine else None

    await eventually(lambda: last() is not None and last().kind == "absent", what="absent on the first list")
    east.apply(objects.tls_secret("web", "front", b"CERT-1", b"KEY-1"))
    await eventually(lambda: last().kind == "present" and last().material.cert_pem == b"CERT-1", what="created")
    east.apply(objects.tls_secret("web", "front", b"CERT-2", b"KEY-2"))
    await eventually(lambda: last().kind == "present" and last().material.cert_pem == b"CERT-2", what="replaced")
    # Same name, another type (deleted and created anew: the type is immutable).
    east.delete("secrets", "web", "front")
    east.apply(objects.secret("web", "front", {"tls.crt": b"x", "tls.key": b"y"}))
    await eventually(lambda: last().kind == "invalid" and "Opaque" in last().problem, what="wrong type")
    east.delete("secrets", "web", "front")
    await eventually(lambda: last().kind == "absent", what="deleted")
    assert {e.ref for e in events} == {REF}  # "unrelated" never reported

    # Least privilege: only the one Secret, in its namespace, by metadata.name; never all Secrets.
    asked = secret_requests(list(east.request_log))
    assert asked
    for path, query in asked:
        assert path == "/api/v1/namespaces/web/secrets", path
        assert query["fieldSelector"] == ["metadata.name=front"], query

    # Dropped from the config: its watch closes, and no Secret is asked for any more.
    watches = east.open_watches
    await discovery.update(base)
    await eventually(lambda: east.open_watches == watches - 1, what="the Secret watch closed")
    before = len(secret_requests(list(east.request_log)))
    east.apply(objects.tls_secret("web", "front", b"CERT-3", b"KEY-3"))
    await eventually(lambda: rec.snap("east") is not None and rec.snap("east").synced, what="member still synced")
    assert len(secret_requests(list(east.request_log))) == before
    assert last().kind == "absent"


async def test_no_secret_request_without_secret_certificates(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    events: list[SecretEvent] = []
    await run_discovery(config_with(cluster_config(tmp_path, east)), on_secret=events.append)
    await eventually(lambda: any("endpointslices" in r for r in east.request_log), what="discovery started")
    assert secret_requests(list(east.request_log)) == [] and events == []


async def test_a_member_outage_is_reported_and_cleared(tmp_path: Path, servers, run_discovery) -> None:
    east = servers("east")
    await east.start()
    east.apply_all(member_objects())
    east.apply(objects.tls_secret("web", "front", b"CERT-1", b"KEY-1"))
    config = config_with(cluster_config(tmp_path, east), http=HttpConfig(listeners=(tls_listener("web/front"),)))
    events: list[SecretEvent] = []
    await run_discovery(config, on_secret=events.append)
    await eventually(lambda: events and events[-1].kind == "present", what="loaded")
    await east.kill()
    await eventually(lambda: events[-1].kind == "failing", what="the watch failing")
    assert events[-1].problem
    await east.restart()
    await eventually(lambda: events[-1].kind == "present", what="readable again")
    assert events[-1].material is not None and events[-1].material.cert_pem == b"CERT-1"
