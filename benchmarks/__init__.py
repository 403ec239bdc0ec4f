"""fedproxy's benchmark harness: `python -m benchmarks` (see docs/benchmarks.md).

Glossary:
- subject: what a table row measures: `direct` (the backend alone), `fedproxy`, or a reference server.
- reference: the server a user would pick instead of fedproxy (nginx for HTTP, HAProxy for TCP, Knot or NSD
  for DNS); ratios in the tables divide by its median from the same run.
- round: one pass over every subject of a scenario; tables show the median over rounds.
- environment (`env.py`): the emulated member, the backends and the `fedproxy run` process, shared by scenarios.
- cores: the system under test runs on core 0; the harness, load generators and backends on core 1.

Modules: `tools` (finding/installing programs, child processes, /proc CPU and RSS), `env`, `context`
(options, progress), `report` (tables, JSON, PNG), one module per scenario: `http`, `tcp`, `dns`, `scale`.
"""
