"""Command line: argument parsing only; the work is in runtime, serve and the modules they wire."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedproxy", description="Front door and DNS for multi-cluster services")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the proxy (foreground; SIGHUP reloads, SIGINT/SIGTERM drain and exit)")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.add_argument("--workers", type=int, default=1, help="serving processes (default 1: one process)")

    check = sub.add_parser("check-config", help="validate a config file; exit 1 listing every problem")
    check.add_argument("file")

    demo = sub.add_parser("demo", help="run 3 emulated member clusters with real backends behind fedproxy")
    demo.add_argument("--scenario", choices=["steady", "failover"], default="steady")
    demo.add_argument("--failover-after", type=float, default=20.0, help="s before the failover scenario acts")
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument("--https-port", type=int, default=8443, help="TLS front door (0 = none)")
    demo.add_argument("--tcp-port", type=int, default=7000)
    demo.add_argument("--grpc-port", type=int, default=50051, help="h2c front door for gRPC (0 = none)")
    demo.add_argument("--dns-port", type=int, default=5353)
    demo.add_argument("--admin-port", type=int, default=9901)
    demo.add_argument("--duration", type=float, default=0.0, help="s to run, 0 = until Ctrl-C")
    demo.add_argument(
        "--port-offset", type=int, default=10000, help="shift of the emulated services' ports (80 -> 10080)"
    )
    demo.add_argument("--workdir", default="", help="where to write the demo kubeconfig and config")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if args.command == "check-config":
        from .configview import check_config_main

        return check_config_main(args.file)
    if args.command == "run":
        if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Before any metric exists: every process writes its samples there and /metrics sums them.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fedproxy-metrics-")
        from .serve import run_main

        return run_main(args.config, workers=args.workers)
    if args.command == "demo":
        from .sim.demo import demo_main

        return demo_main(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
