"""Security: the admin token is enforced, secrets (the admin token, member credentials) are never logged or
shown, and the DNS responder is not an open resolver (REFUSED outside the clusterset domain unless forwarding
is configured).
"""

from __future__ import annotations

import asyncio

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from .conftest import ADMIN_TOKEN, World

pytestmark = pytest.mark.reliability

PROTECTED = [
    ("GET", "/metrics"),
    ("GET", "/api/v1/state"),
    ("GET", "/api/v1/config"),
    ("GET", "/api/v1/explain?service=demo/web"),
    ("POST", "/reload"),
    ("POST", "/api/v1/clusters/east/drain"),
    ("POST", "/api/v1/clusters/east/weight"),
]


async def test_admin_token_enforced(world: World) -> None:
    proxy = await world.start(world.yaml(token=ADMIN_TOKEN), token=ADMIN_TOKEN)
    s = world.session
    bad_headers = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        {"Authorization": "Bearer"},
        {"X-Token": ADMIN_TOKEN},
    ]
    for method, path in PROTECTED:
        for headers in bad_headers:
            async with s.request(method, proxy.admin_url + path, headers=headers) as r:
                assert r.status == 401, (method, path, headers)
    assert proxy.connected("east") and "east" not in proxy.runtime.overrides.drained  # nothing was done
    assert proxy.runtime.reloads_ok == 0 and proxy.runtime.reloads_failed == 0
    for path in ("/healthz", "/readyz"):
        async with s.get(proxy.admin_url + path) as r:
            assert r.status == 200
    async with s.get(proxy.admin_url + "/api/v1/state", headers=proxy.auth()) as r:
        assert r.status == 200


async def test_secrets_never_logged_or_shown(world: World, fedproxy_logs) -> None:
    proxy = await world.start(world.yaml(token=ADMIN_TOKEN), token=ADMIN_TOKEN)
    s = world.session
    new_token = "n3w-t0ken-0815"
    secrets = [ADMIN_TOKEN, new_token, *(world.server(m).token for m in ("east", "west"))]
    # A good reload that changes the token, then bad ones that put the token where it does not belong.
    good = world.yaml(token=new_token)
    # (Only secret positions count: a token pasted as a policy name is a value like any other.)
    bad = [
        good.replace(f"token: {new_token}", f"token: [{new_token}]"),  # wrong type
        good.replace(f"token: {new_token}", f"token: {{value: {new_token}}}"),
        good.replace(f"token: {new_token}", f"tokn: {new_token}"),  # misspelt key
        good.replace(f"token: {new_token}", f"token: {new_token}\n  token_file: /nonexistent"),  # both
        good.replace("policy: spread", "policy: nonsense"),  # a valid token, another problem
        "admin: {token: " + new_token + ", bogus: [1",  # not even YAML
    ]
    async with s.post(proxy.admin_url + "/reload", data=good, headers=proxy.auth()) as r:
        body = await r.text()
        assert r.status == 200, body
    proxy.token = new_token
    responses = [body]
    for text in bad:
        async with s.post(proxy.admin_url + "/reload", data=text, headers=proxy.auth()) as r:
            responses.append(await r.text())
            assert r.status == 400
    async with s.get(proxy.admin_url + "/api/v1/config", headers=proxy.auth()) as r:
        assert r.status == 200
        responses.append(await r.text())
    for path in ("/api/v1/state", "/metrics"):
        async with s.get(proxy.admin_url + path, headers=proxy.auth()) as r:
            responses.append(await r.text())
    # A member rejecting our credentials must not make us print them either.
    world.server("west").token = "rotated"
    world.server("west").cut_watches()
    await asyncio.sleep(0.5)
    logs = fedproxy_logs.text()
    assert "reload_rejected" in logs and "event=reloaded" in logs  # the capture did see both reloads
    assert "HTTP 401" in logs
    for secret in secrets:
        assert secret not in logs, f"secret {secret!r} in the logs"
        for text in responses:
            assert secret not in text, f"secret {secret!r} shown: {text[:300]}"
    assert repr(proxy.runtime.config).count(new_token) == 0


class Upstream(asyncio.DatagramProtocol):
    """A tiny resolver on loopback answering every A query with 192.0.2.1."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", "A", "192.0.2.1"))
        self.transport.sendto(r.to_wire(), addr)  # type: ignore[attr-defined]


async def test_dns_refuses_recursion_unless_forward_is_configured(world: World) -> None:
    proxy = await world.start(world.yaml())
    outside = ["example.com", "www.google.com", "clusterset.local.evil.com", "local", "svc.cluster.local", "."]
    for name in outside:
        for rd in (True, False):
            q = dns.message.make_query(name, "A")
            if not rd:
                q.flags &= ~dns.flags.RD
            r = await dns.asyncquery.udp(q, "127.0.0.1", port=proxy.dns_port, timeout=2)
            assert r.rcode() == dns.rcode.REFUSED, (name, rd, r)
            assert not r.answer and not r.flags & dns.flags.RA
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        result = await proxy.runtime.reload(world.yaml(dns_extra=f'\n  forward: ["127.0.0.1:{port}"]'))
        assert result.ok, result.problems
        r = await dns.asyncquery.udp(
            dns.message.make_query("example.com", "A"), "127.0.0.1", port=proxy.dns_port, timeout=2
        )
        assert r.rcode() == dns.rcode.NOERROR and [rd.address for rr in r.answer for rd in rr] == ["192.0.2.1"]
        # Our own zone is still answered by us, not forwarded.
        assert (await proxy.dns_a())[1] <= {"10.1.0.10", "10.2.0.10"}
        # And back off again: REFUSED.
        assert (await proxy.runtime.reload(world.yaml())).ok
        r = await dns.asyncquery.udp(
            dns.message.make_query("example.com", "A"), "127.0.0.1", port=proxy.dns_port, timeout=2
        )
        assert r.rcode() == dns.rcode.REFUSED
    finally:
        transport.close()
