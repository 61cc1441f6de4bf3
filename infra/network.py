"""The nodes' network: an existing one (`net_name`), or network, subnet and router made here.

With `create_network: true` the program makes a network, a subnet of `network_cidr`
(with `dns_nameservers`) and a router whose gateway is `external_network`, so the
nodes reach the OpenStack APIs, the metadata service and the etcd release downloads.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from infra.settings import StackSettings


@dataclass(frozen=True)
class NetworkArgs:
    settings: StackSettings
    cluster_name: str


class Network(pulumi.ComponentResource):
    """`network_id` is what the servers attach to; `subnet_id` is set when it was created."""

    network_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str] | None
    router_id: pulumi.Output[str] | None

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("autoscale-etcd:infra:Network", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        self.subnet_id = None
        self.router_id = None
        if s.create_network:
            network = openstack.networking.Network(
                f"{name}-net",
                name=f"{args.cluster_name}-net",
                admin_state_up=True,
                opts=child,
            )
            subnet = openstack.networking.Subnet(
                f"{name}-subnet",
                name=f"{args.cluster_name}-subnet",
                network_id=network.id,
                cidr=s.network_cidr,
                ip_version=4,
                enable_dhcp=True,
                dns_nameservers=list(s.dns_nameservers) or None,
                opts=child,
            )
            external = openstack.networking.get_network_output(
                name=s.external_network, opts=pulumi.InvokeOutputOptions(parent=self)
            )
            router = openstack.networking.Router(
                f"{name}-router",
                name=f"{args.cluster_name}-router",
                external_network_id=external.id,
                opts=child,
            )
            interface = openstack.networking.RouterInterface(
                f"{name}-router-interface",
                router_id=router.id,
                subnet_id=subnet.id,
                opts=child,
            )
            # what uses the network waits for its subnet and router interface: a server
            # booted on a network without a subnet fails (Heat's stack CREATE_FAILED)
            self.network_id = pulumi.Output.all(network.id, subnet.id, interface.id).apply(
                lambda ids: ids[0]
            )
            self.subnet_id = subnet.id
            self.router_id = router.id
        else:
            existing = openstack.networking.get_network_output(
                name=s.net_name, opts=pulumi.InvokeOutputOptions(parent=self)
            )
            self.network_id = existing.id
        self.register_outputs({"network_id": self.network_id, "subnet_id": self.subnet_id})
