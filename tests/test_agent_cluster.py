"""The real agent against real etcd members on 127.0.0.x: join, scale down, heal, outages.

Each node is one Agent (in a thread of this process) with its own etcd process
(SubprocessEtcd, stopped by pid), its own state dir and its own 127.0.0.x
address; the group is tests/memory_cloud.py, which records every cloud call.
"""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.etcd import EtcdClient, EtcdError
from agent.etcd_server import SubprocessEtcd
from agent.loop import Agent
from agent.settings import AgentSettings, LocalCloud, MetricSettings
from agent.snapshot import MetricReading
from agent.state import AgentState
from tests.etcd_cluster import wait_until
from tests.memory_cloud import GroupRecord, MemoryGroup

pytestmark = pytest.mark.etcd

PERIOD = 0.4


def _ports_free(ips: list[str], ports: tuple[int, int]) -> bool:
    for ip in ips:
        for port in ports:
            with socket.socket() as sock:
                try:
                    sock.bind((ip, port))
                except OSError:
                    return False
    return True


def _addresses(count: int) -> tuple[list[str], int, int]:
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
    agent: Agent
    service: SubprocessEtcd
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.agent.run, name=self.name, daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class Lab:
    """Up to 7 nodes of one cluster; `load[name]` is each node's CPU idle."""

    def __init__(self, tmp: Path, etcd_bin: str, size: int = 7, **scaling: float) -> None:
        self.tmp = tmp
        self.ips, self.client_port, self.peer_port = _addresses(size)
        self.record = GroupRecord()
        self.idle: dict[str, float] = {}
        self.nodes: dict[str, Node] = {}
        self.etcd_bin = etcd_bin
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

    def settings(self, name: str) -> AgentSettings:
        node_dir = self.tmp / name
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
                    "election_ms": 500,
                    "cluster_token": "itest",
                },
                "metric": {"threshold": 90, "comparator": ">", "window": 0},
                "scaling": self.scaling,
                "cloud": LocalCloud(url="http://127.0.0.1:9", node_id=f"srv-{name}").model_dump(),
                "state_dir": str(node_dir / "state"),
                "log_level": "DEBUG",
            }
        )

    def add(self, *, initial: bool) -> Node:
        index = len(self.nodes)
        name = f"node{index + 1}"
        self.record.add(name, self.ips[index], initial=initial)
        self.idle[name] = 20.0
        settings = self.settings(name)
        service = SubprocessEtcd(self.etcd_bin, stop_timeout=3)

        def reader(metric: MetricSettings, name: str = name) -> MetricReading:
            return MetricReading(metric.name, self.idle[name])

        agent = Agent(
            settings,
            cloud=MemoryGroup(self.record, f"srv-{name}"),
            service=service,
            metric_reader=reader,
        )
        node = Node(name, agent, service)
        self.nodes[name] = node
        return node

    def client(self) -> EtcdClient:
        urls = [f"http://{ip}:{self.client_port}" for ip in self.ips]
        return EtcdClient(urls, timeout=1.0, prefix="/autoscale-etcd/itest")

    def voters(self) -> list[str]:
        try:
            members = self.client().members(check_health=True)
        except EtcdError:
            return []
        return sorted(m.name for m in members if m.started and not m.is_learner and m.healthy)

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
                node.service.signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            node.service.stop()


@pytest.fixture
def lab(tmp_path: Path, etcd_bin: str) -> Iterator[Lab]:
    labs: list[Lab] = []

    def make(**scaling: float) -> Lab:
        made = Lab(tmp_path, etcd_bin, **scaling)
        labs.append(made)
        return made

    yield make  # type: ignore[misc]
    for made in labs:
        made.close()


def _start_initial(lab: Lab, count: int = 3) -> list[Node]:
    nodes = [lab.add(initial=True) for _ in range(count)]
    for node in nodes:
        node.start()
    assert wait_until(lambda: len(lab.voters()) == count, timeout=30), lab.voters()
    # every agent is done bootstrapping (a crash before that is retried by its bootstrap)
    assert wait_until(lambda: all(lab.state(n.name).phase == "member" for n in nodes), timeout=30)
    return nodes


def test_initial_members_bootstrap_one_cluster_then_nodes_join_one_at_a_time(lab):
    lab = lab()
    _start_initial(lab, 3)
    cluster_ids = {
        EtcdClient([f"http://{ip}:{lab.client_port}"]).cluster_id() for ip in lab.ips[:3]
    }
    assert len(cluster_ids) == 1
    # two new servers boot together: they join one at a time (the join lock)
    seen_joining: list[int] = []
    done = threading.Event()

    def watch() -> None:
        client = lab.client()
        while not done.is_set():
            try:
                members = client.members(check_health=False)
            except EtcdError:
                continue
            seen_joining.append(sum(1 for m in members if m.is_learner or not m.started))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    late = [lab.add(initial=False) for _ in range(2)]
    for node in late:
        node.start()
    try:
        assert wait_until(lambda: len(lab.voters()) == 5, timeout=60), lab.voters()
    finally:
        done.set()
        watcher.join()
    assert max(seen_joining) == 1, "two members were joining at the same time"
    assert lab.voters() == ["node1", "node2", "node3", "node4", "node5"]
    assert all(lab.state(n.name).phase == "member" for n in late)


def test_two_late_initial_members_start_on_their_own_entries(lab):
    """Five servers booted together, three start first and form the cluster (3 of 5 is a
    quorum); the other two come one after the other. Each starts on its own initial entry
    while the other is still unstarted: no entry removed and added again."""
    lab = lab(capacity=5, min_cluster=5, dead_member_periods=100)
    nodes = [lab.add(initial=True) for _ in range(5)]
    for node in nodes[:3]:
        node.start()
    assert wait_until(lambda: len(lab.voters()) == 3, timeout=30), lab.voters()
    initial = {m.peer_urls[0]: m.id for m in lab.client().members(check_health=False)}
    assert len(initial) == 5
    nodes[3].start()
    assert wait_until(lambda: len(lab.voters()) == 4, timeout=30), lab.voters()
    nodes[4].start()
    assert wait_until(lambda: len(lab.voters()) == 5, timeout=30), lab.voters()
    final = {m.peer_urls[0]: m.id for m in lab.client().members(check_health=False)}
    assert final == initial  # the same five entries: nobody removed and re-added
    assert wait_until(lambda: all(lab.state(n.name).phase == "member" for n in nodes), 30)


def test_five_idle_agents_with_capacity_three_remove_exactly_two_spaced_by_the_period(lab):
    lab = lab(scaledownperiod=3.0)
    nodes = _start_initial(lab, 5)
    for node in nodes:
        lab.idle[node.name] = 97.0  # every node idle above 90 %
    assert wait_until(lambda: len(lab.record.deleted) == 2, timeout=40)
    time.sleep(4 * PERIOD + 3.0)  # one more period: nobody else may leave
    downs = lab.record.calls_of("scale_down")
    assert len(downs) == 2
    assert downs[1][0] - downs[0][0] >= 3.0 - 0.1
    assert len(lab.voters()) == 3
    # the oldest servers left, each through the group (Heat deletes the oldest first)
    assert lab.record.deleted == ["node1", "node2"]
    assert [call[1] for call in downs] == ["node1", "node2"]
    assert lab.record.calls_of("mark_unhealthy") == []
    for name in ("node1", "node2"):
        assert wait_until(lambda name=name: lab.state(name).phase == "left", timeout=10)
        assert not lab.nodes[name].service.is_running()
        assert not lab.nodes[name].running  # the agent ended with its server


def test_busy_or_unmeasured_nodes_stay(lab):
    lab = lab()
    nodes = _start_initial(lab, 4)
    lab.idle[nodes[0].name] = 50.0  # busy: idle is not above 90
    time.sleep(8 * PERIOD)
    assert lab.record.calls_of("scale_down") == []
    assert len(lab.voters()) == 4


def test_a_killed_member_is_removed_after_the_window_and_replaced(lab):
    lab = lab()
    nodes = _start_initial(lab, 3)
    victim = nodes[2]
    victim.agent.stopped.set()
    victim.service.kill()  # kill -9 of its etcd; its agent is gone too
    killed_at = time.time()
    assert wait_until(lambda: len(lab.record.calls_of("mark_unhealthy")) == 1, timeout=30)
    mark = lab.record.calls_of("mark_unhealthy")[0]
    assert mark[3] == f"srv-{victim.name}"
    # convicted at its third failed check: never sooner than 1.5 periods after the first
    # (agent/decide.py dead_member_window), which itself comes after the kill
    assert mark[0] - killed_at >= 1.5 * PERIOD
    assert victim.name not in lab.voters()
    # Heat counts healthy members only: +1 after the mark swaps the FAILED server for a
    # new one (a -1 would delete a healthy member too)
    assert lab.record.calls_of("scale_down") == []
    ups = lab.record.calls_of("scale_up")
    assert ups and ups[0][0] >= mark[0]
    assert lab.record.deleted == [victim.name]
    time.sleep(4 * PERIOD)
    assert len(lab.record.calls_of("scale_up")) <= 2  # the make lock's cooldown holds


def test_etcd_down_everywhere_longer_than_the_tolerance_removes_nobody(lab):
    lab = lab(failtolerance=5)
    nodes = _start_initial(lab, 3)
    for node in nodes:
        node.service.signal(signal.SIGSTOP)
    assert wait_until(lambda: all(lab.state(n.name).failmarker > 5 for n in nodes), timeout=20)
    time.sleep(4 * PERIOD)
    for node in nodes:
        node.service.signal(signal.SIGCONT)
    assert wait_until(lambda: len(lab.voters()) == 3, timeout=20)
    high = {n.name: lab.state(n.name).failmarker for n in nodes}
    time.sleep(8 * PERIOD)  # every node sees the rest healthy and its marker > tolerance
    assert all(lab.state(n.name).failmarker < high[n.name] for n in nodes)  # it decays
    assert lab.record.calls_of("mark_unhealthy") == []
    assert lab.record.calls_of("scale_down") == []
    assert all(n.running for n in nodes)
