"""Security groups made by the program: etcd's ports open only to the cluster itself.

- members: etcd client and peer ports from members (remote group: the members' own
  group), the client port from the proxies; with no proxies, the client port from the
  `clients` group and from `client_cidrs` (clients talk to the members themselves);
  netdata (19999) only from the metrics server; ssh from `ssh_cidrs`.
- proxies: the client port from the `clients` group and `client_cidrs`, and from the
  members; ssh from `ssh_cidrs`.
- clients: empty; attach it to the servers that use etcd (the stack exports its name).
- metrics: netdata's stream port from members and proxies (they push to the parent),
  the dashboard and ssh from `ssh_cidrs`.
The user's own groups (`sec_grps`) are attached by name beside the program's.
Rules: https://docs.openstack.org/api-ref/network/v2/#security-group-rules-security-group-rules
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from infra.settings import StackSettings
from infra.userdata import NETDATA_PORT

SSH_PORT = 22


@dataclass(frozen=True)
class SecurityGroupsArgs:
    settings: StackSettings
    cluster_name: str


class SecurityGroups(pulumi.ComponentResource):
    """`member_names`/`proxy_names`: the names a member/proxy gets (the program's and sec_grps)."""

    members: openstack.networking.SecGroup
    proxies: openstack.networking.SecGroup | None
    clients: openstack.networking.SecGroup
    metrics: openstack.networking.SecGroup | None

    def __init__(
        self, name: str, args: SecurityGroupsArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("autoscale-etcd:infra:SecurityGroups", name, None, opts)
        s = args.settings
        self._child = pulumi.ResourceOptions(parent=self)
        self._name = name

        def group(role: str, what: str) -> openstack.networking.SecGroup:
            return openstack.networking.SecGroup(
                f"{name}-{role}",
                name=f"{args.cluster_name}-{role}",
                description=f"autoscale-etcd {args.cluster_name}: {what}",
                opts=self._child,
            )

        self.members = group("members", "etcd members")
        self.proxies = group("proxies", "etcd gRPC proxies") if s.proxies > 0 else None
        self.clients = group("clients", "servers allowed to use etcd")
        self.metrics = group("metrics", "netdata parent") if s.metrics_server else None

        client, peer = s.etcdclientport, s.etcdpeerport
        self._allow("members-client-from-members", self.members, client, group=self.members)
        self._allow("members-peer-from-members", self.members, peer, group=self.members)
        if self.proxies is not None:
            self._allow("members-client-from-proxies", self.members, client, group=self.proxies)
            self._allow("proxies-client-from-clients", self.proxies, client, group=self.clients)
            self._allow("proxies-client-from-members", self.proxies, client, group=self.members)
        else:  # no proxies: the clients talk to the members
            self._allow("members-client-from-clients", self.members, client, group=self.clients)
        front = self.proxies if self.proxies is not None else self.members
        for index, cidr in enumerate(s.client_cidrs):
            self._allow(f"client-{index}", front, client, cidr=cidr)
        if self.metrics is not None:
            self._allow(
                "members-netdata-from-metrics", self.members, NETDATA_PORT, group=self.metrics
            )
            self._allow(
                "metrics-stream-from-members", self.metrics, NETDATA_PORT, group=self.members
            )
            if self.proxies is not None:
                self._allow(
                    "metrics-stream-from-proxies", self.metrics, NETDATA_PORT, group=self.proxies
                )
        for index, cidr in enumerate(s.ssh_cidrs):
            for role, target in (
                ("members", self.members),
                ("proxies", self.proxies),
                ("metrics", self.metrics),
            ):
                if target is not None:
                    self._allow(f"{role}-ssh-{index}", target, SSH_PORT, cidr=cidr)
            if self.metrics is not None:
                self._allow(f"metrics-dashboard-{index}", self.metrics, NETDATA_PORT, cidr=cidr)

        extra = list(s.sec_grps)
        self.member_names = pulumi.Output.all(self.members.name).apply(lambda n: [*n, *extra])
        self.proxy_names = (
            pulumi.Output.all(self.proxies.name).apply(lambda n: [*n, *extra])
            if self.proxies is not None
            else None
        )
        self.metrics_names = (
            pulumi.Output.all(self.metrics.name).apply(lambda n: [*n, *extra])
            if self.metrics is not None
            else None
        )
        self.metrics_ids = None
        if self.metrics is not None:
            # a port takes group ids; the user's groups are looked up by name
            extra_ids = [
                openstack.networking.get_sec_group_output(
                    name=extra_name, opts=pulumi.InvokeOutputOptions(parent=self)
                ).id
                for extra_name in extra
            ]
            self.metrics_ids = pulumi.Output.all(self.metrics.id, *extra_ids)
        self.register_outputs(
            {
                "members": self.members.id,
                "proxies": self.proxies.id if self.proxies else None,
                "clients": self.clients.id,
                "metrics": self.metrics.id if self.metrics else None,
            }
        )

    def _allow(
        self,
        rule: str,
        target: openstack.networking.SecGroup,
        port: int,
        *,
        group: openstack.networking.SecGroup | None = None,
        cidr: str | None = None,
    ) -> openstack.networking.SecGroupRule:
        return openstack.networking.SecGroupRule(
            f"{self._name}-{rule}",
            direction="ingress",
            ethertype="IPv6" if cidr and ":" in cidr else "IPv4",
            protocol="tcp",
            port_range_min=port,
            port_range_max=port,
            security_group_id=target.id,
            remote_group_id=group.id if group is not None else None,
            remote_ip_prefix=cidr,
            description=rule,
            opts=self._child,
        )
