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

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
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
MEMBER_SERVER = "server"
"""The server inside a member's stack (`MemberStack`)."""
MEMBER_READY = "ready"
"""The wait condition inside a member's stack that its agent's signal completes."""
MEMBER_READY_HANDLE_PREFIX = "ready_"
"""The member's wait condition handle: this prefix and a digest of the server's definition."""
MEMBER_USER_DATA = "user_data"
MEMBER_METERING = "metering_stack"
"""Parameters of the member template besides the parent's own (image, flavor, ...)."""
MEMBER_TEMPLATE_DIR = "/tmp/autoscale-etcd-heat"
"""Where the program writes the members' template for the provider to send to Heat.
Every machine that runs `pulumi up` must name the same file (see `MemberStack`)."""

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
    user_data: UserData | Hot
    """Its cloud-config, or a HOT value giving it (a member template's parameter)."""
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
        props["user_data"] = (
            self.user_data.to_hot() if isinstance(self.user_data, UserData) else self.user_data
        )
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


def pause_for(dead_member_periods: int, period: float) -> float:
    """s Heat waits after one batch of a rolling update before the next (`pause_time`).
    A batch ends once its new member votes (`MemberStack`'s wait condition) and Heat has
    deleted the old server; the pause covers the agents' removal of that deleted member
    (the dead-member window and two periods), so the next batch starts on a cluster of
    voters only."""
    return (dead_member_periods + 2) * period


def rolling_pause(s: StackSettings) -> int:
    """The stack's `pause_time` (`pause_for` its periods), in whole seconds."""
    return int(pause_for(s.dead_member_periods, s.lockattemptperiod))


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
class MemberStack:
    """One group member as a stack of its own (a provider template): its server, and a
    wait condition its agent signals once the server's etcd is a healthy voter in a whole
    cluster. So Heat counts a member made only once it votes, and in a rolling update
    deletes a member's old server only after its new one votes.

    How Heat 27 carries out a changed member (read from its code):

    - The group's nested stack updates the member in place (a `TemplateResource` is
      updated, never replaced, while its class stays the same: heat/engine/resource.py
      `update_convergence`), so the member keeps its resource name and `creation_time`
      (Heat's order of removal, `grouputils.get_members`).
    - Inside, the server is replaced (`image_update_policy`, `flavor_update_policy`,
      `user_data_update_policy` REPLACE). The handle's name holds a digest of everything
      that replaces the server, so a new server comes with a new handle: the old one's
      signals do not count for it. The wait condition's `handle` changes and is not
      updatable, so the condition is replaced too and waits for the new server's signal.
    - In convergence the old server's clean-up needs the old condition's, which needs the
      new condition complete (`Stack._compute_convg_dependencies`): the old server is
      deleted once the new one has signalled, or never, if it does not in `timeout`
      (the update fails there and the roll stops with the old servers kept).

    Heat reads a provider template's text from the request's `files`; the provider
    (gophercloud's `getFileContents`, terraform-provider-openstack's stack resource)
    reads every `type:` ending in `.yaml` from its own disk and sends it there, keyed by
    that very URL. The URL is in the template, so it must be the same on every machine
    that runs `pulumi up` (an absolute path), and change whenever the text does (the
    file is named by the text's sha256): a text changed under the same name would
    reach every member at once, not in batches."""

    server: Server
    """The member's server, reading the member template's parameters."""
    properties: Hot
    """The group's values of those parameters (the parent stack's values)."""
    parameters: tuple[Parameter, ...]
    timeout: int
    """s the wait condition waits for the signal after the server is ACTIVE."""
    replaced_by: Hot
    """Everything whose change replaces the server (for the handle's digest)."""

    @cached_property
    def handle(self) -> str:
        text = yaml.safe_dump([self.server.to_hot(), self.replaced_by], sort_keys=True)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        return f"{MEMBER_READY_HANDLE_PREFIX}{digest}"

    def template(self) -> Hot:
        return {
            "heat_template_version": HOT_VERSION,
            "description": (
                "autoscale-etcd: one member of the group, complete once its etcd votes"
            ),
            "parameters": {p.name: p.to_hot() for p in self.parameters},
            "resources": {
                MEMBER_SERVER: self.server.to_hot(),
                self.handle: {"type": "OS::Heat::WaitConditionHandle"},
                MEMBER_READY: {
                    "type": "OS::Heat::WaitCondition",
                    "depends_on": [MEMBER_SERVER],
                    "properties": {
                        "handle": get_resource(self.handle),
                        "count": 1,
                        "timeout": self.timeout,
                    },
                },
            },
            "outputs": {
                "first_address": {
                    "description": "the server's first IPv4 address",
                    "value": get_attr(MEMBER_SERVER, "first_address"),
                },
                "server_id": {
                    "description": "the Nova server",
                    "value": get_resource(MEMBER_SERVER),
                },
            },
        }

    def text(self) -> str:
        return to_yaml(self.template())

    @cached_property
    def url(self) -> str:
        digest = hashlib.sha256(self.text().encode("utf-8")).hexdigest()[:16]
        return f"file://{MEMBER_TEMPLATE_DIR}/member-{digest}.yaml"

    def to_hot(self) -> Hot:
        """The group's `resource`: this template, with the parent's values."""
        return {"type": self.url, "properties": dict(self.properties)}


def write_member_file(member: MemberStack) -> Path:
    """Write the member template where its URL says, for the provider to read; the
    directory is refused when another user owns it or others may write in it (they
    could put another text under this name)."""
    path = Path(member.url.removeprefix("file://"))
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise ValueError(
            f"{directory}: the members' Heat template goes here (MEMBER_TEMPLATE_DIR), but"
            f" the directory is owned by uid {info.st_uid} or writable by others (mode"
            f" {oct(info.st_mode & 0o777)}); allowed: owned by this user (uid"
            f" {os.getuid()}), not group- or world-writable"
        )
    text = member.text()
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(text, encoding="utf-8")
        scratch.replace(path)
    return path


@dataclass(frozen=True)
class AutoScalingGroup:
    """Heat's group. No `desired_capacity`: Heat's `handle_update` ends in
    `resize(desired_capacity or current size)`, so a set value would shrink a group the
    alarm had grown, deleting members without a leave, at every stack update; without it
    the group starts at `min_size`, the agents grow it to `capacity`, and an update keeps
    its size.

    A rolling update: batches of one, `min_in_service` 0, so Heat's `next_batch` gives
    (3, 1) x 3 for three members: each batch updates one member in place, the oldest on
    the old definition first, and adds or deletes none. The margin is inside the member
    (`MemberStack`): its new server joins and votes beside the old one, which Heat deletes
    only then. `min_in_service` above 0 would add a member first and end by deleting the
    oldest member; a member stack updated in place keeps its creation time, so that would
    be a member already on its new server, and an original would stay on the old
    definition (`grouputils.get_members`, `template.member_definitions`)."""

    member: Hot
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
                "resource": self.member,
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

    def member(self) -> MemberStack:
        """The group's member: a `MemberStack` whose parameters the group fills with the
        parent stack's values (the user-data resolved there, with its secrets)."""
        s = self.settings
        anti = s.anti_affinity != "none"
        params = [
            Parameter(P.IMAGE, description="Glance image of the server"),
            Parameter(P.FLAVOR, description="Nova flavor of the server"),
            Parameter(P.NETWORK, description="Neutron network id"),
            Parameter(P.SECURITY_GROUPS, "comma_delimited_list", "security groups"),
            *([Parameter(P.SERVER_GROUP, description="Nova server group id")] if anti else []),
            Parameter(MEMBER_USER_DATA, description="the server's cloud-config"),
            Parameter(MEMBER_METERING, description="the parent stack's id (Ceilometer's query)"),
        ]
        server = Server(
            image=get_param(P.IMAGE),
            flavor=get_param(P.FLAVOR),
            network=get_param(P.NETWORK),
            security_groups=get_param(P.SECURITY_GROUPS),
            key_name=s.key_name,
            server_group=get_param(P.SERVER_GROUP) if anti else None,
            metadata={"metering.server_group": get_param(MEMBER_METERING)},
            user_data=get_param(MEMBER_USER_DATA),
            volume_size=s.volume_size,
        )
        properties: Hot = {name: get_param(name) for name in (P.IMAGE, P.FLAVOR, P.NETWORK)}
        properties[P.SECURITY_GROUPS] = get_param(P.SECURITY_GROUPS)
        if anti:
            properties[P.SERVER_GROUP] = get_param(P.SERVER_GROUP)
        properties[MEMBER_USER_DATA] = self.member_user_data.to_hot()
        properties[MEMBER_METERING] = STACK_ID
        return MemberStack(
            server=server,
            properties=properties,
            parameters=tuple(params),
            timeout=join_timeout(s),
            # what replaces the server besides its own definition: the values the stack
            # settings give its image and flavor parameters, and its user-data
            replaced_by={
                "image": s.image,
                "flavor": s.instance_type,
                "user_data": self.member_user_data.to_hot(),
            },
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
                member=self.member().to_hot(),
                min_size=s.min_cluster,
                max_size=s.max_cluster,
                cooldown=s.scaleupcooldown,
                max_batch_size=1,
                min_in_service=0,
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


class _HotDumper(yaml.SafeDumper):
    """Block style; multi-line strings (the user-data) as literal blocks; a value used
    twice written out twice (no YAML anchors)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_HotDumper.add_representer(str, _str_representer)


def to_yaml(template: Hot) -> str:
    """The template as HOT YAML text (what StackV1 sends to Heat as the template body)."""
    return yaml.dump(
        template, Dumper=_HotDumper, sort_keys=False, default_flow_style=False, width=100
    )
