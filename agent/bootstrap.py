"""Bootstrap or join: how a node becomes a member of the cluster.

- A new cluster is started only when no existing member answers and this node is
  one of the group's initial members (the cloud says which); all initial members
  then start with the same `initial-cluster`, made of every initial server.
- Otherwise the node joins, one member at a time (the join lock): an old member
  entry of this node and a stale data dir are removed first, it is added as a
  learner where etcd has them, started with `existing`, and promoted once in sync.
- A restart on a data dir that still belongs to the cluster just starts etcd again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.cloud import Cloud, CloudError
from agent.decide import JOIN_LOCK
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

log = logging.getLogger("agent.bootstrap")

ClientFactory = Callable[[list[str]], EtcdClient]


class BootstrapError(RuntimeError):
    """The node could not become a member within `retries` attempts."""


class NotYet(RuntimeError):
    """This attempt cannot go on now (lock held, a member joining, etcd not up); retry."""


@dataclass(frozen=True)
class Joined:
    member: Member
    how: Literal["new", "joined", "restarted"]


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
    ) -> None:
        self.settings = settings
        self.cloud = cloud
        self.service = service
        self.client_factory = client_factory
        self.config_path = config_path
        self.sleep = sleep
        self.clock = clock
        self.stopping = stopping
        self.data_dir = Path(settings.etcd.data_dir)
        self._me: NodeIdentity | None = None

    # --- the public step ---------------------------------------------------------

    def run(self) -> Joined:
        """Try `retries` times, one `lockattemptperiod` apart; raise BootstrapError after."""
        attempts = self.settings.scaling.retries
        last_error = "no attempt made"
        for attempt in range(1, attempts + 1):
            if self.stopping():
                raise BootstrapError("stopped before joining")
            try:
                joined = self.attempt()
            except (NotYet, EtcdError, CloudError, OSError, TimeoutError) as error:
                last_error = str(error)
                log.warning("join attempt %d/%d failed: %s", attempt, attempts, error)
            else:
                if joined is not None:
                    log.info("member %s (%s)", joined.member.name, joined.how)
                    return joined
                last_error = "nobody to join yet and this node is not an initial member"
                log.info("attempt %d/%d: %s", attempt, attempts, last_error)
            self.sleep(self.settings.scaling.lockattemptperiod)
        raise BootstrapError(f"could not join after {attempts} attempts: {last_error}")

    def attempt(self) -> Joined | None:
        me = self.me()
        nodes = self.cloud.group_members()
        endpoints = self._endpoints(nodes, me)
        client = self.client_factory(endpoints) if endpoints else None
        members: list[Member] | None = None
        if client is not None:
            try:
                members = client.members(check_health=False)
            except EtcdError as error:
                log.info("no member answered at %s: %s", endpoints, error)
        if members is None:
            return self._start_new(me, nodes)
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

    # --- the three ways in ---------------------------------------------------------

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
        wipe_data_dir(self.data_dir)
        return self._start_existing(client, me, members)

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
        scaling = self.settings.scaling
        ttl = max(60.0, 6 * scaling.lockattemptperiod)
        lock = client.acquire_lock(JOIN_LOCK, me.name, ttl)
        if lock is None:
            raise NotYet(f"join lock held by {client.lock_holder(JOIN_LOCK)}; one join at a time")
        try:
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
        finally:
            try:
                client.release_lock(lock)
            except EtcdError as error:
                log.warning("could not release the join lock (it expires by itself): %s", error)

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
        deadline = self.clock() + max(30.0, 3 * self.settings.scaling.lockattemptperiod)
        while True:
            try:
                client.promote_member(member.id)
                return
            except LearnerNotReady:
                if self.clock() > deadline:
                    raise
                self.sleep(0.2)

    def _start(
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
        self.service.start(self.config_path)

    def _wait_member(self, me: NodeIdentity, client: EtcdClient, *, voter: bool = False) -> Member:
        """Wait until `client`'s cluster lists us as started (and a voter, if asked).

        A learner refuses most RPCs itself, so joins ask the cluster, not the new member.
        """
        deadline = self.clock() + max(20.0, 2 * self.settings.scaling.lockattemptperiod)
        last: Exception | None = None
        while self.clock() < deadline:
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
        raise TimeoutError(f"{client.endpoints} did not list {me.name} in time ({last})")

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
