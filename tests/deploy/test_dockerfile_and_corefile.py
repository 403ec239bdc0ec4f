"""deploy/Dockerfile (linted structurally: no Docker engine here) and deploy/coredns/Corefile.stanza (parsed)."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest

from .conftest import DEPLOY


def instructions(text: str) -> list[tuple[int, str, str]]:
    """Dockerfile -> [(stage index, INSTRUCTION, arguments)], with line continuations joined, comments dropped."""
    out: list[tuple[int, str, str]] = []
    stage, pending = -1, ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            stage += 1
        out.append((stage, op, args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[int, str, str]]:
    return instructions((DEPLOY / "Dockerfile").read_text())


def final_stage(ins: list[tuple[int, str, str]]) -> list[tuple[str, str]]:
    last = max(stage for stage, _, _ in ins)
    return [(op, args) for stage, op, args in ins if stage == last]


def test_dockerfile_is_multi_stage_with_a_wheel_built_in_the_builder(dockerfile: list[tuple[int, str, str]]) -> None:
    froms = [args for _, op, args in dockerfile if op == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS builder")
    assert all(re.search(r"python:\$\{PYTHON_VERSION\}-slim|python:3\.1[12]-slim", f) for f in froms)
    assert any(re.search(r"PYTHON_VERSION=3\.1[12]\b", args) for _, op, args in dockerfile if op == "ARG")
    assert any(op == "RUN" and "pip wheel" in args for stage, op, args in dockerfile if stage == 0)
    final = final_stage(dockerfile)
    assert ("COPY", "--from=builder /wheels /wheels") in final
    assert not any(op == "COPY" and args.startswith("fedproxy") for op, args in final), "sources in the image"


def test_dockerfile_runs_non_root_read_only_friendly(dockerfile: list[tuple[int, str, str]]) -> None:
    final = final_stage(dockerfile)
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] == "65532"
    # USER comes after every RUN: nothing runs as root once the user is set, and the user is the last word.
    last_user = max(i for i, (op, _) in enumerate(final) if op == "USER")
    assert all(op != "RUN" for op, _ in final[last_user:])
    env = " ".join(args for op, args in final if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert ("WORKDIR", "/tmp") in final


def test_dockerfile_entrypoint_and_healthcheck(dockerfile: list[tuple[int, str, str]]) -> None:
    final = final_stage(dockerfile)
    entry = [args for op, args in final if op == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["fedproxy", "run", "--config", "/etc/fedproxy/fedproxy.yaml"]
    health = [args for op, args in final if op == "HEALTHCHECK"]
    assert len(health) == 1
    cmd = json.loads(health[0].split("CMD", 1)[1])
    assert cmd[:2] == ["python", "-c"] and "urllib" in cmd[2] and "/healthz" in cmd[2]
    compile(cmd[2], "HEALTHCHECK", "exec")  # the one-liner is valid Python
    assert "curl" not in health[0]


# -- Corefile ------------------------------------------------------------------------------------------------


def parse_corefile(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """A small Corefile parser: [(server keys like "zone:port", [directive tokens...])]; nested blocks kept flat.

    Raises ValueError on unbalanced braces or a directive outside a server block.
    """
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    blocks: list[tuple[list[str], list[list[str]]]] = []
    depth = 0
    for line in lines:
        words = line.replace("{", " { ").replace("}", " } ").split()
        if not words:
            continue
        opens, closes = words.count("{"), words.count("}")
        body = [w for w in words if w not in "{}"]
        if depth == 0:
            if closes or opens != 1 or words[-1] != "{":
                raise ValueError(f"expected `zone:port {{`, got {line.strip()!r}")
            blocks.append((body, []))
        elif body:
            blocks[-1][1].append(body)
        depth += opens - closes
        if depth < 0:
            raise ValueError("unbalanced '}'")
    if depth != 0:
        raise ValueError("unbalanced '{'")
    return blocks


def test_corefile_parser_rejects_broken_stanzas() -> None:
    with pytest.raises(ValueError):
        parse_corefile("clusterset.local:53 {\n forward . 10.0.0.1\n")
    with pytest.raises(ValueError):
        parse_corefile("forward . 10.0.0.1\n")
    assert parse_corefile("a:53 {\n cache 5\n}\n") == [(["a:53"], [["cache", "5"]])]


def test_coredns_stanza_forwards_clusterset_local_to_an_ip() -> None:
    blocks = parse_corefile((DEPLOY / "coredns" / "Corefile.stanza").read_text())
    assert len(blocks) == 1
    keys, directives = blocks[0]
    assert keys == ["clusterset.local:53"]
    forwards = [d for d in directives if d[0] == "forward"]
    assert len(forwards) == 1 and forwards[0][1] == "."
    ipaddress.ip_address(forwards[0][2])
    assert ["cache", "5"] in directives
