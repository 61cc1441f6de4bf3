"""What the stack exports for clients: where etcd answers, and how to follow membership."""

from __future__ import annotations

from typing import Any

import pulumi

from infra.heat import PROXY_GROUP
from infra.settings import StackSettings


def client_urls(settings: StackSettings, addresses: Any) -> list[str]:
    """`scheme://address:port` of every address (a list, or Heat's map name -> address)."""
    if isinstance(addresses, dict):
        addresses = [addresses[name] for name in sorted(addresses)]
    port, scheme = settings.etcdclientport, settings.etcdclientscheme
    return [f"{scheme}://{address}:{port}" for address in addresses or [] if address]


def client_endpoints(settings: StackSettings, members: Any) -> pulumi.Output[list[str]]:
    """The proxies' URLs when there are proxies (stable), else the members' at deploy time."""
    key = "proxy_addresses" if settings.proxies > 0 else "member_addresses"
    return members.output(key).apply(lambda addresses: client_urls(settings, addresses))


def client_discovery(settings: StackSettings) -> str:
    allowed = "attach the security group in client_security_group to your client servers" + (
        f" (or connect from {', '.join(settings.client_cidrs)})" if settings.client_cidrs else ""
    )
    if settings.proxies > 0:
        return (
            f"use the {settings.proxies} etcd gRPC proxies ({PROXY_GROUP}): their addresses"
            f" stay fixed while members come and go, and they follow the membership; {allowed}"
        )
    return (
        "members change as the cluster scales: give clients several of these endpoints and"
        " let them follow the member list (etcd clientv3 AutoSyncInterval, or"
        " `etcdctl member list`); `python -m agent status --endpoints URL` shows the current"
        f" members; `pulumi refresh` updates this output; {allowed}"
    )
