"""The lab's cloud, seen from a node: `LocalGroup`, an HTTP client of lab/localcloud.py.

The lab's local cloud stands in for Nova and Heat on loopback and keeps Heat's group
rules (lab/group.py). Its API is small and JSON:

    GET  /v1/servers/<id>                     one server: id, name, ip, status, ...
    GET  /v1/group                            the group: min/max size, members
    POST /v1/servers/<id>/mark-unhealthy      {"reason": ...}  (Heat: mark_unhealthy)
    POST /v1/policies/<name>/signal           {"caller": ...}  (Heat: resource signal)

This node's server id comes from the settings (`cloud.node_id`), else from the
environment variable AUTOSCALE_NODE_ID (on a real cloud the metadata service says it).
"""

from __future__ import annotations

import os
from typing import Any

from agent.cloud import CloudError
from agent.httpclient import Http, HttpError
from agent.settings import LocalCloud
from agent.snapshot import CloudNode, NodeIdentity

NODE_ID_ENV = "AUTOSCALE_NODE_ID"
SCALE_UP_POLICY = "scale_up"
SCALE_DOWN_POLICY = "scale_down"
_STATUSES = ("BUILD", "ACTIVE", "FAILED", "DELETED")


class LocalGroup:
    """`agent.cloud.Cloud` for the lab: the same calls as on OpenStack, over loopback HTTP."""

    def __init__(
        self,
        settings: LocalCloud,
        *,
        timeout: float = 5.0,
        session: Http | None = None,
    ) -> None:
        node_id = settings.node_id or os.environ.get(NODE_ID_ENV)
        if not node_id:
            raise CloudError(
                f"local cloud: no node id (set cloud.node_id in the settings or ${NODE_ID_ENV})"
            )
        self.node_id = node_id
        self.url = settings.url.rstrip("/")
        self.timeout = timeout
        self.http = session or Http()

    # --- Cloud -----------------------------------------------------------------------

    def whoami(self) -> NodeIdentity:
        server = self._call("GET", f"/v1/servers/{self.node_id}")
        node = _node(server)
        if node.ip is None:
            raise CloudError(f"local cloud: server {self.node_id} has no address yet")
        return NodeIdentity(id=node.id, name=node.name, ip=node.ip)

    def group_members(self) -> list[CloudNode]:
        group = self._call("GET", "/v1/group")
        members = group.get("members") if isinstance(group, dict) else None
        if not isinstance(members, list):
            raise CloudError(f"local cloud: GET /v1/group has no member list: {group!r:.200}")
        return [_node(m) for m in members]

    def mark_unhealthy(self, node_id: str, reason: str) -> None:
        self._call(
            "POST",
            f"/v1/servers/{node_id}/mark-unhealthy",
            {"reason": reason, "caller": self.node_id},
        )

    def scale_down(self) -> None:
        self._signal(SCALE_DOWN_POLICY)

    def scale_up(self) -> None:
        self._signal(SCALE_UP_POLICY)

    # --- helpers ---------------------------------------------------------------------

    def _signal(self, policy: str) -> None:
        self._call("POST", f"/v1/policies/{policy}/signal", {"caller": self.node_id})

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        what = f"local cloud: {method} {path}"
        try:
            response = self.http.request(method, self.url + path, json=body, timeout=self.timeout)
        except HttpError as error:
            raise CloudError(f"{what}: {error}") from None
        if response.status_code >= 400:
            raise CloudError(f"{what}: HTTP {response.status_code} {response.text[:200]!r}")
        try:
            return response.json()
        except ValueError:
            raise CloudError(f"{what}: not JSON: {response.text[:200]!r}") from None


def _node(data: Any) -> CloudNode:
    if not isinstance(data, dict):
        raise CloudError(f"local cloud: a server is not an object: {data!r:.200}")
    try:
        status = str(data["status"])
        if status not in _STATUSES:
            raise ValueError(f"unknown status {status!r}")
        return CloudNode(
            id=str(data["id"]),
            name=str(data["name"]),
            ip=str(data["ip"]) if data.get("ip") else None,
            status=status,  # type: ignore[arg-type]
            created_at=float(data["created_at"]),
            initial=bool(data.get("initial", False)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CloudError(f"local cloud: bad server {data!r:.200}: {error}") from None
