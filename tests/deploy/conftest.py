"""Rendering the kustomize trees under deploy/ once per session, with `kubectl kustomize` (offline)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = ("front-door", "dns", "karmada")
# Every kustomization under deploy/: the overlays users install, plus the RBAC trees applied to remote members
# and to the Karmada control plane, the opt-in Secret access for secret-backed certificates, plus the base (not
# installed alone, but it must render).
TREES = ("base", *(f"overlays/{o}" for o in OVERLAYS), "member-access", "karmada-control-plane", "tls-secrets")
KUBECTL = shutil.which("kubectl")

Obj = dict[str, Any]


def kustomize(tree: str) -> list[Obj]:
    """The objects `kubectl kustomize deploy/<tree>` renders; fails the test with kubectl's message."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize trees (apt-get install kubectl)")
    proc = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / tree)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize deploy/{tree} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


_cache: dict[str, list[Obj]] = {}


@pytest.fixture(scope="session")
def render() -> Any:
    """render(tree) -> rendered objects (cached: every tree is rendered once per session)."""

    def get(tree: str) -> list[Obj]:
        if tree not in _cache:
            _cache[tree] = kustomize(tree)
        return _cache[tree]

    return get


def only(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    """The single object of that kind (and name, or name plus a generator's hash suffix)."""
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and (name is None or re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", o["metadata"]["name"]))
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def shipped_config(objs: list[Obj]) -> str:
    """The fedproxy.yaml inside the rendered config ConfigMap (the one the Deployment mounts)."""
    deployment = only(objs, "Deployment", "fedproxy")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    cm_name = volumes["config"]["configMap"]["name"]
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name)
    return cm["data"]["fedproxy.yaml"]
