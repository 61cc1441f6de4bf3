"""A group whose whole cluster is gone: made again from the newest snapshot in Swift.

When every member of the cluster is gone for good (a zone lost, every server deleted),
the group's new servers find no cluster to join and are not initial members (the group
was updated: README, "Why the oldest server leaves"), so none may start an empty one.
With backups to Swift, that is a disaster only when the container holds a snapshot of
this cluster; then the new servers' agents do not give up (a replacement could do no
better), and:

- **Roll call.** Each of them writes `recovery/<its server id>` in the backup container,
  every attempt: its name and whether it holds member data (an etcd `member/` dir). Each
  object's X-Timestamp (read back, not from the listing, which may lag) is when Swift
  stored it, on Swift's clock, one clock for all.
- **One restorer.** The first server of the group by name that Heat and Nova show ACTIVE or
  BUILD (every agent computes the same one).
- **`disaster_recovery: manual`** (the default): the restorer's agent logs at ERROR, every
  SAY_ATTEMPTS attempts, the exact command that restores the newest snapshot on it
  (agent/restore.py), and why an automatic restore would not happen yet.
- **`disaster_recovery: auto`**: the restorer restores the newest snapshot itself, when
  all of these hold (`verdict`; each one that does not is said):
  1. no etcd has answered any attempt for the dead-member window (`dead_member_periods`
     times `lockattemptperiod`);
  2. every server that may hold newer member data has lost it for good: each server of
     the snapshot's cluster (the object's `X-Object-Meta-Server-<n>`, written by the agent
     that took it) and each other server of the group is either confirmed gone by Nova
     ("Show server details": 404, DELETED, SOFT_DELETED or ERROR) or has written a roll
     call, after the restorer's own first one of this episode, saying it holds no member
     data. A server that is merely down (rebooting, its agent stopped, its etcd not
     answering) says nothing and holds the restore back: it may come back with data
     newer than the snapshot.
  3. the restorer holds the claim `recovery-claim`, made with `If-None-Match: *`: two
     servers whose views of the group differ cannot both restore (a claim whose server
     Nova lost is removed, and claimed again).
  "Gone" follows the issue's rule: Nova does not know the server, says DELETED, or ERROR.
  The others then join the restored cluster as any replacement joins. Each agent deletes
  its roll call once it is a member (and the restorer its claim). Swift or Keystone
  unreachable during all this: the agents keep trying, none gives up.

A survivor that holds member data (a lost majority, not a lost cluster) never restores by
itself: its data may be newer than any snapshot. Its agent logs the manual commands
(agent/loop.py `_watch_quorum`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.backup import Backups, servers_of
from agent.restore import agent_command
from agent.settings import AgentSettings
from agent.snapshot import CloudNode, NodeIdentity
from agent.swift import SwiftStore

log = logging.getLogger(__name__)

ROLL_PREFIX = "recovery/"
CLAIM = "recovery-claim"
"""Made with `If-None-Match: *` by the one restorer before it restores: two servers that
see the group differently (one's Heat view lags) cannot both restore."""
SAY_ATTEMPTS = 30
"""The restorer's ERROR line is repeated every this many attempts (the first one at once)."""


@dataclass(frozen=True)
class RollCall:
    server: str
    name: str
    holds_data: bool
    modified: float
    """The object's X-Timestamp: when Swift stored it, on Swift's clock (one for all)."""


@dataclass
class Evidence:
    """What the restorer knows, for `verdict`."""

    me: NodeIdentity
    nodes: list[CloudNode]
    snapshot: str
    snapshot_servers: list[str] | None
    rolls: dict[str, RollCall]
    since: float
    """The X-Timestamp of this node's first roll call of the episode."""
    waited: float
    window: float
    gone: Callable[[str], str | None]
    """Server id -> how Nova lost it for good, None while it may come back."""
    checked: dict[str, str | None] = field(default_factory=dict)


def restorer(nodes: list[CloudNode]) -> CloudNode | None:
    """The group's server that restores: the first by name Heat and Nova show up."""
    up = sorted((n for n in nodes if n.status in ("ACTIVE", "BUILD")), key=lambda n: n.name)
    return up[0] if up else None


def verdict(evidence: Evidence) -> list[str]:
    """Why this node may not restore the newest snapshot now; empty: it may."""
    e = evidence
    reasons: list[str] = []
    chosen = restorer(e.nodes)
    if chosen is None or chosen.id != e.me.id:
        reasons.append(f"{chosen.name if chosen else 'no server'} restores, not this node")
        return reasons
    if e.waited < e.window:
        reasons.append(f"no cluster for {e.waited:.0f} s of the {e.window:.0f} s window")
    if e.snapshot_servers is None:
        reasons.append(f"{e.snapshot} names no servers (its cluster's servers are unknown)")
    names = {n.id: n.name for n in e.nodes}
    suspects = [*(e.snapshot_servers or []), *(n.id for n in e.nodes)]
    for server in dict.fromkeys(suspects):
        if server == e.me.id:
            continue
        shown = names.get(server, server)
        roll = e.rolls.get(server)
        if roll is not None and roll.modified > e.since:
            if roll.holds_data:
                reasons.append(f"{shown} holds member data")
            continue
        if server not in e.checked:
            e.checked[server] = e.gone(server)
        if e.checked[server] is None:
            reasons.append(f"{shown}: not gone by Nova, and no word from its agent")
    return reasons


class Recovery:
    """The disaster path of one agent's bootstrap (see the module's text)."""

    def __init__(
        self,
        settings: AgentSettings,
        cloud: object,
        *,
        settings_path: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: SwiftStore | None = None,
    ) -> None:
        self.settings = settings
        self.cloud = cloud
        self.settings_path = settings_path
        self.clock = clock
        self._store = store
        self.started: float | None = None
        self.since: float | None = None
        self.claimed = False
        self.attempts = 0
        self.newest: str | None = None

    @property
    def on(self) -> bool:
        return self.settings.backup.kind == "swift"

    @property
    def store(self) -> SwiftStore:
        if self._store is None:
            self._store = SwiftStore.for_cloud(self.cloud, self.settings)
        return self._store

    def window(self) -> float:
        scaling = self.settings.scaling
        return scaling.dead_member_periods * scaling.lockattemptperiod

    def no_cluster(self, me: NodeIdentity, nodes: list[CloudNode], holds_data: bool) -> str | None:
        """One attempt found no cluster: the roll call, then the restore's verdict. Returns
        the newest snapshot's name when this node must restore it now; None otherwise
        (also when the container holds no snapshot: nothing is lost, nothing to do)."""
        now = self.clock()
        backups = Backups(self.settings.backup, self.store, Path(self.settings.state_dir))
        found = backups.snapshots()
        if not found:
            self.started = None
            return None
        self.newest = found[-1].name
        if self.started is None:
            self.started = now
        self.attempts += 1
        record = {"server": me.id, "name": me.name, "holds_data": holds_data}
        self.store.put_small(f"{ROLL_PREFIX}{me.id}", json.dumps(record).encode())
        if self.since is None:  # read back, not listed: a container listing may lag
            found_mine = self.store.get_small(f"{ROLL_PREFIX}{me.id}")
            self.since = found_mine[1] if found_mine else None
        chosen = restorer(nodes)
        if chosen is None or chosen.id != me.id:
            if self.attempts % SAY_ATTEMPTS == 1:
                log.warning(
                    "no cluster answers in the group and Swift holds snapshots of it (the"
                    " newest %s): %s restores it",
                    self.newest,
                    chosen.name if chosen else "the group's first server up",
                )
            return None
        head = self.store.head(self.newest)
        evidence = Evidence(
            me=me,
            nodes=nodes,
            snapshot=self.newest,
            snapshot_servers=servers_of(head),
            rolls=self._rolls(),
            since=self.since if self.since is not None else float("inf"),
            waited=now - self.started,
            window=self.window(),
            gone=self._gone,
        )
        reasons = verdict(evidence)
        if holds_data:
            reasons.append("this node's data dir holds a member dir")
        if self.settings.backup.recovery == "auto" and not reasons:
            reasons = self._claim(me)
        if self.settings.backup.recovery == "auto" and not reasons:
            log.warning(
                "disaster recovery: no cluster for %.0f s, every server that held its data is"
                " gone or says it holds none: restoring %s here",
                evidence.waited,
                self.newest,
            )
            return self.newest
        if self.attempts % SAY_ATTEMPTS == 1:
            self._say(head, reasons)
        return None

    def reset(self) -> None:
        """A cluster answered: the episode (its window, its `since`) ends."""
        self.started = self.since = None

    def done(self, me: NodeIdentity) -> None:
        """This node is a member: its roll call goes (whether this agent wrote it or one
        before a restart did), and its claim if it restored. Never raises."""
        names = [f"{ROLL_PREFIX}{me.id}", *([CLAIM] if self.claimed else [])]
        for name in names:
            try:
                self.store.delete(name)
            except Exception as error:  # a member is a member: Swift's answer changes nothing
                log.info("recovery: %s not deleted (%s)", name, error)
        self.reset()
        self.claimed = False

    def _claim(self, me: NodeIdentity) -> list[str]:
        """The restore claimed for this node (why not, else)."""
        record = json.dumps({"server": me.id, "name": me.name}).encode()
        if self.store.put_small(CLAIM, record, only_new=True):
            self.claimed = True
            return []
        found = self.store.get_small(CLAIM)
        try:
            holder = json.loads(found[0]) if found else {}
            server, name = str(holder["server"]), str(holder["name"])
        except (ValueError, KeyError, TypeError):
            return [f"{CLAIM} is unreadable: delete it if no restore is under way"]
        if server == me.id:
            self.claimed = True
            return []  # this node's own claim: a restore attempt before failed
        gone = self._gone(server)
        if gone is not None:  # a claimant Nova lost: its claim goes, claimed next attempt
            self.store.delete(CLAIM)
            return [f"{name}'s claim removed (its server is {gone})"]
        return [f"{name} claims the restore ({CLAIM})"]

    # --- helpers -------------------------------------------------------------------------

    def _rolls(self) -> dict[str, RollCall]:
        rolls: dict[str, RollCall] = {}
        for stored in self.store.list(ROLL_PREFIX):
            found = self.store.get_small(stored.name)
            if found is None:
                continue
            try:
                record = json.loads(found[0])
                roll = RollCall(
                    server=str(record["server"]),
                    name=str(record["name"]),
                    holds_data=bool(record["holds_data"]),
                    modified=found[1],
                )
            except (ValueError, KeyError, TypeError):
                continue
            if stored.name == f"{ROLL_PREFIX}{roll.server}":
                rolls[roll.server] = roll
        return rolls

    def _gone(self, server: str) -> str | None:
        ask = getattr(self.cloud, "server_gone", None)
        return ask(server) if ask is not None else None

    def _say(self, head: dict[str, str], reasons: list[str]) -> None:
        auto = self.settings.backup.recovery == "auto"
        log.error(
            "no cluster answers in the group and Swift holds snapshots of it (the newest %s,"
            " revision %s). %s If the old cluster is gone for good, restore it on this"
            " server: `systemctl stop autoscale-agent`, then `%s restore"
            " --latest`, then `systemctl start autoscale-agent`; the group's other servers"
            " then join it by themselves (README, Backups and recovery)",
            self.newest,
            head.get("x-object-meta-revision", "?"),
            (
                "disaster_recovery is auto, but it waits: " + "; ".join(reasons) + "."
                if auto
                else "disaster_recovery is manual"
                + (f" (auto would wait: {'; '.join(reasons)})." if reasons else ".")
            ),
            agent_command(self.settings_path),
        )
