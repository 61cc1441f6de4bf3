"""Looking at a lab's cluster between the watcher's samples: fast polls, exact times.

Times are the lab's clock (`lab.events.now()`: seconds since the lab started), the
clock of its events (boot, kill, ...), so a figure can be measured from an event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.etcd import EtcdClient, EtcdError
from agent.snapshot import Member
from lab.cluster import Lab
from lab.events import Event

POLL = 0.05


def _client(lab: Lab, urls: list[str]) -> EtcdClient:
    return EtcdClient(urls, timeout=0.5, tls=getattr(lab, "client_tls", None))


def members(lab: Lab, *, health: bool = False) -> list[Member] | None:
    """The member list through any live node (with /health of each, if asked); None: none
    answered."""
    urls = lab.endpoints()
    if not urls:
        return None
    with _client(lab, urls) as client:
        try:
            return client.members(check_health=health)
        except EtcdError:
            return None


def names(listed: list[Member] | None) -> set[str]:
    return {m.name for m in listed or [] if m.name}


def listed(lab: Lab) -> set[str] | None:
    """Names of the started members; None when no member answered (not: nobody listed)."""
    found = members(lab)
    return None if found is None else names(found)


def booted_since(lab: Lab, since: float, before: set[str]) -> Event | None:
    """The first boot at or after `since` (lab time) of a server not one of `before`."""
    return next((e for e in lab.events.of("boot") if e.t >= since and e.node not in before), None)


def cooldown_left(lab: Lab) -> float:
    """Seconds until the group's cooldown ends (Heat refuses every signal until then)."""
    end = lab.cloud.group.cooldown_end
    return 0.0 if end is None else max(0.0, end - lab.cloud.clock())


def cluster_ids(lab: Lab) -> dict[str, str]:
    """Node name -> the cluster id its own etcd reports (nodes whose etcd answers)."""
    ids = {}
    for node in lab.nova.live():
        if node.etcd_pid() is None:
            continue
        with _client(lab, [node.client_url]) as client:
            try:
                header = client.status(node.client_url).get("header", {})
            except EtcdError:
                continue
        if header.get("cluster_id"):
            ids[node.name] = format(int(header["cluster_id"]), "x")
    return ids


@dataclass(frozen=True)
class Health:
    """One look at the cluster: voters, healthy voters, learners, leaders."""

    voters: int
    healthy_voters: int
    learners: int
    leaders: int
    unstarted: int

    @property
    def quorum_ok(self) -> bool:
        return self.voters > 0 and self.healthy_voters >= self.voters // 2 + 1

    def whole(self, size: int) -> bool:
        """`size` started voters, all healthy, no learner, one leader."""
        return (
            self.voters == size
            and self.healthy_voters == size
            and self.learners == 0
            and self.unstarted == 0
            and self.leaders == 1
        )


def health(lab: Lab) -> Health | None:
    listed = members(lab, health=True)
    if listed is None:
        return None
    voters = [m for m in listed if not m.is_learner and m.started]
    return Health(
        voters=len(voters),
        healthy_voters=sum(1 for m in voters if m.healthy),
        learners=sum(1 for m in listed if m.is_learner),
        leaders=sum(1 for m in listed if m.is_leader),
        unstarted=sum(1 for m in listed if not m.started),
    )


def healthy_voter(lab: Lab, name: str) -> bool:
    listed = members(lab)
    mine = next((m for m in listed or [] if m.name == name), None)
    if mine is None or mine.is_learner or not mine.client_urls:
        return False
    with _client(lab, [mine.client_urls[0]]) as client:
        return client.url_healthy(mine.client_urls[0])


def wait_until(
    lab: Lab, condition: Callable[[], bool], timeout: float, interval: float = POLL
) -> float | None:
    """Poll `condition`; the lab time it first held, or None after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return lab.events.now()
        time.sleep(interval)
    return None
