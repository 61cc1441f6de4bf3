"""The members: a Nova server group and the Heat stack holding the autoscaling group.

`MemberGroup` renders the HOT of `infra.heat.ClusterTemplate` (with the members' and
proxies' user-data of `infra.userdata`) and deploys it with
`openstack.orchestration.StackV1`. The stack also holds the agents' settings and the
bundle the nodes fetch at boot (`heat.SettingsDocument`, naming the `heat.AgentBundle`
by its sha256). Every value only the cloud knows is a stack parameter (StackV1 passes
them as strings); the secrets among them (the agents' credential secret, the netdata API
key, the CA key) are Pulumi secrets, so the template body holds none and the state keeps
them encrypted; every parameter is sent as Heat will show it back (none hidden), so a
`pulumi up` with nothing changed is a no-op. Heat's outputs come back as strings (JSON
for lists and maps).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_openstack as openstack

from infra import heat
from infra.bundle import agent_bundle
from infra.heat import P
from infra.settings import StackSettings, join_timeout
from infra.tls import b64
from infra.userdata import member_user_data, proxy_user_data, settings_document

STACK_TIMEOUT_MINUTES = 30
"""Heat's timeout for the stack's create or update, at least."""


def stack_timeout_minutes(stack: StackSettings) -> int:
    """The stack's timeout, for its create and every update: the members' boot (Nova, up to
    about 10 minutes on a busy cloud) plus the agents_ready wait (`join_timeout`), and a
    rolling replacement of a whole grown group (`max_cluster` batches, one member each:
    its new server's join, up to `join_timeout`, and one `pause_time`); never under
    STACK_TIMEOUT_MINUTES. A stack timing out first would fail with Heat's "Timed out"
    instead of the nodes' reason, or in the middle of a roll."""
    create = join_timeout(stack) + 15 * 60
    batch = join_timeout(stack) + heat.rolling_pause(stack)
    roll = stack.max_cluster * batch + 15 * 60
    return max(STACK_TIMEOUT_MINUTES, -(-max(create, roll) // 60))


def cluster_template(stack: StackSettings, cluster_name: str) -> heat.ClusterTemplate:
    """The Heat template of a stack: a pure function of its settings and the agent's
    sources (no cloud needed). The stack's settings document names the bundle it holds."""
    bundle = agent_bundle()
    member = member_user_data(stack, cluster_name=cluster_name)
    proxy = proxy_user_data(stack, cluster_name=cluster_name)
    document = settings_document(stack, cluster_name=cluster_name, bundle=bundle)
    return heat.ClusterTemplate(
        settings=stack,
        member_user_data=member.heat(),
        proxy_user_data=proxy.heat() if stack.proxies else None,
        agent_bundle=heat.AgentBundle(bundle.sha256, bundle.packed, len(bundle.zipapp)),
        settings_document=heat.SettingsDocument(document),
    )


def template_text(template: heat.ClusterTemplate) -> str:
    """The HOT text StackV1 sends; refused here when Heat would refuse it for its size."""
    text = heat.to_yaml(template.to_hot())
    size = len(text.encode("utf-8"))
    if size > heat.MAX_TEMPLATE_SIZE:
        raise ValueError(
            f"the Heat template is {size} bytes, above Heat's default max_template_size"
            f" ({heat.MAX_TEMPLATE_SIZE}); the agent bundle is {len(agent_bundle().packed)}"
        )
    return text


def heat_output(outputs: Sequence[Any], key: str) -> Any:
    """One output of a StackV1 (`stack_outputs`: key and value, the value as Heat's string)."""
    for item in outputs or []:
        if _field(item, "output_key", "outputKey") == key:
            value = _field(item, "output_value", "outputValue")
            try:
                return json.loads(value)
            except (TypeError, ValueError):
                return value
    return None


@dataclass(frozen=True)
class MemberGroupArgs:
    settings: StackSettings
    cluster_name: str
    network_id: pulumi.Input[str]
    member_security_groups: pulumi.Input[list[str]]
    proxy_security_groups: pulumi.Input[list[str]] | None
    credential_id: pulumi.Input[str]
    credential_secret: pulumi.Input[str]
    auth_url: pulumi.Input[str]
    region: pulumi.Input[str]
    member_vcpus: pulumi.Input[int]
    metrics_host: pulumi.Input[str] | None = None
    netdata_api_key: pulumi.Input[str] | None = None
    ca_cert_pem: pulumi.Input[str] | None = None
    ca_key_pem: pulumi.Input[str] | None = None


class MemberGroup(pulumi.ComponentResource):
    stack_id: pulumi.Output[str]
    outputs: pulumi.Output[Any]

    def __init__(
        self,
        name: str,
        args: MemberGroupArgs,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("autoscale-etcd:infra:MemberGroup", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        self.template = cluster_template(s, args.cluster_name)
        self.server_group = None
        if s.anti_affinity != "none":
            self.server_group = openstack.compute.ServerGroup(
                f"{name}-server-group",
                name=f"{args.cluster_name}-members",
                policies=s.anti_affinity,
                opts=child,
            )
        parameters = self._parameters(args)
        # the members' template, where the provider reads it to send with the stack's
        self.member_file = heat.write_member_file(self.template.member())
        self.stack = openstack.orchestration.StackV1(
            f"{name}-heat",
            name=args.cluster_name,
            template_opts={"Bin": template_text(self.template)},
            parameters=parameters,
            timeout=stack_timeout_minutes(s),
            disable_rollback=True,
            opts=child,
        )
        self.stack_id = self.stack.id
        self.outputs = self.stack.stack_outputs
        self.register_outputs({"stack_id": self.stack_id})

    def output(self, key: str) -> pulumi.Output[Any]:
        return self.stack.stack_outputs.apply(lambda outputs: heat_output(outputs, key))

    def _parameters(self, args: MemberGroupArgs) -> Mapping[str, pulumi.Output[str]]:
        s = args.settings
        values: dict[str, pulumi.Input[Any]] = {
            P.IMAGE: s.image,
            P.FLAVOR: s.instance_type,
            P.NETWORK: args.network_id,
            P.SECURITY_GROUPS: pulumi.Output.from_input(args.member_security_groups).apply(
                ",".join
            ),
            P.CREDENTIAL_ID: args.credential_id,
            P.CREDENTIAL_SECRET: args.credential_secret,
            P.AUTH_URL: args.auth_url,
            P.REGION: args.region,
        }
        if self.server_group is not None:
            values[P.SERVER_GROUP] = self.server_group.id
        if s.alarm == "gnocchi":
            values[P.ALARM_THRESHOLD] = pulumi.Output.from_input(args.member_vcpus).apply(
                lambda vcpus: str(heat.cpu_threshold_ns(s.upthreshold, s.alarmperiod, vcpus))
            )
        if s.alarm == "prometheus":
            values["flavor_vcpus"] = pulumi.Output.from_input(args.member_vcpus).apply(str)
        if s.metrics_server:
            values[P.METRICS_HOST] = _required(args.metrics_host, "metrics_host")
            values[P.NETDATA_API_KEY] = _required(args.netdata_api_key, "netdata_api_key")
        if "https" in (s.etcdclientscheme, s.etcdpeerscheme):
            values[P.TLS_CA_CERT] = pulumi.Output.from_input(
                _required(args.ca_cert_pem, "ca_cert_pem")
            ).apply(b64)
            values[P.TLS_CA_KEY] = pulumi.Output.secret(
                pulumi.Output.from_input(_required(args.ca_key_pem, "ca_key_pem")).apply(b64)
            )
        if s.proxies > 0:
            values[P.PROXY_FLAVOR] = s.proxy_instance_type or s.instance_type
            values[P.PROXY_SECURITY_GROUPS] = pulumi.Output.from_input(
                _required(args.proxy_security_groups, "proxy_security_groups")
            ).apply(",".join)
        expected = {p.name for p in self.template.parameters()}
        if set(values) != expected:
            raise ValueError(
                f"Heat parameters do not match the template: missing {expected - set(values)},"
                f" unknown {set(values) - expected}"
            )
        # one Output per parameter: only the secret ones are secret in the state and diffs
        return {key: pulumi.Output.from_input(value).apply(str) for key, value in values.items()}


def _field(item: Any, name: str, camel: str) -> Any:
    if hasattr(item, name):
        return getattr(item, name)
    return item.get(name, item.get(camel))


def _required(value: Any, what: str) -> Any:
    if value is None:
        raise ValueError(f"MemberGroup needs {what} for these settings")
    return value
