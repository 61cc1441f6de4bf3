"""The agent's cycle: observe -> decide (pure) -> act, every `lockattemptperiod`.

Each cycle logs one sentence: what it saw, what it did, why. Patroni's ha.py is
the model: one cycle, each action a small method, each returns its sentence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from agent.backup import BACKUP_LOCK, BackupError, Backups, backup_taker, last_backup
from agent.bootstrap import Bootstrap, BootstrapError, ClientFactory
from agent.cloud import Cloud, CloudError
from agent.decide import (
    JOIN_LOCK,
    KILL_LOCK,
    MAKE_LOCK,
    Action,
    decide,
    heats_next,
    last_to_go,
    next_failmarker,
    reading_fresh_for,
    starting_over,
    track_unhealthy,
)
from agent.disaster import Recovery
from agent.etcd import EtcdClient, EtcdError, UnhealthyCluster
from agent.etcd_server import EtcdService, client_url, config_path_for, read_config
from agent.hooks import HookResult, hook_environment, run_hook, run_hook_unit
from agent.metrics import read_metric
from agent.restore import agent_command
from agent.settings import AgentSettings, MetricSettings, adopt, document_sha256
from agent.snapshot import (
    CloudNode,
    LockInfo,
    Member,
    MetricReading,
    NodeIdentity,
    PeerReading,
    Snapshot,
)
from agent.state import AgentState
from agent.swift import SwiftError, SwiftStore
from agent.upgrade import EXIT_UPGRADE, BundleError, file_sha256, install, unpack
from agent.upkeep import (
    DEFRAG_LOCK,
    DEFRAG_TIMEOUT,
    NOSPACE_BACK_CYCLES,
    DbStatus,
    db_statuses,
    live_data_fills,
    mib,
    nospace_order,
    plan,
    quota_of,
)

log = logging.getLogger("agent.loop")

DISASTER_SAY_CYCLES = 30
"""Cycles between two sentences of the restore commands while no quorum answers."""

UPGRADE_LOCK = "upgrade"
UPGRADE_TTL = 120.0
"""s the upgrade lock lives at least (12 periods if longer): the restart (systemd's 10 s)
and the new agent's return; its lease is revoked by the new agent once healthy."""
UPGRADING = "upgrading"
"""Key (under the cluster's prefix, no lease) naming the node whose new agent has not yet
shown it runs: the next node waits for it while that node is a member, so a bundle
whose agent cannot start stops the roll at one node instead of reaching every node as
leases expire."""

SETTINGS_POLL_CYCLES = 6
"""Every this many cycles (a minute at the default period) an agent reads the stack's
settings document; at its first cycle too."""

ETCD_HEALTH_INTERVAL = 5.0
"""s: etcd's HealthInterval, for which its strict reconfig check counts a member's
connection as too fresh to rely on (3.4, 3.5)."""

MetricReader = Callable[[MetricSettings], MetricReading]


UNAVAILABLE_RETRY = 0.3
"""s before an "unavailable" answer (no leader yet, a leader changed) is asked again."""

READY_LEADER_WAITS = 3
"""Cycles a new member's agent holds its ready signal while the leader is on a server
Heat deletes once it is given (the leader's agent moves leadership off meanwhile)."""


def etcd_client_factory(settings: AgentSettings) -> ClientFactory:
    prefix = f"/autoscale-etcd/{settings.cluster_name}"

    def make(endpoints: list[str]) -> EtcdClient:
        timeout = min(2.0, max(0.5, settings.scaling.lockattemptperiod / 4))
        return EtcdClient(endpoints, timeout=timeout, tls=settings.etcd.tls, prefix=prefix)

    return make


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        cloud: Cloud,
        service: EtcdService,
        client_factory: ClientFactory | None = None,
        metric_reader: MetricReader = read_metric,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        settings_path: Path | None = None,
        bundle_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.settings_path = settings_path
        """The node's settings file: rewritten when the stack's settings change."""
        self.bundle_path = bundle_path
        """The bundle this agent runs from (agent/upgrade.py); None: from its sources, it
        takes no new bundle."""
        self.bundle_sha256 = (
            file_sha256(bundle_path) if bundle_path is not None and bundle_path.exists() else None
        )
        self.wanted_bundle: str | None = None
        """The bundle the stack's settings document names."""
        self.refused_bundle: str | None = None
        """A bundle found not to be the one the settings name: not fetched again until the
        next look at the stack's settings (once every SETTINGS_POLL_CYCLES cycles)."""
        self.exit_code: int | None = None
        self._default_clients = client_factory is None
        self._cycles = 0
        self.cloud = cloud
        self.service = service
        self.client_factory = client_factory or etcd_client_factory(settings)
        self.read_metric = metric_reader
        self.clock = clock
        self.sleep = sleep
        self.state_dir = Path(settings.state_dir)
        self.state = AgentState.load(self.state_dir)
        self.stopped = threading.Event()
        self._known_endpoints: list[str] = []
        self._nospace_cleared: int | None = None
        """The cycle this agent last cleared a NOSPACE (agent/upkeep.py NOSPACE_BACK_CYCLES)."""
        self._no_quorum_since: float | None = None
        self._disaster_said: int | None = None
        self._backup_thread: threading.Thread | None = None
        self._backup_failed: float | None = None
        """When this agent's last snapshot failed (the next waits 60 s, doubling with each
        failure in a row up to the period)."""
        self._backup_failures = 0
        self._ready_said = False
        """Whether this agent has signalled its member stack's wait condition."""
        self._ready_waits = 0

    # --- identity and config ---------------------------------------------------------

    @cached_property
    def me(self) -> NodeIdentity:
        """This node, as the cloud knows it (asked once it answers)."""
        return self.cloud.whoami()

    @property
    def config_path(self) -> Path:
        return config_path_for(self.settings.etcd, self.state_dir)

    def own_url(self) -> str:
        return client_url(self.me.ip, self.settings.etcd)

    # --- bootstrap ---------------------------------------------------------------------

    def bootstrap(self) -> Member:
        if self.state.phase == "left":
            raise BootstrapError("this node has left the cluster; it does not rejoin")
        member_id = self.state.member_id
        self._save(phase="joining")
        recovery = (
            Recovery(self.settings, self.cloud, settings_path=self.settings_path)
            if self.settings.backup.kind == "swift"
            else None
        )
        joined = Bootstrap(
            self.settings,
            cloud=self.cloud,
            service=self.service,
            client_factory=self.client_factory,
            config_path=self.config_path,
            sleep=self.sleep,
            stopping=self.stopped.is_set,
            member_id=member_id,
            recovery=recovery,
        ).run()
        if recovery is not None:
            recovery.done(self.me)
        if joined.how not in ("restarted", "resumed"):
            self.state.configured = False
        self._save(phase="member", member_id=joined.member.id)
        log.info("%s is member %x of the cluster (%s)", self.me.name, joined.member.id, joined.how)
        return joined.member

    # --- observe -----------------------------------------------------------------------

    def observe(self, *, count: bool = True) -> Snapshot:
        """One snapshot; the failmarker counts whether this node's own etcd answered.

        `count=False` (the re-check after winning a lock) looks without counting again.
        """
        members: list[Member] | None = None
        own_ok = False
        holder: str | None = None
        joiner: str | None = None
        defragmenting: str | None = None
        client: EtcdClient | None = None
        for endpoints in ([self.own_url()], None):
            if endpoints is None:  # this node's etcd did not answer: ask the others
                endpoints = self._other_endpoints() or self._group_endpoints()
            if not endpoints:
                continue
            client = self.client_factory(endpoints)
            for again in (False, True):
                try:
                    members = client.members(check_health=True)
                    holder = client.lock_holder(KILL_LOCK)
                    joiner = client.lock_holder(JOIN_LOCK)
                    defragmenting = client.lock_holder(DEFRAG_LOCK)
                    break
                except EtcdError as error:
                    log.debug("etcd at %s: %s", endpoints, error)
                    members = None
                    # etcd answered "unavailable" (a leader changed: a planned transfer takes
                    # a moment): asked once more before it counts against this node
                    if again or not error.unavailable:
                        break
                    self.sleep(UNAVAILABLE_RETRY)
            if members is None:
                continue
            own_ok = endpoints == [self.own_url()]
            break
        now = self.clock()  # after the health checks: "unhealthy since" is when it was seen
        if members is not None:
            self._known_endpoints = [u for m in members for u in m.client_urls]
        failmarker = next_failmarker(self.state.failmarker, own_ok)
        if not count or (not own_ok and defragmenting == self.me.name):
            failmarker = self.state.failmarker  # a member being defragmented answers nothing
        metric = self.read_metric(self.settings.metric)
        readings: dict[str, PeerReading] | None = None
        if client is not None and members is not None:
            voters = sum(1 for m in members if not m.is_learner)
            readings = self._share_readings(client, metric, now, voters)
        snapshot = Snapshot(
            now=now,
            me=self.me,
            members=tuple(members) if members is not None else None,
            metric=metric,
            readings=readings,
            kill_lock_holder=holder,
            join_lock_holder=joiner,
            defragmenting=defragmenting,
            failmarker=failmarker,
            own_etcd_ok=own_ok,
            last_scale_up=self.state.last_scale_up,
            configured=self.state.configured,
        )
        if self._wants_cloud_view(snapshot):
            try:
                snapshot = replace(snapshot, cloud_nodes=tuple(self.cloud.group_members()))
            except CloudError as error:
                log.warning("cloud group unreadable: %s", error)
            if client is not None and snapshot.cloud_nodes is not None:
                snapshot = replace(snapshot, leaving=self._leaving(client, now))
        since = track_unhealthy(
            {int(k, 16): v for k, v in self.state.unhealthy_since.items()},
            snapshot.members,
            now,
            starting_over(snapshot),
        )
        if count:
            self.state.failmarker = failmarker
            self.state.unhealthy_since = {f"{k:x}": v for k, v in since.items()}
        return replace(snapshot, unhealthy_since=since)

    def _share_readings(
        self, client: EtcdClient, metric: MetricReading, now: float, members: int
    ) -> dict[str, PeerReading] | None:
        """Publish this node's reading (a lease of three periods), and read every member's
        when a scale-down may be decided by them (more voters than capacity)."""
        if metric.ok and metric.value is not None:
            mine = PeerReading(self.me.name, metric.value, now)
            try:
                client.publish_reading(mine, reading_fresh_for(self.settings))
            except EtcdError as error:
                log.debug("could not publish the metric reading: %s", error)
        if self.settings.metric.scope != "cluster" or members <= self.settings.scaling.capacity:
            return None
        try:
            return client.readings()
        except EtcdError as error:
            log.debug("members' readings unreadable: %s", error)
            return None

    def _leaving(self, client: EtcdClient, now: float) -> frozenset[str]:
        """Nodes whose fenced removal was recorded within `join_timeout`: out of etcd and
        waiting for Heat to delete their server (not servers that failed to join)."""
        try:
            records = client.removal_records()
        except EtcdError as error:
            log.debug("removal records unreadable: %s", error)
            return frozenset()
        bound = self.settings.scaling.join_timeout
        return frozenset(
            str(r.get("member"))
            for r in records
            if r.get("member") and now - float(r.get("time") or 0) <= bound
        )

    def _wants_cloud_view(self, snapshot: Snapshot) -> bool:
        """The leader's agent watches the group (FAILED servers, joins to come); the others
        only need it to scale down (Heat's order of removal)."""
        me = snapshot.my_member
        return bool(me and me.is_leader) or len(snapshot.voters) > self.settings.scaling.capacity

    def _other_endpoints(self) -> list[str]:
        own = self.own_url()
        return [u for u in self._known_endpoints if u != own]

    def _group_endpoints(self) -> list[str]:
        """The other group servers' client URLs, from the cloud: where to look for the
        cluster when this node's etcd hangs before this agent ever listed the members
        (e.g. right after a boot)."""
        try:
            nodes = self.cloud.group_members()
        except CloudError as error:
            log.debug("group unreadable while looking for the other members: %s", error)
            return []
        return [
            client_url(n.ip, self.settings.etcd)
            for n in nodes
            if n.ip and n.ip != self.me.ip and n.status in ("ACTIVE", "BUILD")
        ]

    # --- one cycle -----------------------------------------------------------------------

    def cycle(self) -> str:
        self._cycles += 1
        if (self._cycles - 1) % SETTINGS_POLL_CYCLES == 0:
            self.follow_stack()
        snapshot = self.observe()
        action = decide(snapshot, self.settings)
        self._watch_quorum(snapshot)
        try:
            result = self.act(action, snapshot)
            if self.state.upgrade_lease is not None:
                result = " | ".join(x for x in (result, self._upgraded(snapshot)) if x)
            elif action.kind == "wait":
                # the leader's upkeep first: a NOSPACE refuses the upgrade's lock anyway
                done = (
                    (self._upkeep(snapshot) or self._off_heats_next(snapshot))
                    if self._leads(snapshot)
                    else ""
                )
                # said once per agent life; looked at again once a minute, for a member
                # whose wait condition waits anew (a `pulumi up` that replaced only it)
                if not done and (not self._ready_said or self._cycles % SETTINGS_POLL_CYCLES == 1):
                    done = self._say_ready(snapshot)
                backing_up = self._backup_thread is not None and self._backup_thread.is_alive()
                if not done and not backing_up and self._upgrade_due(snapshot):
                    done = self._upgrade(snapshot)
                if not done:
                    done = self._backup(snapshot)
                result = " | ".join(x for x in (result, done) if x)
        except (EtcdError, CloudError) as error:
            result = f"failed: {error}"
        sentence = f"saw {describe(snapshot, self.settings)} | did {action.kind}: {action.reason}"
        if result:
            sentence += f" | {result}"
        self.state.last_cycle = sentence
        self._save()
        log.info("%s", sentence)
        return sentence

    def follow_stack(self) -> str | None:
        """Take the stack's settings document when it changed (a `pulumi up`): the keys a
        running agent may change apply from this cycle, those etcd reads at start are
        kept for its next start, the fixed ones are refused; the node's file is rewritten.
        Nothing changes when the cloud does not answer or the document is not whole."""
        try:
            document = self.cloud.stack_document()
        except CloudError as error:
            log.warning("the stack's settings are unreadable: %s", error)
            return None
        if not document:
            return None
        sha = str(document.get("sha256"))
        if document_sha256(document) != sha:
            log.warning("the stack's settings document does not match its sha256: ignored")
            return None
        if isinstance(document.get("bundle_sha256"), str):
            self.wanted_bundle = document["bundle_sha256"]
        self.refused_bundle = None
        if sha == self.state.settings_sha256:
            return None
        mine = (document.get("roles") or {}).get(self.settings.role)
        if not isinstance(mine, dict):
            log.warning("the stack's settings document has no %s settings", self.settings.role)
            return None
        try:
            settings, notes = adopt(self.settings, mine)
        except ValueError as error:  # pydantic's ValidationError is a ValueError
            log.warning("the stack's settings %s are refused: %s", sha[:12], error)
            self._save(settings_sha256=sha)
            return None
        if self.settings_path is not None and settings != self.settings:
            try:
                settings.write(self.settings_path)
            except OSError as error:  # taken again at the next look, the sha not saved
                log.warning("could not write the stack's settings %s: %s", sha[:12], error)
                return None
        self.settings = settings
        if self._default_clients:
            self.client_factory = etcd_client_factory(settings)
        self._save(settings_sha256=sha)
        sentence = f"settings {sha[:12]} from the stack: " + (
            "; ".join(notes) or "nothing changes for this node"
        )
        log.info("%s", sentence)
        return sentence

    # --- a new bundle, one node at a time --------------------------------------------------

    def _upgrade_due(self, snapshot: Snapshot) -> bool:
        """This node runs a bundle other than the stack's, and the cluster is whole: every
        voter healthy, a leader, nobody leaving or holding the kill lock."""
        if self.bundle_path is None or self.wanted_bundle is None:
            return False
        if self.wanted_bundle in (self.bundle_sha256, self.refused_bundle):
            return False
        if self.state.phase != "member":
            return False
        me = snapshot.my_member
        return me is not None and me.healthy is True and whole(snapshot)

    def _upgrade(self, snapshot: Snapshot) -> str:
        """Take the upgrade lock, install the stack's bundle over this one, and stop with
        EXIT_UPGRADE: systemd starts the new agent (etcd keeps running)."""
        wanted, path = self.wanted_bundle, self.bundle_path
        assert wanted is not None and path is not None
        client = self._client(snapshot)
        marker = client.key(UPGRADING)
        upgrading = client.get(marker)
        members = {m.name for m in snapshot.members or ()}
        if upgrading and upgrading != self.me.name and upgrading in members:
            return f"bundle {wanted[:12]} waits: the new agent of {upgrading} has not run yet"
        ttl = max(UPGRADE_TTL, 12 * self.settings.scaling.lockattemptperiod)
        lock = client.acquire_lock(UPGRADE_LOCK, self.me.name, ttl=ttl)
        if lock is None:
            holder = client.lock_holder(UPGRADE_LOCK)
            return f"bundle {wanted[:12]} waits: {holder or 'another node'} is taking it"
        client.put(marker, self.me.name)
        try:
            install(unpack(self.cloud.bundle_metadata(), wanted), path)
        except (CloudError, BundleError, OSError) as error:
            client.delete(marker)
            client.release_lock(lock)
            if isinstance(error, BundleError):  # not the named bundle: not fetched again
                self.refused_bundle = wanted
            return f"bundle {wanted[:12]} not installed: {error}"
        self._save(upgrade_lease=lock.lease_id, upgraded_from=self.bundle_sha256)
        self.exit_code = EXIT_UPGRADE
        self.stopped.set()
        was = (self.bundle_sha256 or "?")[:12]
        return f"installed bundle {wanted[:12]} over {was}: the agent restarts on it"

    def _upgraded(self, snapshot: Snapshot) -> str:
        """The agent a new bundle started: once this node is a healthy member again, it
        frees the upgrade lock and its mark for the next node."""
        me = snapshot.my_member
        if me is None or me.healthy is not True or self.state.upgrade_lease is None:
            return ""
        client = self._client(snapshot)
        marker = client.key(UPGRADING)
        if client.get(marker) == self.me.name:
            client.delete(marker)
        client.revoke_lease(self.state.upgrade_lease)
        was = (self.state.upgraded_from or "?")[:12]
        self._save(upgrade_lease=None)
        return f"running bundle {(self.bundle_sha256 or '?')[:12]} (was {was}): upgrade lock freed"

    def act(self, action: Action, snapshot: Snapshot) -> str:
        handler = getattr(self, f"_act_{action.kind}")
        return handler(action, snapshot)

    def _act_wait(self, action: Action, snapshot: Snapshot) -> str:
        return ""

    def _act_configure(self, action: Action, snapshot: Snapshot) -> str:
        result = self._run_hook(self.settings.hooks.configscript, self._hook_env(snapshot))
        if result.ok:
            self.state.configured = True
        return result.detail + ("" if result.ok else "; retried next cycle")

    def _act_scale_up(self, action: Action, snapshot: Snapshot) -> str:
        client = self._client(snapshot)
        ttl = self.settings.scaling.scaleupcooldown
        lock = client.acquire_lock(MAKE_LOCK, self.me.name, ttl)
        if lock is None:
            return f"make lock held by {client.lock_holder(MAKE_LOCK)}"
        self.cloud.scale_up()
        self.state.last_scale_up = snapshot.now
        return f"scale-up signalled; next one not before {ttl:.0f}s"

    def _act_remove_dead(self, action: Action, snapshot: Snapshot) -> str:
        dead = action.member
        assert dead is not None
        client = self._client(snapshot)
        client.remove_member(dead.id)
        self.state.unhealthy_since.pop(f"{dead.id:x}", None)
        try:
            nodes = self.cloud.group_members()
        except CloudError as error:
            return (
                f"removed {dead.name or hex(dead.id)} from etcd; group unreadable ({error}):"
                " its server is replaced once seen not joined"
            )
        server = next(
            (n for n in nodes if (dead.name and n.name == dead.name) or n.ip == dead.ip), None
        )
        if server is None:
            return f"removed {dead.name or hex(dead.id)} from etcd; its server is gone already"
        return f"removed {dead.name or hex(dead.id)} from etcd; " + self._replace(
            server, f"etcd member {dead.name or hex(dead.id)} dead", snapshot
        )

    def _act_replace_server(self, action: Action, snapshot: Snapshot) -> str:
        assert action.server is not None
        return self._replace(action.server, "never joined the etcd cluster", snapshot)

    def _replace(self, server: CloudNode, why: str, snapshot: Snapshot) -> str:
        """Mark a server unhealthy, then signal scale-up: Heat replaces it.

        Heat counts only healthy members, so after the mark a +1 resize keeps the size
        and swaps the FAILED server for a new one (a -1 would delete a healthy one too).
        A mark that fails is tried again: the server stays a non-member of the group, which
        `_stray_servers` replaces on a later cycle; a scale-up Heat ignored is asked again
        by `_replace_failed`.
        """
        try:
            if server.status != "FAILED":
                self.cloud.mark_unhealthy(server.id, why)
            self.cloud.scale_up()
            self.state.last_scale_up = snapshot.now
            return f"server {server.name} marked unhealthy, scale-up signalled to replace it"
        except CloudError as error:
            return f"cloud call failed ({error}); tried again on a later cycle"

    def _act_leave(self, action: Action, snapshot: Snapshot) -> str:
        """Scale-down: this is the oldest server; out of etcd, then Heat deletes it (-1)."""
        return self._leave(action, via="scale_down")

    def _act_replace_self(self, action: Action, snapshot: Snapshot) -> str:
        """A failing node: out of etcd, marked unhealthy, and Heat replaces it (+1)."""
        return self._leave(action, via="replace")

    def _leave(self, action: Action, *, via: str) -> str:
        client = self._client(self.observe(count=False))
        ttl = self.settings.scaling.scaledownperiod
        lock = client.acquire_lock(KILL_LOCK, self.me.name, ttl)
        locked_at = self.clock()
        if lock is None:
            return f"lost the kill lock to {client.lock_holder(KILL_LOCK)}"
        # re-check with the lock won: membership may have changed meanwhile
        fresh = replace(self.observe(count=False), kill_lock_holder=None)
        again = decide(fresh, self.settings)
        me = fresh.my_member
        if again.kind != action.kind or me is None:
            client.release_lock(lock)
            return f"re-check after winning the lock: {again.kind} ({again.reason}); lock released"
        handed = self._hand_over_leadership(fresh)
        record = {
            "member": me.name,
            "reason": action.reason,
            "time": fresh.now,
            "lock_time": locked_at,
            "lock_revision": lock.revision,
            "via": via,
        }
        try:
            fenced = self._fenced_remove(fresh, lock, me.id, record, patient=bool(handed))
        except EtcdError as error:
            client.release_lock(lock)  # nothing was removed: let the next try come soon
            prefix = f"{handed}; " if handed else ""
            return f"{prefix}etcd refused the removal ({error}); lock released, tried again later"
        if not fenced:
            return "the kill lock expired before the removal (fence failed): nothing removed"
        self._save(phase="leaving", leave_via=via)
        cleanup = self._run_hook(
            self.settings.hooks.cleanupscript, self._hook_env(fresh, reason=action.reason)
        )
        self.service.stop()
        cloud = self._ask_group_to_delete_me()
        return (
            f"{handed + '; ' if handed else ''}removed itself from etcd (fenced by lock"
            f" revision {lock.revision}); {cleanup.detail}; {cloud}"
        )

    def _fenced_remove(
        self,
        snapshot: Snapshot,
        lock: LockInfo,
        member_id: int,
        record: dict[str, object],
        *,
        patient: bool,
    ) -> bool:
        """The fenced removal. Right after a leadership transfer etcd's strict reconfig check
        refuses a removal for up to its health interval (5 s: the members' connections are
        counted as fresh), so after a handover an "unhealthy cluster" refusal is retried
        while the lock is held, rather than giving the lock (and the handover) up."""
        client = self._client(snapshot)
        deadline = time.monotonic() + (ETCD_HEALTH_INTERVAL + 2.0 if patient else 0.0)
        while True:
            try:
                return client.fenced_remove(lock, member_id, record)
            except UnhealthyCluster:
                if time.monotonic() >= deadline or not client.lock_held(lock):
                    raise
                time.sleep(0.25)

    def _hand_over_leadership(self, snapshot: Snapshot) -> str:
        """A planned removal of the leader moves leadership first (etcd's MoveLeader, asked of
        the leader itself) to the most up-to-date healthy voter, and checks that it took: the
        removal then costs the clients no election. If it did not, say why; the removal goes
        on and the cluster elects a leader, as it would have without the move."""
        me = snapshot.my_member
        if me is None or not me.is_leader:
            return ""
        own = self.own_url()
        client = self.client_factory([own])
        indexes: dict[int, int] = {}
        for member in snapshot.voters:
            if member.id == me.id or not member.healthy or not member.client_urls:
                continue
            try:
                status = client.status(member.client_urls[0])
            except EtcdError:
                continue
            indexes[member.id] = int(status.get("raftAppliedIndex") or status.get("raftIndex") or 0)
        if not indexes:
            return "leadership not moved: no other healthy voter answered; the removal elects one"
        target = max(
            (m for m in snapshot.voters if m.id in indexes), key=lambda m: (indexes[m.id], m.name)
        )
        return self._move_leadership(
            target, f" (raft index {indexes[target.id]}) before the removal", "the removal"
        )

    def _move_leadership(self, target: Member, moved: str, otherwise: str) -> str:
        """etcd's MoveLeader, asked of this node's own etcd (the leader), then watched until
        `target` says it leads (two election timeouts and a second)."""
        own = self.own_url()
        client = self.client_factory([own])
        try:
            client.move_leader(own, target.id)
        except EtcdError as error:
            return f"leadership not moved to {target.name} ({error}); {otherwise} elects a leader"
        deadline = time.monotonic() + 2 * self.settings.etcd.election_ms / 1000 + 1.0
        while time.monotonic() < deadline:
            try:
                if client.status(target.client_urls[0]).get("leader") in (
                    str(target.id),
                    target.id,
                ):
                    return f"leadership moved to {target.name}{moved}"
            except EtcdError:
                pass
            time.sleep(0.05)
        return f"leadership move to {target.name} not seen in time; {otherwise} elects a leader"

    def _lasting(self, snapshot: Snapshot, statuses: list[DbStatus]) -> DbStatus | None:
        """The follower whose server Heat deletes last (None: the group unread): where the
        upkeep hands leadership, so that `_off_heats_next` has no reason to move it on (and
        back to the member waiting for its defragmentation)."""
        name = last_to_go(snapshot, (s.name for s in statuses if not s.is_leader))
        return next((s for s in statuses if s.name == name), None)

    def _off_heats_next(self, snapshot: Snapshot) -> str:
        """The leader's agent, while the cluster is whole: when its own server is the one
        Heat deletes next (`heats_next`: a rolling update replaces it next, a scale-down
        removes it), leadership moves to the voter on the server Heat deletes last.

        A rolling update deletes the old server as soon as its replacement is ACTIVE, with
        a hard power-off no agent hears of first; were the leader there, every client would
        wait out an election. Moved between batches (during `pause_time`), it is not."""
        me = snapshot.my_member
        upcoming = heats_next(snapshot)
        # a member stack whose server is being replaced lists the new server only: the old
        # one, this, is deleted once the new one's agent signals (`_say_ready`)
        replaced = bool(snapshot.cloud_nodes) and not any(
            n.id == self.me.id for n in snapshot.cloud_nodes or ()
        )
        if me is None or not me.is_leader:
            return ""
        if not replaced and (upcoming is None or upcoming.name != self.me.name):
            return ""
        if not whole(snapshot) or snapshot.defragmenting or snapshot.join_lock_holder:
            return ""
        if len(snapshot.voters) < 3:
            # two voters lose quorum with either server, and the one follower may be the
            # member the upkeep handed leadership to, waiting for its defragmentation
            return ""
        voters = {
            m.name: m for m in snapshot.voters if m.id != me.id and m.healthy and m.client_urls
        }
        name = last_to_go(snapshot, voters)
        if name is None:
            return ""
        target = voters[name]
        why = (
            "this server's member has a new server: Heat deletes this one once that votes"
            if replaced
            else "this server is the one Heat deletes next"
        )
        return self._move_leadership(
            target, f" (on the server Heat deletes last): {why}", "Heat's delete"
        )

    def _say_ready(self, snapshot: Snapshot) -> str:
        """Signal this server's member stack (infra.heat.MemberStack): its wait condition
        holds the member unfinished until its agent says the server is a healthy voter in
        a whole cluster. Heat then counts the member made (a batch of a rolling update
        ends, the old server of a replaced member is deleted). Once per agent life: a
        repeat after a restart carries the same id (the server's) and counts once.

        Not while the leader is on a server the group no longer lists (the old server of
        a member being replaced, this signal's to delete): its agent moves leadership off
        first (`_off_heats_next`); after READY_LEADER_WAITS cycles the signal goes anyway
        (an election then, not a roll stopped by a timeout).

        Once said, it is said again only when the member's wait condition waits anew: a
        `pulumi up` that replaced the condition and not the server (a new `join_timeout`,
        its `timeout`: Heat empties the handle when the old condition goes)."""
        me = snapshot.my_member
        if me is None or me.is_learner or not me.healthy:
            return ""
        # whole for this purpose: every voter healthy, a leader, no learner, no removal
        # under way (the kill lock); a node that left earlier (`snapshot.leaving`, recorded
        # for join_timeout) does not count, its server goes by Heat's doing
        if not whole(replace(snapshot, leaving=frozenset())):
            return ""
        try:
            nodes = (
                snapshot.cloud_nodes
                if snapshot.cloud_nodes is not None
                else tuple(self.cloud.group_members())
            )
        except CloudError as error:
            log.info("member ready not said yet: the group is unreadable (%s)", error)
            return ""
        mine = next((n for n in nodes if n.id == self.me.id), None)
        if self._ready_said and (mine is None or not mine.waiting):
            return ""
        leader = snapshot.leader
        seen = replace(snapshot, cloud_nodes=nodes)
        if leader is not None and leader.id != me.id and seen.server_of(leader) is None:
            self._ready_waits += 1
            if self._ready_waits <= READY_LEADER_WAITS:
                return f"member ready not said yet: the leader {leader.name} is on a server going"
        try:
            said = self.cloud.member_ready(self.me.id, f"{self.me.name} votes in a whole cluster")
        except CloudError as error:
            log.info("member ready not said yet: %s", error)
            return ""
        self._ready_said = True
        self._ready_waits = 0
        return "member ready: signalled" if said else ""

    def _ask_group_to_delete_me(self) -> str:
        """One try of the cloud side of leaving; repeated until the server is gone."""
        try:
            if self.state.leave_via == "replace":
                self.cloud.mark_unhealthy(self.me.id, "failing node replaced")
                self.cloud.scale_up()
                return "own server marked unhealthy, scale-up signalled (Heat replaces it)"
            self.cloud.scale_down()
            return "scale-down signalled (Heat deletes the oldest server: this one)"
        except CloudError as error:
            return f"cloud call failed ({error}); retried until the server is gone"

    def await_deletion(self) -> int:
        """Out of etcd: keep asking the group until Heat has deleted this server.

        A signal can be ignored (cooldown, an update in progress), so it is repeated
        every few periods; the process ends with the server (or when told to stop).
        """
        period = self.settings.scaling.lockattemptperiod
        while not self.stopped.wait(3 * period):
            try:
                mine = [n for n in self.cloud.group_members() if n.id == self.me.id]
            except CloudError as error:
                log.warning("leaving: group unreadable: %s", error)
                continue
            if not mine:
                self._save(phase="left")
                log.info("leaving: this server is no longer in the group")
                return 0
            log.info("leaving: still in the group; %s", self._ask_group_to_delete_me())
        return 0

    def _act_stop(self, action: Action, snapshot: Snapshot) -> str:
        self.service.stop()
        self._save(phase="left")
        self.stopped.set()
        return "etcd stopped; the agent that removed it asked the group to replace it"

    # --- helpers -------------------------------------------------------------------------

    # --- backups to Swift (agent/backup.py) ----------------------------------------------

    def _watch_quorum(self, snapshot: Snapshot) -> None:
        """No etcd member answered for the dead-member window, with backups on: say, at
        ERROR every DISASTER_SAY_CYCLES cycles, what the cloud shows of the group and the
        exact commands that restore the newest snapshot (agent/restore.py). Never done by
        itself: a member that may hold newer data could still come back."""
        if snapshot.members is not None or self.state.phase != "member":
            self._no_quorum_since = None
            return
        now = self.clock()
        if self._no_quorum_since is None:
            self._no_quorum_since = now
        scaling = self.settings.scaling
        lost_for = now - self._no_quorum_since
        if (
            self.settings.backup.kind != "swift"
            or lost_for < scaling.dead_member_periods * scaling.lockattemptperiod
            or (
                self._disaster_said is not None
                and self._cycles - self._disaster_said < DISASTER_SAY_CYCLES
            )
        ):
            return
        self._disaster_said = self._cycles
        try:
            servers = ", ".join(
                f"{n.name} {n.status}" for n in self.cloud.group_members() if n.id != self.me.id
            )
        except CloudError as error:
            servers = f"unknown ({error})"
        command = agent_command(self.settings_path)
        log.error(
            "no etcd member has answered with a quorum for %.0f s; the other"
            " servers of the group: %s. If they are gone for good (deleted, ERROR, their"
            " disks lost) and will not come back with newer data, make the cluster again"
            " from the newest snapshot in Swift: on every node `systemctl stop"
            " autoscale-agent`; on this one `%s restore --latest`; on each"
            " other node that still has its disk `%s restore --join`; then"
            " `systemctl start autoscale-agent` everywhere (README, Backups and recovery)",
            lost_for,
            servers or "none",
            command,
            command,
        )

    def _backup(self, snapshot: Snapshot) -> str:
        """The first healthy follower's agent starts a snapshot to Swift in the background
        when the last good one is `backup.period` old."""
        settings = self.settings.backup
        me = snapshot.my_member
        if settings.kind != "swift" or self.state.phase != "member" or me is None:
            return ""
        if self._backup_thread is not None and self._backup_thread.is_alive():
            return ""
        taker = backup_taker(snapshot.voters)
        if taker is None or taker.id != me.id or snapshot.leader is None:
            return ""
        now = self.clock()
        if self._backup_failed is not None and now - self._backup_failed < min(
            settings.period, 60.0 * 2 ** min(self._backup_failures - 1, 10)
        ):
            return ""  # 60 s after a failure, doubling up to the period
        client = self._client(snapshot)
        last = last_backup(client)
        # a record from a clock ahead of this one (now - time < 0) is not a fresh snapshot
        if last is not None and 0 <= now - last.time < settings.period:
            return ""
        lock = client.acquire_lock(BACKUP_LOCK, self.me.name, settings.timeout + 60)
        if lock is None:
            return f"backup waits: {client.lock_holder(BACKUP_LOCK)} takes one"
        self._backup_thread = threading.Thread(
            target=self._take_backup,
            args=(me, lock, now, [m.name for m in snapshot.members or ()]),
            name="backup",
            daemon=True,
        )
        self._backup_thread.start()
        since = f"the last is {now - last.time:.0f} s old" if last else "none taken yet"
        return f"backup: a snapshot of {me.name} to Swift ({since})"

    def _take_backup(self, me: Member, lock: LockInfo, now: float, names: list[str]) -> None:
        client = self.client_factory([self.own_url()])
        try:
            try:  # the members' servers, named in the snapshot (agent/disaster.py)
                known = {n.name: n.id for n in self.cloud.group_members()}
                # a member the group does not list: the list would be partial, and a
                # partial list is trusted as whole: none then (the restore stays manual)
                servers = [known[n] for n in names] if all(n in known for n in names) else []
            except CloudError as error:
                servers = []
                log.warning(
                    "backup: the members' servers unknown (%s): a lost cluster restores"
                    " from this snapshot only by hand",
                    error,
                )
            backups = Backups(
                self.settings.backup,
                SwiftStore.for_cloud(self.cloud, self.settings),
                self.state_dir / "backup",
                etcd_binary=self.settings.etcd.binary,
            )
            record = backups.take(client, me, now, servers)
            self._backup_failed = None
            self._backup_failures = 0
            log.info(
                "backup: %s, revision %d, %s, in %.1f s",
                record.object,
                record.revision,
                mib(record.size),
                self.clock() - now,
            )
        except (BackupError, SwiftError, EtcdError, CloudError) as error:
            self._backup_failed = self.clock()
            self._backup_failures += 1
            log.error("backup failed: %s", error)
        except Exception as error:  # a full disk, an answer not as documented: not the loop's
            self._backup_failed = self.clock()
            self._backup_failures += 1
            log.error("backup failed: %s: %s", type(error).__name__, error, exc_info=True)
        finally:
            try:
                client.release_lock(lock)
            except EtcdError:
                pass  # its lease ends it
            client.close()

    # --- upkeep: NOSPACE and free pages (agent/upkeep.py) -------------------------------

    def _leads(self, snapshot: Snapshot) -> bool:
        me = snapshot.my_member
        return bool(me and me.is_leader and me.healthy and self.state.phase == "member")

    def _upkeep(self, snapshot: Snapshot) -> str:
        """The leader's agent: a NOSPACE alarm cleared; else one member's free pages given
        back while the cluster is whole."""
        client = self._client(snapshot)
        alarms = client.alarms()
        if any(alarm == "NOSPACE" for _, alarm in alarms):
            return self._clear_nospace(client, snapshot)
        if alarms:  # CORRUPT: etcd's own check found a member's data differs; not ours to clear
            return "alarm(s) raised: " + ", ".join(f"{a} on {m:x}" for m, a in alarms)
        if self._cycles % SETTINGS_POLL_CYCLES or not whole(snapshot):
            return ""  # free pages are looked at once a minute, not each cycle
        if snapshot.join_lock_holder is not None:
            return ""
        if client.lock_holder(BACKUP_LOCK) is not None:
            # a defragmentation waits for the snapshot's read to end, the member frozen
            return ""
        statuses = db_statuses(client, snapshot.voters)
        if len(statuses) < len(snapshot.voters):
            return ""
        step = plan(statuses, self.settings.etcd)
        if step.kind == "hand-over":
            step = replace(step, target=self._lasting(snapshot, statuses) or step.target)
            assert step.member is not None and step.target is not None
            client.move_leader(step.member.url, step.target.member_id)
            return (
                f"upkeep: {step.reason}: leadership handed to {step.target.name},"
                " whose agent defragments it as a follower"
            )
        if step.kind == "defragment":
            assert step.member is not None
            lock = client.acquire_lock(DEFRAG_LOCK, step.member.name, DEFRAG_TIMEOUT + 60)
            if lock is None:
                return f"upkeep waits: {client.lock_holder(DEFRAG_LOCK)} is being defragmented"
            try:
                client.defragment(step.member.url, DEFRAG_TIMEOUT)
            finally:
                client.release_lock(lock)
            after = db_statuses(
                client, [m for m in snapshot.voters if m.id == step.member.member_id]
            )
            size = mib(after[0].size) if after else "unknown"
            return f"upkeep: {step.reason}: defragmented, now {size}"
        return ""

    def _clear_nospace(self, client: EtcdClient, snapshot: Snapshot) -> str:
        """etcd's own recovery (op-guide "Space quota"): compact to the current revision,
        defragment every member (followers first), disarm; unless what is left after the
        compaction still fills the quota (no defragmentation gives room then)."""
        if self._nospace_cleared is not None:
            since = self._cycles - self._nospace_cleared
            if since < NOSPACE_BACK_CYCLES:
                sentence = (
                    f"NOSPACE kept: back {since} cycle(s) after it was cleared; the writes refill"
                    " the quota as fast as a clearing frees it: raise quota_backend_bytes or"
                    f" delete keys (cleared again after {NOSPACE_BACK_CYCLES} cycles)"
                )
                log.error("%s", sentence)
                return sentence
        voters = [m for m in snapshot.voters if m.healthy]
        revision = int(client.status(self.own_url()).get("header", {}).get("revision", 0))
        compacted = client.compact(revision) if revision else False
        done = f"compacted to revision {revision}" if compacted else "history compacted already"
        limit = self._running_quota()
        left = db_statuses(client, voters)
        if not left:
            return f"NOSPACE: {done}; no db size answered"
        # dbSizeInUse counts the pages a compaction frees only once the backend commits
        # them (a moment later, on each member): right after this cycle's compaction the
        # live data is judged from the defragmented files instead
        if not compacted and live_data_fills(left, limit):
            return self._nospace_kept(done, left, limit)
        defragmented: list[str] = []
        for status in nospace_order(left):
            try:
                client.defragment(status.url, DEFRAG_TIMEOUT)
            except EtcdError as error:
                log.warning("NOSPACE: could not defragment %s: %s", status.name, error)
                continue
            defragmented.append(status.name)
        after = db_statuses(client, voters)
        done += f", defragmented {', '.join(defragmented) or 'no member'}"
        if live_data_fills(after, limit):
            return self._nospace_kept(done, after, limit)
        disarmed = client.disarm_all("NOSPACE")
        self._nospace_cleared = self._cycles
        sentence = (
            f"NOSPACE cleared: {done} (largest db {mib(max(s.size for s in left))} ->"
            f" {mib(max((s.size for s in after), default=0))}, quota {mib(limit)});"
            f" {disarmed} alarm(s) disarmed"
        )
        log.warning("%s", sentence)
        return sentence

    def _nospace_kept(self, done: str, statuses: list[DbStatus], limit: int) -> str:
        largest = max(s.in_use for s in statuses)
        sentence = (
            f"NOSPACE kept: {done}; the live data ({mib(largest)}) fills the quota"
            f" ({mib(limit)}): raise quota_backend_bytes or delete keys"
        )
        log.error("%s", sentence)
        return sentence

    def _running_quota(self) -> int:
        """The quota this node's etcd runs with: its config file's (quota_backend_bytes is
        in force at etcd's next start; the settings may already name a new one)."""
        try:
            return quota_of(read_config(self.config_path).get("quota-backend-bytes"))
        except (OSError, ValueError):
            return quota_of(self.settings.etcd.quota_backend_bytes)

    def _client(self, snapshot: Snapshot) -> EtcdClient:
        urls = [u for m in snapshot.members or () if m.healthy for u in m.client_urls]
        return self.client_factory(urls or [self.own_url()])

    def _run_hook(self, path: str | None, env: dict[str, str]) -> HookResult:
        """Through systemd where etcd is a unit (nodes), as a child process otherwise."""
        if self.settings.etcd.service == "systemd":
            return run_hook_unit(path, env, self.settings.hooks.timeout)
        return run_hook(path, env, self.settings.hooks.timeout)

    def _hook_env(self, snapshot: Snapshot, reason: str | None = None) -> dict[str, str]:
        me = snapshot.my_member
        return hook_environment(
            cluster=self.settings.cluster_name,
            endpoints=[u for m in snapshot.members or () for u in m.client_urls],
            node_name=self.me.name,
            node_ip=self.me.ip,
            is_leader=bool(me and me.is_leader),
            reason=reason,
        )

    def _save(self, **changes: object) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.state.updated = self.clock()
        self.state.save(self.state_dir)

    # --- the whole life --------------------------------------------------------------------

    def run(self) -> int:
        """Bootstrap, then cycle until this node leaves or is told to stop. Exit code."""
        if self.state.phase == "leaving":
            return self.await_deletion()
        try:
            self.bootstrap()
        except BootstrapError as error:
            log.error("%s", error)
            if self.state.phase == "left" or self.stopped.is_set():
                return 0
            self._save(phase="failed")
            self._give_up_server(str(error))
            return 1
        while not self.stopped.is_set() and self.state.phase == "member":
            started = self.clock()
            try:
                self.cycle()
            except Exception:  # one bad cycle must not kill the agent
                log.exception("cycle failed")
            if self.stopped.is_set() or self.state.phase != "member":
                break
            period = self.settings.scaling.lockattemptperiod  # a live key: the stack's now
            self.stopped.wait(max(0.0, period - (self.clock() - started)))
        if self.state.phase == "leaving" and not self.stopped.is_set():
            return self.await_deletion()
        return self.exit_code if self.exit_code is not None else 0

    def _give_up_server(self, why: str) -> None:
        """A node that cannot join is marked unhealthy: the leader's scale-up replaces it."""
        try:
            self.cloud.mark_unhealthy(self.me.id, f"could not join: {why}"[:250])
        except CloudError as error:
            log.warning("could not mark this server unhealthy: %s", error)


def whole(snapshot: Snapshot) -> bool:
    """Every voter healthy, a leader, no learner, nobody leaving or holding the kill lock:
    a cluster that can lose one member's service for a while (a restart, a defragment)."""
    return (
        snapshot.leader is not None
        and all(m.healthy for m in snapshot.voters)
        and not any(m.is_learner for m in snapshot.members or ())
        and not snapshot.leaving
        and snapshot.kill_lock_holder is None
    )


def describe(snapshot: Snapshot, settings: AgentSettings) -> str:
    if snapshot.members is None:
        cluster = "no etcd answer"
    else:
        healthy = sum(1 for m in snapshot.members if m.healthy)
        leader = snapshot.leader
        cluster = (
            f"{len(snapshot.members)} members ({healthy} healthy,"
            f" leader {leader.name if leader else 'none'})"
        )
    metric = snapshot.metric
    shown = f"{metric.value:g}" if metric.value is not None else f"none ({metric.error})"
    lock = snapshot.kill_lock_holder or "free"
    return (
        f"{cluster}, {settings.metric.name}={shown}, kill lock {lock},"
        f" failmarker {snapshot.failmarker}"
    )
