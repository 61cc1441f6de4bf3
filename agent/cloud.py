"""The cloud as the agent needs it: one small interface, two implementations.

- `agent.cloud_openstack.OpenStackGroup`: Nova metadata, Keystone v3 application
  credential, Heat (mark a group member unhealthy, signal a scaling policy, POST
  the scale-up webhook).
- `agent.cloud_local.LocalGroup`: the lab's local cloud, same rules, on loopback.

Scale-down always goes through the group (Rule 6): mark this node's member
unhealthy, then signal the scale-down policy; Heat removes FAILED members first.
"""

from __future__ import annotations

from typing import Protocol

from agent.settings import AgentSettings, LocalCloud, OpenStackCloud
from agent.snapshot import CloudNode, NodeIdentity


class CloudError(RuntimeError):
    """A cloud call failed; the message says which call and what came back."""


class Cloud(Protocol):
    def whoami(self) -> NodeIdentity:
        """This node's server id, name and IPv4 address."""
        ...

    def group_members(self) -> list[CloudNode]:
        """Every server of the autoscaling group, with status and whether it is initial."""
        ...

    def mark_unhealthy(self, node_id: str, reason: str) -> None:
        """Mark the group member backed by server `node_id` unhealthy (Heat: FAILED)."""
        ...

    def scale_down(self) -> None:
        """Signal the scale-down policy (-1); Heat then deletes FAILED members first."""
        ...

    def scale_up(self) -> None:
        """Ask for one more member (the scale-up policy's webhook)."""
        ...


def make_cloud(settings: AgentSettings) -> Cloud:
    """The implementation the settings name."""
    cloud = settings.cloud
    if isinstance(cloud, OpenStackCloud):
        from agent.cloud_openstack import OpenStackGroup

        return OpenStackGroup(cloud)
    if isinstance(cloud, LocalCloud):
        from agent.cloud_local import LocalGroup

        return LocalGroup(cloud)
    raise TypeError(f"unknown cloud kind: {cloud!r}")
