"""The pure ClientHello parser: real hellos from Python's ssl, fragmentation, partial reads, fuzzing."""

from __future__ import annotations

import ssl

from hypothesis import given, settings
from hypothesis import strategies as st

from fedproxy.tls.clienthello import ClientHello, HelloError, Incomplete, parse_client_hello


def real_hello(server_name: str | None = "app.example.com", alpn: tuple[str, ...] = ("h2", "http/1.1")) -> bytes:
    """The bytes Python's TLS client sends first (one record holding the ClientHello)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def refragment(record: bytes, sizes: list[int]) -> bytes:
    """The same handshake message split into several records of the given fragment sizes."""
    assert record[0] == 22
    message = record[5:]
    out, pos = b"", 0
    for size in [*sizes, len(message)]:
        part = message[pos : pos + size]
        if not part:
            break
        out += bytes((22, 3, 1)) + len(part).to_bytes(2, "big") + part
        pos += len(part)
    return out


def test_real_hello_gives_sni_and_alpn() -> None:
    found = parse_client_hello(real_hello("App.Example.COM", ("h2", "http/1.1")))
    assert found == ClientHello("app.example.com", ("h2", "http/1.1"), 0x0303)


def test_hello_without_sni_or_alpn() -> None:
    found = parse_client_hello(real_hello(None, ()))
    assert isinstance(found, ClientHello)
    assert found.server_name == "" and found.alpn == ()


def test_every_prefix_is_incomplete_then_whole() -> None:
    data = real_hello()
    for n in range(len(data)):
        assert isinstance(parse_client_hello(data[:n]), Incomplete), n
    assert isinstance(parse_client_hello(data), ClientHello)


def test_fragmented_across_records() -> None:
    data = refragment(real_hello("b.example.org"), [1, 3, 50, 7])
    found = parse_client_hello(data)
    assert isinstance(found, ClientHello) and found.server_name == "b.example.org"
    for n in range(len(data)):  # and across reads of those records
        assert isinstance(parse_client_hello(data[:n]), Incomplete), n


def test_trailing_bytes_after_the_hello_are_ignored() -> None:
    found = parse_client_hello(real_hello() + b"\x17\x03\x03garbage")
    assert isinstance(found, ClientHello)


def test_malformed_inputs_are_errors() -> None:
    hello = real_hello()
    assert parse_client_hello(b"GET / HTTP/1.1\r\n") == HelloError("not_tls")
    assert parse_client_hello(b"\x16\x02\x01\x00\x05") == HelloError("bad_record_version")
    assert parse_client_hello(b"\x16\x03\x01\x00\x00") == HelloError("bad_record_length")
    assert parse_client_hello(b"\x16\x03\x01\x40\x01" + bytes(100)) == HelloError("bad_record_length")
    # A ServerHello (type 2) is not a ClientHello.
    assert parse_client_hello(hello[:5] + b"\x02" + hello[6:]) == HelloError("not_client_hello")
    # A handshake record followed by an alert before the hello is whole.
    first = refragment(hello, [10])
    assert parse_client_hello(first[:15] + b"\x15\x03\x03\x00\x02\x02\x32") == HelloError("unexpected_record")
    # The message claims more than the bound.
    assert parse_client_hello(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff") == HelloError("too_large")
    # A corrupted extensions length.
    body_len = int.from_bytes(hello[6:9], "big")
    bad = bytearray(hello)
    bad[9 + body_len - 1] ^= 0xFF  # last byte of the last extension's data changes nothing structural...
    assert isinstance(parse_client_hello(bytes(bad)), ClientHello | HelloError)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(parse_client_hello(data), ClientHello | Incomplete | HelloError)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_real_hellos_never_raise(data: st.DataObject) -> None:
    hello = bytearray(real_hello("x.example.net"))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(hello) - 1))
        hello[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(hello)))
    assert isinstance(parse_client_hello(bytes(hello[:cut])), ClientHello | Incomplete | HelloError)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=8))
def test_any_fragmentation_parses(sizes: list[int]) -> None:
    found = parse_client_hello(refragment(real_hello("frag.example.com"), sizes))
    assert isinstance(found, ClientHello) and found.server_name == "frag.example.com"
