"""The external programs a benchmark run uses, and child processes the harness starts and stops by PID.

Load generators (wrk, dnsperf, iperf3) and reference servers (nginx, HAProxy, Knot DNS or NSD) come from
Debian packages. When one is missing and the harness runs as root it runs `apt-get update` once and installs
the package; otherwise the scenario that needs it reports it as skipped. Children are never found by name:
each one is a `Child` holding the `Popen` the harness created, stopped with SIGTERM then SIGKILL on its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# program -> Debian package providing it
PACKAGES: dict[str, str] = {
    "wrk": "wrk",
    "haproxy": "haproxy",
    "nginx": "nginx",
    "dnsperf": "dnsperf",
    "knotd": "knot",
    "nsd": "nsd",
    "iperf3": "iperf3",
    "taskset": "util-linux",
    "h2load": "nghttp2-client",
}
# Debian installs some daemons under sbin, which a non-login PATH may lack.
SEARCH_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")

_apt_updated = False
_apt_failed: set[str] = set()


def log(message: str) -> None:
    """Progress goes to stderr so stdout carries only the result tables."""
    print(message, file=sys.stderr, flush=True)


def which(program: str) -> str | None:
    """The program's path, looking in sbin directories too."""
    found = shutil.which(program)
    if found:
        return found
    for d in SEARCH_DIRS:
        p = Path(d) / program
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def ensure(program: str) -> str | None:
    """Find `program`, installing its Debian package when missing and running as root; None if unavailable."""
    global _apt_updated
    path = which(program)
    if path or program not in PACKAGES:
        return path
    package = PACKAGES[program]
    if package in _apt_failed:
        return None
    if os.geteuid() != 0 or not which("apt-get"):
        log(f"event=tool_missing tool={program} package={package} (not root or no apt-get: skipped)")
        _apt_failed.add(package)
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        log("event=apt_update")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
        _apt_updated = True
    log(f"event=apt_install package={package}")
    # --no-install-recommends: nothing else is needed, and the daemons must not be started by the package
    # scripts (policy-rc.d-less containers do not start them; on a host, the harness uses its own configs and
    # ports and never touches a system instance).
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        log(f"event=apt_install_failed package={package} stderr={done.stderr.strip()[-300:]!r}")
        _apt_failed.add(package)
        return None
    return which(program)


_CPUS = len(os.sched_getaffinity(0))  # read at import: the harness later pins itself to one core


def cpu_count() -> int:
    return _CPUS


def pinned(cmd: list[str], core: int | None) -> list[str]:
    """`cmd` run under `taskset -c core` (no pinning on a one-core machine or without taskset)."""
    taskset = which("taskset")
    if core is None or taskset is None or cpu_count() < 2:
        return cmd
    return [taskset, "-c", str(core), *cmd]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(p) for p in task.read_text().split()]
        except OSError:
            pass
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx/HAProxy workers, fedproxy worker processes)."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its descendants, from /proc/<pid>/stat (fields 14 and 15)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` and its descendants (VmRSS)."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


@dataclass
class Child:
    """A server process the harness started; `stop()` ends it by its PID (and its process group)."""

    name: str
    cmd: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("wb")
        # Own session: a signal to the group reaches nginx/haproxy workers this child forked, nothing else.
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the child's own PID
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def wait_port(host: str, port: int, timeout: float = 10.0, udp: bool = False) -> bool:
    """True once a TCP connect to host:port succeeds (UDP: just a short settle delay)."""
    import socket

    if udp:
        time.sleep(0.3)
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def free_port(udp_too: bool = False) -> int:
    """An ephemeral port free on 127.0.0.1 (TCP, and UDP too when asked)."""
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not udp_too:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
