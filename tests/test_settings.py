"""StackSettings: every bad input is refused before anything is created, naming the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from agent.settings import AgentSettings, OpenStackCloud
from infra.settings import (
    PROJECT_DIR,
    SettingsError,
    StackSettings,
    agent_settings,
    etcd_checksums,
    load_stack_file,
    parse_settings,
    size_warnings,
    strip_namespace,
)

REQUIRED = {"image": "Ubuntu 24.04", "instance_type": "m1.small", "net_name": "private"}

# The original template's table, with its defaults (seed/original-README.md).
ORIGINAL_DEFAULTS = {
    "capacity": 3,
    "scaledownperiod": 200,
    "etcdclientport": 12379,
    "etcdpeerport": 12380,
    "retries": 10,
    "lockattemptperiod": 10,
    "min_cluster": 3,
    "max_cluster": 5,
    "scaleupcooldown": 240,
    "etcdclientscheme": "http",
    "etcdpeerscheme": "http",
    "proxies": 0,
    "downmetric": "NETDATA_SYSTEM_CPU_IDLE",
    "threshold": 10,
    "comparator": "<",
    "upmetric": "cpu_util",
    "metrics_server": 0,
    "failtolerance": 20,
}
# Where the default was wrong, the documented correction (README "Corrected defaults").
CORRECTED = {"threshold": 90, "comparator": ">", "upmetric": "cpu"}
# The original's required parameters, now plain keys (credentials moved to the provider).
ORIGINAL_REQUIRED = ["net_name", "image", "sec_grps", "instance_type", "key_name", "configscript"]


def parse(**overrides: object) -> StackSettings:
    return parse_settings({**REQUIRED, **overrides})


def problems_of(**overrides: object) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        parse(**overrides)
    return caught.value


def test_defaults_are_the_originals_or_their_documented_corrections():
    settings = parse()
    for key, original in ORIGINAL_DEFAULTS.items():
        expected = CORRECTED.get(key, original)
        assert getattr(settings, key) == expected, key
    # the corrected default removes idle nodes, not the busiest ones
    assert (settings.downmetric, settings.comparator, settings.threshold) == (
        "NETDATA_SYSTEM_CPU_IDLE",
        ">",
        90,
    )


def test_dev_stack_sets_every_key_with_original_defaults_or_corrections():
    path = PROJECT_DIR / "Pulumi.dev.yaml"
    config = yaml.safe_load(path.read_text())["config"]
    keys = strip_namespace(config)
    # every key of the program is set in the example stack
    assert set(StackSettings.model_fields) <= set(keys), set(StackSettings.model_fields) - set(keys)
    for key in ORIGINAL_REQUIRED:
        assert key in keys
    settings = load_stack_file(path)
    for key, original in ORIGINAL_DEFAULTS.items():
        assert getattr(settings, key) == CORRECTED.get(key, original), key
    # credentials are the provider's, not the program's
    assert "openstack:cloud" in config
    assert not any(key.upper().startswith("OS_") for key in keys)


def test_every_key_has_a_comment_in_the_dev_stack():
    text = (PROJECT_DIR / "Pulumi.dev.yaml").read_text()
    for line in text.splitlines():
        if re.match(r"^\s+autoscale-etcd:", line):
            assert "#" in line.split(":", 2)[-1], f"no comment on: {line.strip()}"


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"capacity": 6}, "capacity", "min_cluster (3) <= capacity <= max_cluster (5)"),
        ({"capacity": 2}, "capacity", "min_cluster (3) <= capacity"),
        ({"min_cluster": 6, "capacity": 6}, "min_cluster", "<= max_cluster (5)"),
        ({"comparator": "=<"}, "comparator", "'<', '>', '==', '<=' or '>='"),
        ({"comparator": "__import__('os')"}, "comparator", "'<'"),
        ({"etcdclientscheme": "tcp"}, "etcdclientscheme", "'http' or 'https'"),
        ({"etcdpeerscheme": "HTTPS"}, "etcdpeerscheme", "'http' or 'https'"),
        ({"etcdclientport": 0}, "etcdclientport", "greater than or equal to 1"),
        ({"etcdpeerport": 70000}, "etcdpeerport", "less than or equal to 65535"),
        ({"etcdpeerport": 12379}, "etcdpeerport", "must differ from etcdclientport"),
        ({"scaledownperiod": 0}, "scaledownperiod", "greater than 0"),
        ({"lockattemptperiod": -1}, "lockattemptperiod", "greater than 0"),
        ({"scaleupcooldown": 0}, "scaleupcooldown", "greater than 0"),
        ({"scaledownperiod": 5}, "scaledownperiod", ">= lockattemptperiod (10)"),
        ({"failtolerance": 4}, "failtolerance", "greater than or equal to 5"),
        ({"metrics_server": "yes"}, "metrics_server", "0, 1, true or false"),
        ({"metrics_server": 2}, "metrics_server", "0, 1, true or false"),
        ({"downmetric": "system.cpu.idle"}, "downmetric", "NETDATA_[A-Z0-9_]+"),
        ({"downmetric": "NETDATA_system_cpu"}, "downmetric", "NETDATA_[A-Z0-9_]+"),
        ({"configscript": "hooks/nope.sh"}, "configscript", "must be a readable file"),
        ({"configscript": "hooks"}, "configscript", "must be a readable file"),
        ({"capacity": "three"}, "capacity", "valid integer"),
        ({"threshold": [1]}, "threshold", "valid number"),
        ({"sec_grps": 5}, "sec_grps", "valid list"),
        ({"ssh_cidrs": ["10.0.0.0/33"]}, "ssh_cidrs", "CIDR"),
        ({"capacitty": 3}, "capacitty", "did you mean 'capacity'"),
        ({"net_name": ""}, "net_name", "create_network"),
        ({"create_network": True, "external_network": ""}, "external_network", "required"),
        ({"alarm": "ceilometer"}, "alarm", "'gnocchi', 'prometheus', 'cpu_util' or 'none'"),
        ({"alarm": "cpu_util"}, "upmetric", "meter cpu_util"),
        ({"upthreshold": 150}, "upthreshold", "less than or equal to 100"),
        ({"public_key": "ssh-ed25519 AAAA"}, "key_name", "required when public_key"),
    ],
)
def test_bad_input_names_key_value_and_what_is_allowed(overrides, key, fragment):
    error = problems_of(**overrides)
    assert key in error.keys, str(error)
    sentence = next(p.sentence() for p in error.problems if p.key == key)
    assert sentence.startswith(f"autoscale-etcd:{key} = "), sentence
    assert fragment in sentence, sentence
    shown_value = overrides.get(key)
    if shown_value not in (None, ""):
        assert repr(shown_value) in sentence


def test_missing_required_keys_are_each_named():
    with pytest.raises(SettingsError) as caught:
        parse_settings({"net_name": "private"})
    assert sorted(caught.value.keys) == ["image", "instance_type"]
    assert "(missing): required" in str(caught.value)


def test_all_problems_are_reported_at_once():
    error = problems_of(
        comparator="!=", etcdclientscheme="ftp", failtolerance=1, capacity=9, bogus=1
    )
    assert set(error.keys) == {
        "comparator",
        "etcdclientscheme",
        "failtolerance",
        "capacity",
        "bogus",
    }
    assert str(error).startswith("5 problem(s) in stack config:")


def test_nothing_is_evaluated_from_the_comparator(tmp_path: Path):
    marker = tmp_path / "evaluated"
    payload = f"open({str(marker)!r}, 'w')"
    problems_of(comparator=payload)
    assert not marker.exists()


def test_pulumi_style_string_values_are_understood():
    # `pulumi config set` stores strings; structured values arrive as JSON text
    settings = parse(
        capacity="3",
        metrics_server="1",
        create_network="false",
        sec_grps='["web", "ssh"]',
        ssh_cidrs="192.0.2.0/24,198.51.100.7",
        threshold="85.5",
    )
    assert settings.capacity == 3
    assert settings.metrics_server is True
    assert settings.sec_grps == ["web", "ssh"]
    assert settings.ssh_cidrs == ["192.0.2.0/24", "198.51.100.7/32"]
    assert settings.threshold == 85.5


@pytest.mark.parametrize(
    ("value", "expected"), [(0, False), (1, True), ("true", True), ("False", False)]
)
def test_metrics_server_takes_zero_one_true_false(value, expected):
    assert parse(metrics_server=value).metrics_server is expected


def test_a_dead_member_window_shorter_than_a_neutron_restart_is_warned_of():
    assert not [w for w in size_warnings(parse().model_dump()) if "dead_member" in w]
    (warning,) = [
        w for w in size_warnings(parse(dead_member_periods=2).model_dump()) if "dead_member" in w
    ]
    assert "= 20 s" in warning and "Neutron" in warning


def test_size_warnings_follow_etcd_advice():
    assert size_warnings(parse(max_cluster=9).model_dump())[0].startswith("max_cluster = 9")
    even = size_warnings(parse(capacity=4).model_dump())
    assert any(w.startswith("capacity = 4 is even") for w in even)
    assert parse().sizes_warnings() == []


def test_an_etcd_version_without_a_listed_sha256_is_refused_before_anything_is_made(
    tmp_path: Path,
):
    listed = etcd_checksums()
    assert "3.5.17" in listed and "3.5.99" not in listed
    error = problems_of(etcd_version="3.5.99")
    assert error.keys == ["etcd_version"]
    sentence = error.problems[0].sentence()
    assert "autoscale-etcd:etcd_version = '3.5.99'" in sentence
    assert "etcd-sha256sums.txt" in sentence
    for version in listed:  # names every allowed version
        assert version in sentence
    with pytest.raises(ValueError, match="etcd_version"):
        StackSettings(**REQUIRED, etcd_version="3.5.99")
    # a listed version is taken; the list is the repository's own, every line checked
    assert parse(etcd_version="3.5.21").etcd_version == "3.5.21"
    assert all(len(lines) >= 1 for lines in listed.values())
    # the list is read line by line: `sha256sum -c` lines count, comments do not
    other = tmp_path / "sums.txt"
    other.write_text(f"{'a' * 64}  etcd-v3.5.18-linux-amd64.tar.gz\n# a comment\n")
    assert etcd_checksums(other) == {"3.5.18": (f"{'a' * 64}  etcd-v3.5.18-linux-amd64.tar.gz",)}
    # a Packer image already has its etcd: nothing is downloaded, so nothing to check
    assert parse(etcd_version="3.5.99", prebuilt_image=True).etcd_version == "3.5.99"


def test_secure_values_are_refused_in_a_stack_file(tmp_path: Path):
    stack = tmp_path / "Pulumi.t.yaml"
    stack.write_text(
        yaml.safe_dump(
            {"config": {"autoscale-etcd:image": {"secure": "AAAA"}, "autoscale-etcd:x": 1}}
        )
    )
    with pytest.raises(SettingsError) as caught:
        load_stack_file(stack)
    assert "image" in caught.value.keys


def _openstack_cloud() -> OpenStackCloud:
    return OpenStackCloud(
        auth_url="https://keystone.example:5000/v3",
        application_credential_id="cred-id",
        application_credential_secret="s3cret-value",
        stack_id="stack-uuid",
        scale_up_url="https://heat.example/signal",
    )


def test_agent_settings_are_derived_from_the_stack_and_round_trip(tmp_path: Path):
    stack = parse(
        capacity=3,
        max_cluster=7,
        threshold=12.5,
        comparator="<",
        downmetric="NETDATA_SYSTEM_LOAD_LOAD1",
        downmetric_window=0,
        etcdclientscheme="https",
    )
    document = agent_settings(stack, cluster_name="tenant-a", cloud=_openstack_cloud())
    assert document.metric.name == "NETDATA_SYSTEM_LOAD_LOAD1"
    assert (document.metric.comparator, document.metric.threshold) == ("<", 12.5)
    assert document.metric.window == 0
    assert document.scaling.max_cluster == 7
    assert document.etcd.client_scheme == "https" and document.etcd.tls is not None
    # the file on the node carries the secret; any other dump masks it
    path = tmp_path / "agent.json"
    document.write(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert "s3cret-value" in path.read_text()
    assert "s3cret-value" not in document.to_json()
    assert "s3cret-value" not in repr(document)
    again = AgentSettings.load(path)
    assert again == document
    assert json.loads(again.to_json(reveal_secrets=True)) == json.loads(path.read_text())


def test_agent_settings_reject_what_the_stack_rejects():
    cloud = OpenStackCloud(
        auth_url="http://127.0.0.1:9/identity/v3",
        application_credential_id="c",
        application_credential_secret="s",
        stack_id="lab/1",
    )
    document = agent_settings(parse(), cluster_name="c", cloud=cloud)
    data = json.loads(document.to_json())
    data["metric"]["comparator"] = "!="
    with pytest.raises(ValueError, match="comparator"):
        AgentSettings.model_validate(data)
    data["metric"]["comparator"] = ">"
    data["scaling"]["capacity"] = 9
    with pytest.raises(ValueError, match="capacity"):
        AgentSettings.model_validate(data)


def test_agent_package_imports_nothing_from_infra_or_pulumi():
    for path in (PROJECT_DIR / "agent").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(infra|pulumi)\b", text, re.M), path
