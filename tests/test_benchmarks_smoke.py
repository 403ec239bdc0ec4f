"""Smoke test of the benchmark harness: a tiny in-process run of its own pieces, no external tools, no timing
assertions (speed is what `python -m benchmarks` reports, not what tests check)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from benchmarks import scale, tcp
from benchmarks.dns import latencies_ms, zone_text
from benchmarks.http import parse_wrk
from benchmarks.report import Table, write_json

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:1/
  1 threads and 64 connections
  Latency Distribution
     50%  620.00us
     75%    1.00ms
     90%    1.20ms
     99%    1.50ms
  1000 requests in 2.00s, 1.85MB read
  Socket errors: connect 0, read 2, write 0, timeout 0
Requests/sec:    500.00
"""


class _Answer(asyncio.Protocol):
    """Answers any bytes with a response and closes, as the nginx backend does for HTTP/1.0."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.0 200 OK\r\n\r\nok\n")  # type: ignore[attr-defined]
        self.transport.close()


@pytest.mark.slow
async def test_tiny_run_fills_tables_and_json(tmp_path: Path) -> None:
    server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        ok, failed = await tcp.connection_rate(port, 0.3, parallel=4)
    finally:
        server.close()
        await server.wait_closed()
    assert ok > 0 and failed == 0

    table = Table("scale", "tiny", scale.columns())
    scale._catalog_round(table, "catalog 2x5x3", 2, 5, 3, memory=True)
    assert table.median("catalog 2x5x3", "rebuild_ms") is not None
    assert table.median("catalog 2x5x3", "catalog_mib") > 0
    table.fail("fedproxy idle TCP conns", "kib_per_conn", "not run")
    assert "failed" in table.text() and "| catalog 2x5x3 |" in table.markdown()

    rates = Table("tcp", "rates", tcp.columns(), reference="ref")
    rates.add("ref", "conns", 100.0)
    rates.add("me", "conns", ok / 0.3)
    assert rates.ratio("ref", "conns") == 1.0

    path = tmp_path / "out.json"
    write_json(path, [table, rates], {"quick": True})
    doc = json.loads(path.read_text())
    assert doc["scenarios"]["scale"]["rows"][1]["errors"] == {"kib_per_conn": "not run"}

    wrk = parse_wrk(WRK_OUTPUT)
    assert wrk == {"rps": 500.0, "p50": 0.62, "p99": 1.5, "requests": 1000.0, "errors": 2.0}
    assert latencies_ms("> NOERROR a.clusterset.local A 0.000250\n> T a A\n") == [0.25]
    assert "name-0.bench.svc.clusterset.local. 5 A 127.1.1.1" in zone_text(
        [("name-0.bench.svc.clusterset.local.", 5, "127.1.1.1")]
    )


H2LOAD_OUTPUT = """\
starting benchmark...
finished in 2.00s, 8000.00 req/s, 1.29MB/s
requests: 16094 total, 16144 started, 16094 done, 16000 succeeded, 94 failed, 94 errored, 0 timeout
status codes: 16000 2xx, 0 3xx, 0 4xx, 3 5xx
traffic: 2.58MB (2705422) total, 95.42KB (97712) headers (space savings 95.58%), 1.23MB (1286720) data
                     min         max         mean         sd        +/- sd
time for request:      155us     28.61ms      1.89ms      1.32ms    79.93%
"""


def test_tls_scenario_pieces(tmp_path: Path) -> None:
    """The https/grpc scenarios' parsers and generated configs: fedproxy accepts its config with the certificate."""
    from benchmarks.tls import fedproxy_config, haproxy_conf, parse_h2load, write_certificate
    from fedproxy.configload import parse_config

    h2 = parse_h2load(H2LOAD_OUTPUT)
    assert h2 == {"rps": 8000.0, "requests": 16000.0, "errors": 94 + 94 + 3, "mean": 1.89}
    with pytest.raises(ValueError):
        parse_h2load("connect failed\n")

    cert, key, pem = write_certificate(tmp_path)
    assert pem.read_bytes() == cert.read_bytes() + key.read_bytes()
    config = parse_config(fedproxy_config(tmp_path / "kubeconfig.yaml", 8443, 8080, 9901, cert, key))
    https, grpc = config.http.listeners
    assert https.tls is not None and https.tls.certificates[0].cert_file == str(cert)
    assert grpc.h2c and grpc.routes[0].upstream_protocol == "h2c"
    assert f"bind 127.0.0.1:8443 ssl crt {pem}" in haproxy_conf(8443, 8080, 1, 2, pem)


class _KeepAliveAnswer(asyncio.Protocol):
    """A keep-alive backend: one Content-Length response per request head, saying which request it was."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            body = head.split(b" ")[1]
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))  # type: ignore[attr-defined]


async def test_floor_proxy_forwards_keep_alive_requests() -> None:
    """The http scenario's Python floor is a working (minimal) proxy: answers come back in order on one connection."""
    import sys

    from tests.loopback import free_port, until

    loop = asyncio.get_running_loop()
    backend = await loop.create_server(_KeepAliveAnswer, "127.0.0.1", 0)
    port = free_port()
    script = Path(__file__).parent.parent / "benchmarks" / "floor_proxy.py"
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), str(port),
                                                str(backend.sockets[0].getsockname()[1]))  # fmt: skip
    try:

        async def listening() -> bool:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return True

        await until(listening, deadline=10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for path in (b"/a", b"/bb", b"/ccc"):
            writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert await reader.readexactly(len(path)) == path
        writer.close()
    finally:
        proc.terminate()
        await proc.wait()
        backend.close()
