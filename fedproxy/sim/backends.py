"""Real loopback backends standing in for pods, ClusterIPs, NodePorts and LoadBalancer IPs.

`HttpEcho` answers every request with who it is (cluster, pod) and what it received, plus a few endpoints
for proxy tests (websocket echo, streamed bodies, chosen status codes, slow answers). `TcpEcho` echoes bytes,
optionally after a prefix that names the backend. Both bind one loopback IP:port (127.x.y.z binds on Linux
without setup) with SO_REUSEADDR so sequential runs can rebind the same ports at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

from aiohttp import WSMsgType, web

from fedproxy.sim.apiserver import require_loopback

log = logging.getLogger(__name__)

BACKEND_HEADER = "x-backend"
# Chunk size of /stream bodies: large enough to be cheap, small enough to exercise streaming.
_STREAM_CHUNK = 64 * 1024
_MAX_SLEEP_MS = 60_000


class HttpEcho:
    """An HTTP/1.1 + websocket echo server identifying itself as `cluster`/`pod`.

    Routes: `/ws` websocket echo; `/stream?bytes=N` N bytes streamed in chunks; `/status/{code}`;
    `/sleep?ms=N` answers after N ms; `/echo` (POST/PUT) streams the body back; any other path answers
    JSON {cluster, pod, path, method, query, headers} and, with a body, its sha256 and length.
    Every response carries `x-backend: cluster/pod`.
    """

    def __init__(self, host: str, port: int = 0, cluster: str = "sim", pod: str = "pod") -> None:
        require_loopback(host)
        self.host, self.port, self.cluster, self.pod = host, port, cluster, pod
        self.requests = 0
        self._runner: web.AppRunner | None = None

    @property
    def identity(self) -> str:
        return f"{self.cluster}/{self.pod}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._identify])
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/stream", self._stream)
        app.router.add_route("*", "/status/{code}", self._status)
        app.router.add_route("*", "/sleep", self._sleep)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_route("*", "/{tail:.*}", self._info)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @web.middleware
    async def _identify(self, request: web.Request, handler: object) -> web.StreamResponse:
        self.requests += 1
        try:
            resp = await handler(request)  # type: ignore[operator]
        except web.HTTPException as exc:
            exc.headers[BACKEND_HEADER] = self.identity
            raise
        if not resp.prepared:
            resp.headers[BACKEND_HEADER] = self.identity
        return resp

    def _describe(self, request: web.Request) -> dict[str, object]:
        return {
            "cluster": self.cluster,
            "pod": self.pod,
            "path": request.path,
            "method": request.method,
            "query": dict(request.query),
            "headers": dict(request.headers),
        }

    async def _info(self, request: web.Request) -> web.Response:
        info = self._describe(request)
        if request.can_read_body:
            digest, length = hashlib.sha256(), 0
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                length += len(chunk)
            info["body_sha256"], info["body_length"] = digest.hexdigest(), length
        return web.json_response(info)

    async def _status(self, request: web.Request) -> web.Response:
        try:
            code = int(request.match_info["code"])
        except ValueError:
            code = 400
        body = None if code in (204, 304) or code < 200 else json.dumps(self._describe(request))
        return web.Response(status=code, text=body, content_type="application/json" if body else None)

    async def _sleep(self, request: web.Request) -> web.Response:
        ms = min(int(request.query.get("ms", "0")), _MAX_SLEEP_MS)
        await asyncio.sleep(ms / 1000)
        return web.json_response(self._describe(request))

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        total = int(request.query.get("bytes", "0"))
        resp = web.StreamResponse(headers={BACKEND_HEADER: self.identity, "Content-Type": "application/octet-stream"})
        resp.content_length = total
        await resp.prepare(request)
        chunk = b"x" * _STREAM_CHUNK
        sent = 0
        while sent < total:
            part = chunk[: min(_STREAM_CHUNK, total - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={BACKEND_HEADER: self.identity})
        resp.content_type = request.content_type or "application/octet-stream"
        if request.content_length is not None:
            resp.content_length = request.content_length
        await resp.prepare(request)
        async for chunk in request.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        ws.headers[BACKEND_HEADER] = self.identity
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, owner: TcpEcho) -> None:
        self._owner = owner
        self._transport: asyncio.Transport | None = None

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        self._owner.connections.add(transport)
        self._owner.accepted += 1
        if self._owner.prefix:
            transport.write(self._owner.prefix)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def eof_received(self) -> bool:
        # Half-close: finish echoing what we have, then close our side as well.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._owner.connections.discard(self._transport)


class LoopbackServer:
    """A TCP server on one loopback host:port whose ``stop`` resets open connections, as a pod that died does.

    Subclasses give ``protocol()``; their protocols add their transport to ``connections`` and discard it."""

    def __init__(self, host: str, port: int = 0) -> None:
        require_loopback(host)
        self.host, self.port = host, port
        self.connections: set[asyncio.BaseTransport] = set()
        self._server: asyncio.Server | None = None

    def protocol(self) -> asyncio.Protocol:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.protocol, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and reset open connections (a pod that died)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for transport in list(self.connections):
            transport.abort()  # type: ignore[attr-defined]
        await server.wait_closed()


class TcpEcho(LoopbackServer):
    """A TCP echo server on host:port; `prefix` is sent first on each connection (e.g. b"east-1/pod-1\\n")."""

    def __init__(self, host: str, port: int = 0, prefix: bytes = b"") -> None:
        super().__init__(host, port)
        self.prefix = prefix
        self.accepted = 0

    def protocol(self) -> asyncio.Protocol:
        return _EchoProtocol(self)
