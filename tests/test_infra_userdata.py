"""cloud-init: every role's document passes `cloud-init schema`, fits its 32 KiB budget,
carries the right files, and names the agent bundle the Heat stack holds.

The agent settings file is the only place the credential secret lands: the user-data
holds a token that Heat replaces from a stack parameter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import subprocess
import sys

import pytest
import yaml

from agent.settings import AgentSettings, document_sha256
from infra import heat
from infra.bundle import Bundle, agent_bundle, build_zipapp
from infra.cluster import cluster_template
from infra.render import bundle_of, find_stack_file, stack_config
from infra.render import settings_of as settings_of_template
from infra.settings import ETCD_SHA256SUMS, parse_settings, strip_namespace
from infra.userdata import (
    AGENT_CONFIG,
    AGENT_PYZ,
    BUDGET,
    ETCD_SUMS,
    FETCHER,
    HEAT_VALUES,
    Token,
    agent_requirements,
    member_user_data,
    metrics_user_data,
    proxy_user_data,
    settings_document,
)
from tests.tools import need

STACKS = ["dev", "metrics", "ownnet"]
NOVA_LIMIT = 65535  # bytes of user-data once base64-encoded


def settings_of(stack: str):
    return parse_settings(strip_namespace(stack_config(find_stack_file(stack))))


def documents(stack: str):
    s = settings_of(stack)
    name = f"autoscale-etcd-{stack}"
    docs = [member_user_data(s, cluster_name=name)]
    if s.proxies:
        docs.append(proxy_user_data(s, cluster_name=name))
    if s.metrics_server:
        docs.append(metrics_user_data(s, cluster_name=name))
    return docs


def files_of(text: str) -> dict[str, dict]:
    return {f["path"]: f for f in yaml.safe_load(text).get("write_files", [])}


@pytest.mark.parametrize("stack", STACKS)
def test_every_role_passes_cloud_init_schema(stack, tmp_path):
    need("cloud-init")
    for doc in documents(stack):
        path = tmp_path / f"{doc.role}.yaml"
        path.write_text(doc.text)
        result = subprocess.run(
            ["cloud-init", "schema", "--config-file", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (doc.role, result.stdout, result.stderr)
        assert "Valid cloud-config" in result.stdout


def test_cloud_init_schema_refuses_a_broken_document(tmp_path):
    need("cloud-init")
    document = yaml.safe_load(member_user_data(settings_of("dev"), cluster_name="c").text)
    document["write_files"][0]["encoding"] = "gzip-base64-please"
    path = tmp_path / "bad.yaml"
    path.write_text("#cloud-config\n" + yaml.safe_dump(document))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "gzip-base64-please" in result.stdout + result.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_every_role_fits_the_32_kib_budget_without_the_agent(stack):
    docs = documents(stack)
    for doc in docs:
        assert doc.size <= BUDGET, (doc.role, doc.size)
        # the budget holds with Nova's limit to spare: 65,535 bytes once base64-encoded
        assert len(base64.b64encode(doc.text.encode("utf-8"))) <= NOVA_LIMIT
        assert AGENT_PYZ not in files_of(doc.text)  # the agent comes from the Heat stack
    if stack == "metrics":
        assert [doc.role for doc in docs] == ["member", "proxy", "metrics"]


def test_the_stack_s_settings_name_the_bundle_it_holds_and_it_runs(tmp_path):
    s = settings_of("metrics")
    bundle = agent_bundle()
    assert bundle.zipapp == build_zipapp()  # deterministic: same sources, same bytes
    template = cluster_template(s, "c").to_hot()
    document = settings_of_template(template)
    assert document["bundle_sha256"] == bundle.sha256 == hashlib.sha256(bundle.zipapp).hexdigest()
    assert document["sha256"] == document_sha256(document)
    assert set(document["roles"]) == {"member", "proxy"}
    for role in ("member", "proxy"):
        make = member_user_data if role == "member" else proxy_user_data
        text = make(s, cluster_name="c").text
        assert bundle.sha256 not in text  # a new agent changes no user-data
        fetch = files_of(text)[FETCHER]
        compile(fetch["content"], FETCHER, "exec")  # the shipped (minified) fetcher parses
    data = bundle_of(template)
    assert data == bundle.zipapp
    with pytest.raises(AssertionError):
        bundle_of(template, Bundle(b"another agent").sha256)
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(data)
    result = subprocess.run(
        [sys.executable, str(pyz), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "bootstrap" in result.stdout and "run" in result.stdout


def test_the_agent_starts_only_after_the_checked_fetch():
    text = member_user_data(settings_of("dev"), cluster_name="c").text
    runcmd = yaml.safe_load(text)["runcmd"]
    last = runcmd[-1]
    assert last[:2] == ["sh", "-c"]
    fetch, start = last[2].split(" && ")
    words = shlex.split(fetch)
    assert words[:2] == ["/opt/autoscale-etcd/venv/bin/python3", FETCHER]
    assert words[words.index("--config") + 1] == AGENT_CONFIG
    assert words[words.index("--out") + 1] == AGENT_PYZ
    assert words[words.index("--resource") + 1] == heat.AGENT_BUNDLE
    assert words[words.index("--settings-resource") + 1] == heat.SETTINGS
    assert start == "systemctl enable --now autoscale-agent.service"
    # nothing else starts the agent
    assert sum("autoscale-agent.service" in " ".join(cmd) for cmd in runcmd) == 1


def test_a_setting_or_a_new_agent_changes_no_user_data():
    """What changes with a `pulumi up` of a threshold, a period, the capacity or the agent
    is the stack's settings document, not the servers' user-data: no server is replaced."""
    base = strip_namespace(stack_config(find_stack_file("metrics")))
    changed = {**base, "threshold": 50, "lockattemptperiod": 20, "capacity": 5}
    for raw in (base, changed):
        for key in ("configscript", "cleanupscript", "proxyconfig"):
            raw[key] = str(find_stack_file("metrics").parent / raw.get(key, f"hooks/{key}.sh"))
    before, after = parse_settings(base), parse_settings(changed)
    for make in (member_user_data, proxy_user_data):
        assert make(before, cluster_name="c").text == make(after, cluster_name="c").text
    old = settings_document(before, cluster_name="c", bundle=agent_bundle())
    new = settings_document(after, cluster_name="c", bundle=Bundle(b"another agent"))
    assert old["sha256"] != new["sha256"]
    assert new["bundle_sha256"] == hashlib.sha256(b"another agent").hexdigest()
    member = new["roles"]["member"]
    assert member["metric"]["threshold"] == 50 and member["scaling"]["capacity"] == 5


def test_agent_settings_file_is_the_heat_substituted_cloud_and_the_stack_s_settings():
    s = settings_of("metrics")
    text = member_user_data(s, cluster_name="autoscale-etcd-metrics").text
    entry = files_of(text)[AGENT_CONFIG]
    assert entry["permissions"] == "0600"
    written = json.loads(entry["content"])
    assert set(written) == {"cloud", "role"} and written["role"] == "member"
    # what the fetcher makes of it at boot: the document's member settings, this cloud
    document = settings_document(s, cluster_name="autoscale-etcd-metrics", bundle=agent_bundle())
    settings = AgentSettings.model_validate(
        {**document["roles"]["member"], "cloud": written["cloud"]}
    )
    assert settings.cluster_name == "autoscale-etcd-metrics"
    assert settings.etcd.client_port == 2379 and settings.etcd.client_scheme == "https"
    assert settings.etcd.tls is not None
    cloud = settings.cloud
    assert cloud.application_credential_secret.get_secret_value() == Token.CREDENTIAL_SECRET
    assert cloud.stack_id == Token.STACK
    assert (cloud.group_resource, cloud.scale_down_policy) == (heat.GROUP, heat.SCALE_DOWN)
    if hasattr(cloud, "scale_up_policy"):
        assert cloud.scale_up_policy == heat.SCALE_UP
    # the secret token appears once in the whole document: in this file
    assert text.count(Token.CREDENTIAL_SECRET) == 1


def test_every_token_is_filled_by_heat_and_secrets_come_from_parameters():
    s = settings_of("metrics")
    template = heat.ClusterTemplate(
        s,
        member_user_data(s, cluster_name="c").heat(),
        proxy_user_data(s, cluster_name="c").heat(),
    ).to_hot()
    params = template["parameters"]
    for doc in documents("metrics")[:2]:
        user_data = doc.heat()
        tokens = {t for t in vars(Token).values() if isinstance(t, str) and t in doc.text}
        assert set(user_data.params) == tokens
        for token in tokens:
            value = HEAT_VALUES[token]
            if "get_param" in value and not value["get_param"].startswith("OS::"):
                assert value["get_param"] in params, token
    assert heat.P.CREDENTIAL_SECRET in params
    assert HEAT_VALUES[Token.STACK] == heat.STACK_NAME_AND_ID


def test_plain_image_installs_pinned_etcd_and_agent_deps_prebuilt_skips():
    dev = member_user_data(settings_of("dev"), cluster_name="c").text
    runcmd = yaml.safe_load(dev)["runcmd"]
    install = [cmd for cmd in runcmd if cmd[:2] == ["sh", "/opt/autoscale-etcd/install.sh"]]
    assert install == [
        ["sh", "/opt/autoscale-etcd/install.sh", "3.5.17", ETCD_SUMS, *agent_requirements()]
    ]
    assert all("==" in pin for pin in agent_requirements())
    # etcd's tarball is checked against the repository's own list: this version's lines only
    listed = [
        line
        for line in ETCD_SHA256SUMS.read_text().splitlines()
        if line.endswith(("etcd-v3.5.17-linux-amd64.tar.gz", "etcd-v3.5.17-linux-arm64.tar.gz"))
    ]
    assert len(listed) == 2
    assert files_of(dev)[ETCD_SUMS]["content"].splitlines() == listed
    assert runcmd.index(install[0]) < len(runcmd) - 1  # the venv is there before the fetch
    prebuilt = member_user_data(settings_of("metrics"), cluster_name="c").text
    assert "install.sh" not in prebuilt and ETCD_SUMS not in prebuilt


def test_hooks_units_tls_and_netdata_stream_by_settings():
    metrics = member_user_data(settings_of("metrics"), cluster_name="c").text
    files = files_of(metrics)
    assert files["/etc/autoscale-etcd/hooks/configscript"]["permissions"] == "0750"
    assert "/etc/autoscale-etcd/hooks/cleanupscript" in files
    assert {
        "/etc/systemd/system/etcd-autoscale.service",
        "/etc/systemd/system/autoscale-agent.service",
    } <= set(files)
    assert files["/etc/autoscale-etcd/pki/ca.key"]["content"] == Token.TLS_CA_KEY
    assert files["/etc/autoscale-etcd/pki/ca.key"]["permissions"] == "0600"
    stream = files["/etc/autoscale-etcd/netdata-stream.conf"]["content"]
    assert f"destination = {Token.METRICS_HOST}:19999" in stream
    assert f"api key = {Token.NETDATA_API_KEY}" in stream
    proxy = files_of(proxy_user_data(settings_of("metrics"), cluster_name="c").text)
    assert "/etc/systemd/system/etcd-autoscale-proxy.service" in proxy
    assert "/etc/autoscale-etcd/hooks/proxyconfig" in proxy
    assert "/etc/systemd/system/etcd-autoscale.service" not in proxy
    assert json.loads(proxy[AGENT_CONFIG]["content"])["role"] == "proxy"
    dev = files_of(member_user_data(settings_of("dev"), cluster_name="c").text)
    assert not any("pki" in path or "netdata" in path for path in dev)


def test_a_private_cloud_ca_is_written_to_the_nodes_and_named_in_their_settings(tmp_path):
    from infra.settings import SettingsError
    from infra.userdata import CLOUD_CA, member_user_data

    pem = "-----BEGIN CERTIFICATE-----\nMIIBcompanyCA\n-----END CERTIFICATE-----\n"
    (tmp_path / "company-ca.pem").write_text(pem)
    raw = {**strip_namespace(stack_config(find_stack_file("dev"))), "cacert": "company-ca.pem"}
    for key in ("configscript", "cleanupscript", "proxyconfig"):
        raw[key] = str(find_stack_file("dev").parent / raw.get(key, f"hooks/{key}.sh"))
    stack = parse_settings(raw, base_dir=tmp_path)
    document = yaml.safe_load(member_user_data(stack, cluster_name="c", base_dir=tmp_path).text)
    files = {f["path"]: f for f in document["write_files"]}
    assert files[CLOUD_CA]["content"] == pem and files[CLOUD_CA]["permissions"] == "0644"
    assert json.loads(files[AGENT_CONFIG]["content"])["cloud"]["cacert"] == CLOUD_CA
    (tmp_path / "not-a-ca.pem").write_text("hello")
    with pytest.raises(SettingsError, match=r"cacert = 'not-a-ca.pem': .* holds no PEM"):
        parse_settings({**raw, "cacert": "not-a-ca.pem"}, base_dir=tmp_path)
