"""Config loading and validation: messages name the key, every problem is reported at once."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedproxy.config import Config, ExportConfig, HashConfig
from fedproxy.configload import load_config, parse_config, validate
from fedproxy.configview import check_config_main, config_hash, diff, mask_secrets, summarize
from fedproxy.errors import ConfigError
from fedproxy.model import ServiceKey

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "fedproxy.example.yaml"
CLUSTERS = "clusters:\n  - {name: east-1, kubeconfig: k, local: true}\n  - {name: west-1, in_cluster: true}\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def test_example_loads_and_uses_unprivileged_loopback_listeners() -> None:
    config = load_config(str(EXAMPLE))
    assert config.source == str(EXAMPLE)
    assert config.local_cluster == "east-1"
    assert [c.name for c in config.clusters] == ["east-1", "east-2", "west-1"]
    assert config.http.listeners[0].port == 8080 and config.tcp.listeners[0].port == 7000
    assert (config.dns.address, config.dns.port, config.admin.port) == ("127.0.0.1", 5353, 9901)
    assert config.tcp.listeners[0].service == ServiceKey("demo", "redis")
    route = config.http.listeners[0].routes[1]
    assert route.retries.on == ("connect-failure", "refused", "reset")
    assert route.hash == HashConfig(on="cookie", name="session")
    assert ServiceKey("demo", "web") in config.balancing.health_checks


def test_example_sets_every_section() -> None:
    import yaml

    data = yaml.safe_load(EXAMPLE.read_text())
    assert set(data) == {f.name for f in dataclasses.fields(Config)} - {"source"}


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "---\n"])
def test_empty_file_is_all_defaults(text: str) -> None:
    assert parse_config(text) == Config()


def test_defaults_of_empty_sections() -> None:
    config = parse_config("http:\ntcp:\ndns:\nbalancing:\n")
    assert config == Config()
    assert config.dns.port == 53 and config.admin.address == "127.0.0.1"
    assert config.balancing.locality == ("local", "zone", "region", "any")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "http: {listeners: [{port: 8080}, {port: 70000}]}",
            "http.listeners[1].port: must be 0..65535 (0 = any free port), got 70000",
        ),
        ("tcp: {listeners: [{port: 7000, service: demo}]}", 'tcp.listeners[0].service: "demo" is not "namespace/name"'),
        ("clusters: [{name: East_1, in_cluster: true}]", 'clusters[0].name: "East_1" is not a DNS label'),
        ("dns: {ttll: 5}", 'dns.ttll: unknown key (did you mean "ttl"?)'),
        ("dns: {policy: spred}", 'dns.policy: must be one of "local_first", "locality", "spread", got "spred"'),
        ("dns: {enabled: 'yes'}", 'dns.enabled: must be true or false, got "yes"'),
        ("dns: {enabled: on}", 'dns.enabled: must be true or false, got "on"'),
        ("dns: {port: '53'}", 'dns.port: must be an integer, got "53"'),
        ("dns: {forward: ['8.8.8.8:99999']}", 'dns.forward: "8.8.8.8:99999" is not "ip" or "ip:port"'),
        ("dns: {address: example.com}", 'dns.address: "example.com" is not an IP address'),
        ("clusterset: {domain: 'bad..domain'}", 'clusterset.domain: "bad..domain" is not a domain name'),
        ("clusterset: {export: {mode: label}}", "clusterset.export.selector: required when mode is"),
        ("clusterset: {export: {mode: label, selector: 'app in (a'}}", "clusterset.export.selector: "),
        ("nodeports: {node_selector: '=x'}", 'nodeports.node_selector: "=x" is not a label selector'),
        ("balancing: {overprovisioning: 0.5}", "balancing.overprovisioning: must be >= 1, got 0.5"),
        ("balancing: {panic_threshold: 101}", "balancing.panic_threshold: must be 0..100, got 101"),
        ("balancing: {outlier: {max_ejection_percent: -1}}", "balancing.outlier.max_ejection_percent: must be 0..100"),
        ("balancing: {hash: {on: header}}", 'balancing.hash.name: required when on is "header"'),
        ("balancing: {algorithm: rr}", 'balancing.algorithm: must be one of "round_robin"'),
        ("balancing: {health_checks: {web: {}}}", 'balancing.health_checks.web: "web" is not "namespace/name"'),
        ("balancing: {health_checks: {d/web: {interval: 0}}}", "balancing.health_checks.d/web.interval: must be > 0"),
        ("balancing: {locality: [local, zones]}", 'balancing.locality: "zones" is not one of'),
        ("discovery: {grace_period: .nan}", "discovery.grace_period: must be a finite number"),
        ("dns: {ttl: -1" + "0" * 400 + "}", "dns.ttl: must be >= 0, got -1000"),
        ("admin: {address: 0.0.0.0}", 'admin.address: "0.0.0.0" is not loopback, so token or token_file'),
        ("admin: {token: a, token_file: b}", "admin: set either token or token_file, not both"),
        ("admin: {token_file: /nonexistent/token}", 'admin.token_file: cannot read "/nonexistent/token"'),
        ("karmada: {}", "karmada.kubeconfig: required"),
        ("http: 5", "http: must be a mapping, got 5"),
        ("http: {listeners: {port: 1}}", "http.listeners: must be a list, got a mapping"),
        ("[1, 2]", "(top level): must be a mapping of sections, got a list"),
    ],
)
def test_bad_value_message_names_the_key(text: str, expected: str) -> None:
    assert one_problem(text).startswith(expected)


def route(extra: str) -> str:
    return CLUSTERS + f"http: {{listeners: [{{port: 8080, routes: [{{service: d/web, {extra}}}]}}]}}\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("host: 'a_b.com'", 'http.listeners[0].routes[0].host: "a_b.com" is not "", a hostname or "*.suffix"'),
        ("path_prefix: api", 'http.listeners[0].routes[0].path_prefix: "api" must start with "/"'),
        ("retries: {on: [resett]}", 'http.listeners[0].routes[0].retries.on: "resett" is not one of'),
        ("timeouts: {connect: 0}", "http.listeners[0].routes[0].timeouts.connect: must be > 0, got 0"),
        ("timeouts: {total: -1}", "http.listeners[0].routes[0].timeouts.total: must be >= 0, got -1"),
        ("clusters: {east-1: 0, west-1: 0}", "http.listeners[0].routes[0].clusters: weights must not all be 0"),
        ("clusters: {east-1: -1}", 'http.listeners[0].routes[0].clusters: weight of "east-1" must be >= 0'),
        ("clusters: {east-2: 1}", "http.listeners[0].routes[0].clusters.east-2: unknown cluster (did you mean"),
        ("hash: {on: cookie}", 'http.listeners[0].routes[0].hash.name: required when on is "cookie"'),
        ("service_port: true", "http.listeners[0].routes[0].service_port: must be a string or an integer or null"),
        ("service_port: 0", "http.listeners[0].routes[0].service_port: must be 1..65535, got 0"),
        ("backend: pods", 'http.listeners[0].routes[0].backend: must be one of "auto", "pod"'),
    ],
)
def test_route_checks(extra: str, expected: str) -> None:
    assert one_problem(route(extra)).startswith(expected)


def test_route_forms_that_are_fine() -> None:
    for extra in ("host: '*.example.com'", "host: Example.COM", "service_port: http", "service_port: 8080"):
        parse_config(route(extra))
    config = parse_config(route("clusters: {east-1: 0, west-1: 3}, hash: source_ip"))
    assert config.http.listeners[0].routes[0].hash == HashConfig(on="source_ip")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clusters: [{name: a, kubeconfig: k}, {name: a, kubeconfig: k}]", 'clusters[1].name: "a" is already used'),
        (
            "clusters: [{name: a, in_cluster: true, local: true}, {name: b, in_cluster: true, local: true}]",
            "clusters[1].local: only one cluster can be local",
        ),
        ("clusters: [{name: a}]", "clusters[0]: needs kubeconfig (and optionally context) or in_cluster: true"),
        ("clusters: [{name: a, kubeconfig: k, in_cluster: true}]", "clusters[0]: set either kubeconfig or in_cluster"),
        ("clusters: [{name: a, context: c}]", "clusters[0].context: needs kubeconfig"),
        ("clusters: [{name: a, kubeconfig: k, weight: -1}]", "clusters[0].weight: must be >= 0, got -1"),
        ("clusters: [{name: a, kubeconfig: ''}]", "clusters[0]: needs kubeconfig"),
    ],
)
def test_cluster_checks(text: str, expected: str) -> None:
    assert one_problem(text).startswith(expected)


def test_karmada_entries_only_tune_discovered_members() -> None:
    config = parse_config("karmada: {kubeconfig: ~/.kube/karmada}\nclusters: [{name: m1, local: true, weight: 3}]\n")
    assert config.cluster("m1") is not None and config.local_cluster == "m1"
    # Unknown members may be named in routes: they are discovered at runtime.
    parse_config("karmada: {kubeconfig: k}\n" + route("clusters: {m9: 1}").split("\n", 3)[3])
    assert one_problem("karmada: {kubeconfig: k}\nclusters: [{name: m1, context: c}]").startswith(
        "clusters[0].context: needs kubeconfig"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "http: {listeners: [{port: 9901, address: 127.0.0.1}]}",
            "admin: 127.0.0.1:9901 collides with http.listeners[0]",
        ),
        (
            "http: {listeners: [{port: 8080}]}\ntcp: {listeners: [{port: 8080, address: 127.0.0.1, service: a/b}]}",
            "tcp.listeners[0]: 127.0.0.1:8080 collides with http.listeners[0] (0.0.0.0:8080)",
        ),
        ("dns: {port: 7000}\ntcp: {listeners: [{port: 7000, service: a/b}]}", "dns: 0.0.0.0:7000 collides with tcp"),
        (
            "http: {listeners: [{port: 8080, name: x}, {port: 8081, name: x}]}",
            'http.listeners[1].name: "x" is already used by http.listeners[0]',
        ),
    ],
)
def test_listener_collisions(text: str, expected: str) -> None:
    assert one_problem(text).startswith(expected)


def test_listeners_on_distinct_addresses_do_not_collide() -> None:
    same_port = "http: {listeners: [{port: 8080, address: 127.0.0.1}, {port: 8080, address: 127.0.0.2}]}"
    assert "give each listener a name" in one_problem(same_port)
    parse_config(
        "http: {listeners: [{port: 8080, address: 127.0.0.1, name: a}, {port: 8080, address: 127.0.0.2, name: b}]}\n"
        "dns: {enabled: false}\n"
    )
    parse_config("dns: {enabled: false, port: 9901}")  # a disabled DNS responder binds nothing


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        "clusters: [{name: East_1, kubeconfig: k}, {name: b, kubeconfig: k, local: true}]\n"
        "http: {listeners: [{port: -1, routes: [{service: x, path_prefix: a}]}]}\n"
        "dns: {ttll: 3, port: 99999}\n"
        "admin: {address: 10.0.0.1}\n"
    )
    paths = [p.split(":", 1)[0] for p in found]
    assert paths == [
        "clusters[0].name",
        "http.listeners[0].port",
        "http.listeners[0].routes[0].service",
        "http.listeners[0].routes[0].path_prefix",
        "dns.ttll",
        "dns.port",
        "admin.address",
    ], found
    assert str(ConfigError(found)).count("\n") == len(found) - 1


def test_unknown_keys_suggest_close_names() -> None:
    found = problems("dsn: {}\nhttp: {listener: []}\nbalancing: {zzz: 1}\n")
    assert found == [
        'dsn: unknown key (did you mean "dns"?)',
        'http.listener: unknown key (did you mean "listeners"?)',
        "balancing.zzz: unknown key",
    ]


def test_yaml_syntax_error_has_line_and_column() -> None:
    assert one_problem("dns:\n  port: 53\n   ttl: 5\n").startswith("YAML error: line 3, column")
    assert one_problem("a: [1, 2\nb: 3").startswith("YAML error: line 2, column 2")


def test_duplicate_keys_are_rejected_with_their_path() -> None:
    assert one_problem("dns:\n  port: 53\n  port: 54\n") == "dns.port: duplicate key (line 3)"


def test_merge_keys_are_not_duplicates() -> None:
    text = "http:\n  listeners:\n    - &l {port: 8080, address: 127.0.0.1}\n    - {<<: *l, port: 8081}\n"
    assert [x.port for x in parse_config(text).http.listeners] == [8080, 8081]


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    assert "more than" in one_problem("\n".join(lines))


@pytest.mark.parametrize("text", ["[" * 5000, "a: &a [*a]", "a: &a {b: *a}", "a: \x00", "!!python/name:os.system x"])
def test_hostile_yaml_is_a_config_error(text: str) -> None:
    assert problems(text)


def test_token_file_is_read_and_token_kept_out_of_repr(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config = parse_config(f"admin: {{address: 0.0.0.0, token_file: {token}}}")
    assert config.admin.token == "s3cret"
    assert "s3cret" not in repr(config)
    token.write_text("")
    assert one_problem(f"admin: {{token_file: {token}}}").endswith("is empty")


def test_dns_locality_shorthand() -> None:
    assert parse_config("dns: {locality: true}").dns.policy == "locality"
    assert one_problem("dns: {locality: true, policy: spread}").startswith("dns.locality: true conflicts")


def test_export_short_form() -> None:
    config = parse_config("clusterset: {export: serviceexport}")
    assert config.clusterset.export == ExportConfig()
    config = parse_config("clusterset: {export: {mode: label, selector: 'app=flask,tier notin (db),!legacy'}}")
    assert config.clusterset.export.selector.startswith("app=flask")


def test_check_config_main_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(str(EXAMPLE)) == 0
    out = capsys.readouterr()
    assert "east-1 (local)" in out.out and "127.0.0.1:8080" in out.out and out.err == ""


def test_check_config_main_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dns: {ttll: 1, port: 70000}\n")
    assert check_config_main(str(path)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f'{path}: dns.ttll: unknown key (did you mean "ttl"?)',
        f"{path}: dns.port: must be 0..65535 (0 = any free port), got 70000",
    ]
    assert check_config_main(str(tmp_path / "missing.yaml")) == 1
    assert "cannot read" in capsys.readouterr().err


def test_mask_secrets_hides_the_token() -> None:
    config = parse_config("admin: {address: 0.0.0.0, token: s3cret}\n" + CLUSTERS)
    data = mask_secrets(config)
    assert data["admin"]["token"] == "***"
    assert "s3cret" not in json.dumps(data)
    assert data["clusters"][0]["name"] == "east-1"
    assert mask_secrets(parse_config(""))["admin"]["token"] == ""


def test_config_hash_is_stable_and_sensitive() -> None:
    text = EXAMPLE.read_text()
    assert config_hash(text) == config_hash(load_config(str(EXAMPLE)))
    assert len(config_hash(text)) == 12
    assert config_hash("dns: {ttl: 5}") == config_hash("")  # defaults normalize away
    assert config_hash("dns: {ttl: 6}") != config_hash("")
    assert config_hash("admin: {token: a}") != config_hash("admin: {token: b}")


def test_diff() -> None:
    old = load_config(str(EXAMPLE))
    assert diff(old, old) == []
    new = dataclasses.replace(
        old,
        clusters=old.clusters[:2] + (dataclasses.replace(old.clusters[2], weight=5),),
        http=dataclasses.replace(old.http, listeners=()),
        dns=dataclasses.replace(old.dns, ttl=30),
        admin=dataclasses.replace(old.admin, token="x"),
    )
    new = dataclasses.replace(new, clusters=(*new.clusters[1:], dataclasses.replace(old.clusters[0], name="north")))
    assert diff(old, new) == [
        'cluster "east-1" removed',
        'cluster "north" added',
        'cluster "west-1" changed: weight',
        'http listener "web" removed',
        "dns.ttl: 5 -> 30",
        "admin.token: changed",
    ]


def test_summarize_marks_local_and_listeners() -> None:
    text = summarize(parse_config(CLUSTERS + "dns: {enabled: false}"))
    assert "clusters: east-1 (local), west-1" in text and "dns: disabled" in text


KEYS = (
    st.integers(0, 3)
    | st.none()
    | st.sampled_from(
        [
            "clusters",
            "http",
            "tcp",
            "dns",
            "admin",
            "balancing",
            "karmada",
            "listeners",
            "routes",
            "port",
            "name",
            "service",
            "address",
            "token",
            "on",
            "hash",
            "health_checks",
            "clusterset",
            "export",
            "mode",
            "weight",
        ]
    )
    | st.text(max_size=6)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.sampled_from(["a/b", "east-1", "127.0.0.1", "0.0.0.0", "label", "header", "/", "*.x", ""])
    | st.text(max_size=8)
)
JSONISH = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=30
)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!,'\"#|>\n 0.1/")), max_size=40))
def test_parse_config_raises_only_config_error(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as e:
        assert e.problems


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, JSONISH, max_size=6) | JSONISH)
def test_validate_raises_only_config_error(data: object) -> None:
    try:
        config = validate(data)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and ": " in p for p in e.problems)
    else:
        assert isinstance(config, Config)
        summarize(config)
        config_hash(config)
        mask_secrets(config)


def test_overrides_on_a_karmada_member_needs_its_own_credentials() -> None:
    text = (
        "karmada: {kubeconfig: k}\n"
        "clusters: [{name: east-1, local: true}]\n"
        "admin: {overrides: {configmap: fedproxy/overrides, cluster: east-1}}\n"
    )
    assert problems(text) == [
        'admin.overrides.cluster: "east-1" needs kubeconfig or in_cluster: true in clusters[] '
        "(fedproxy writes the overrides ConfigMap with that member's own credentials)"
    ]
    parse_config(text.replace("local: true}", "local: true, in_cluster: true}"))
