"""Real agents and real etcd in one group of the lab's cloud, for integration tests.

Each node is one Agent (a thread of this process) with its own etcd process
(SubprocessEtcd, stopped by pid), its own state dir and its own 127.x.y.n address. The
group is the lab's cloud (lab.cloud: Heat's rules with Heat's own functions) reached
through its OpenStack API by the agents' own driver (agent.cloud_openstack), each node
with a credential of its own so that a test can tell who asked what. Resizes run before
a signal's answer. A server the group creates later (a scale-up, a replacement) gets an
agent only when the test starts one (`start_new`); a server the group deletes is powered
off (its agent told to stop, its etcd killed).
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from agent.etcd import EtcdClient, EtcdError
from agent.etcd_server import SubprocessEtcd
from agent.loop import Agent
from agent.settings import AgentSettings, MetricSettings, OpenStackCloud
from agent.snapshot import MetricReading
from agent.state import AgentState
from lab.cloud.api import Recorded
from lab.cloud.heat import Member, Policy
from lab.cloud.openstack import SCALE_DOWN, SCALE_UP, AddressPool, LabCloud
from lab.events import EventLog

PERIOD = 0.4
ELECTION_MS = 500
"""The harness's etcd election timeout."""


def _ports_free(ips: list[str], ports: tuple[int, int]) -> bool:
    for ip in ips:
        for port in ports:
            with socket.socket() as sock:
                try:
                    sock.bind((ip, port))
                except OSError:
                    return False
    return True


def addresses(count: int) -> tuple[list[str], int, int]:
    """`count` fresh 127.x.y.n addresses sharing one free client and peer port."""
    for _ in range(50):
        base = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        ips = [f"{base}.{n}" for n in range(1, count + 1)]
        ports = (random.randint(20000, 45000), random.randint(45001, 60000))
        if _ports_free(ips, ports):
            return ips, *ports
    raise RuntimeError("no free addresses")


@dataclass
class Node:
    name: str
    server_id: str
    ip: str
    agent: Agent
    service: SubprocessEtcd
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.agent.run, name=self.name, daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@dataclass
class Call:
    t: float
    caller: str
    call: str
    argument: str


@dataclass
class CloudRecord:
    """What the agents asked of the cloud (from its API's request log) and what it did."""

    calls: list[Call] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    """Names of the servers the group deleted (cut by a resize, or replaced), in order."""

    def calls_of(self, call: str) -> list[tuple[float, str, str, str]]:
        return [(c.t, c.caller, c.call, c.argument) for c in self.calls if c.call == call]


class Lab:
    """Up to `size` nodes of one cluster; `idle[name]` is each node's CPU idle."""

    def __init__(
        self,
        tmp: Path,
        etcd_bin: str,
        size: int = 7,
        hooks: dict[str, str] | None = None,
        **scaling: float,
    ) -> None:
        self.tmp = tmp
        self.hooks = hooks or {}
        """Hook settings (configscript, cleanupscript: paths of scripts) of every node."""
        self.ips, self.client_port, self.peer_port = addresses(size + 4)
        self.record = CloudRecord()
        self.idle: dict[str, float] = {}
        self.nodes: dict[str, Node] = {}
        self.etcd_bin = etcd_bin
        self.etcd: dict[str, object] = {}
        """More of every node's etcd settings (set before the nodes are made)."""
        self.backup: dict[str, object] = {}
        """Every node's backup settings (agent/backup.py; set before the nodes are made)."""
        self.scaling = {
            "capacity": 3,
            "min_cluster": 3,
            "max_cluster": 7,
            "lockattemptperiod": PERIOD,
            "scaledownperiod": 3.0,
            "scaleupcooldown": 30.0,
            "failtolerance": 10,
            "dead_member_periods": 3,
            "retries": 40,
            **scaling,
        }
        self.cloud = LabCloud(
            min_size=1,
            max_size=size,
            policies={SCALE_UP: Policy(SCALE_UP, +1, 0.0), SCALE_DOWN: Policy(SCALE_DOWN, -1, 0.0)},
            hypervisor=self,
            addresses=AddressPool(self.ips[0].rsplit(".", 1)[0], first=1, last=size + 4),
            events=EventLog(),
            stack_name="itest",
            background=False,
        )
        self.cloud.serve("127.0.0.1")
        self.cloud.api.on_request.append(self._record)
        self._count = 0

    # --- the hypervisor: what the group's Nova does to a node's machine ---------------------

    def boot(self, member: Member) -> None:
        self._count += 1
        member.name = f"node{self._count}"

    def delete(self, member: Member) -> None:
        self.record.deleted.append(member.name)
        node = self.nodes.get(member.name)
        if node is not None:  # a hard power-off: not joined here (it may be the caller)
            node.agent.stopped.set()
            node.service.kill()

    def reboot(self, member: Member, kind: str) -> None:
        raise NotImplementedError("tests/test_agent_reboot.py powers nodes off itself")

    # --- nodes --------------------------------------------------------------------------

    def settings(self, member: Member) -> AgentSettings:
        node_dir = self.tmp / member.name
        credential = self.cloud.keystone.add_credential(member.name)
        cloud = OpenStackCloud(
            auth_url=self.cloud.auth_url,
            application_credential_id=credential.id,
            application_credential_secret=credential.secret,
            stack_id=f"{self.cloud.stack_name}/{self.cloud.stack_id}",
            metadata_url=self.cloud.metadata_url(member.server_id),
            instance_data=str(node_dir / "no-instance-data.json"),
        )
        return AgentSettings.model_validate(
            {
                "cluster_name": "itest",
                "etcd": {
                    "client_port": self.client_port,
                    "peer_port": self.peer_port,
                    "data_dir": str(node_dir / "data"),
                    "binary": self.etcd_bin,
                    "service": "subprocess",
                    "heartbeat_ms": 50,
                    "election_ms": ELECTION_MS,
                    "cluster_token": "itest",
                    **self.etcd,
                },
                "metric": {"threshold": 90, "comparator": ">", "window": 0},
                "scaling": self.scaling,
                "hooks": {**self.hooks, "timeout": 30},
                "backup": self.backup,
                "cloud": cloud.model_dump(context={"reveal_secrets": True}),
                "state_dir": str(node_dir / "state"),
                "log_level": "DEBUG",
            }
        )

    def create(self, count: int) -> list[Node]:
        """The stack's creation: `count` servers, each with its agent (not started)."""
        plan = self.cloud.create(count)
        return [self.agent_for(member) for member in plan.created]

    def grow(self, count: int = 1) -> list[Node]:
        """A stack update growing the group by `count` (no member is initial afterwards)."""
        before = {m.server_id for m in self.cloud.members()}
        self.cloud.update(len(self.cloud.members()) + count)
        return [self.agent_for(m) for m in self.cloud.members() if m.server_id not in before]

    def start_new(self) -> list[Node]:
        """Agents for the servers the group booted that have none yet (a replacement)."""
        return [self.agent_for(m) for m in self.cloud.members() if m.name not in self.nodes]

    def agent_for(self, member: Member) -> Node:
        settings = self.settings(member)
        self.idle.setdefault(member.name, 20.0)
        service = SubprocessEtcd(self.etcd_bin, stop_timeout=3)

        def reader(metric: MetricSettings, name: str = member.name) -> MetricReading:
            return MetricReading(metric.name, self.idle[name])

        from agent.cloud_openstack import OpenStackGroup

        agent = Agent(
            settings,
            cloud=OpenStackGroup(settings.cloud, timeout=5),
            service=service,
            metric_reader=reader,
        )
        node = Node(member.name, member.server_id, member.ip, agent, service)
        self.nodes[member.name] = node
        return node

    # --- reading ----------------------------------------------------------------------------

    def _record(self, request: Recorded) -> None:
        token = self.cloud.keystone.valid(request.headers.get("x-auth-token"))
        caller = token.credential.name if token else "?"
        parts = [unquote(p) for p in request.path.split("/") if p]
        if request.method == "POST" and parts[-1:] == ["signal"]:
            self.record.calls.append(Call(time.time(), caller, parts[-2], ""))
        elif request.method == "PATCH" and "resources" in parts:
            member = self.cloud.member_by_slot(parts[-1])
            server = member.server_id if member else parts[-1]
            self.record.calls.append(Call(time.time(), caller, "mark_unhealthy", server))

    def client(self) -> EtcdClient:
        urls = [f"http://{ip}:{self.client_port}" for ip in self.ips]
        return EtcdClient(urls, timeout=1.0, prefix="/autoscale-etcd/itest")

    def voters(self) -> list[str]:
        """The started, healthy voters; none when etcd cannot say. An "unavailable" answer
        (a leader change under way, as the agents' leadership moves make) is asked again
        once, as the agents do (agent/loop.py, UNAVAILABLE_RETRY)."""
        for again in (False, True):
            try:
                members = self.client().members(check_health=True)
            except EtcdError as error:
                if again or not error.unavailable:
                    return []
                time.sleep(0.3)
                continue
            return sorted(m.name for m in members if m.started and not m.is_learner and m.healthy)
        return []

    def state(self, name: str) -> AgentState:
        return AgentState.load(self.nodes[name].agent.state_dir)

    def close(self) -> None:
        for node in self.nodes.values():
            node.agent.stopped.set()
        for node in self.nodes.values():
            if node.thread is not None:
                node.thread.join(timeout=10)
        for node in self.nodes.values():
            try:
                import signal

                node.service.signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            node.service.stop()
        self.cloud.stop()


def start_initial(lab: Lab, count: int = 3) -> list[Node]:
    from tests.etcd_cluster import wait_until

    nodes = lab.create(count)
    for node in nodes:
        node.start()
    assert wait_until(lambda: len(lab.voters()) == count, timeout=30), lab.voters()
    # every agent is done bootstrapping (a crash before that is retried by its bootstrap)
    assert wait_until(lambda: all(lab.state(n.name).phase == "member" for n in nodes), timeout=30)
    return nodes


def power_off(node: Node) -> None:
    """The server loses power: its agent and etcd die at once (kill -9)."""
    node.agent.stopped.set()
    node.service.kill()
    if node.thread is not None:
        node.thread.join(timeout=10)


def boot(lab: Lab, node: Node) -> Node:
    """The server boots on the same disk: systemd starts a new agent on the same dirs."""
    agent = Agent(
        node.agent.settings,
        cloud=node.agent.cloud,
        service=node.service,
        metric_reader=node.agent.read_metric,
    )
    fresh = Node(node.name, node.server_id, node.ip, agent, node.service)
    lab.nodes[node.name] = fresh
    fresh.start()
    return fresh
