"""DNS scenario: dnsperf A queries for `DNS_NAMES` clusterset.local names, fedproxy vs Knot DNS (or NSD when
Knot is not available), and fedproxy again while the catalog changes.

The reference serves a zone generated from fedproxy's own answers (same names, same addresses, same TTL), with one UDP
worker. Queries/s come from a plain dnsperf run; latency percentiles from a shorter verbose run (`dnsperf -v`
prints each answer's latency, which costs the load generator time, so it is not used for queries/s). The
churn row: the emulator rewrites one queried service's EndpointSlice every `CHURN_INTERVAL` s (a pod added,
then removed), so watch events reach fedproxy and it rebuilds its catalog and answers while under load.
"""

from __future__ import annotations

import asyncio
import re

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from fedproxy.aio import TaskOwner

from .context import Context, run_tool
from .env import DNS_NAMES, LOAD_CORE, SUT_CORE, dns_name, slice_for
from .report import Column, Table
from .tools import Child, ensure, free_port, pinned

CHURN_INTERVAL = 0.05  # s between EndpointSlice changes: 20 watch events/s
OUTSTANDING = 100  # dnsperf's default maximum of queries in flight


def columns() -> list[Column]:
    return [
        Column("qps", "queries/s", ratio=True),
        Column("p50", "p50 ms", "{:.3f}", better="lower"),
        Column("p99", "p99 ms", "{:.3f}", better="lower"),
        Column("changes", "catalog changes", "{:,.0f}"),
    ]


def zone_text(records: list[tuple[str, int, str]]) -> str:
    """A clusterset.local zone with `records` (absolute name, ttl, IPv4 address)."""
    lines = [
        "$ORIGIN clusterset.local.",
        "$TTL 5",
        "@ SOA ns.dns.clusterset.local. hostmaster.clusterset.local. 1 3600 600 86400 5",
        "@ NS ns.dns.clusterset.local.",
        "ns.dns A 127.0.0.1",
    ]
    lines += [f"{name} {ttl} A {addr}" for name, ttl, addr in records]
    return "\n".join(lines) + "\n"


def knot_conf(workdir: str, port: int) -> str:
    return f"""\
server:
    rundir: "{workdir}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: "{workdir}/knot.sock"
log:
  - target: stderr
    any: warning
database:
    storage: "{workdir}/knotdb"
template:
  - id: default
    storage: "{workdir}"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: clusterset.local
    file: "{workdir}/clusterset.local.zone"
"""


def nsd_conf(workdir: str, port: int) -> str:
    return f"""\
server:
    ip-address: 127.0.0.1@{port}
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{workdir}"
    pidfile: "{workdir}/nsd.pid"
    database: ""
    zonelistfile: "{workdir}/zone.list"
    xfrdfile: "{workdir}/xfrd.state"
    xfrdir: "{workdir}"
    logfile: "{workdir}/nsd.err"
    # Debian's NSD limits responses per source (RRL); one loopback load generator would be throttled.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: clusterset.local
    zonefile: "{workdir}/clusterset.local.zone"
"""


def fedproxy_records(port: int) -> list[tuple[str, int, str]]:
    """What fedproxy answers for each benchmark name (asked over UDP with dnspython)."""
    out = []
    for i in range(DNS_NAMES):
        reply = dns.query.udp(dns.message.make_query(dns_name(i), "A"), "127.0.0.1", port=port, timeout=2)
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.A:
                out += [(rrset.name.to_text(), rrset.ttl, rd.address) for rd in rrset]
    return out


def parse_dnsperf(out: str) -> dict[str, float]:
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    if not qps:
        raise ValueError(f"no 'Queries per second' in dnsperf output: {out[-300:]!r}")
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    completed = re.search(r"Queries completed:\s+(\d+)", out)
    return {
        "qps": float(qps.group(1)),
        "lost": float(lost.group(1)) if lost else 0.0,
        "completed": float(completed.group(1)) if completed else 0.0,
    }


def latencies_ms(verbose_out: str) -> list[float]:
    """Per-answer latencies from `dnsperf -v` lines ('> NOERROR name A 0.000123'), in ms."""
    out = []
    for line in verbose_out.splitlines():
        if line.startswith(">") and not line.startswith("> T "):
            try:
                out.append(float(line.rsplit(None, 1)[1]) * 1000)
            except (ValueError, IndexError):
                continue
    return sorted(out)


def _pct(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


async def run(ctx: Context) -> Table:
    table = Table("dns", f"DNS over UDP, A queries for {DNS_NAMES} names", columns(), reference="knot")
    table.notes.append(f"fedproxy+churn: one EndpointSlice rewritten every {CHURN_INTERVAL * 1000:.0f} ms meanwhile")
    table.notes.append("latency percentiles from a shorter `dnsperf -v` run; queries/s from a plain run")
    for name in ("fedproxy", "fedproxy+churn", "knot"):
        table.subject(name)
    env = ctx.env
    dnsperf = ensure("dnsperf")
    if not dnsperf:
        table.fail("fedproxy", "qps", "dnsperf not available")
        return table
    if not env.fedproxy_pid:
        table.fail("fedproxy", "qps", env.fedproxy_error or "fedproxy not running")
        return table
    queries = ctx.workdir / "queries.txt"
    queries.write_text("".join(f"{dns_name(i)} A\n" for i in range(DNS_NAMES)))
    subjects = {"fedproxy": env.ports.dns, "fedproxy+churn": env.ports.dns}
    knot, port, ref, why = await _start_reference(ctx)
    if ref != "knot":  # NSD stands in for Knot; the table names what actually ran
        table.runs.pop("knot", None)
        table.reference = ref
        table.subject(ref)
    if knot:
        subjects[ref] = port
    else:
        table.fail(ref, "qps", why)
    owner = TaskOwner("bench-dns")
    try:
        for r in range(ctx.rounds):
            for name, port in subjects.items():
                ctx.progress("dns", r, name)
                changes = [0]
                if name.endswith("+churn"):
                    owner.spawn("churn", _churn(ctx, changes))
                try:
                    await _measure(ctx, table, dnsperf, name, port, str(queries))
                finally:
                    await owner.stop("churn")
                if name.endswith("+churn"):
                    table.add(name, "changes", changes[0])
    finally:
        await owner.close()
        if knot:
            knot.stop()
    return table


async def _churn(ctx: Context, changes: list[int]) -> None:
    """Add then remove a second endpoint of name-<k>, k cycling over the queried names."""
    backend = ("127.0.0.1", ctx.env.ports.backend)
    k = 0
    while True:
        name = f"name-{k % DNS_NAMES}"
        extra = [("127.0.0.2", backend[1])] if (k // DNS_NAMES) % 2 == 0 else []
        ctx.env.api.apply(slice_for(name, [backend, *extra]))
        changes[0] += 1
        k += 1
        await asyncio.sleep(CHURN_INTERVAL)


async def _start_reference(ctx: Context) -> tuple[Child | None, int, str, str]:
    """Knot DNS (one UDP worker), else NSD (one server process), serving fedproxy's answers as a zone.

    Returns (child, port, subject name, why not)."""
    knotd = ensure("knotd")
    nsd = None if knotd else ensure("nsd")
    name = "knot" if knotd or not nsd else "nsd"
    if not knotd and not nsd:
        return None, 0, name, "neither knotd nor nsd available (apt-get install knot)"
    try:
        records = await asyncio.to_thread(fedproxy_records, ctx.env.ports.dns)
    except (OSError, dns.exception.DNSException) as exc:
        return None, 0, name, f"could not read fedproxy's answers for the zone: {exc}"
    if not records:
        return None, 0, name, "fedproxy answered no A records to build the zone from"
    rdir = ctx.workdir / name
    rdir.mkdir(exist_ok=True)
    (rdir / "clusterset.local.zone").write_text(zone_text(records))
    port = free_port(udp_too=True)
    conf = rdir / f"{name}.conf"
    if knotd:
        conf.write_text(knot_conf(str(rdir), port))
        cmd = [knotd, "-c", str(conf)]
    else:
        assert nsd is not None
        conf.write_text(nsd_conf(str(rdir), port))
        cmd = [nsd, "-d", "-c", str(conf)]
    child = Child(name, pinned(cmd, SUT_CORE), rdir / f"{name}.log").start()
    for _ in range(50):
        try:
            reply = await asyncio.to_thread(
                dns.query.udp, dns.message.make_query(dns_name(0), "A"), "127.0.0.1", port=port, timeout=0.2
            )
            if reply.answer:
                return child, port, name, ""
        except (OSError, dns.exception.DNSException):
            pass
        if not child.alive():
            break
    child.stop()
    return None, 0, name, f"{name} did not answer: {child.log_tail()}"


async def _measure(ctx: Context, table: Table, dnsperf: str, name: str, port: int, queries: str) -> None:
    base = [dnsperf, "-s", "127.0.0.1", "-p", str(port), "-d", queries, "-q", str(OUTSTANDING), "-t", "2"]
    code, out, err = await run_tool(pinned([*base, "-l", f"{ctx.duration:g}"], LOAD_CORE), ctx.duration + 30)
    try:
        result = parse_dnsperf(out)
    except ValueError as exc:
        table.fail(name, "qps", f"dnsperf exited {code}: {exc} {err.strip()[-200:]}")
        return
    if result["completed"] == 0 or result["lost"] > result["completed"] * 0.01:
        table.fail(name, "qps", f"{result['lost']:.0f} queries lost, {result['completed']:.0f} completed")
        return
    table.add(name, "qps", result["qps"])
    short = max(1.0, min(2.0, ctx.duration / 2))
    code, out, err = await run_tool(pinned([*base, "-v", "-l", f"{short:g}"], LOAD_CORE), short + 30)
    lat = latencies_ms(out)
    if lat:
        table.add(name, "p50", _pct(lat, 50))
        table.add(name, "p99", _pct(lat, 99))
    else:
        table.fail(name, "p99", f"no latencies in dnsperf -v output (exit {code}) {err.strip()[-200:]}")
