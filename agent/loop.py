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
from pathlib import Path

from agent.bootstrap import Bootstrap, BootstrapError, ClientFactory
from agent.cloud import Cloud, CloudError
from agent.decide import (
    JOIN_LOCK,
    KILL_LOCK,
    MAKE_LOCK,
    Action,
    decide,
    next_failmarker,
    track_unhealthy,
)
from agent.etcd import EtcdClient, EtcdError
from agent.etcd_server import EtcdService, client_url
from agent.hooks import HookResult, hook_environment, run_hook, run_hook_unit
from agent.metrics import read_metric
from agent.settings import AgentSettings, MetricSettings
from agent.snapshot import Member, MetricReading, NodeIdentity, Snapshot
from agent.state import AgentState

log = logging.getLogger("agent.loop")

MetricReader = Callable[[MetricSettings], MetricReading]


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
    ) -> None:
        self.settings = settings
        self.cloud = cloud
        self.service = service
        self.client_factory = client_factory or etcd_client_factory(settings)
        self.read_metric = metric_reader
        self.clock = clock
        self.sleep = sleep
        self.state_dir = Path(settings.state_dir)
        self.state = AgentState.load(self.state_dir)
        self.stopped = threading.Event()
        self._me: NodeIdentity | None = None
        self._known_endpoints: list[str] = []

    # --- identity and config ---------------------------------------------------------

    @property
    def me(self) -> NodeIdentity:
        if self._me is None:
            self._me = self.cloud.whoami()
        return self._me

    @property
    def config_path(self) -> Path:
        if self.settings.etcd.service == "systemd":
            from agent.etcd_server import SYSTEMD_CONFIG

            return SYSTEMD_CONFIG
        return self.state_dir / "etcd.yaml"

    def own_url(self) -> str:
        return client_url(self.me.ip, self.settings.etcd)

    # --- bootstrap ---------------------------------------------------------------------

    def bootstrap(self) -> Member:
        if self.state.phase == "left":
            raise BootstrapError("this node has left the cluster; it does not rejoin")
        self._save(phase="joining")
        joined = Bootstrap(
            self.settings,
            cloud=self.cloud,
            service=self.service,
            client_factory=self.client_factory,
            config_path=self.config_path,
            sleep=self.sleep,
            stopping=self.stopped.is_set,
        ).run()
        if joined.how != "restarted":
            self.state.configured = False
        self._save(phase="member", member_id=joined.member.id)
        log.info("%s is member %x of the cluster (%s)", self.me.name, joined.member.id, joined.how)
        return joined.member

    # --- observe -----------------------------------------------------------------------

    def observe(self, *, count: bool = True) -> Snapshot:
        """One snapshot; the failmarker counts whether this node's own etcd answered.

        `count=False` (the re-check after winning a lock) looks without counting again.
        """
        now = self.clock()
        members: list[Member] | None = None
        own_ok = False
        holder: str | None = None
        joiner: str | None = None
        client: EtcdClient | None = None
        for endpoints in ([self.own_url()], self._other_endpoints()):
            if not endpoints:
                continue
            client = self.client_factory(endpoints)
            try:
                members = client.members(check_health=True)
                holder = client.lock_holder(KILL_LOCK)
                joiner = client.lock_holder(JOIN_LOCK)
            except EtcdError as error:
                log.debug("etcd at %s: %s", endpoints, error)
                members = None
                continue
            own_ok = endpoints == [self.own_url()]
            break
        if members is not None:
            self._known_endpoints = [u for m in members for u in m.client_urls]
        failmarker = next_failmarker(self.state.failmarker, own_ok)
        since = track_unhealthy(
            {int(k, 16): v for k, v in self.state.unhealthy_since.items()},
            tuple(members) if members is not None else None,
            now,
        )
        if count:
            self.state.failmarker = failmarker
            self.state.unhealthy_since = {f"{k:x}": v for k, v in since.items()}
        else:
            failmarker = self.state.failmarker
        snapshot = Snapshot(
            now=now,
            me=self.me,
            members=tuple(members) if members is not None else None,
            metric=self.read_metric(self.settings.metric),
            kill_lock_holder=holder,
            join_lock_holder=joiner,
            failmarker=failmarker,
            own_etcd_ok=own_ok,
            unhealthy_since=since,
            last_scale_up=self.state.last_scale_up,
            configured=self.state.configured,
        )
        if self._wants_cloud_view(snapshot):
            try:
                snapshot = replace(snapshot, cloud_nodes=tuple(self.cloud.group_members()))
            except CloudError as error:
                log.warning("cloud group unreadable: %s", error)
        return snapshot

    def _wants_cloud_view(self, snapshot: Snapshot) -> bool:
        me = snapshot.my_member
        return bool(me and me.is_leader and len(snapshot.voters) < self.settings.scaling.capacity)

    def _other_endpoints(self) -> list[str]:
        own = self.own_url()
        return [u for u in self._known_endpoints if u != own]

    # --- one cycle -----------------------------------------------------------------------

    def cycle(self) -> str:
        snapshot = self.observe()
        action = decide(snapshot, self.settings)
        try:
            result = self.act(action, snapshot)
        except (EtcdError, CloudError) as error:
            result = f"failed: {error}"
        sentence = f"saw {describe(snapshot, self.settings)} | did {action.kind}: {action.reason}"
        if result:
            sentence += f" | {result}"
        self.state.last_cycle = sentence
        self._save()
        log.info("%s", sentence)
        return sentence

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
        return f"removed {dead.name or hex(dead.id)} from etcd; " + self._replace_server(dead)

    def _replace_server(self, dead: Member) -> str:
        """Mark the dead member's server unhealthy and signal scale-down: Heat replaces it."""
        try:
            nodes = self.cloud.group_members()
            server = next(
                (n for n in nodes if (dead.name and n.name == dead.name) or n.ip == dead.ip),
                None,
            )
            if server is None:
                return "its server is gone from the group already"
            if server.status != "FAILED":
                self.cloud.mark_unhealthy(server.id, f"etcd member {dead.name} dead")
            self.cloud.scale_down()
            return f"server {server.name} marked unhealthy, scale-down signalled"
        except CloudError as error:
            return f"cloud call failed ({error}); the group keeps the server for now"

    def _act_leave(self, action: Action, snapshot: Snapshot) -> str:
        client = self._client(snapshot)
        ttl = self.settings.scaling.scaledownperiod
        lock = client.acquire_lock(KILL_LOCK, self.me.name, ttl)
        if lock is None:
            return f"lost the kill lock to {client.lock_holder(KILL_LOCK)}"
        # re-check with the lock won: membership may have changed meanwhile
        fresh = replace(self.observe(count=False), kill_lock_holder=None)
        again = decide(fresh, self.settings)
        me = fresh.my_member
        if again.kind != "leave" or me is None:
            client.release_lock(lock)
            return f"re-check after winning the lock: {again.kind} ({again.reason}); lock released"
        record = {"member": me.name, "reason": action.reason, "time": fresh.now}
        if not self._client(fresh).fenced_remove(lock, me.id, record):
            return "the kill lock expired before the removal (fence failed): nothing removed"
        self._save(phase="leaving")
        cleanup = self._run_hook(
            self.settings.hooks.cleanupscript, self._hook_env(fresh, reason=action.reason)
        )
        cloud = self._leave_group(action.reason)
        self.service.stop()
        self._save(phase="left")
        self.stopped.set()
        return (
            f"removed itself from etcd (fenced by lock revision {lock.revision});"
            f" {cleanup.detail}; {cloud}"
        )

    def _leave_group(self, reason: str) -> str:
        """Rule 6: mark our own group member unhealthy, then signal the scale-down policy."""
        last = ""
        for _ in range(max(1, self.settings.scaling.retries)):
            try:
                self.cloud.mark_unhealthy(self.me.id, reason)
                self.cloud.scale_down()
                return "marked unhealthy and scale-down signalled"
            except CloudError as error:
                last = str(error)
                self.sleep(min(2.0, self.settings.scaling.lockattemptperiod))
        return f"cloud calls failed ({last}); the server is out of etcd but still in the group"

    def _act_stop(self, action: Action, snapshot: Snapshot) -> str:
        self.service.stop()
        self._save(phase="left")
        self.stopped.set()
        try:
            self.cloud.mark_unhealthy(self.me.id, "removed from the etcd cluster")
            return "etcd stopped; own server marked unhealthy for Heat to replace"
        except CloudError as error:
            return f"etcd stopped; marking own server unhealthy failed: {error}"

    # --- helpers -------------------------------------------------------------------------

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
        try:
            self.bootstrap()
        except BootstrapError as error:
            log.error("%s", error)
            self._save(phase="failed" if self.state.phase != "left" else "left")
            return 0 if self.state.phase == "left" else 1
        period = self.settings.scaling.lockattemptperiod
        while not self.stopped.is_set():
            started = self.clock()
            try:
                self.cycle()
            except Exception:  # one bad cycle must not kill the agent
                log.exception("cycle failed")
            if self.stopped.is_set():
                break
            self.stopped.wait(max(0.0, period - (self.clock() - started)))
        return 0


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
