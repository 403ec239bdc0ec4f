"""What every scenario gets: the options, the shared environment, a work directory and the progress line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .env import Environment

OVERHEAD = 1.5  # s per timed measurement beyond its duration (start-up, settling), for the time-left estimate


@dataclass
class Context:
    env: Environment
    workdir: Path
    rounds: int
    duration: float
    quick: bool
    planned: int = 0  # timed measurements expected in the whole run (an estimate: failed subjects skip theirs)
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def progress(self, scenario: str, round_: int, what: str) -> None:
        """One stderr line per timed measurement: scenario, round, what runs and an estimate of time left."""
        self.done += 1
        left = max(1, self.planned - self.done + 1) * (self.duration + OVERHEAD)
        print(
            f"[{scenario}] round {round_ + 1}/{self.rounds} {what} ({self.duration:g} s) ~{left:.0f} s left",
            file=sys.stderr,
            flush=True,
        )


async def run_tool(cmd: list[str], timeout: float) -> tuple[int, str, str]:
    """Run a load generator to completion (bounded by `timeout`); (returncode, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return -9, out.decode(errors="replace"), f"timed out after {timeout:.0f} s " + err.decode(errors="replace")
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
