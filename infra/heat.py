"""Heat's part of the cluster: the HOT document, built from typed pieces (no hand-written YAML).

OpenStack offers an autoscaling group, scaling policies and their alarm only through
Heat, so those live in one Heat stack that the Pulumi program deploys with
`openstack.orchestration.StackV1`. Everything else is a native Pulumi resource whose
ids reach this template as parameters.

The template is a pure function of the stack settings and the nodes' user-data text:
what only the cloud knows at deploy time (ids, the flavor's vCPUs, secrets) arrives as
parameters; Heat itself writes the secrets among them into the user-data with
`str_replace`, so the template body never holds one. No parameter is `hidden`: Heat
shows a hidden one as '******', the provider reads that back into Pulumi's state and
every `pulumi up` would update the stack; and hiding would hide nothing, since the
group's nested stack holds the resolved user-data (README, "Who can read what").

Resource names are an interface: the agents call the policies and mark members
unhealthy by these names through Heat's API (`GROUP`, `SCALE_DOWN`, `SCALE_UP`), and the
nodes fetch the agent from `AGENT_BUNDLE`'s metadata at boot (`AgentBundle`).
Reference: https://docs.openstack.org/heat/latest/template_guide/openstack.html
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from infra.settings import StackSettings, join_timeout

HOT_VERSION = "2021-04-16"  # Wallaby: str_replace, list_join, if/conditions

GROUP = "etcd_group"
SCALE_UP = "scale_up"
SCALE_DOWN = "scale_down"
ALARM = "scale_up_alarm"
PROXY_GROUP = "proxy_group"
AGENT_BUNDLE = "agent_bundle"
SETTINGS = "agent_settings"
READY_HANDLE = "agents_ready_handle"
READY = "agents_ready"

# Heat's default `max_template_size` (heat.conf [DEFAULT]): the largest template text
# it parses, in bytes. The request body around it may be up to `max_json_body_size` (1 MiB).
MAX_TEMPLATE_SIZE = 524288

Hot = dict[str, Any]


def get_param(name: str) -> Hot:
    return {"get_param": name}


def get_attr(*path: str) -> Hot:
    return {"get_attr": list(path)}


def get_resource(name: str) -> Hot:
    return {"get_resource": name}


def str_replace(template: str | Hot, params: Mapping[str, Any]) -> Hot:
    return {"str_replace": {"template": template, "params": dict(params)}}


# The stack's own identity, as Heat's pseudo-parameters give it at create time.
STACK_ID = get_param("OS::stack_id")
STACK_NAME_AND_ID: Hot = {"list_join": ["/", [get_param("OS::stack_name"), STACK_ID]]}


@dataclass(frozen=True)
class Parameter:
    """A HOT parameter. Pulumi's StackV1 passes every value as a string."""

    name: str
    type: Literal["string", "number", "comma_delimited_list", "json", "boolean"] = "string"
    description: str = ""
    default: Any = None

    def to_hot(self) -> Hot:
        out: Hot = {"type": self.type}
        if self.description:
            out["description"] = self.description
        if self.default is not None:
            out["default"] = self.default
        return out


class P:
    """Parameter names of the cluster template (the keys of StackV1 `parameters`)."""

    IMAGE = "image"
    FLAVOR = "flavor"
    NETWORK = "network"
    SECURITY_GROUPS = "security_groups"
    SERVER_GROUP = "server_group"
    CREDENTIAL_ID = "agent_credential_id"
    CREDENTIAL_SECRET = "agent_credential_secret"
    AUTH_URL = "auth_url"
    REGION = "region"
    ALARM_THRESHOLD = "alarm_threshold"
    NETDATA_API_KEY = "netdata_api_key"
    METRICS_HOST = "metrics_host"
    TLS_CA_CERT = "tls_ca_cert_b64"
    TLS_CA_KEY = "tls_ca_key_b64"
    PROXY_FLAVOR = "proxy_flavor"
    PROXY_SECURITY_GROUPS = "proxy_security_groups"


SECRET_PARAMETERS = (P.CREDENTIAL_SECRET, P.NETDATA_API_KEY, P.TLS_CA_KEY)


@dataclass(frozen=True)
class UserData:
    """A node's cloud-config text and the placeholders Heat fills in (placeholder -> HOT value)."""

    text: str
    params: Mapping[str, Hot] = field(default_factory=dict)

    def to_hot(self) -> str | Hot:
        return str_replace(self.text, self.params) if self.params else self.text


@dataclass(frozen=True)
class Server:
    """An `OS::Nova::Server`, as the inline member of a group."""

    image: Hot | str
    flavor: Hot | str
    network: Hot | str
    security_groups: Hot | list[Any]
    user_data: UserData
    key_name: str | None = None
    server_group: Hot | str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    volume_size: int = 0

    def to_hot(self) -> Hot:
        props: Hot = {"flavor": self.flavor}
        if self.volume_size > 0:
            props["block_device_mapping_v2"] = [
                {
                    "image": self.image,
                    "volume_size": self.volume_size,
                    "boot_index": 0,
                    "delete_on_termination": True,
                }
            ]
        else:
            props["image"] = self.image
        if self.key_name:
            props["key_name"] = self.key_name
        props["networks"] = [{"network": self.network}]
        props["security_groups"] = self.security_groups
        if self.server_group is not None:
            props["scheduler_hints"] = {"group": self.server_group}
        if self.metadata:
            props["metadata"] = dict(self.metadata)
        props["user_data_format"] = "RAW"
        props["user_data"] = self.user_data.to_hot()
        # A member's disk holds its etcd data: never re-imaged (Heat's default REBUILD) nor
        # resized in place (RESIZE reboots it elsewhere); a new image or flavor is a new
        # server, one at a time. Its user-data holds only what stays for its life (its
        # credential, how to fetch the agent): a change of it is a new server too.
        props["image_update_policy"] = "REPLACE"
        props["flavor_update_policy"] = "REPLACE"
        props["user_data_update_policy"] = "REPLACE"
        return {"type": "OS::Nova::Server", "properties": props}


@dataclass(frozen=True)
class AgentBundle:
    """The agent bundle, held by the stack for its nodes to fetch at boot.

    Heat answers a resource's template `metadata` to "Show resource metadata"
    (`GET /v1/{project}/stacks/{name}/{id}/resources/agent_bundle/metadata`, what
    infra/node/fetch-agent.py calls). Heat stores that metadata when it creates the
    resource and keeps it through updates in place: an `OS::Heat::None` or
    `OS::Heat::Value` would serve the first bundle forever (tests/test_infra_heat.py runs
    Heat's engine to show it). So the holder is an `OS::Heat::RandomString` whose `salt`
    is the bundle's sha256: Heat replaces it whenever the bundle changes (what `salt` is
    documented for), and the replacement is created with the new metadata. Its random
    string is not used. The groups depend on it, so on a stack update the new bundle is
    in place before a new member boots.
    https://docs.openstack.org/heat/latest/template_guide/openstack.html#OS::Heat::RandomString
    """

    sha256: str
    """sha256 of the zipapp, the one the stack's settings document names."""
    content: str
    """The zipapp, gzip-compressed then base64-encoded."""
    size: int
    """Bytes of the zipapp."""

    def to_hot(self) -> Hot:
        return {
            "type": "OS::Heat::RandomString",
            "properties": {"salt": self.sha256},
            "metadata": {
                "sha256": self.sha256,
                "size": self.size,
                "encoding": "gzip+base64",
                "content": self.content,
            },
        }


def rolling_pause(s: StackSettings) -> int:
    """s Heat waits after replacing one member before the next (`pause_time`): the new
    server's boot and join (`join_timeout`) and the agents' removal of the member Heat
    deleted (the dead-member window and two periods). Heat deletes the old server once the
    new one is ACTIVE, not once it votes: until the members signal that (not built yet),
    this time is what keeps a quorum through a roll."""
    window = (s.dead_member_periods + 2) * s.lockattemptperiod
    return int(join_timeout(s) + window)


@dataclass(frozen=True)
class SettingsDocument:
    """The agents' settings, held by the stack: the nodes' fetcher writes its role's part
    into the node's settings file at boot, and every agent reads it again each minute
    (agent/loop.py, `follow_stack`) and takes what a running agent may change. So a
    setting changed by `pulumi up` replaces no server: only this resource is replaced
    (an `OS::Heat::RandomString` salted with the document's sha256, as `AgentBundle`,
    since Heat keeps a resource's metadata through updates in place). It names the
    bundle by sha256 (the nodes install only that one); it depends on the bundle, so the
    new bundle is in place before the document naming it."""

    document: Hot
    """{"sha256", "bundle_sha256", "roles": {"member": {...}, "proxy": {...}}}"""

    def to_hot(self) -> Hot:
        return {
            "type": "OS::Heat::RandomString",
            "depends_on": [AGENT_BUNDLE],
            "properties": {"salt": self.document["sha256"]},
            "metadata": self.document,
        }


@dataclass(frozen=True)
class AutoScalingGroup:
    """Heat's group. No `desired_capacity`: Heat's `handle_update` ends in
    `resize(desired_capacity or current size)`, so a set value would shrink a group the
    alarm had grown, deleting members without a leave, at every stack update; without it
    the group starts at `min_size`, the agents grow it to `capacity`, and an update keeps
    its size. Batches of one with `min_in_service` at `max_size` (any size the group may
    have): Heat's `next_batch` then grows the group by one new member first, replaces one
    old member per batch after it, and ends by deleting the last original (batches (4, 1),
    (4, 1), (4, 1), (3, 0) for three). While a replacement installs and joins (minutes
    with a plain image), the cluster so keeps three voters of three or four, and can lose
    one more member; with `min_in_service` 0 (batches (3, 1) x 3) it runs on two voters
    from the removal of the deleted member until the replacement votes, and cannot."""

    member: Server
    min_size: int
    max_size: int
    cooldown: int
    max_batch_size: int = 1
    min_in_service: int = 0
    pause_time: int = 0
    depends_on: tuple[str, ...] = ()

    def to_hot(self) -> Hot:
        return {
            "type": "OS::Heat::AutoScalingGroup",
            **({"depends_on": list(self.depends_on)} if self.depends_on else {}),
            "properties": {
                "min_size": self.min_size,
                "max_size": self.max_size,
                "cooldown": self.cooldown,
                "rolling_updates": {
                    "max_batch_size": self.max_batch_size,
                    "min_in_service": self.min_in_service,
                    "pause_time": self.pause_time,
                },
                "resource": self.member.to_hot(),
            },
        }


@dataclass(frozen=True)
class ResourceGroup:
    member: Server
    count: int
    depends_on: tuple[str, ...] = ()

    def to_hot(self) -> Hot:
        return {
            "type": "OS::Heat::ResourceGroup",
            **({"depends_on": list(self.depends_on)} if self.depends_on else {}),
            "properties": {"count": self.count, "resource_def": self.member.to_hot()},
        }


@dataclass(frozen=True)
class ScalingPolicy:
    group: str
    adjustment: int
    cooldown: int

    def to_hot(self) -> Hot:
        return {
            "type": "OS::Heat::ScalingPolicy",
            "properties": {
                "adjustment_type": "change_in_capacity",
                "auto_scaling_group_id": get_resource(self.group),
                "scaling_adjustment": self.adjustment,
                "cooldown": self.cooldown,
            },
        }


def cpu_threshold_ns(percent: float, granularity: int, vcpus: int) -> int:
    """The `cpu` rate a server shows at `percent` use of all its vCPUs, per granularity period.

    Ceilometer's `cpu` metric is cumulative CPU time in nanoseconds; Gnocchi's `rate:mean`
    gives the CPU time used in each `granularity`-second period. A server fully using
    `vcpus` vCPUs for one period uses `granularity * 1e9 * vcpus` ns, so
    threshold = percent / 100 * granularity * 1e9 * vcpus.
    Example: 80 % of 2 vCPUs at 600 s granularity -> 0.8 * 600e9 * 2 = 960e9 ns.
    """
    if vcpus < 1 or granularity < 1 or not 0 < percent <= 100:
        raise ValueError(f"need vcpus >= 1, granularity >= 1, 0 < percent <= 100: {locals()}")
    return round(percent / 100 * granularity * 1_000_000_000 * vcpus)


def _alarm_query() -> Hot:
    # Ceilometer copies the server's `metering.server_group` metadata to the Gnocchi
    # instance attribute `server_group`; the query picks this stack's members.
    return str_replace('{"=": {"server_group": "STACK_ID"}}', {"STACK_ID": STACK_ID})


def alarm(settings: StackSettings) -> Hot | None:
    """The scale-up alarm of `settings.alarm`, or None (agents only)."""
    common: Hot = {
        "description": f"scale up when the members' mean CPU use is above {settings.upthreshold} %",
        "comparison_operator": "gt",
        "alarm_actions": [get_attr(SCALE_UP, "alarm_url")],
        "repeat_actions": True,
    }
    if settings.alarm == "gnocchi":
        return {
            "type": "OS::Aodh::GnocchiAggregationByResourcesAlarm",
            "properties": {
                **common,
                "metric": settings.upmetric,
                "aggregation_method": "rate:mean",
                "granularity": settings.alarmperiod,
                "evaluation_periods": 1,
                "threshold": get_param(P.ALARM_THRESHOLD),
                "resource_type": "instance",
                "query": _alarm_query(),
            },
        }
    if settings.alarm == "cpu_util":
        # Clouds before Stein: Ceilometer still computes the cpu_util percentage.
        return {
            "type": "OS::Aodh::GnocchiAggregationByResourcesAlarm",
            "properties": {
                **common,
                "metric": "cpu_util",
                "aggregation_method": "mean",
                "granularity": settings.alarmperiod,
                "evaluation_periods": 1,
                "threshold": settings.upthreshold,
                "resource_type": "instance",
                "query": _alarm_query(),
            },
        }
    if settings.alarm == "prometheus":
        # Ceilometer's Prometheus exporter (sg-core) publishes `ceilometer_cpu` (ns) with the
        # server_group label; rate()/1e7 is the percentage of one vCPU.
        promql = (
            'avg(rate(ceilometer_cpu{server_group="STACK_ID"}[PERIODs])) / 10000000 / VCPUS'
        ).replace("PERIOD", str(settings.alarmperiod))
        return {
            "type": "OS::Aodh::PrometheusAlarm",
            "properties": {
                **common,
                "query": str_replace(
                    promql, {"STACK_ID": STACK_ID, "VCPUS": get_param("flavor_vcpus")}
                ),
                "threshold": settings.upthreshold,
            },
        }
    return None


@dataclass(frozen=True)
class ClusterTemplate:
    """Everything the cluster's Heat stack holds, for one stack's settings."""

    settings: StackSettings
    member_user_data: UserData
    proxy_user_data: UserData | None = None
    description: str = "autoscale-etcd: the members' autoscaling group, its policies and alarm"
    agent_bundle: AgentBundle | None = None
    """The bundle the nodes fetch at boot (the settings document names its sha256)."""
    settings_document: SettingsDocument | None = None

    def parameters(self) -> list[Parameter]:
        s = self.settings
        params = [
            Parameter(P.IMAGE, description="Glance image of the members"),
            Parameter(P.FLAVOR, description="Nova flavor of the members"),
            Parameter(P.NETWORK, description="Neutron network id of the nodes"),
            Parameter(
                P.SECURITY_GROUPS,
                "comma_delimited_list",
                "security groups of a member (the program's and sec_grps)",
            ),
            Parameter(P.CREDENTIAL_ID, description="application credential id of the agents"),
            Parameter(
                P.CREDENTIAL_SECRET,
                description="application credential secret of the agents",
            ),
            Parameter(P.AUTH_URL, description="Keystone v3 URL the agents authenticate at"),
            Parameter(P.REGION, description="region of the Heat and Nova endpoints"),
        ]
        if s.anti_affinity != "none":
            params.append(Parameter(P.SERVER_GROUP, description="Nova server group id"))
        if s.alarm == "gnocchi":
            params.append(
                Parameter(
                    P.ALARM_THRESHOLD,
                    "number",
                    "ns of CPU per granularity period: upthreshold % of the flavor's vCPUs",
                )
            )
        if s.alarm == "prometheus":
            params.append(Parameter("flavor_vcpus", "number", "vCPUs of the members' flavor"))
        if s.metrics_server:
            params += [
                Parameter(P.METRICS_HOST, description="address of the netdata parent"),
                Parameter(P.NETDATA_API_KEY, description="netdata stream API key"),
            ]
        if "https" in (s.etcdclientscheme, s.etcdpeerscheme):
            params += [
                Parameter(P.TLS_CA_CERT, description="cluster CA certificate (PEM, base64)"),
                Parameter(P.TLS_CA_KEY, description="cluster CA private key (PEM, base64)"),
            ]
        if s.proxies > 0:
            params += [
                Parameter(P.PROXY_FLAVOR, description="Nova flavor of the gRPC proxies"),
                Parameter(
                    P.PROXY_SECURITY_GROUPS,
                    "comma_delimited_list",
                    "security groups of a proxy",
                ),
            ]
        return params

    def member(self) -> Server:
        s = self.settings
        return Server(
            image=get_param(P.IMAGE),
            flavor=get_param(P.FLAVOR),
            network=get_param(P.NETWORK),
            security_groups=get_param(P.SECURITY_GROUPS),
            key_name=s.key_name,
            server_group=get_param(P.SERVER_GROUP) if s.anti_affinity != "none" else None,
            metadata={"metering.server_group": STACK_ID},
            user_data=self.member_user_data,
            volume_size=s.volume_size,
        )

    def proxy(self) -> Server:
        if self.proxy_user_data is None:
            raise ValueError("proxies > 0 needs the proxies' user-data")
        return Server(
            image=get_param(P.IMAGE),
            flavor=get_param(P.PROXY_FLAVOR),
            network=get_param(P.NETWORK),
            security_groups=get_param(P.PROXY_SECURITY_GROUPS),
            key_name=self.settings.key_name,
            user_data=self.proxy_user_data,
        )

    def resources(self) -> Hot:
        s = self.settings
        bundle: tuple[str, ...] = ()
        resources: Hot = {}
        if self.agent_bundle is not None:
            resources[AGENT_BUNDLE] = self.agent_bundle.to_hot()
            bundle = (AGENT_BUNDLE,)
        if self.settings_document is not None:
            resources[SETTINGS] = self.settings_document.to_hot()
            bundle = (*bundle, SETTINGS)
        resources |= {
            GROUP: AutoScalingGroup(
                member=self.member(),
                min_size=s.min_cluster,
                max_size=s.max_cluster,
                cooldown=s.scaleupcooldown,
                max_batch_size=1,
                min_in_service=s.max_cluster,
                pause_time=rolling_pause(s),
                depends_on=bundle,
            ).to_hot(),
            SCALE_UP: ScalingPolicy(GROUP, +1, s.scaleupcooldown).to_hot(),
            # No cooldown of its own: Heat keeps one cooldown per group, so a scale-down
            # cooldown would hold back replacements; the agents' kill lock (TTL
            # scaledownperiod) spaces removals instead.
            SCALE_DOWN: ScalingPolicy(GROUP, -1, 0).to_hot(),
        }
        resources |= self.agents_ready()
        scale_up_alarm = alarm(s)
        if scale_up_alarm is not None:
            resources[ALARM] = scale_up_alarm
        if s.proxies > 0:
            resources[PROXY_GROUP] = ResourceGroup(self.proxy(), s.proxies, bundle).to_hot()
        return resources

    def agents_ready(self) -> Hot:
        """A wait condition the first node's fetch of the agent signals: SUCCESS once the
        agents' credential has fetched the bundle, FAILURE naming why when Keystone or Heat
        refuse it (a wrong secret, access rules the cloud's paths do not match). Without it
        a stack whose nodes cannot authenticate ends CREATE_COMPLETE with no etcd running;
        with it `pulumi up` fails with the nodes' reason, or after `join_timeout`.
        The handle's `endpoint` and `token` (a token of the stack's own user, for this
        stack's signals only) reach the nodes through their user-data."""
        return {
            READY_HANDLE: {"type": "OS::Heat::WaitConditionHandle"},
            READY: {
                "type": "OS::Heat::WaitCondition",
                "depends_on": [GROUP],
                "properties": {
                    "handle": get_resource(READY_HANDLE),
                    "count": 1,
                    "timeout": join_timeout(self.settings),
                },
            },
        }

    def outputs(self) -> Hot:
        outputs: Hot = {
            "stack_id": {"description": "this Heat stack's id", "value": STACK_ID},
            "scale_up_url": {
                "description": "POST here (authenticated) to add one member",
                "value": get_attr(SCALE_UP, "signal_url"),
            },
            "scale_down_url": {
                "description": "POST here (authenticated) to remove one member",
                "value": get_attr(SCALE_DOWN, "signal_url"),
            },
            "member_addresses": {
                "description": "IPv4 address of each member, by group member name",
                "value": get_attr(GROUP, "outputs", "first_address"),
            },
            "current_size": {
                "description": "members in the group now",
                "value": get_attr(GROUP, "current_size"),
            },
        }
        if self.settings.proxies > 0:
            outputs["proxy_addresses"] = {
                "description": "IPv4 address of each etcd gRPC proxy",
                "value": get_attr(PROXY_GROUP, "first_address"),
            }
        return outputs

    def to_hot(self) -> Hot:
        return {
            "heat_template_version": HOT_VERSION,
            "description": self.description,
            "parameters": {p.name: p.to_hot() for p in self.parameters()},
            "resources": self.resources(),
            "outputs": self.outputs(),
        }


def member_template(cluster: ClusterTemplate) -> Hot:
    """The member server as a stack of its own: what one group member really is.

    Heat builds each group member as a nested stack holding only this server; validating
    it alone checks the member's properties the way Heat will when the group grows.
    """
    used = {
        p.name: p
        for p in cluster.parameters()
        if p.name not in (P.ALARM_THRESHOLD, P.PROXY_FLAVOR, P.PROXY_SECURITY_GROUPS)
        and p.name != "flavor_vcpus"
    }
    return {
        "heat_template_version": HOT_VERSION,
        "description": "autoscale-etcd: one member of the group, alone",
        "parameters": {name: p.to_hot() for name, p in used.items()},
        "resources": {
            "member": cluster.member().to_hot(),
            # the handle its user-data reads (in the group's nested stack: the values)
            READY_HANDLE: cluster.agents_ready()[READY_HANDLE],
        },
        "outputs": {"address": {"value": get_attr("member", "first_address")}},
    }


class _HotDumper(yaml.SafeDumper):
    """Block style; multi-line strings (the user-data) as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_HotDumper.add_representer(str, _str_representer)


def to_yaml(template: Hot) -> str:
    """The template as HOT YAML text (what StackV1 sends to Heat as the template body)."""
    return yaml.dump(
        template, Dumper=_HotDumper, sort_keys=False, default_flow_style=False, width=100
    )
