"""etcd's upkeep, done by the leader's agent: a full backend cleared, free pages given back.

etcd keeps every revision until it is compacted (the members run etcd's own periodic
compaction, agent/etcd_server.py) and never gives the freed pages back to the file system
until a member is defragmented; the quota (`quota_backend_bytes`) counts the file's size.
When it is reached etcd raises the NOSPACE alarm on every member: puts, transactions with
puts and lease grants are refused, and they stay refused until someone compacts,
defragments and disarms (etcd's op-guide, "Space quota"). Nobody is watching at night, so
the agents do it:

- **NOSPACE** (an alarm listed): compact to the current revision, defragment every member,
  followers first (the cluster takes no write anyway, so the leader's turn costs nothing
  more), then disarm every NOSPACE alarm; unless what the compaction left still fills 90 %
  of the quota: the live data itself, which no defragmentation makes room for; the agent
  then says to raise `quota_backend_bytes` instead of disarming into the next NOSPACE.
- **Free pages** (no alarm, the cluster whole): one member per cycle whose file is at least
  `defrag_min_bytes` with at least `defrag_free_share` of it free is defragmented,
  followers first. A
  defragmenting member serves nothing, so only a follower is: when the leader's file is
  the one, it hands leadership to a healthy follower first, and the new leader's agent
  defragments it as the follower it now is, a cycle later.

Only the agent whose member leads does upkeep (one at a time without a lock: etcd's own
leadership is the lock, and a lock cannot be taken while NOSPACE refuses lease grants).
`plan()` is pure; `Agent._upkeep` (agent/loop.py) reads and acts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from agent.etcd import EtcdClient, EtcdError
from agent.settings import EtcdSettings
from agent.snapshot import Member

log = logging.getLogger("agent.upkeep")

DEFAULT_QUOTA = 2 * 2**30
"""etcd's quota when --quota-backend-bytes is 0."""
DEFRAG_LOCK = "defrag"
"""The etcd lock naming the member being defragmented (free pages only: under NOSPACE no
lease is granted, and no removal can be made either). One at a time cluster-wide; every
agent reads it: that member's unhealthy count starts over each cycle, and its own agent
does not count the failmarker for it."""
DEFRAG_TIMEOUT = 300.0
"""s one member's defragmentation may take (etcd gives it no limit of its own; a 2 GiB
file on a slow volume takes minutes)."""


@dataclass(frozen=True)
class DbStatus:
    """One member's backend, from its own maintenance status."""

    member_id: int
    name: str
    url: str
    size: int
    """dbSize: the file, free pages included (what the quota counts)."""
    in_use: int
    """dbSizeInUse: the file less its free pages."""
    is_leader: bool

    @property
    def free_share(self) -> float:
        return (self.size - self.in_use) / self.size if self.size > 0 else 0.0


def db_statuses(client: EtcdClient, members: Iterable[Member]) -> list[DbStatus]:
    """Each member's backend, asked of that member (those that do not answer are left out:
    a member being defragmented, a dead one)."""
    out: list[DbStatus] = []
    for member in members:
        if not member.client_urls:
            continue
        url = member.client_urls[0]
        try:
            status = client.status(url)
        except EtcdError as error:
            log.debug("status of %s: %s", member.name or f"{member.id:x}", error)
            continue
        size = int(status.get("dbSize", 0))
        out.append(
            DbStatus(
                member_id=member.id,
                name=member.name,
                url=url,
                size=size,
                in_use=int(status.get("dbSizeInUse", size)),
                is_leader=int(status.get("leader", 0)) == member.id,
            )
        )
    return out


@dataclass(frozen=True)
class Upkeep:
    kind: str
    """"none", "defragment" (`member`), "hand-over" (the leader's `member`, to `target`)."""
    reason: str
    member: DbStatus | None = None
    target: DbStatus | None = None


NOSPACE_BACK_CYCLES = 6
"""A NOSPACE back within this many cycles of being cleared is not cleared again until they
have passed: the writes refill the quota as fast as a clearing frees it (live data just
under it, or a member that could not be defragmented); the agent says so instead of
defragmenting every member every cycle."""


def quota_of(configured: object) -> int:
    """The quota an etcd config's `quota-backend-bytes` gives (0 or none: etcd's default)."""
    try:
        value = int(configured)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return DEFAULT_QUOTA
    return value if value > 0 else DEFAULT_QUOTA


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def plan(statuses: list[DbStatus], settings: EtcdSettings) -> Upkeep:
    """What the free pages call for this cycle (no alarm raised; `statuses`: every voter's,
    all healthy). At most one member: the follower with the largest free share, the leader
    once no follower is due."""
    due = [
        s
        for s in statuses
        if s.size >= settings.defrag_min_bytes and s.free_share >= settings.defrag_free_share
    ]
    if not due:
        return Upkeep("none", "no member's db is due for defragmentation")
    # followers first: the leader hands over once, when it is the last one due
    worst = max(due, key=lambda s: (not s.is_leader, s.free_share, s.name))
    why = (
        f"{worst.name}'s db is {mib(worst.size)}, {100 * worst.free_share:.0f}% free"
        f" (defrag_free_share {settings.defrag_free_share:g})"
    )
    if not worst.is_leader:
        return Upkeep("defragment", why, member=worst)
    followers = sorted((s for s in statuses if not s.is_leader), key=lambda s: s.name)
    if not followers:
        return Upkeep("defragment", why + "; it is the only member", member=worst)
    return Upkeep("hand-over", why + "; it leads", member=worst, target=followers[0])


FULL_SHARE = 0.9
"""Under NOSPACE, what is left after the compaction (dbSizeInUse) filling this share of the
quota is the live data itself: a defragmentation would give room for a few writes and the
next NOSPACE; the alarm stays and the agent says to raise the quota."""


def live_data_fills(statuses: list[DbStatus], limit: int) -> bool:
    """What is left after a compaction (`statuses`) fills the quota `limit` etcd runs with."""
    return max((s.in_use for s in statuses), default=0) >= FULL_SHARE * limit


def nospace_order(statuses: list[DbStatus]) -> list[DbStatus]:
    """Followers first (by name), the leader last."""
    return sorted(statuses, key=lambda s: (s.is_leader, s.name))
