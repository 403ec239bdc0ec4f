"""A real gRPC backend for the demo pods: cleartext HTTP/2 (h2c) framed by the `h2` library, no grpcio needed.

`GrpcEcho` serves two unary methods, enough for a gRPC client to see fedproxy balance and fail over:

- `/grpc.health.v1.Health/Check`: the standard health service (what `grpc_health_probe` and Kubernetes gRPC
  probes call); the answer is `HealthCheckResponse{status: SERVING}`, whatever service the request names.
- `/demo.Echo/Echo`: answers with the request message unchanged.

Every answer carries the initial metadata `x-backend: cluster/pod`, so a client sees which member served it.
Any other method ends trailers-only with `grpc-status: 12` (UNIMPLEMENTED), as a gRPC server does. Messages
are taken as bytes (no protobuf code): the health answer is its two-byte encoding. A peer that breaks HTTP/2
gets a GOAWAY and the connection closes; one bad stream never takes the server down.
"""

from __future__ import annotations

import asyncio
import logging

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from fedproxy.sim.backends import LoopbackServer

log = logging.getLogger(__name__)

HEALTH_CHECK = b"/grpc.health.v1.Health/Check"
ECHO = b"/demo.Echo/Echo"
SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING} in protobuf wire format
_MAX_MESSAGE = 4 * 1024 * 1024  # grpc's default receive limit


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class _GrpcProtocol(asyncio.Protocol):
    def __init__(self, owner: GrpcEcho) -> None:
        self.owner = owner
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, tuple[bytes, bytearray]] = {}  # stream id -> (:path, request body)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.connections.add(transport)
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.owner.connections.discard(self.transport)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # GOAWAY with the error (RFC 9113 5.4.1), then close
            log.debug("event=grpc_backend_protocol_error error=%s", exc)
            try:
                self.conn.close_connection(getattr(exc, "error_code", None) or h2.errors.ErrorCodes.PROTOCOL_ERROR)
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                path = dict(ev.headers).get(b":path", b"")  # type: ignore[arg-type]
                self.streams[ev.stream_id] = (path, bytearray())
            elif isinstance(ev, h2.events.DataReceived):
                call = self.streams.get(ev.stream_id)
                if call is not None:
                    call[1].extend(ev.data)
                    if len(call[1]) > _MAX_MESSAGE + 5:
                        self.streams.pop(ev.stream_id)
                        self._status(ev.stream_id, b"8", b"request message too large")  # RESOURCE_EXHAUSTED
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                call = self.streams.pop(ev.stream_id, None)
                if call is not None:
                    self._answer(ev.stream_id, *call)
            elif isinstance(ev, h2.events.StreamReset):
                self.streams.pop(ev.stream_id, None)
        self._flush()

    def _answer(self, stream_id: int, path: bytes, body: bytearray) -> None:
        if path not in (HEALTH_CHECK, ECHO):
            self._status(stream_id, b"12", b"unknown method " + path)  # UNIMPLEMENTED
            return
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._status(stream_id, b"13", b"expected one uncompressed message")  # INTERNAL
            return
        self.owner.calls += 1
        reply = SERVING if path == HEALTH_CHECK else bytes(body[5:])
        self.conn.send_headers(stream_id, self._head())
        self.conn.send_data(stream_id, frame(reply))
        self.conn.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)

    def _status(self, stream_id: int, code: bytes, message: bytes) -> None:
        """A trailers-only response: the status in the one HEADERS frame."""
        head = [*self._head(), (b"grpc-status", code), (b"grpc-message", message.replace(b" ", b"%20"))]
        self.conn.send_headers(stream_id, head, end_stream=True)

    def _head(self) -> list[tuple[bytes, bytes]]:
        return [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"x-backend", self.owner.identity.encode()),
        ]

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


class GrpcEcho(LoopbackServer):
    """An h2c gRPC server identifying itself as `cluster`/`pod` (see the module docstring for its methods)."""

    def __init__(self, host: str, port: int = 0, cluster: str = "sim", pod: str = "pod") -> None:
        super().__init__(host, port)
        self.cluster, self.pod = cluster, pod
        self.calls = 0

    @property
    def identity(self) -> str:
        return f"{self.cluster}/{self.pod}"

    def protocol(self) -> asyncio.Protocol:
        return _GrpcProtocol(self)
