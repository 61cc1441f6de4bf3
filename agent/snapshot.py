"""What one agent cycle sees: plain, frozen values, no I/O.

`observe()` (agent/loop.py) fills a `Snapshot` from etcd, netdata and the cloud;
`decide()` (agent/decide.py) reads only this. The etcd client, the metrics reader
and the clouds return these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Member:
    """One etcd member as the cluster lists it, with what this cycle learnt of it."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool = False
    healthy: bool | None = None
    """None: not checked; False: its /health or status call failed this cycle."""
    is_leader: bool = False

    @property
    def started(self) -> bool:
        """A member added but not started yet has no name and no client URLs."""
        return bool(self.name) and bool(self.client_urls)

    @property
    def ip(self) -> str | None:
        for url in self.peer_urls + self.client_urls:
            host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
            if host:
                return host
        return None


@dataclass(frozen=True)
class LockInfo:
    """A held etcd lock: its key, its lease, and the key's create revision (the fencing token)."""

    name: str
    key: str
    lease_id: int
    revision: int
    holder: str


@dataclass(frozen=True)
class MetricReading:
    """The scale-down metric, or why there is none (which means: no decision)."""

    name: str
    value: float | None
    error: str | None = None
    window: int = 0

    @property
    def ok(self) -> bool:
        return self.value is not None and self.error is None


@dataclass(frozen=True)
class PeerReading:
    """A member's published scale-down metric: its value and when it was read (wall clock)."""

    name: str
    value: float
    time: float


@dataclass(frozen=True)
class NodeIdentity:
    """Who this node is, as the cloud (metadata service / local cloud) says."""

    id: str
    name: str
    ip: str


CloudStatus = Literal["BUILD", "ACTIVE", "FAILED", "DELETED"]
"""BUILD: booting as far as the cloud knows (Heat creating it; Nova building, rebuilding or
rebooting it): not dead, not joined yet."""


@dataclass(frozen=True)
class CloudNode:
    """One member server of the autoscaling group, as the cloud lists it."""

    id: str
    name: str
    ip: str | None
    status: CloudStatus
    created_at: float
    initial: bool = False
    """True for the servers made by the group's first creation (they may bootstrap)."""
    resource: str = ""
    """Heat's member resource name: the tie-break of Heat's order (`heat_order`)."""
    booted_at: float | None = None
    """The server's own creation time (a member stack's server resource), when it differs
    from the member's: what `join_timeout` counts from. A member stack updated in place
    keeps its `created_at` (Heat's order) while its new server is minutes old."""
    waiting: bool = False
    """The member stack's wait condition waits for its agent's signal."""
    group_updating: bool = False
    """The group resource itself is being created or updated (a `pulumi up`'s rolling
    update): Heat drops every scaling signal until it is done (the same for every node of
    one listing)."""


@dataclass(frozen=True)
class Snapshot:
    """Everything one cycle of one agent knows. `None` means: could not be read."""

    now: float
    me: NodeIdentity
    members: tuple[Member, ...] | None
    """None when etcd could not be reached (that call failed)."""
    metric: MetricReading
    kill_lock_holder: str | None = None
    join_lock_holder: str | None = None
    """Who is joining right now (its learner/unstarted entry is not dead)."""
    defragmenting: str | None = None
    """The member the leader's agent is defragmenting (agent/upkeep.py's lock): it serves
    nothing until done, and that is neither a death nor its own agent's failure."""
    failmarker: int = 0
    own_etcd_ok: bool = True
    """Whether this node's own etcd answered this cycle (the failmarker's call)."""
    unhealthy_since: dict[int, float] = field(default_factory=dict)
    """member id -> first time (monotonic) it was seen unhealthy, in a row."""
    last_scale_up: float | None = None
    configured: bool = False
    cloud_nodes: tuple[CloudNode, ...] | None = None
    readings: dict[str, PeerReading] | None = None
    """Member name -> its latest published metric reading; None: not read this cycle."""
    leaving: frozenset[str] = frozenset()
    """Names of nodes whose fenced removal is recorded: out of etcd, on their way out of the
    group (Heat deletes them); not servers that failed to join."""

    @property
    def my_member(self) -> Member | None:
        if self.members is None:
            return None
        for member in self.members:
            if member.name == self.me.name or (not member.name and member.ip == self.me.ip):
                return member
        return None

    @property
    def leader(self) -> Member | None:
        if self.members is None:
            return None
        return next((m for m in self.members if m.is_leader), None)

    @property
    def voters(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members or () if not m.is_learner)

    def server_of(self, member: Member) -> CloudNode | None:
        """The group server holding `member` (by name, else by address), if the cloud was read."""
        for node in self.cloud_nodes or ():
            if (member.name and node.name == member.name) or (
                member.ip is not None and node.ip == member.ip
            ):
                return node
        return None

    def is_member(self, node: CloudNode) -> bool:
        return any(
            (m.name and m.name == node.name) or (node.ip is not None and m.ip == node.ip)
            for m in self.members or ()
        )
