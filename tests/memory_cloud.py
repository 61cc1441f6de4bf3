"""An in-memory group for agent integration tests: records what the agents ask of the cloud.

The lab's local cloud (lab/localcloud.py) is the full stand-in with Heat's rules;
this one only lists servers and records calls, so a test can see exactly what
each agent asked for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

from agent.snapshot import CloudNode, NodeIdentity


@dataclass
class GroupRecord:
    nodes: dict[str, CloudNode] = field(default_factory=dict)
    calls: list[tuple[float, str, str, str]] = field(default_factory=list)
    """(time, caller node, call, argument)"""
    lock: threading.Lock = field(default_factory=threading.Lock)
    min_size: int = 1
    max_size: int = 7
    deleted: list[str] = field(default_factory=list)
    """Names of the servers the group deleted (or replaced), in order."""

    def add(self, name: str, ip: str, *, initial: bool) -> CloudNode:
        node = CloudNode(
            id=f"srv-{name}",
            name=name,
            ip=ip,
            status="ACTIVE",
            created_at=time.time(),
            initial=initial,
        )
        with self.lock:
            self.nodes[node.id] = node
        return node

    def resize_by(self, adjustment: int) -> None:
        """Heat's adjust(): capacity counts non-FAILED members; resize keeps the last n of
        (FAILED first, then oldest); a kept FAILED member is replaced (here: deleted, no
        new server boots in these tests). Caller holds the lock."""
        healthy = sum(1 for n in self.nodes.values() if n.status != "FAILED")
        target = min(self.max_size, max(self.min_size, healthy + adjustment))
        if target == healthy:
            return  # NoActionRequired
        order = sorted(
            self.nodes.values(), key=lambda n: (n.status != "FAILED", n.created_at, n.name)
        )
        cut = max(0, len(order) - target)
        for node in order[:cut] + [n for n in order[cut:] if n.status == "FAILED"]:
            del self.nodes[node.id]
            self.deleted.append(node.name)

    def calls_of(self, call: str) -> list[tuple[float, str, str, str]]:
        with self.lock:
            return [c for c in self.calls if c[2] == call]


class MemoryGroup:
    """One node's view of the shared group (implements agent.cloud.Cloud)."""

    def __init__(self, record: GroupRecord, node_id: str) -> None:
        self.record = record
        self.node_id = node_id

    def whoami(self) -> NodeIdentity:
        node = self.record.nodes[self.node_id]  # asked once, at start, while it exists
        assert node.ip is not None
        return NodeIdentity(id=node.id, name=node.name, ip=node.ip)

    def group_members(self) -> list[CloudNode]:
        with self.record.lock:
            return list(self.record.nodes.values())

    def _log(self, call: str, argument: str) -> None:
        self.record.calls.append(
            (time.time(), self.record.nodes[self.node_id].name, call, argument)
        )

    def mark_unhealthy(self, node_id: str, reason: str) -> None:
        with self.record.lock:
            self._log("mark_unhealthy", node_id)
            if node_id in self.record.nodes:
                self.record.nodes[node_id] = replace(self.record.nodes[node_id], status="FAILED")

    def scale_down(self) -> None:
        with self.record.lock:
            self._log("scale_down", "")
            self.record.resize_by(-1)

    def scale_up(self) -> None:
        with self.record.lock:
            self._log("scale_up", "")
            self.record.resize_by(+1)
