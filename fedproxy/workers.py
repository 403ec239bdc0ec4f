"""`--workers N`: one control process and N serving workers (shared/ARCHITECTURE.md, "Processes").

- Control: discovery (one set of watches per member, never N), catalog builds, config load and reload,
  the admin server, active health checks, runtime overrides. It runs ``Runtime(role="control")``.
- Workers: the HTTP, TCP and DNS listeners, opened with SO_REUSEPORT so the kernel spreads connections and
  packets; each holds the latest Catalog and builds its own pools and DNS answers from it; passive health
  (outlier ejections) is per worker, as in Envoy. Each runs ``Runtime(role="worker")``.
- Control -> worker: versioned messages over a Unix socket pair, each a 4-byte length and a pickled
  :class:`WorldMessage` (the Catalog and the settings as plain frozen values; both ends are this program, so
  pickle is a trusted format here). A worker that falls behind applies only the newest message it has.
  Certificates from kubernetes.io/tls Secrets travel in it too, as the PEM pairs the control process checked
  (workers open no API connection); the socket pair is private to the two processes.
- Worker -> control: one "ready" byte once its listeners are bound; nothing on the hot path.
- A worker that dies is restarted (with backoff) while the others keep serving.
- Metrics use prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the CLI before any
  metric is created), so the control process's /metrics sums every worker.
"""

from __future__ import annotations

import asyncio
import copyreg
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .aio import TaskOwner, install_uvloop
from .balancing import HealthView, Overrides, ServingState
from .catalog import Catalog
from .config import Config
from .runtime import Runtime
from .tls.secrets import SecretMaterial, SecretRef

log = logging.getLogger("fedproxy.workers")

_LEN = struct.Struct("!I")


def _mappingproxy(data: dict) -> MappingProxyType:  # type: ignore[type-arg]
    return MappingProxyType(data)


def _reduce_mappingproxy(m: MappingProxyType) -> tuple[object, tuple[dict]]:  # type: ignore[type-arg]
    return _mappingproxy, (dict(m),)


# The frozen values hold read-only mappings; pickle needs to be told how to rebuild them.
copyreg.pickle(MappingProxyType, _reduce_mappingproxy)  # type: ignore[arg-type]
READY = b"R"
RESTART_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)  # s before restarting a worker that died, by crash count


@dataclass(frozen=True)
class WorldMessage:
    version: int
    config: Config
    catalog: Catalog
    overrides: Overrides
    health: HealthView  # active-check results from the control process
    # PEM pairs of the watched TLS Secrets that passed the control's checks (last good of each)
    tls_secrets: Mapping[SecretRef, SecretMaterial] = field(default_factory=dict)


def encode(msg: WorldMessage) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


class WorkerHandle:
    """The control side of one worker: its process, its socket, and whether it said it is ready."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self.ready = False
        self.crashes = 0
        self.writer: asyncio.StreamWriter | None = None

    async def start(self, log_level: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fedproxy.workers",
            str(theirs.fileno()),
            str(self.index),
            str(log_level),
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        reader, self.writer = await asyncio.open_unix_connection(sock=ours)
        self.ready = False
        self._reader = reader

    async def wait_ready(self) -> None:
        try:
            byte = await self._reader.read(1)
        except ConnectionError:
            byte = b""  # the worker died before it was ready: the supervisor sees it exit next
        self.ready = byte == READY

    def send(self, frame: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            try:
                self.writer.write(frame)
            except ConnectionError:
                pass  # a dying worker: its supervisor restarts it and sends the newest frame then

    async def stop(self, grace: float) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace + 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self.writer is not None:
            self.writer.close()


class Supervisor:
    """Control-process side: starts N workers, feeds them every new world, restarts the ones that die."""

    def __init__(self, runtime: Runtime, n: int) -> None:
        self.runtime = runtime
        self.workers = [WorkerHandle(i) for i in range(n)]
        self.tasks = TaskOwner("supervisor")
        self.stopping = False
        self._last_frame = b""
        runtime.on_state.append(self._publish)
        runtime.on_tls.append(lambda _secrets: self._publish(runtime.state))
        runtime.workers_ready = self.ready

    def ready(self) -> tuple[bool, str]:
        waiting = [w.index for w in self.workers if not w.ready]
        return (False, f"workers not ready: {waiting}") if waiting else (True, "ok")

    def _publish(self, state: ServingState) -> None:
        # Only the control's active checks travel: passive ejections are each worker's own (as in Envoy).
        health = self.runtime.prober.health.view()
        secrets = dict(self.runtime.tls_secrets)
        msg = WorldMessage(state.version, state.config, state.catalog, state.overrides, health, secrets)
        self._last_frame = encode(msg)
        for w in self.workers:
            w.send(self._last_frame)

    async def start(self) -> None:
        for w in self.workers:
            self.tasks.spawn(f"worker-{w.index}", self._supervise(w))

    async def _supervise(self, w: WorkerHandle) -> None:
        level = logging.getLogger().getEffectiveLevel()
        while not self.stopping:
            await w.start(level)
            if self._last_frame:
                w.send(self._last_frame)
            await w.wait_ready()
            assert w.proc is not None
            code = await w.proc.wait()
            w.ready = False
            if w.writer is not None:
                w.writer.close()
            if self.stopping:
                return
            delay = RESTART_BACKOFF[min(w.crashes, len(RESTART_BACKOFF) - 1)]
            w.crashes += 1
            log.error("event=worker_died worker=%d code=%s restart_in=%.1f", w.index, code, delay)
            await asyncio.sleep(delay)

    async def close(self, grace: float) -> None:
        self.stopping = True
        await asyncio.gather(*(w.stop(grace) for w in self.workers), return_exceptions=True)
        await self.tasks.close()


# -- worker process ------------------------------------------------------------------------------------


class _Inbox:
    """The newest world message from the control process; older unapplied ones are simply replaced."""

    def __init__(self) -> None:
        self.latest: WorldMessage | None = None
        self.changed = asyncio.Event()

    async def receive(self, reader: asyncio.StreamReader) -> None:
        while True:
            (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
            self.latest = pickle.loads(await reader.readexactly(size))
            self.changed.set()


async def _apply(inbox: _Inbox, runtime_box: list[Runtime], started: asyncio.Event) -> None:
    while True:
        await inbox.changed.wait()
        inbox.changed.clear()
        msg = inbox.latest
        assert msg is not None
        if not runtime_box:
            rt = Runtime(msg.config, reuse_port=True, role="worker")
            rt.remote_catalog, rt.overrides, rt.remote_health = msg.catalog, msg.overrides, msg.health
            rt.tls_secrets = msg.tls_secrets
            runtime_box.append(rt)
            await rt.startup()
            started.set()
        else:
            await runtime_box[0].apply_remote(msg.config, msg.catalog, msg.overrides, msg.health, msg.tls_secrets)


async def worker_main(fd: int, index: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    runtime_box: list[Runtime] = []
    started = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the control process decides; Ctrl-C reaches all
    inbox = _Inbox()
    tasks = TaskOwner(f"worker-{index}")
    receiver = tasks.spawn("receive", inbox.receive(reader))  # ends when the control process goes away
    applier = tasks.spawn("apply", _apply(inbox, runtime_box, started))  # ends only if applying failed
    ready = asyncio.ensure_future(started.wait())
    await asyncio.wait({ready, receiver, applier}, return_when=asyncio.FIRST_COMPLETED)
    if started.is_set():
        writer.write(READY)
        log.info("event=worker_ready worker=%d pid=%d", index, os.getpid())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopper, receiver, applier}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    failed = applier.done()
    ready.cancel()
    await tasks.close()
    if runtime_box:
        await runtime_box[0].shutdown()
    writer.close()
    if failed:
        # Exit non-zero so the control process restarts this worker with a fresh start.
        raise SystemExit(1)


def main() -> None:
    fd, index, level = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    logging.basicConfig(
        level=level, format=f"%(asctime)s %(levelname)s %(name)s worker={index} %(message)s", stream=sys.stderr
    )
    install_uvloop()
    asyncio.run(worker_main(fd, index))


if __name__ == "__main__":
    main()
