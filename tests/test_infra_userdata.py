"""cloud-init: every role's document passes `cloud-init schema`, fits Nova, carries the right files.

The agent settings file is the only place the credential secret lands: the user-data
holds a token that Heat replaces from a hidden parameter.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from agent.settings import AgentSettings
from infra import heat
from infra.bundle import build_zipapp
from infra.render import find_stack_file, stack_config
from infra.settings import parse_settings, strip_namespace
from infra.userdata import (
    AGENT_CONFIG,
    AGENT_PYZ,
    BUDGET,
    HEAT_VALUES,
    Token,
    agent_requirements,
    member_user_data,
    metrics_user_data,
    proxy_user_data,
)

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
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init is not installed (setup/system-packages.sh installs it)")
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
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init is not installed")
    text = member_user_data(settings_of("dev"), cluster_name="c").text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("encoding: gz+b64", "encoding: gzip-base64-please"))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True
    )
    assert result.returncode != 0


@pytest.mark.parametrize("stack", STACKS)
def test_user_data_fits_nova_and_everything_but_the_agent_fits_the_budget(stack):
    for doc in documents(stack):
        encoded = len(base64.b64encode(doc.text.encode("utf-8")))
        assert encoded <= NOVA_LIMIT, (doc.role, encoded)
        without_agent = {
            **yaml.safe_load(doc.text),
            "write_files": [
                f for f in yaml.safe_load(doc.text).get("write_files", []) if f["path"] != AGENT_PYZ
            ],
        }
        rest = len(yaml.safe_dump(without_agent).encode())
        # the agent bundle gets whatever is left of the 32 KiB target (see README)
        assert rest <= BUDGET // 4, (doc.role, rest)


def test_the_bundle_is_a_zipapp_that_runs_the_agent_cli(tmp_path):
    text = member_user_data(settings_of("dev"), cluster_name="c").text
    entry = files_of(text)[AGENT_PYZ]
    assert entry["encoding"] == "gz+b64" and entry["permissions"] == "0755"
    data = gzip.decompress(base64.b64decode(entry["content"]))
    assert data == build_zipapp()  # deterministic: same sources, same bytes
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(data)
    result = subprocess.run(
        [sys.executable, str(pyz), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "bootstrap" in result.stdout and "run" in result.stdout


def test_agent_settings_file_is_the_heat_substituted_agent_settings():
    s = settings_of("metrics")
    text = member_user_data(s, cluster_name="autoscale-etcd-metrics").text
    entry = files_of(text)[AGENT_CONFIG]
    assert entry["permissions"] == "0600"
    settings = AgentSettings.from_json(entry["content"])
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


def test_every_token_is_filled_by_heat_and_secrets_come_from_hidden_parameters():
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
    assert params[heat.P.CREDENTIAL_SECRET]["hidden"] is True
    assert HEAT_VALUES[Token.STACK] == heat.STACK_NAME_AND_ID


def test_plain_image_installs_pinned_etcd_and_agent_deps_prebuilt_skips():
    dev = member_user_data(settings_of("dev"), cluster_name="c").text
    runcmd = yaml.safe_load(dev)["runcmd"]
    install = [cmd for cmd in runcmd if cmd[:2] == ["sh", "/opt/autoscale-etcd/install.sh"]]
    assert install == [["sh", "/opt/autoscale-etcd/install.sh", "3.5.17", *agent_requirements()]]
    assert all("==" in pin for pin in agent_requirements())
    prebuilt = member_user_data(settings_of("metrics"), cluster_name="c").text
    assert "install.sh" not in prebuilt


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
