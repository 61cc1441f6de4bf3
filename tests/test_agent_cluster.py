"""The real agent against real etcd members on 127.x.y.n: join, scale down, heal, outages.

The nodes are tests/agent_lab.py's: real agents (threads) with their own etcd processes,
in one group of the lab's cloud (Heat's rules), reached through its OpenStack API.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.etcd import EtcdClient, EtcdError
from tests.agent_lab import PERIOD, Lab, start_initial
from tests.etcd_cluster import wait_until

pytestmark = pytest.mark.etcd


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


def test_initial_members_bootstrap_one_cluster_then_nodes_join_one_at_a_time(lab):
    lab = lab()
    start_initial(lab, 3)
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
    late = lab.grow(2)
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
    nodes = lab.create(5)
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
    nodes = start_initial(lab, 5)
    for node in nodes:
        lab.idle[node.name] = 97.0  # every node idle above 90 %
    assert wait_until(lambda: len(lab.record.deleted) == 2, timeout=40)
    time.sleep(4 * PERIOD + 3.0)  # one more period: nobody else may leave
    downs = lab.record.calls_of("scale_down")
    assert len(downs) == 2
    # the removals, fenced by the kill lock, are a scaledownperiod apart (the lock's lease
    # TTL); each signal follows its removal after the leaver's cleanup, so those vary
    removals = [r["time"] for r in lab.client().removal_records()]
    assert len(removals) == 2 and removals[1] - removals[0] >= 3.0
    assert len(lab.voters()) == 3
    # the oldest servers left, each through the group (Heat deletes the oldest first)
    assert lab.record.deleted == ["node1", "node2"]
    assert [call[1] for call in downs] == ["node1", "node2"]
    assert lab.record.calls_of("mark_unhealthy") == []
    for name in ("node1", "node2"):
        # out of etcd ("leaving") when Heat's delete powered the server off
        assert lab.state(name).phase in ("leaving", "left")
        assert not lab.nodes[name].service.is_running()
        assert wait_until(lambda name=name: not lab.nodes[name].running, timeout=10)


def test_busy_or_unmeasured_nodes_stay(lab):
    lab = lab()
    nodes = start_initial(lab, 4)
    lab.idle[nodes[0].name] = 50.0  # busy: idle is not above 90
    time.sleep(8 * PERIOD)
    assert lab.record.calls_of("scale_down") == []
    assert len(lab.voters()) == 4


def test_a_killed_member_is_removed_after_the_window_and_replaced(lab):
    lab = lab()
    nodes = start_initial(lab, 3)
    victim = nodes[2]
    victim.agent.stopped.set()
    victim.service.kill()  # kill -9 of its etcd; its agent is gone too
    killed_at = time.time()
    assert wait_until(lambda: len(lab.record.calls_of("mark_unhealthy")) == 1, timeout=30)
    mark = lab.record.calls_of("mark_unhealthy")[0]
    assert mark[3] == victim.server_id
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
    nodes = start_initial(lab, 3)
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
