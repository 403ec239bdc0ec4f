"""What both ends of the HTTP/2 proxy share: an h2 state machine on a transport, and streams as event queues.

Theory of operation: the ``h2`` package does all framing (sans-io); ``H2Peer`` feeds it the bytes a transport
receives, turns its events into per-stream events and writes what it has to send. A coroutine serving a stream
reads its events with ``await stream.get()`` and sends with ``await peer.send_data(...)``.

Memory stays bounded by flow control, not by buffers of our own: received DATA is acknowledged to the peer
(``ack``, i.e. ``acknowledge_received_data``) only once the forwarding side has written it on, so a peer can
never have more than one stream window (``STREAM_WINDOW``) queued per stream nor one connection window
(``CONNECTION_WINDOW``) per connection. Sending waits for the peer's window (WINDOW_UPDATE / SETTINGS) and for
our transport's write buffer (``pause_writing``). A frame h2 rejects (``ProtocolError``) ends the connection
with GOAWAY; it never raises out of ``data_received``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

log = logging.getLogger("fedproxy.proxy.h2")

STREAM_WINDOW = 256 * 1024  # bytes a peer may send per stream before we acknowledge (gRPC uses 64 KiB-4 MiB)
CONNECTION_WINDOW = 1024 * 1024  # bytes a peer may have unacknowledged over the whole connection
MAX_CONCURRENT_STREAMS = 256  # streams we accept at once per connection (nginx http2_max_concurrent_streams 128)
MAX_HEADER_LIST = 65536  # bytes of decoded header list we accept (HttpListener.max_header_bytes default)

Headers = list[tuple[bytes, bytes]]
# Stream events: ("headers", Headers, end_stream), ("data", bytes, flow_length, end_stream),
# ("trailers", Headers), ("reset", error_code), ("lost", reason).
Event = tuple[Any, ...]


class StreamGone(ConnectionError):
    """The stream was reset or its connection ended while we were sending on it."""


class H2Stream:
    """One stream's inbound events, consumed in order by the coroutine serving it."""

    __slots__ = ("peer", "id", "events", "waiter", "ended", "closed", "window_waiter", "sink")

    def __init__(self, peer: H2Peer, stream_id: int) -> None:
        self.peer = peer
        self.id = stream_id
        self.events: deque[Event] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.ended = False  # the peer's side of the stream is finished (END_STREAM, reset or lost)
        self.closed = False  # no more sending on it
        self.window_waiter: asyncio.Future[None] | None = None
        self.sink: object = None  # the owner's per-stream state (the forwarding side)

    def push(self, event: Event) -> None:
        self.events.append(event)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def get(self) -> Event:
        """The next event; ("lost", reason) once the stream or the connection is gone."""
        while not self.events:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.events.popleft()

    def wake_sender(self) -> None:
        w = self.window_waiter
        if w is not None and not w.done():
            w.set_result(None)


class H2Peer(asyncio.Protocol):
    """An h2 connection on a transport; subclasses handle the head events (requests or responses)."""

    def __init__(self, client_side: bool) -> None:
        # Outbound headers are never validated again: every field we send was parsed (and validated) by the h2
        # connection it came in on, or is the proxy's own; validating twice cost a large share of a call's CPU.
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.terminated = False  # GOAWAY sent or received, or the transport is gone
        self.lost = False
        self.flush_handle: asyncio.Handle | None = None

    def start(self) -> None:
        """Send our preface and SETTINGS with the windows above."""
        self.h2.local_settings = h2.settings.Settings(
            client=self.h2.config.client_side,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def flush(self) -> None:
        """Write what h2 has to send now."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def flush_soon(self) -> None:
        """Write what h2 has to send at the end of this loop iteration: the frames every stream task of this
        connection produces in one iteration leave in one write (one syscall, one TCP segment) instead of one each.
        Frames are never reordered: h2 keeps them in one buffer and every write takes all of it."""
        if self.flush_handle is None and not self.lost:
            self.flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
            for event in events:
                self.handle(event)
        except h2.exceptions.ProtocolError as exc:
            self.protocol_error(exc)
            return
        except Exception:  # a bug must cost one connection, never the process
            log.exception("event=h2_connection_error")
            self.abort()
            return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.terminated = True
        for stream in list(self.streams.values()):
            self._end(stream, ("lost", str(exc or "connection closed")))
        self.streams.clear()
        w, self.drain_waiter = self.drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        w, self.drain_waiter = self.drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    # Events

    def handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)  # type: ignore[arg-type]
            if stream is None:  # data for a stream we gave up on: hand the window straight back
                self.ack(event.stream_id, event.flow_controlled_length)  # type: ignore[arg-type]
                return
            stream.push(("data", event.data, event.flow_controlled_length, event.stream_ended is not None))
            if event.stream_ended is not None:
                stream.ended = True
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)  # type: ignore[arg-type]
            if stream is not None:
                stream.ended = True
                stream.push(("trailers", list(event.headers)))  # type: ignore[arg-type]
        elif isinstance(event, h2.events.StreamEnded):
            pass  # carried by the DATA/HEADERS event's end_stream flag
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)  # type: ignore[arg-type]
            if stream is not None:
                self._end(stream, ("reset", int(event.error_code or 0)))
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for stream in self.streams.values():
                stream.wake_sender()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_received(int(event.last_stream_id or 0), int(event.error_code or 0))
        else:
            self.handle_head(event)

    def handle_head(self, event: h2.events.Event) -> None:
        """Requests (server side) or responses (client side); the default ignores other events."""

    def goaway_received(self, last_stream_id: int, error_code: int) -> None:
        """The peer will process no stream above ``last_stream_id``: those end as refused (retriable)."""
        self.terminated = True
        for sid, stream in list(self.streams.items()):
            if sid > last_stream_id:
                self.streams.pop(sid, None)
                self._end(stream, ("reset", int(h2.errors.ErrorCodes.REFUSED_STREAM)))
        if not self.streams:
            self.close()

    def protocol_error(self, exc: Exception) -> None:
        """A malformed frame or a protocol violation: GOAWAY(PROTOCOL_ERROR) and close (RFC 9113 5.4.1)."""
        log.info("event=h2_protocol_error reason=%r", str(exc))
        code = getattr(exc, "error_code", None) or h2.errors.ErrorCodes.PROTOCOL_ERROR
        try:
            self.h2.close_connection(error_code=code)
            self.flush()
        except Exception:
            pass
        self.close()

    def _end(self, stream: H2Stream, event: Event) -> None:
        stream.ended = stream.closed = True
        stream.push(event)
        stream.wake_sender()

    # Sending

    def new_stream(self, stream_id: int) -> H2Stream:
        stream = self.streams[stream_id] = H2Stream(self, stream_id)
        return stream

    def send_headers(self, stream: H2Stream, headers: Headers, end_stream: bool = False) -> None:
        if stream.closed or self.lost:
            raise StreamGone("stream closed")
        self.h2.send_headers(stream.id, headers, end_stream=end_stream)
        self.flush_soon()
        if end_stream:
            self._sent_end(stream)

    async def send_data(self, stream: H2Stream, data: bytes, end_stream: bool = False) -> None:
        """Send ``data`` within the peer's windows and our write buffer; raises StreamGone if the stream ends."""
        view = memoryview(data)
        while True:
            if stream.closed or self.lost:
                raise StreamGone("stream closed")
            try:
                window = min(self.h2.local_flow_control_window(stream.id), self.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError as exc:
                raise StreamGone("stream closed") from exc
            if window <= 0 and view:
                stream.window_waiter = asyncio.get_running_loop().create_future()
                await stream.window_waiter
                continue
            piece, view = view[:window], view[window:]
            last = end_stream and not view
            self.h2.send_data(stream.id, piece.tobytes(), end_stream=last)
            if view:  # more to come: write now so that the transport's back-pressure (pause_writing) shows
                self.flush()
            else:
                self.flush_soon()
            if self.write_paused:
                await self.drain()
            if not view:
                if last:
                    self._sent_end(stream)
                return

    def send_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.send_headers(stream, headers, end_stream=True)

    def reset(self, stream: H2Stream, code: int = int(h2.errors.ErrorCodes.CANCEL)) -> None:
        """Reset the stream (if still open) and forget it."""
        self.streams.pop(stream.id, None)
        if not stream.closed and not self.lost:
            stream.closed = True
            try:
                self.h2.reset_stream(stream.id, error_code=code)
                self.flush_soon()
            except h2.exceptions.H2Error:
                pass
        stream.closed = stream.ended = True
        self.stream_done(stream)

    def ack(self, stream_id: int, length: int) -> None:
        """Hand ``length`` flow-controlled bytes back to the peer once they were passed on."""
        if length <= 0 or self.lost:
            return
        try:
            self.h2.acknowledge_received_data(length, stream_id)
        except h2.exceptions.H2Error:
            return
        self.flush_soon()

    async def drain(self) -> None:
        while self.write_paused and not self.lost:
            if self.drain_waiter is None or self.drain_waiter.done():
                self.drain_waiter = asyncio.get_running_loop().create_future()
            await self.drain_waiter

    def _sent_end(self, stream: H2Stream) -> None:
        stream.closed = True
        if stream.ended:
            self.streams.pop(stream.id, None)
            self.stream_done(stream)

    def finished_receiving(self, stream: H2Stream) -> None:
        """The consumer read the stream's last event; forget it if our side is done too."""
        if stream.closed:
            self.streams.pop(stream.id, None)
            self.stream_done(stream)

    def stream_done(self, stream: H2Stream) -> None:
        """Hook: a stream is finished both ways (subclasses close idle connections, count streams)."""

    def close(self) -> None:
        self.terminated = True
        self.flush()  # what is queued (a last response, GOAWAY) goes out before the FIN
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.terminated = True
        if self.transport is not None:
            self.transport.abort()
