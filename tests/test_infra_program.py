"""The real __main__.py under Pulumi's mocks, for three stacks: resources, wiring, settings.

Each stack runs in its own process (`python -m infra render`), because Pulumi's runtime
keeps global state; the test reads what it wrote (resources.json, heat-template.yaml).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import heat
from infra.access_rules import access_rules
from infra.credentials import credential_name
from infra.render import MASK, PLACEHOLDER_PROJECT_ID, find_stack_file, stack_config
from infra.settings import PROJECT_DIR, parse_settings, strip_namespace
from infra.userdata import BUDGET
from tests.tools import need_module

SG = "openstack:networking/secGroup:SecGroup"
RULE = "openstack:networking/secGroupRule:SecGroupRule"
STACK_V1 = "openstack:orchestration/stackV1:StackV1"


class Rendered:
    def __init__(self, stack: str, out: Path) -> None:
        self.stack = stack
        self.out = out
        document = json.loads((out / "resources.json").read_text())
        self.resources = document["resources"]
        self.outputs = document["outputs"]
        self.template = yaml.safe_load((out / "heat-template.yaml").read_text())
        self.settings = parse_settings(
            strip_namespace(stack_config(find_stack_file(stack))), base_dir=PROJECT_DIR
        )

    def of_type(self, type_: str) -> list[dict]:
        return [r for r in self.resources if r["type"] == type_]

    def one(self, type_: str, name: str | None = None) -> dict:
        found = [r for r in self.of_type(type_) if name is None or r["name"] == name]
        assert len(found) == 1, (type_, name, [r["name"] for r in self.of_type(type_)])
        return found[0]

    def group_id(self, role: str) -> str:
        return self.one(SG, f"security-{role}")["id"]

    def rules(self) -> set[tuple[str, int, str]]:
        """(target group id, port, remote group id or CIDR) of every ingress rule."""
        return {
            (
                r["inputs"]["securityGroupId"],
                int(r["inputs"]["portRangeMin"]),
                r["inputs"].get("remoteGroupId") or r["inputs"].get("remoteIpPrefix"),
            )
            for r in self.of_type(RULE)
        }

    @property
    def heat_parameters(self) -> dict[str, str]:
        return self.one(STACK_V1)["inputs"]["parameters"]

    @property
    def member(self) -> dict:
        """The members' server properties, the member template's parameters filled in
        with the group's values (as Heat does for each member)."""
        group_values = self.template["resources"][heat.GROUP]["properties"]["resource"]
        member = yaml.safe_load((self.out / "member-template.yaml").read_text())
        server = member["resources"][heat.MEMBER_SERVER]["properties"]
        return _filled(server, group_values["properties"])


def _filled(node: Any, values: dict) -> Any:
    """`node` with each `{get_param: name}` of `values` replaced by its value."""
    if isinstance(node, dict):
        if list(node) == ["get_param"] and node["get_param"] in values:
            return values[node["get_param"]]
        return {key: _filled(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_filled(value, values) for value in node]
    return node


def render(stack: str, out: Path) -> Rendered:
    result = subprocess.run(
        [sys.executable, "-m", "infra", "render", "--stack", stack, "--out", str(out)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Rendered(stack, out)


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Rendered:
    return render("dev", tmp_path_factory.mktemp("dev"))


@pytest.fixture(scope="module")
def metrics(tmp_path_factory) -> Rendered:
    return render("metrics", tmp_path_factory.mktemp("metrics"))


@pytest.fixture(scope="module")
def ownnet(tmp_path_factory) -> Rendered:
    return render("ownnet", tmp_path_factory.mktemp("ownnet"))


# --- dev: an existing network, soft anti-affinity, gnocchi alarm ---------------------


def test_dev_declares_exactly_the_resources_of_its_settings(dev):
    types = sorted(r["type"].split(":")[-1] for r in dev.resources)
    assert types == sorted(
        [
            "Network",
            "SecurityGroups",
            "AgentCredential",
            "MemberGroup",
            "SecGroup",
            "SecGroup",
            "SecGroupRule",
            "SecGroupRule",
            "SecGroupRule",
            "ApplicationCredential",
            "ServerGroup",
            "StackV1",
        ]
    )
    # no metrics server, no proxies, no keypair, no CA, no network made
    for absent in ("Instance", "Keypair", "PrivateKey", "Network", "Router", "Port"):
        assert not dev.of_type(f"openstack:compute/{absent.lower()}:{absent}")
    assert not any(":networking/network:" in r["type"] for r in dev.resources)


def test_dev_etcd_ports_open_only_to_the_members_own_group_and_the_clients(dev):
    members, clients = dev.group_id("members"), dev.group_id("clients")
    assert dev.rules() == {
        (members, 12379, members),
        (members, 12380, members),
        (members, 12379, clients),  # no proxies: clients use the members' client port
    }
    for rule in dev.of_type(RULE):
        assert rule["inputs"]["direction"] == "ingress"
        assert rule["inputs"]["protocol"] == "tcp"


def test_dev_heat_parameters_wire_network_groups_server_group_and_credential(dev):
    params = dev.heat_parameters
    assert params["network"] == "net-private"  # looked up by net_name
    assert params["security_groups"] == "autoscale-etcd-dev-members"
    server_group = dev.one("openstack:compute/serverGroup:ServerGroup")
    assert server_group["inputs"]["policies"] == "soft-anti-affinity"
    assert params["server_group"] == server_group["id"]
    assert dev.member["scheduler_hints"] == {"group": {"get_param": "server_group"}}
    credential = dev.one("openstack:identity/applicationCredential:ApplicationCredential")
    assert params["agent_credential_id"] == credential["id"]
    assert params["agent_credential_secret"] == MASK
    assert params["auth_url"] == "https://keystone.cloud.invalid:5000/v3"
    assert params["image"] == "Ubuntu 24.04" and params["flavor"] == "m1.small"
    # 80 % of the placeholder flavor's 2 vCPUs over 300 s (Ceilometer's cpu points), in ns
    assert params["alarm_threshold"] == str(int(0.8 * 300 * 1e9 * 2))
    assert set(params) == {
        p.name for p in heat.ClusterTemplate(dev.settings, heat.UserData("")).parameters()
    }


def test_the_heat_stack_outlasts_its_wait_for_the_nodes(dev):
    """A failed first create is left as it is (disable_rollback: its servers' console logs
    say why) under the name README's way back deletes; Heat's timeout is longer than the
    agents_ready wait, so a stack fails with the nodes' reason, not Heat's "Timed out"."""
    from infra.settings import join_timeout

    (stack,) = dev.of_type(STACK_V1)
    assert stack["inputs"]["name"] == "autoscale-etcd-dev"
    assert stack["inputs"]["disableRollback"] is True
    assert stack["inputs"]["timeout"] * 60 >= join_timeout(dev.settings) + 600
    readme = (PROJECT_DIR / "README.md").read_text()
    assert "openstack stack delete --yes --wait autoscale-etcd-<stack>" in readme
    assert f"pulumi import {STACK_V1} {stack['name']}" in readme


def test_dev_agent_credential_is_restricted_to_the_agents_calls(dev):
    credential = dev.one("openstack:identity/applicationCredential:ApplicationCredential")
    inputs = credential["inputs"]
    assert inputs["unrestricted"] is False
    assert inputs["roles"] == ["member"]
    rules = {(r["service"], r["method"], r["path"]) for r in inputs["accessRules"]}
    # made from the catalog's Heat and Nova URLs (the placeholder's have no path prefix)
    made = access_rules(
        f"https://heat.cloud.invalid:8004/v1/{PLACEHOLDER_PROJECT_ID}",
        "https://nova.cloud.invalid:8774/v2.1",
    )
    assert rules == {(r.service, r.method, r.path) for r in made}
    assert {service for service, _, _ in rules} == {"orchestration", "compute"}
    assert "secret" not in inputs  # Keystone makes it; it is never an input
    # its name changes with what it may do: a change is a new credential, no name clash
    assert inputs["name"] == credential_name("autoscale-etcd-dev", ["member"], made)
    assert credential_name("c", ["member"], made) != credential_name("c", ["reader"], made)
    assert credential_name("c", ["member"], made) != credential_name("c", ["member"], made[:2])
    assert credential_name("c", ["member"], made) != credential_name("c", ["member"], None)


def test_dev_group_sizes_cooldowns_and_policies_follow_the_settings(dev):
    s = dev.settings
    group = dev.template["resources"][heat.GROUP]["properties"]
    assert (group["min_size"], group["max_size"]) == (3, 5)
    # no desired_capacity: Heat's update would reset a grown group to it (the agents grow
    # a new group to `capacity`)
    assert "desired_capacity" not in group
    rolling = group["rolling_updates"]
    # a roll updates one member in place at a time (its new server joins beside the old
    # one); min_in_service above 0 would end by deleting an updated member (infra.heat)
    assert (rolling["max_batch_size"], rolling["min_in_service"]) == (1, 0)
    # a batch ends once its new member votes (the member's wait condition, join_timeout);
    # the pause then covers the agents' removal of the server Heat deleted
    window = (s.dead_member_periods + 2) * s.lockattemptperiod
    assert rolling["pause_time"] == heat.rolling_pause(s) == window
    ready = yaml.safe_load((dev.out / "member-template.yaml").read_text())["resources"]
    assert ready[heat.MEMBER_READY]["properties"]["timeout"] == 900
    assert group["cooldown"] == s.scaleupcooldown
    up = dev.template["resources"][heat.SCALE_UP]["properties"]
    down = dev.template["resources"][heat.SCALE_DOWN]["properties"]
    assert (up["scaling_adjustment"], up["cooldown"]) == (1, s.scaleupcooldown)
    # Heat keeps one cooldown per group: the scale-down policy has none, so it never holds
    # back a replacement; the agents' kill lock spaces removals by scaledownperiod
    assert (down["scaling_adjustment"], down["cooldown"]) == (-1, 0)
    alarm = dev.template["resources"][heat.ALARM]
    assert alarm["type"] == "OS::Aodh::GnocchiAggregationByResourcesAlarm"
    assert alarm["properties"]["metric"] == "cpu"
    assert alarm["properties"]["aggregation_method"] == "rate:mean"
    assert alarm["properties"]["granularity"] == s.alarmperiod
    assert alarm["properties"]["alarm_actions"] == [{"get_attr": [heat.SCALE_UP, "alarm_url"]}]
    assert dev.member["key_name"] == "dev-key"
    assert dev.member["metadata"] == {"metering.server_group": {"get_param": "OS::stack_id"}}
    assert "block_device_mapping_v2" not in dev.member


def test_dev_outputs(dev):
    out = dev.outputs
    assert out["heat_stack_id"] == dev.one(STACK_V1)["id"]
    assert out["scale_up_url"].endswith("/resources/scale_up/signal")
    assert out["etcd_client_endpoints"] == [
        "http://10.42.0.11:12379",
        "http://10.42.0.12:12379",
        "http://10.42.0.13:12379",
    ]
    assert "member list" in out["client_discovery"]
    assert out["metrics_server"] is None and out["etcd_ca_cert"] is None


# --- metrics: metrics server, 2 proxies, https, ssh, sec_grps, keypair, prometheus ---


def test_metrics_stack_wires_proxies_metrics_and_ssh(metrics):
    members, proxies = metrics.group_id("members"), metrics.group_id("proxies")
    clients, parent = metrics.group_id("clients"), metrics.group_id("metrics")
    expected = {
        (members, 2379, members),
        (members, 2380, members),
        (members, 2379, proxies),
        (proxies, 2379, clients),
        (proxies, 2379, members),
        (members, 19999, parent),
        (parent, 19999, members),
        (parent, 19999, proxies),
    }
    for cidr in ("192.0.2.0/24", "198.51.100.7/32"):
        expected |= {(group, 22, cidr) for group in (members, proxies, parent)}
        expected.add((parent, 19999, cidr))
    assert metrics.rules() == expected
    # the peer port is never open to proxies, clients or CIDRs
    assert all(remote == members for target, port, remote in expected if port == 2380)


def test_metrics_stack_heat_parameters(metrics):
    params = metrics.heat_parameters
    assert params["security_groups"] == "autoscale-etcd-metrics-members,corp-monitoring"
    assert params["proxy_security_groups"] == "autoscale-etcd-metrics-proxies,corp-monitoring"
    assert params["proxy_flavor"] == "m1.small" and params["flavor"] == "m1.medium"
    port = metrics.one("openstack:networking/port:Port")
    assert params["metrics_host"] == "10.42.0.5"  # the parent's fixed address
    assert port["inputs"]["securityGroupIds"] == [
        metrics.group_id("metrics"),
        "sg-corp-monitoring",
    ]
    for secret in ("agent_credential_secret", "netdata_api_key", "tls_ca_key_b64"):
        assert params[secret] == MASK, secret
    assert params["tls_ca_cert_b64"] != MASK  # the CA certificate is public
    assert params["flavor_vcpus"] == "2"
    server_group = metrics.one("openstack:compute/serverGroup:ServerGroup")
    assert server_group["inputs"]["policies"] == "anti-affinity"


def test_metrics_stack_metrics_server_keypair_and_ca(metrics):
    server = metrics.one("openstack:compute/instance:Instance")
    assert server["inputs"]["flavorName"] == "m1.large"
    assert server["inputs"]["keyPair"] == "ops-key"
    assert server["inputs"]["networks"] == [
        {"port": metrics.one("openstack:networking/port:Port")["id"]}
    ]
    assert server["inputs"]["userData"] == MASK  # holds the stream API key
    fip = metrics.one("openstack:networking/floatingIp:FloatingIp")
    assert fip["inputs"]["pool"] == "public"
    assoc = metrics.one("openstack:networking/floatingIpAssociate:FloatingIpAssociate")
    assert assoc["inputs"]["portId"] == metrics.one("openstack:networking/port:Port")["id"]
    keypair = metrics.one("openstack:compute/keypair:Keypair")
    assert keypair["inputs"]["name"] == "ops-key"
    assert keypair["inputs"]["publicKey"].startswith("ssh-ed25519 ")
    cert = metrics.one("tls:index/selfSignedCert:SelfSignedCert")
    assert cert["inputs"]["isCaCertificate"] is True
    assert "cert_signing" in cert["inputs"]["allowedUses"]
    assert metrics.outputs["metrics_server"] == "http://203.0.113.10:19999"
    assert metrics.outputs["etcd_ca_cert"].startswith("-----BEGIN CERTIFICATE-----")


def test_metrics_stack_template_has_proxies_prometheus_alarm_and_volume(metrics):
    resources = metrics.template["resources"]
    proxies = resources[heat.PROXY_GROUP]
    assert proxies["type"] == "OS::Heat::ResourceGroup"
    assert proxies["properties"]["count"] == 2
    proxy = proxies["properties"]["resource_def"]["properties"]
    assert proxy["security_groups"] == {"get_param": "proxy_security_groups"}
    assert "etcd gRPC proxy" in proxy["user_data"]["str_replace"]["template"]
    alarm = resources[heat.ALARM]
    assert alarm["type"] == "OS::Aodh::PrometheusAlarm"
    assert alarm["properties"]["threshold"] == 70
    assert "[300s]" in alarm["properties"]["query"]["str_replace"]["template"]
    assert metrics.member["block_device_mapping_v2"][0]["volume_size"] == 20
    assert "image" not in metrics.member
    group = resources[heat.GROUP]["properties"]
    assert (group["min_size"], group["max_size"], group["cooldown"]) == (3, 7, 300)
    assert resources[heat.SCALE_DOWN]["properties"]["cooldown"] == 0
    assert metrics.outputs["etcd_client_endpoints"] == [
        "https://10.42.0.101:2379",
        "https://10.42.0.102:2379",
    ]
    assert "proxies" in metrics.outputs["client_discovery"]


# --- ownnet: network, subnet and router made by the program ---------------------------


def test_ownnet_creates_network_subnet_router_and_attaches_members(ownnet):
    network = ownnet.one("openstack:networking/network:Network")
    subnet = ownnet.one("openstack:networking/subnet:Subnet")
    router = ownnet.one("openstack:networking/router:Router")
    interface = ownnet.one("openstack:networking/routerInterface:RouterInterface")
    assert subnet["inputs"]["networkId"] == network["id"]
    assert subnet["inputs"]["cidr"] == "10.77.0.0/24"
    assert subnet["inputs"]["dnsNameservers"] == ["192.0.2.53", "192.0.2.54"]
    assert router["inputs"]["externalNetworkId"] == "net-ext-net"
    assert interface["inputs"] == {"routerId": router["id"], "subnetId": subnet["id"]}
    assert ownnet.heat_parameters["network"] == network["id"]


_NETWORK_DEPENDENCIES = """
import asyncio, json, sys
import pulumi
from infra.network import Network, NetworkArgs
from infra.settings import load_stack_file


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return args.name + "-id", dict(args.inputs)

    def call(self, args):
        return {"id": "net-ext"}


pulumi.runtime.set_mocks(Mocks(), project="autoscale-etcd", stack="ownnet", preview=False)


@pulumi.runtime.test
def needs():
    network = Network("network", NetworkArgs(load_stack_file(sys.argv[1]), "c"))

    async def types():
        return sorted(type(r).__name__ for r in await network.network_id.resources())

    return pulumi.Output.from_input(asyncio.ensure_future(types())).apply(
        lambda found: print(json.dumps(found))
    )


needs()
"""


def test_what_uses_a_created_network_waits_for_its_subnet_and_router_interface():
    """create_network: the network id the Heat stack gets carries the subnet and the
    router interface as dependencies (a server booted on a network with no subnet fails,
    and the stack with it): Pulumi creates the stack after them."""
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _NETWORK_DEPENDENCIES,
            str(PROJECT_DIR / "tests/stacks/Pulumi.ownnet.yaml"),
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    needed = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"Network", "Subnet", "RouterInterface"} <= set(needed), needed


def test_ownnet_without_access_rules_and_with_client_cidrs(ownnet):
    credential = ownnet.one("openstack:identity/applicationCredential:ApplicationCredential")
    assert "accessRules" not in credential["inputs"] or not credential["inputs"]["accessRules"]
    assert credential["inputs"]["unrestricted"] is False  # it still makes no credentials
    assert "(no access rules)" in credential["inputs"]["description"]
    members = ownnet.group_id("members")
    cidr_rules = [r["inputs"] for r in ownnet.of_type(RULE) if r["inputs"].get("remoteIpPrefix")]
    assert [(r["securityGroupId"], r["portRangeMin"], r["remoteIpPrefix"]) for r in cidr_rules] == [
        (members, 12379, "192.0.2.0/24")
    ]
    assert "192.0.2.0/24" in ownnet.outputs["client_discovery"]
    assert ownnet.outputs["client_security_group"] == "autoscale-etcd-ownnet-clients"


def test_ownnet_without_server_group_alarm_key_or_cleanup_hook(ownnet):
    assert not ownnet.of_type("openstack:compute/serverGroup:ServerGroup")
    assert "scheduler_hints" not in ownnet.member
    assert "server_group" not in ownnet.heat_parameters
    assert heat.ALARM not in ownnet.template["resources"]
    assert "alarm_threshold" not in ownnet.heat_parameters
    assert "key_name" not in ownnet.member
    user_data = ownnet.member["user_data"]["str_replace"]["template"]
    assert "/etc/autoscale-etcd/hooks/configscript" in user_data
    assert "/etc/autoscale-etcd/hooks/cleanupscript" not in user_data
    agent = json.loads((ownnet.out / "agent-settings.json").read_text())
    assert agent["hooks"]["cleanupscript"] is None


# --- a second `pulumi up` with nothing changed is a no-op ------------------------------


def heat_shown_parameters(template: dict, sent: dict[str, str]) -> dict[str, str]:
    """What Heat answers as the stack's parameters once created with `sent` (Heat's own
    code: heat/engine/api.py format_stack, `stack.parameters.map(str)`), without the
    pseudo parameters the provider's read drops (terraform-provider-openstack,
    resourceOrchestrationStackV1Read: OS::project_id, OS::stack_id, OS::stack_name)."""
    need_module("heat")
    from heat.common import identifier
    from heat.engine import template as heat_template

    tmpl = heat_template.Template(template)
    stack = identifier.HeatIdentifier("tenant", "autoscale-etcd-test", "stack-id")
    shown = tmpl.parameters(stack, sent).map(str)
    return {k: v for k, v in shown.items() if not k.startswith("OS::")}


@pytest.mark.parametrize("name", ["dev", "metrics", "ownnet"])
def test_heat_answers_the_parameters_the_program_sent(name, request):
    """The provider reads the stack's parameters back into Pulumi's state and diffs them
    with the program's (no diff suppression): a parameter Heat shows otherwise than it was
    sent (a hidden one as '******', a default not sent, another format) makes every
    `pulumi up` an update of the stack, and a stack update is not free (signals dropped
    while it runs, the group's cooldown after). Every parameter round-trips exactly."""
    rendered: Rendered = request.getfixturevalue(name)
    sent = rendered.heat_parameters
    assert heat_shown_parameters(rendered.template, sent) == sent


def test_the_round_trip_check_sees_a_hidden_parameter():
    template = {
        "heat_template_version": heat.HOT_VERSION,
        "parameters": {"secret": {"type": "string", "hidden": True}, "n": {"type": "number"}},
    }
    shown = heat_shown_parameters(template, {"secret": "s3cret", "n": "3"})
    assert shown == {"secret": "******", "n": "3"}
    defaults = {**template, "parameters": {"d": {"type": "string", "default": "x"}}}
    assert heat_shown_parameters(defaults, {}) == {"d": "x"}  # not sent, still shown


# --- every stack: no secret in what the program writes out ---------------------------


@pytest.mark.parametrize("name", ["dev", "metrics", "ownnet"])
def test_no_secret_in_rendered_files(name, request):
    rendered: Rendered = request.getfixturevalue(name)
    for file in ("heat-template.yaml", "resources.json", "user-data.yaml"):
        text = (rendered.out / file).read_text()
        assert "mock-appcred-secret" not in text, file
        assert "BEGIN PRIVATE KEY" not in text, file
    # the secret parameters are Pulumi secrets: masked in what render writes
    for param in heat.SECRET_PARAMETERS:
        if param in rendered.template["parameters"]:
            assert rendered.heat_parameters[param] == MASK, param
    agent = json.loads((rendered.out / "agent-settings.json").read_text())
    assert agent["cloud"]["application_credential_secret"] == "**********"


@pytest.mark.parametrize("name", ["dev", "metrics", "ownnet"])
def test_render_writes_the_bundle_the_stack_holds_and_the_nodes_fetch(name, request):
    rendered: Rendered = request.getfixturevalue(name)
    user_data = (rendered.out / "user-data.yaml").read_text()
    assert len(user_data.encode()) <= BUDGET
    resources = rendered.template["resources"]
    named = resources[heat.SETTINGS]["metadata"]["bundle_sha256"]
    pyz = (rendered.out / "agent.pyz").read_bytes()
    assert hashlib.sha256(pyz).hexdigest() == named
    held = resources[heat.AGENT_BUNDLE]
    assert held["metadata"]["sha256"] == named and held["properties"]["salt"] == named
    assert resources[heat.SETTINGS]["depends_on"] == [heat.AGENT_BUNDLE]
    assert resources[heat.GROUP]["depends_on"] == [heat.AGENT_BUNDLE, heat.SETTINGS]
    # the settings file the render shows is what the fetcher writes from the document
    agent = json.loads((rendered.out / "agent-settings.json").read_text())
    member = resources[heat.SETTINGS]["metadata"]["roles"]["member"]
    assert {k: v for k, v in agent.items() if k != "cloud"} == member


def test_metrics_stack_backups_container_rules_and_agent_settings(metrics, dev):
    container = metrics.one("openstack:objectstorage/container:Container")
    assert container["inputs"]["name"] == "autoscale-etcd-metrics-etcd-backups"
    assert metrics.outputs["backup_container"] == "autoscale-etcd-metrics-etcd-backups"
    credential = metrics.one("openstack:identity/applicationCredential:ApplicationCredential")
    swift = {
        (r["method"], r["path"])
        for r in credential["inputs"]["accessRules"]
        if r["service"] == "object-store"
    }
    # exactly the agents' Swift calls, on that container only, not on the container itself
    root = "/v1/*/autoscale-etcd-metrics-etcd-backups"
    assert swift == {
        ("PUT", f"{root}/**"),
        ("HEAD", f"{root}/**"),
        ("GET", root),
        ("GET", f"{root}/**"),
        ("DELETE", f"{root}/**"),
    }
    agent = json.loads((metrics.out / "agent-settings.json").read_text())
    assert agent["backup"] == {
        "kind": "swift",
        "period": 900.0,
        "keep": 96,
        "container": "autoscale-etcd-metrics-etcd-backups",
        "segment_bytes": 2**30,
        "timeout": 900.0,
        "recovery": "manual",
    }
    # the control: a stack without backups has no container and no Swift rule
    assert not dev.of_type("openstack:objectstorage/container:Container")
    assert dev.outputs["backup_container"] is None
    dev_credential = dev.one("openstack:identity/applicationCredential:ApplicationCredential")
    assert all(r["service"] != "object-store" for r in dev_credential["inputs"]["accessRules"])
