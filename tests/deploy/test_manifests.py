"""deploy/: every kustomize tree renders, validates against the Kubernetes OpenAPI schemas (offline), and agrees
with the fedproxy config it ships (ports, mounted files, drain timing, RBAC for what fedproxy really does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedproxy.config import Config
from fedproxy.configload import parse_config

from .conftest import DEPLOY, OVERLAYS, TREES, Obj, only, shipped_config

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[test]')"
)

# The oldest Kubernetes the manifests claim to support (policy/v1 PDB, seccompProfile field, sizeLimit) and the
# newest schema the package ships.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
READ_ONLY = {"get", "list", "watch"}


def load_config(text: str, tmp_path: Path) -> Config:
    """Validate shipped config text as fedproxy does, with the token file path pointed at a real temp file."""
    data = yaml.safe_load(text)
    token = tmp_path / "token"
    token.write_text("test-token\n")
    data["admin"]["token_file"] = str(token)
    return parse_config(yaml.safe_dump(data), source="fedproxy.yaml")


def container(objs: list[Obj]) -> Obj:
    spec = only(objs, "Deployment", "fedproxy")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["fedproxy"]
    return spec["containers"][0]


def pod_spec(objs: list[Obj]) -> Obj:
    return only(objs, "Deployment", "fedproxy")["spec"]["template"]["spec"]


def mounted(objs: list[Obj], path: str) -> Obj:
    """The volume whose mount holds ``path`` (a file named in the config must be in some mounted volume)."""
    spec = pod_spec(objs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in container(objs)["volumeMounts"]:
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            return volumes[m["name"]]
    raise AssertionError(f"{path} is not inside any volume mount")


def port_number(objs: list[Obj], target: int | str, protocol: str = "TCP") -> int:
    """A Service targetPort (name or number) resolved against the fedproxy container's ports."""
    if isinstance(target, int):
        return target
    ports = [p for p in container(objs)["ports"] if p["name"] == target]
    assert ports, f"targetPort {target!r} names no container port"
    assert ports[0].get("protocol", "TCP") == protocol
    return ports[0]["containerPort"]


@pytest.mark.parametrize("tree", TREES)
def test_tree_renders_without_duplicates(render: Any, tree: str) -> None:
    objs = render(tree)
    ids = [(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs]
    assert objs and len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("tree", TREES)
def test_objects_validate_against_openapi_schema(render: Any, tree: str, version: str) -> None:
    for obj in render(tree):
        kubernetes_validate.validate(obj, version, strict=True)


def test_example_member_secret_validates_and_holds_the_contexts_the_config_names(render: Any) -> None:
    doc = yaml.safe_load((DEPLOY / "overlays/front-door/secret-members.example.yaml").read_text())
    kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    objs = render("overlays/front-door")
    volume = mounted(objs, "/etc/fedproxy/kubeconfigs/members.kubeconfig")
    assert volume["secret"]["secretName"] == doc["metadata"]["name"]
    kubeconfig = yaml.safe_load(doc["stringData"]["members.kubeconfig"])
    contexts = {c["name"] for c in kubeconfig["contexts"]}
    config = yaml.safe_load(shipped_config(objs))
    wanted = {c["context"] for c in config["clusters"] if c.get("kubeconfig")}
    assert wanted and wanted <= contexts


@pytest.mark.parametrize("tree", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_shipped_config_is_valid_and_its_files_are_mounted(render: Any, tree: str, tmp_path: Path) -> None:
    objs = render(tree)
    text = shipped_config(objs)
    config = load_config(text, tmp_path)
    raw = yaml.safe_load(text)
    # The image's ENTRYPOINT reads /etc/fedproxy/fedproxy.yaml.
    assert mounted(objs, "/etc/fedproxy/fedproxy.yaml")["configMap"]
    token_volume = mounted(objs, raw["admin"]["token_file"])
    assert token_volume["secret"]["secretName"] == "fedproxy-admin-token"
    assert raw["admin"]["token_file"] == "/etc/fedproxy/admin-token/token"
    for c in config.clusters:
        if c.kubeconfig:
            assert "secret" in mounted(objs, c.kubeconfig), c.name
    if config.karmada is not None:
        assert "secret" in mounted(objs, config.karmada.kubeconfig)
    # Probes come from the kubelet to the pod IP.
    assert config.admin.address == "0.0.0.0"


@pytest.mark.parametrize("tree", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_deployment_is_hardened_and_drains_before_it_is_killed(render: Any, tree: str, tmp_path: Path) -> None:
    objs = render(tree)
    config = load_config(shipped_config(objs), tmp_path)
    spec, c = pod_spec(objs), container(objs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "emptyDir" in mounted(objs, "/tmp/x")
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]

    admin_port = port_number(objs, c["livenessProbe"]["httpGet"]["port"])
    assert admin_port == config.admin.port
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert port_number(objs, c["readinessProbe"]["httpGet"]["port"]) == config.admin.port

    # preStop sleep (endpoints removed first) + fedproxy's drain must fit in the grace period.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = max(
        [config.admin.drain_timeout] + [li.drain_timeout for li in config.http.listeners + config.tcp.listeners]
    )
    assert drain <= config.admin.drain_timeout, "listeners drain longer than the process waits for them"
    assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + config.admin.drain_timeout

    # Every listener fedproxy binds is a declared container port; nothing below 1024 (no NET_BIND_SERVICE).
    declared = {(p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"]}
    wanted = {(li.port, "TCP") for li in config.http.listeners + config.tcp.listeners}
    if config.dns.enabled:
        wanted |= {(config.dns.port, "TCP"), (config.dns.port, "UDP")}
    assert wanted <= declared
    assert all(port > 1024 for port, _ in declared)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_front_door_is_highly_available_behind_a_load_balancer(render: Any, overlay: str, tmp_path: Path) -> None:
    objs = render(f"overlays/{overlay}")
    config = load_config(shipped_config(objs), tmp_path)
    deployment = only(objs, "Deployment", "fedproxy")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    terms = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname" for t in terms)

    pdb = only(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    lb = only(objs, "Service", "fedproxy")
    assert lb["metadata"]["name"] == "fedproxy" and lb["spec"]["type"] == "LoadBalancer"
    assert lb["spec"]["selector"].items() <= labels.items()
    targets = {port_number(objs, p["targetPort"]) for p in lb["spec"]["ports"]}
    assert targets == {li.port for li in config.http.listeners + config.tcp.listeners}


def test_dns_service_maps_53_to_fedproxys_dns_port(render: Any, tmp_path: Path) -> None:
    objs = render("overlays/dns")
    config = load_config(shipped_config(objs), tmp_path)
    svc = only(objs, "Service", "fedproxy-dns")
    assert svc["spec"]["type"] == "ClusterIP"
    by_protocol = {p["protocol"]: p for p in svc["spec"]["ports"]}
    assert set(by_protocol) == {"UDP", "TCP"}
    for proto, p in by_protocol.items():
        assert p["port"] == 53
        assert port_number(objs, p["targetPort"], proto) == config.dns.port == 5353
    assert config.dns.enabled and config.dns.address == "0.0.0.0"


def _rules(objs: list[Obj]) -> dict[tuple[str, str], list[Obj]]:
    return {(o["kind"], o["metadata"]["name"]): o["rules"] for o in objs if o["kind"] in ("Role", "ClusterRole")}


@pytest.mark.parametrize("tree", TREES)
def test_rbac_reads_only_except_the_one_overrides_configmap(render: Any, tree: str) -> None:
    objs = render(tree)
    for (kind, name), rules in _rules(objs).items():
        for rule in rules:
            if (kind, name) == ("Role", "fedproxy-overrides"):
                assert rule["resources"] == ["configmaps"] and rule["resourceNames"] == ["fedproxy-overrides"]
                assert set(rule["verbs"]) == READ_ONLY | {"update", "patch"}
            else:
                assert set(rule["verbs"]) <= READ_ONLY, (kind, name, rule)
                assert "*" not in rule["resources"] and "*" not in rule.get("apiGroups", [])


def test_member_rbac_covers_what_discovery_watches_and_remote_members_get_the_same(render: Any) -> None:
    base = _rules(render("base"))[("ClusterRole", "fedproxy-reader")]
    granted = {(g, r) for rule in base for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        ("multicluster.x-k8s.io", "serviceexports"),
        ("multicluster.x-k8s.io", "serviceimports"),
    }
    assert all(set(rule["verbs"]) == READ_ONLY for rule in base)
    assert _rules(render("member-access"))[("ClusterRole", "fedproxy-reader")] == base


def test_karmada_rbac_lists_clusters_and_only_gets_member_secrets(render: Any) -> None:
    objs = render("karmada-control-plane")
    rules = _rules(objs)
    assert rules[("ClusterRole", "fedproxy-karmada-reader")] == [
        {"apiGroups": ["cluster.karmada.io"], "resources": ["clusters"], "verbs": ["get", "list", "watch"]}
    ]
    role = only(objs, "Role", "fedproxy-member-secrets")
    assert role["metadata"]["namespace"] == "karmada-cluster"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]


def test_tls_secret_access_is_opt_in_and_limited_to_named_secrets(render: Any) -> None:
    # Only the tls-secrets tree reads Secrets in a member; everything installed by default reads none.
    for tree in ("base", *(f"overlays/{o}" for o in OVERLAYS), "member-access"):
        for (kind, name), rules in _rules(render(tree)).items():
            assert all("secrets" not in rule["resources"] for rule in rules), (tree, kind, name)
    objs = render("tls-secrets")
    assert {o["kind"] for o in objs} == {"Role", "RoleBinding"}  # namespaced: never a ClusterRole on secrets
    (rule,) = only(objs, "Role", "fedproxy-tls-secrets")["rules"]
    assert rule["resources"] == ["secrets"] and rule["apiGroups"] == [""]
    assert set(rule["verbs"]) == READ_ONLY and rule["resourceNames"]
    binding = only(objs, "RoleBinding", "fedproxy-tls-secrets")
    subjects = {(s["name"], s["namespace"]) for s in binding["subjects"]}
    base_sa = pod_spec(render("base"))["serviceAccountName"]
    assert subjects == {(base_sa, "fedproxy"), ("fedproxy-remote", "fedproxy")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overrides_configmap_role_and_config_agree(render: Any, overlay: str, tmp_path: Path) -> None:
    objs = render(f"overlays/{overlay}")
    config = load_config(shipped_config(objs), tmp_path)
    assert config.admin.overrides is not None
    ref = config.admin.overrides.configmap
    cm = only(objs, "ConfigMap", ref.name)
    assert cm["metadata"] == {**cm["metadata"], "name": ref.name, "namespace": ref.namespace}
    role = only(objs, "Role", "fedproxy-overrides")
    assert role["metadata"]["namespace"] == ref.namespace
    assert role["rules"][0]["resourceNames"] == [ref.name]
    binding = only(objs, "RoleBinding", "fedproxy-overrides")
    sa = pod_spec(objs)["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "fedproxy"}]
    # fedproxy runs in the member that holds the ConfigMap (so the in-cluster account above is the one used).
    local = [c.name for c in config.clusters if c.local]
    assert local == [config.admin.overrides.cluster]
