"""The cloud as the agent needs it: one small interface, one implementation.

`agent.cloud_openstack.OpenStackGroup`: Nova metadata (or the config drive), Keystone v3
application credential, Heat (list the group, mark a member unhealthy, signal a scaling
policy, POST the scale-up webhook) and Nova. The lab's cloud answers the same APIs, so
the lab runs this very driver. Tests may pass any object with these methods.

Scale-down goes through the group: only the server Heat's -1 deletes (the oldest, none
FAILED or building) leaves, without marking itself; a replacement is "mark unhealthy,
then +1" (README, "Why the oldest server leaves").
"""

from __future__ import annotations

from typing import Any, Protocol

from agent.settings import AgentSettings
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

    def member_ready(self, node_id: str, reason: str) -> bool:
        """Signal the wait condition of the member stack holding server `node_id`: its
        server is a healthy voter (Heat then counts the member made). False when the member
        has no wait condition (a server of an older template)."""
        ...

    def scale_down(self) -> None:
        """Signal the scale-down policy (-1); Heat then deletes FAILED members first."""
        ...

    def scale_up(self) -> None:
        """Ask for one more member (the scale-up policy's webhook)."""
        ...

    def server_gone(self, server_id: str) -> str | None:
        """How Nova lost server `server_id` for good ("deleted", "in ERROR"), or None while
        it may come back (any other status). Any server of the project, in the group or not."""
        ...

    def stack_document(self) -> dict[str, Any] | None:
        """The stack's settings document (its `agent_settings` resource's metadata:
        `sha256`, `bundle_sha256`, `roles`), or None when the stack holds none."""
        ...

    def bundle_metadata(self) -> dict[str, Any]:
        """The stack's agent bundle resource's metadata (agent/upgrade.py unpacks it)."""
        ...


def make_cloud(settings: AgentSettings) -> Cloud:
    """The OpenStack group of the node's settings."""
    from agent.cloud_openstack import OpenStackGroup

    return OpenStackGroup(settings.cloud)
