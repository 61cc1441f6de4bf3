"""Bootstrap or join: how a node becomes a member of the cluster.

- A new cluster is started only when no existing member answers and this node is
  one of the group's initial members (the cloud says which); all initial members
  then start with the same `initial-cluster`, made of every initial server.
- Otherwise the node joins, one member at a time (the join lock): an old member
  entry of this node and a stale data dir are removed first, it is added as a
  learner where etcd has them, started with `existing`, and promoted once in sync.
- A node whose data dir holds its member (the agent's state names the member and etcd's
  `member/` dir is there) starts etcd on that data after any reboot, whether or not any
  peer answers, and waits for its peers in the agent's loop (`_resume`). The data is
  wiped only when etcd itself reports that this member was removed (its peers answered
  "permanently removed from the cluster"); then the node joins as a new member.
- Starting etcd never blocks the agent for long and nothing it raises escapes: a start
  that fails ends in `classify_start_failure` and the retry/give-up logic. A member still
  catching up (its data dir growing: a snapshot arriving, or its raft index moving) is
  given time while it makes progress, not cut off by a fixed deadline.
- A node that holds member data never gives up (marks its server unhealthy) while no
  quorum answers: an outage or a majority reboot must not cost a member its data.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.backup import BackupError
from agent.cloud import Cloud, CloudError
from agent.decide import JOIN_LOCK, quorum
from agent.disaster import Recovery
from agent.etcd import EtcdClient, EtcdError, LearnerNotReady, normalize_url
from agent.etcd_server import (
    EtcdService,
    classify_start_failure,
    client_url,
    etcd_config,
    peer_url,
    wipe_data_dir,
    write_config,
)
from agent.settings import AgentSettings
from agent.snapshot import CloudNode, Member, NodeIdentity
from agent.swift import SwiftError

log = logging.getLogger("agent.bootstrap")

ClientFactory = Callable[[list[str]], EtcdClient]


class BootstrapError(RuntimeError):
    """The node could not become a member within `retries` attempts."""


class NotYet(RuntimeError):
    """This attempt cannot go on now (lock held, a member joining, etcd not up); retry."""


@dataclass(frozen=True)
class Joined:
    member: Member
    how: Literal["new", "joined", "restarted", "resumed", "restored"]


def data_dir_bytes(path: Path) -> int:
    """Bytes under etcd's data dir (`member/`: WAL, snapshots, the db); 0 if none."""
    total = 0
    for root, _dirs, files in os.walk(path / "member"):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


class Progress:
    """Whether a starting member is making progress: its data dir grows (a snapshot or WAL
    being written) or the raft index its own client URL reports moves. `recent()` is True
    while the last change is younger than `stall` seconds."""

    def __init__(
        self,
        data_dir: Path,
        own: EtcdClient | None,
        *,
        stall: float,
        clock: Callable[[], float],
    ) -> None:
        self.data_dir = data_dir
        self.own = own
        self.stall = stall
        self.clock = clock
        self.last: tuple[int, int] = self._measure()
        self.changed_at = clock()

    def _measure(self) -> tuple[int, int]:
        index = 0
        if self.own is not None:
            try:
                status = self.own.status(self.own.endpoints[0])
                index = int(status.get("raftAppliedIndex") or status.get("raftIndex") or 0)
            except (EtcdError, ValueError):
                index = 0
        return data_dir_bytes(self.data_dir), index

    def recent(self) -> bool:
        now_seen = self._measure()
        if now_seen != self.last:
            self.last, self.changed_at = now_seen, self.clock()
        return self.clock() - self.changed_at < self.stall

    def describe(self) -> str:
        size, index = self.last
        return f"data dir {size / 1e6:.1f} MB, raft index {index or '?'}"


class Bootstrap:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        cloud: Cloud,
        service: EtcdService,
        client_factory: ClientFactory,
        config_path: Path,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        stopping: Callable[[], bool] = lambda: False,
        member_id: int | None = None,
        start_deadline: float | None = None,
        stall: float | None = None,
        recovery: Recovery | None = None,
    ) -> None:
        self.settings = settings
        self.cloud = cloud
        self.service = service
        self.client_factory = client_factory
        self.config_path = config_path
        self.sleep = sleep
        self.clock = clock
        self.stopping = stopping
        self.member_id = member_id
        """The member this node's state says it is (None: it never was one)."""
        period = settings.scaling.lockattemptperiod
        self.start_deadline = start_deadline or max(20.0, 2 * period)
        """Seconds a start (or a promotion) is given before progress is looked at."""
        self.stall = stall if stall is not None else max(15.0, 3 * period)
        """A start past its deadline goes on while it made progress within this many seconds."""
        self.data_dir = Path(settings.etcd.data_dir)
        self._me: NodeIdentity | None = None
        self.recovery = recovery
        """The disaster path (agent/disaster.py): None without backups."""
        self.disaster = False
        """No cluster answers and Swift holds snapshots of it: this node does not give up."""
        self.quorum_seen = False
        """A cluster answered during the attempts (so a node giving up leaves no data behind
        that only it holds)."""

    # --- the public step ---------------------------------------------------------

    def run(self) -> Joined:
        """Try `retries` times, one `lockattemptperiod` apart; raise BootstrapError after.

        Every failure of an attempt (etcd, the cloud, systemd, a timeout) is logged and
        retried; none escapes. A node holding member data is not limited to `retries`
        while no quorum has answered: it keeps its data and keeps trying."""
        attempts = self.settings.scaling.retries
        last_error = "no attempt made"
        attempt = 0
        while True:
            attempt += 1
            if self.stopping():
                raise BootstrapError("stopped before joining")
            try:
                joined = self.attempt()
            except BootstrapError:
                raise
            except Exception as error:  # every failure of an attempt is a retry
                last_error = f"{type(error).__name__}: {error}"
                log.warning("join attempt %d/%d failed: %s", attempt, attempts, last_error)
            else:
                if joined is not None:
                    log.info("member %s (%s)", joined.member.name, joined.how)
                    return joined
                last_error = "nobody to join yet and this node is not an initial member"
                log.info("attempt %d/%d: %s", attempt, attempts, last_error)
            if attempt >= attempts:
                if self.disaster:
                    if attempt == attempts:
                        log.warning(
                            "%d attempts failed, but the whole cluster is gone and Swift holds"
                            " its snapshots: a new server would do no better; not giving up",
                            attempts,
                        )
                elif not (self._holds_member_data() and not self.quorum_seen):
                    break
                elif attempt == attempts:
                    log.warning(
                        "%d attempts failed, but this node holds member %x's data and no"
                        " quorum has answered: not giving up, still trying every period",
                        attempts,
                        self.member_id or 0,
                    )
            self.sleep(self.settings.scaling.lockattemptperiod)
        raise BootstrapError(f"could not join after {attempts} attempts: {last_error}")

    def attempt(self) -> Joined | None:
        me = self.me()
        if self._holds_member_data():
            resumed = self._resume(me)
            if resumed is not None:
                return resumed
        nodes = self.cloud.group_members()
        mine_in_group = next((n for n in nodes if n.id == me.id), None)
        if mine_in_group is not None and mine_in_group.status == "FAILED":
            raise NotYet("this server is marked unhealthy: Heat replaces it, so it does not join")
        endpoints = self._endpoints(nodes, me)
        client = self.client_factory(endpoints) if endpoints else None
        members: list[Member] | None = None
        if client is not None:
            try:
                members = client.members(check_health=False)
                self.quorum_seen = True
            except EtcdError as error:
                log.info("no member answered at %s: %s", endpoints, error)
        if members is None:
            started = self._start_new(me, nodes)
            if started is not None or any(n.initial and n.id == me.id for n in nodes):
                return started
            return self._recover(me, nodes, endpoints)
        self.disaster = False
        if self.recovery is not None:
            self.recovery.reset()  # a cluster answered: no disaster window runs
        assert client is not None
        mine = self._my_entry(members, me)
        if mine is not None and mine.started and self._has_data():
            restarted = self._restart(me, members)
            if restarted is not None:
                return restarted
        if mine is not None and not mine.started and not self._has_data():
            # listed but never started: an initial member that came late, or an add whose
            # start was cut short. Start on that entry: etcd finds it by peer URL.
            return self._start_listed(client, me, members)
        return self._join(client, me)

    def me(self) -> NodeIdentity:
        if self._me is None:
            self._me = self.cloud.whoami()
        return self._me

    # --- the ways in -----------------------------------------------------------------

    def _resume(self, me: NodeIdentity) -> Joined | None:
        """This node's data dir holds its member: run etcd on it, whoever answers.

        etcd ignores the initial-cluster settings on a data dir that has a WAL, so the
        config only names this member; the peers come from the data. The agent's loop then
        waits for the peers (no quorum: "no etcd member answered", nothing removed). Only
        etcd's own "permanently removed from the cluster" (its peers' answer) wipes the
        data, and the node then joins as a new member (None)."""
        member_id = self.member_id or 0
        own = client_url(me.ip, self.settings.etcd)
        attach = getattr(self.service, "attach", None)
        if attach is not None and Path(self.config_path).is_file():
            # an etcd this agent did not start (a restore, an agent restarted beside it) is
            # found by its pid file: a second one on the same data would fail to bind
            attach(self.config_path)
        if self.service.is_running():
            how = "etcd was already running on it"
        else:
            if not Path(self.config_path).is_file():
                peers = {me.name: peer_url(me.ip, self.settings.etcd)}
                self._write_config(me, peers, "existing")
            self.service.start(self.config_path)
            how = "started etcd on it"
        log.info(
            "found this node's data of member %x in %s (%.1f MB): %s; waiting for its"
            " peers: the data is kept whether or not any of them answers, and wiped only if"
            " the cluster says this member was removed",
            member_id,
            self.data_dir,
            data_dir_bytes(self.data_dir) / 1e6,
            how,
        )
        deadline = self.clock() + min(10.0, max(2.0, 2 * self.settings.scaling.lockattemptperiod))
        while self.clock() < deadline:
            if not self.service.is_running():
                break
            try:
                for member in self.client_factory([own]).members(check_health=False):
                    if member.id == member_id:
                        self.quorum_seen = True
                        return Joined(member, "resumed")
            except EtcdError:
                pass  # no quorum yet: the peers may be down, rebooting, or partitioned
            self.sleep(0.2)
        if self.service.is_running():
            mine = Member(
                id=member_id,
                name=me.name,
                peer_urls=(peer_url(me.ip, self.settings.etcd),),
                client_urls=(own,),
            )
            return Joined(mine, "resumed")
        kind = classify_start_failure(self.service.recent_log())
        if kind == "removed":
            log.warning(
                "etcd exited: its peers say member %x was permanently removed from the"
                " cluster; wiping its data dir and joining as a new member",
                member_id,
            )
            self._wipe()
            return None
        if kind == "corrupt":
            return self._replace_corrupt(me, member_id)
        raise NotYet(f"etcd exited on this node's member data ({kind}); the data is kept")

    def _replace_corrupt(self, me: NodeIdentity, member_id: int) -> None:
        """etcd refuses this member's data as unreadable (`classify_start_failure`'s
        "corrupt"): wipe it and join as a new member, but only while the other members hold
        a quorum of the cluster as it is, without this one, every other voter healthy: the
        data of a member the cluster cannot do without is kept, whatever its state."""
        detail = next(
            (
                _log_line(line)
                for line in self.service.recent_log().splitlines()
                if classify_start_failure(line) == "corrupt"
            ),
            "",
        )
        refused = f"etcd refuses member {member_id:x}'s data as corrupt ({detail}); kept"
        endpoints = self._endpoints(self.cloud.group_members(), me)
        if not endpoints:
            raise NotYet(f"{refused}: no other server to ask")
        try:
            members = self.client_factory(endpoints).members(check_health=True)
        except EtcdError as error:
            raise NotYet(f"{refused}: no quorum answers without it ({error})") from error
        voters = [m for m in members if not m.is_learner]
        others = [m for m in voters if m.id != member_id]
        healthy = sum(1 for m in others if m.healthy)
        if healthy < quorum(len(voters)) or healthy < len(others):
            raise NotYet(
                f"{refused}: the others are {healthy} healthy of {len(others)},"
                f" of {len(voters)} voters"
            )
        self.quorum_seen = True
        log.warning(
            "etcd refuses member %x's data as corrupt (%s); the other %d voters are healthy:"
            " wiping its data dir and joining as a new member",
            member_id,
            detail,
            len(others),
        )
        self._wipe()
        return None

    def _wipe(self) -> None:
        """etcd stopped and this node's member data gone: it joins as a new member (under
        the join lock, which lists the members again and adds none while one is unhealthy;
        etcd's strict reconfig check refuses a removal that would cost the quorum)."""
        self.service.stop()
        wipe_data_dir(self.data_dir)
        self.member_id = None

    # --- the first ways in ---------------------------------------------------------

    def _start_new(self, me: NodeIdentity, nodes: list[CloudNode]) -> Joined | None:
        initial = sorted((n for n in nodes if n.initial), key=lambda n: n.name)
        if not any(n.name == me.name for n in initial):
            return None
        if any(n.ip is None for n in initial):
            log.info("waiting for every initial server to have an address")
            return None
        if self._has_data():
            # our data dir from an earlier start of this same new cluster: start it again
            log.info("data dir exists; restarting the initial member on it")
        peers = {n.name: peer_url(str(n.ip), self.settings.etcd) for n in initial}
        self._start(me, peers, "new")
        own = self.client_factory([client_url(me.ip, self.settings.etcd)])
        return Joined(self._wait_member(me, own), "new")

    def _recover(
        self, me: NodeIdentity, nodes: list[CloudNode], endpoints: list[str]
    ) -> Joined | None:
        """No cluster, and this node may not start one: agent/disaster.py."""
        if self.recovery is None or not self.recovery.on:
            return None
        try:
            chosen = self.recovery.no_cluster(me, nodes, holds_data=self._has_data())
        except (SwiftError, CloudError, BackupError, OSError, ValueError) as error:
            # Swift or Keystone away: whether the cluster is lost cannot be told, and a new
            # server would know no more: this one does not give up
            self.disaster = True
            log.warning("no cluster answers, and Swift cannot say whether it is lost: %s", error)
            return None
        self.disaster = self.recovery.started is not None
        if chosen is None:
            return None
        from agent.restore import restore_here

        done = restore_here(
            self.settings,
            me=me,
            group_endpoints=endpoints,
            store=self.recovery.store,
            service=self.service,
            name=chosen,
        )
        log.warning("disaster recovery: %s", done)
        own = self.client_factory([client_url(me.ip, self.settings.etcd)])
        return Joined(self._wait_member(me, own, voter=True), "restored")

    def _restart(self, me: NodeIdentity, members: list[Member]) -> Joined | None:
        own = [client_url(me.ip, self.settings.etcd)]
        if self.service.is_running():
            try:
                listed = self.client_factory(own).members(check_health=False)
            except EtcdError:
                listed = []
            for member in listed:
                if member.name == me.name and member.started:
                    return Joined(member, "restarted")  # etcd kept running: nothing to do
        peers = {m.name: m.peer_urls[0] for m in members if m.started and m.peer_urls}
        self._start(me, peers, "existing")
        try:
            return Joined(self._wait_member(me, self.client_factory(own)), "restarted")
        except (NotYet, EtcdError, TimeoutError) as error:
            kind = classify_start_failure(self.service.recent_log())
            log.warning("restart on the old data dir failed (%s): %s", kind, error)
            self.service.stop()
            return None

    def _start_listed(self, client: EtcdClient, me: NodeIdentity, members: list[Member]) -> Joined:
        """Start on this node's listed, never started entry, holding the join lock: two
        late initial members started together each ask the other's peer URL for its
        version while neither serves yet (etcd's bootstrap check has no read timeout), and
        both hang until one is restarted."""
        with self._join_lock(client, me):
            wipe_data_dir(self.data_dir)
            try:
                return self._start_existing(client, me, members)
            except NotYet:
                if not self.service.is_running():
                    # etcd refused to start on the entry (a cluster just formed, its version
                    # not decided yet: "incompatible with current running cluster"). The
                    # entry never started, so the data dir it made holds nothing: without
                    # it the next attempt starts on the same entry again, instead of
                    # removing it and joining as a new member.
                    wipe_data_dir(self.data_dir)
                raise

    @contextmanager
    def _join_lock(self, client: EtcdClient, me: NodeIdentity) -> Iterator[None]:
        """One join (an add, or a start on a listed entry) at a time, cluster-wide."""
        ttl = max(60.0, 6 * self.settings.scaling.lockattemptperiod)
        lock = client.acquire_lock(JOIN_LOCK, me.name, ttl)
        if lock is None:
            raise NotYet(f"join lock held by {client.lock_holder(JOIN_LOCK)}; one join at a time")
        try:
            yield
        finally:
            try:
                client.release_lock(lock)
            except EtcdError as error:
                log.warning("could not release the join lock (it expires by itself): %s", error)

    def _start_existing(self, client: EtcdClient, me: NodeIdentity, listed: list[Member]) -> Joined:
        """Start etcd on this node's (added) entry, then promote it if it is a learner.

        etcd checks `initial-cluster` against the member list peer URL by peer URL ("member
        count is unequal" otherwise), so every entry is listed: one not started yet (another
        initial member still booting) under a name of its own, since it has none yet.
        """
        mine = normalize_url(peer_url(me.ip, self.settings.etcd))
        peers = {m.name: m.peer_urls[0] for m in listed if m.started and m.peer_urls}
        for m in listed:
            if not m.started and m.peer_urls and normalize_url(m.peer_urls[0]) != mine:
                peers[f"unstarted-{m.id:x}"] = m.peer_urls[0]
        peers[me.name] = peer_url(me.ip, self.settings.etcd)
        self._start(me, peers, "existing")
        member = self._wait_member(me, client)
        if member.is_learner:
            self._promote(client, member)
            member = self._wait_member(me, client, voter=True)
        return Joined(member, "joined")

    def _join(self, client: EtcdClient, me: NodeIdentity) -> Joined:
        with self._join_lock(client, me):
            members = client.members(check_health=True)
            stale = self._my_entry(members, me)
            if stale is not None:
                log.info("removing this node's old member entry %x before rejoining", stale.id)
                client.remove_member(stale.id)
                members = [m for m in members if m.id != stale.id]
            blocking = [m for m in members if not m.started or m.healthy is False]
            if blocking:
                names = ", ".join(m.name or f"{m.id:x}" for m in blocking)
                raise NotYet(f"not adding while {names} is unstarted or unhealthy")
            self.service.stop()
            wipe_data_dir(self.data_dir)
            _added, listed = self._add(client, peer_url(me.ip, self.settings.etcd))
            return self._start_existing(client, me, listed)

    # --- steps -----------------------------------------------------------------------

    def _add(self, client: EtcdClient, my_peer: str) -> tuple[Member, list[Member]]:
        try:
            return client.add_member([my_peer], learner=True)
        except EtcdError as error:
            if "learner" not in str(error).lower():
                raise
            log.info("this etcd has no learners (%s); adding as a voter", error)
            return client.add_member([my_peer], learner=False)

    def _promote(self, client: EtcdClient, member: Member) -> None:
        """Promote the learner once etcd says it caught up; while it is still catching up
        (its data dir or raft index moving) it is given time past the deadline."""
        own = member.client_urls[0] if member.client_urls else None
        progress = self._progress(own)
        deadline = self.clock() + self.start_deadline
        while True:
            try:
                if own is not None and not self._receiving(client, own):
                    raise LearnerNotReady(
                        "member promote", own, "the learner does not apply new entries yet"
                    )
                client.promote_member(member.id)
                return
            except LearnerNotReady:
                if self.clock() > deadline and not progress.recent():
                    raise
                self.sleep(0.2)

    def _receiving(self, client: EtcdClient, own: str) -> bool:
        """The learner applies what the leader appends now: a fresh entry (a delete of the
        agents' `join/probe` key) reaches the learner's raft index within three election
        timeouts (2 s at least).

        etcd 3.5 resets a member's peer streams when it applies a raft snapshot (every join
        to a cluster whose log was compacted or restored gets one), and the leader's old
        stream to it may stay unread until its 5 s timeout: etcd still calls the learner
        ready (its match index is the snapshot's), and promoted then, it holds back every
        commit a quorum needs it for; in a two-voter cluster (the first join to a restored
        one) that is every commit, for about 5 s (seen on etcd 3.5.1)."""
        try:
            # a delete goes through raft like a put, and etcd takes deletes under NOSPACE
            client.delete(client.key("join/probe"))
            leader = next((m for m in client.members(check_health=False) if m.is_leader), None)
            if leader is None or not leader.client_urls:
                return False
            wanted = int(client.status(leader.client_urls[0]).get("raftIndex", 0))
            learner = self.client_factory([own])
            end = self.clock() + max(2.0, 3 * self.settings.etcd.election_ms / 1000)
            try:
                while int(learner.status(own).get("raftIndex", 0)) < wanted:
                    if self.clock() >= end:
                        log.info("learner at %s has not applied raft index %d yet", own, wanted)
                        return False
                    self.sleep(0.1)
                return True
            finally:
                learner.close()
        except (EtcdError, ValueError, TypeError) as error:
            log.debug("learner at %s: appends not confirmed (%s)", own, error)
            return False

    def _progress(self, own_url: str | None) -> Progress:
        own = self.client_factory([own_url]) if own_url else None
        return Progress(self.data_dir, own, stall=self.stall, clock=self.clock)

    def _write_config(
        self, me: NodeIdentity, peers: dict[str, str], state: Literal["new", "existing"]
    ) -> None:
        config = etcd_config(
            name=me.name,
            ip=me.ip,
            settings=self.settings.etcd,
            initial_cluster=peers,
            state=state,
        )
        write_config(self.config_path, config)

    def _start(
        self, me: NodeIdentity, peers: dict[str, str], state: Literal["new", "existing"]
    ) -> None:
        self._write_config(me, peers, state)
        self.service.start(self.config_path)

    def _wait_member(self, me: NodeIdentity, client: EtcdClient, *, voter: bool = False) -> Member:
        """Wait until `client`'s cluster lists us as started (and a voter, if asked).

        A learner refuses most RPCs itself, so joins ask the cluster, not the new member.
        Past `start_deadline` the wait goes on while the start makes progress (a snapshot
        arriving grows the data dir): a large database is not a failed join.
        """
        progress = self._progress(client_url(me.ip, self.settings.etcd))
        deadline = self.clock() + self.start_deadline
        last: Exception | None = None
        while self.clock() < deadline or progress.recent():
            if not self.service.is_running():
                kind = classify_start_failure(self.service.recent_log())
                raise NotYet(f"etcd exited during start ({kind})")
            try:
                for member in client.members(check_health=False):
                    if member.name == me.name and member.started:
                        if not (voter and member.is_learner):
                            return member
            except EtcdError as error:
                last = error
            self.sleep(0.2)
        raise TimeoutError(
            f"{client.endpoints} did not list {me.name} in time and the start made no progress"
            f" for {self.stall:.0f}s ({progress.describe()}; {last})"
        )

    def _endpoints(self, nodes: list[CloudNode], me: NodeIdentity) -> list[str]:
        return [
            client_url(n.ip, self.settings.etcd)
            for n in nodes
            if n.ip and n.ip != me.ip and n.status in ("ACTIVE", "BUILD")
        ]

    def _my_entry(self, members: list[Member], me: NodeIdentity) -> Member | None:
        my_peer = peer_url(me.ip, self.settings.etcd)
        for member in members:
            if member.name == me.name or my_peer in member.peer_urls:
                return member
        return None

    def _has_data(self) -> bool:
        return (self.data_dir / "member").is_dir()

    def _holds_member_data(self) -> bool:
        """The state names this node's member and etcd's member dir is there."""
        return self.member_id is not None and self._has_data()


def _log_line(line: str) -> str:
    """etcd's zap line as "msg: error" (its stack trace left out), else the line's start."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line.strip()[:240]
    if not isinstance(entry, dict):
        return line.strip()[:240]
    return ": ".join(str(entry[k]) for k in ("msg", "error") if entry.get(k))[:240]
