"""The metrics server: a netdata parent that receives every node's stream.

One server with its own port (security group `metrics`), a floating IP from
`external_network` when there is one, and a stream API key made per stack
(`random.RandomUuid`, a secret). Members and proxies stream to its fixed address
over the private network with that key; the dashboard is open to `ssh_cidrs` only.
Reference: https://learn.netdata.cloud/docs/streaming/ (stream.conf, api key)
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack
import pulumi_random as random

from infra.settings import StackSettings
from infra.userdata import NETDATA_PORT, Token, metrics_user_data


@dataclass(frozen=True)
class MetricsServerArgs:
    settings: StackSettings
    cluster_name: str
    network_id: pulumi.Input[str]
    security_group_ids: pulumi.Input[list[str]]


class MetricsServer(pulumi.ComponentResource):
    private_address: pulumi.Output[str]
    public_address: pulumi.Output[str] | None
    api_key: pulumi.Output[str]

    def __init__(
        self, name: str, args: MetricsServerArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("autoscale-etcd:infra:MetricsServer", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        api_key = random.RandomUuid(f"{name}-stream-key", opts=child)
        self.api_key = pulumi.Output.secret(api_key.result)
        port = openstack.networking.Port(
            f"{name}-port",
            name=f"{args.cluster_name}-metrics",
            network_id=args.network_id,
            security_group_ids=args.security_group_ids,
            admin_state_up=True,
            opts=child,
        )
        template = metrics_user_data(s, cluster_name=args.cluster_name).text
        user_data = pulumi.Output.secret(
            self.api_key.apply(lambda key: template.replace(Token.NETDATA_API_KEY, key))
        )
        openstack.compute.Instance(
            f"{name}-server",
            name=f"{args.cluster_name}-metrics",
            image_name=s.image,
            flavor_name=s.metrics_instance_type or s.instance_type,
            key_pair=s.key_name,
            networks=[openstack.compute.InstanceNetworkArgs(port=port.id)],
            user_data=user_data,
            metadata={"autoscale-etcd-role": "metrics"},
            opts=child,
        )
        self.private_address = port.all_fixed_ips.apply(lambda ips: ips[0])
        self.public_address = None
        if s.external_network:
            floating = openstack.networking.FloatingIp(
                f"{name}-fip",
                pool=s.external_network,
                description=f"netdata parent of {args.cluster_name}",
                opts=child,
            )
            openstack.networking.FloatingIpAssociate(
                f"{name}-fip-associate",
                floating_ip=floating.address,
                port_id=port.id,
                opts=child,
            )
            self.public_address = floating.address
        shown = self.public_address if self.public_address is not None else self.private_address
        self.dashboard_url = shown.apply(lambda host: f"http://{host}:{NETDATA_PORT}")
        self.register_outputs(
            {"private_address": self.private_address, "dashboard_url": self.dashboard_url}
        )
