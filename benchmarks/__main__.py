"""`python -m benchmarks`: run the scenarios, print one table per scenario, write JSON (and PNGs).

Bounded in time: each measurement lasts `--duration` seconds and is repeated `--rounds` times; the load tools
are killed if they overrun. Progress goes to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from . import dns, http, scale, tcp, tls
from .context import Context
from .env import LOAD_CORE, Environment
from .report import Table, plot, write_json
from .tools import cpu_count, log

SCENARIOS: dict[str, Callable[[Context], Awaitable[Table]]] = {
    "http": http.run,
    "tcp": tcp.run,
    "dns": dns.run,
    "scale": scale.run,
    "https": tls.run_https,
    "grpc": tls.run_grpc,
}
# Timed measurements per round when every subject runs (for the time-left estimate).
PER_ROUND = {"http": 8, "tcp": 6, "dns": 3, "scale": 0, "https": 3, "grpc": 4}
RESULTS = Path(__file__).parent / "results"
WANTED_NOFILE = 65536  # 10,000 idle connections hold two descriptors each in the harness and in fedproxy


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1 round of 2 s per measurement, smaller scale (< 2 min)")
    p.add_argument(
        "--scenario", default="http,tcp,dns,scale", help="comma-separated subset of http,tcp,dns,scale,https,grpc"
    )
    p.add_argument("--rounds", type=int, default=None, help="repetitions per measurement (default 3; quick 1)")
    p.add_argument("--duration", type=float, default=None, help="s per measurement (default 10; quick 2)")
    p.add_argument("--workers", type=int, default=1, help="passed to `fedproxy run --workers`")
    p.add_argument("--json", default="", help="result file (default benchmarks/results/<timestamp>.json)")
    p.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    return p


def _raise_nofile() -> int:
    """Raise RLIMIT_NOFILE (children inherit it); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (WANTED_NOFILE, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _main(args: argparse.Namespace, names: list[str]) -> list[Table]:
    workdir = Path(tempfile.mkdtemp(prefix="fedproxy-bench-"))
    log(f"event=start scenarios={','.join(names)} rounds={args.rounds} duration={args.duration} workdir={workdir}")
    env = Environment(workdir, workers=args.workers)
    ctx = Context(env, workdir, args.rounds, args.duration, args.quick)
    ctx.planned = args.rounds * sum(PER_ROUND[n] for n in names)
    if "scale" in names:
        ctx.planned += scale.measurements(args.rounds, args.quick)
    tables: list[Table] = []
    try:
        await env.start()
        for name in names:
            t0 = time.monotonic()
            try:
                table = await SCENARIOS[name](ctx)
            except Exception as exc:  # a broken scenario is reported and the run goes on
                table = Table(name, f"{name}: failed", [])
                table.notes.append(f"scenario failed: {type(exc).__name__}: {exc}")
            log(f"event=scenario_done scenario={name} seconds={time.monotonic() - t0:.1f}")
            print(table.text() + "\n", flush=True)
            tables.append(table)
    finally:
        await env.stop()
    return tables


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.scenario.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}", file=sys.stderr)
        return 2
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    nofile = _raise_nofile()
    log(f"event=limits nofile={nofile} cpus={cpu_count()}")
    if cpu_count() >= 2:
        # The harness (emulator, Python load clients) shares core 1 with wrk/dnsperf/iperf3 and the backends.
        os.sched_setaffinity(0, {LOAD_CORE})
    else:
        log("event=one_cpu note='no pinning: the load generator and the system under test share the core'")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    tables = asyncio.run(_main(args, names))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(args.json) if args.json else RESULTS / f"{stamp}.json"
    options = {k: v for k, v in vars(args).items()}
    write_json(path, tables, options)
    log(f"event=results json={path}")
    for png in plot(tables, path.with_suffix("")):
        log(f"event=plot png={png}")
    if args.markdown:
        print("\n\n".join(t.markdown() for t in tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
