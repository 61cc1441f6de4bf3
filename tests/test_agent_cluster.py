"""The real agent against real etcd members on 127.x.y.n: join, scale down, heal, outages.

The nodes are tests/agent_lab.py's: real agents (threads) with their own etcd processes,
in one group of the lab's cloud (Heat's rules), reached through its OpenStack API.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from agent.bootstrap import Bootstrap
from agent.etcd import EtcdClient, EtcdError
from tests.agent_lab import PERIOD, Lab, start_initial
from tests.etcd_cluster import wait_until

pytestmark = pytest.mark.etcd


@pytest.fixture
def lab(make_agent_lab):
    return make_agent_lab


def test_two_late_initial_members_start_on_their_own_entries_one_at_a_time(lab, monkeypatch):
    """Five servers created together, two of whose agents start late and at once: the
    three form the cluster on all five entries; the two start on their listed entries one
    at a time (the join lock). Started in the same instant, each etcd asks the other's peer
    URL for its version while neither serves yet, and both hang until one is restarted
    (which cost the quick bench's five-node bootstrap two removals). Here both late starts
    meet at a barrier before etcd is launched: without the lock they launch together."""
    lab = lab()
    nodes = lab.create(5)
    for node in nodes[:3]:
        node.start()
    assert wait_until(lambda: len(lab.voters()) == 3, timeout=30), lab.voters()
    entries = {m.name or m.peer_urls[0]: m.id for m in lab.client().members(check_health=False)}
    assert len(entries) == 5  # the two late ones listed, not started
    together = threading.Barrier(2, timeout=3.0)
    launch = Bootstrap._start

    def start_together(self, me, peers, state):  # type: ignore[no-untyped-def]
        try:
            together.wait()
        except threading.BrokenBarrierError:
            pass  # the other one waits for the join lock: launch alone
        launch(self, me, peers, state)

    monkeypatch.setattr(Bootstrap, "_start", start_together)
    for node in nodes[3:]:
        node.start()
    assert wait_until(lambda: len(lab.voters()) == 5, timeout=40), lab.voters()
    now = {m.name: m.id for m in lab.client().members(check_health=False)}
    late = {node.name for node in nodes[3:]}
    late_ids = {mid for key, mid in entries.items() if key not in {n.name for n in nodes[:3]}}
    assert {now[name] for name in late} == late_ids  # their own entries: none removed
    said = " ".join(lab.state(name).last_cycle or "" for name in late)
    assert "old member entry" not in said
    assert wait_until(lambda: all(lab.state(n.name).phase == "member" for n in nodes), 30)


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


def test_five_idle_agents_with_capacity_three_remove_exactly_two_spaced_by_the_period(lab):
    lab = lab(scaledownperiod=3.0)
    nodes = start_initial(lab, 5)
    for node in nodes:
        lab.idle[node.name] = 97.0  # every node idle above 90 %
    assert wait_until(lambda: len(lab.record.deleted) == 2, timeout=40)
    # one more scaledownperiod (and a few cycles): nobody else may leave
    time.sleep(lab.scaling["scaledownperiod"] + 4 * PERIOD)
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
    killed_at = time.time()  # before the kill: no check can fail before this instant
    victim.service.kill()  # kill -9 of its etcd; its agent is gone too
    assert wait_until(lambda: len(lab.record.calls_of("mark_unhealthy")) == 1, timeout=30)
    mark = lab.record.calls_of("mark_unhealthy")[0]
    assert mark[3] == victim.server_id
    # convicted at its third failed check: never sooner than 1.5 periods after the first
    # (agent/decide.py dead_member_window), which itself comes after the kill
    assert mark[0] - killed_at >= 1.5 * PERIOD
    # (how soon after: bench/ measures it, in periods: "member removed, in lockattemptperiods")
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


# --- what README promises, end to end ----------------------------------------------------------


def test_a_node_that_cannot_join_marks_its_own_server_unhealthy(lab):
    """README, Join: a node that cannot join in `retries` attempts marks its server
    unhealthy (here: two of three members are gone, no quorum answers a newcomer)."""
    lab = lab(retries=3)
    nodes = start_initial(lab, 3)
    for node in nodes[1:]:
        node.agent.stopped.set()
        node.service.kill()
    (joiner,) = lab.grow(1)
    joiner.start()
    assert wait_until(lambda: lab.record.calls_of("mark_unhealthy"), timeout=30)
    (mark,) = lab.record.calls_of("mark_unhealthy")
    assert mark[1:] == (joiner.name, "mark_unhealthy", joiner.server_id)
    assert wait_until(lambda: not joiner.running, timeout=10)
    assert lab.state(joiner.name).phase == "failed"
    assert lab.state(nodes[0].name).phase == "member"  # the survivor waits, marks nobody


def test_the_leaver_repeats_its_signal_until_heat_deletes_its_server(lab):
    """README, Scale-down: the leaver stays until Heat has deleted its server, repeating
    the signal Heat did not take (here the first two signals fail: Heat answers 500)."""
    lab = lab()
    nodes = start_initial(lab, 4)
    lab.cloud.api.fail("POST", "/resources/scale_down/signal", 500, times=2)
    for node in nodes:
        lab.idle[node.name] = 97.0
    assert wait_until(lambda: lab.record.deleted == ["node1"], timeout=40)
    downs = lab.record.calls_of("scale_down")
    assert len(downs) == 3 and {call[1] for call in downs} == {"node1"}
    # repeated every few periods (await_deletion: 3 periods), not in a tight loop
    assert downs[2][0] - downs[1][0] >= 2 * PERIOD
    assert sorted(lab.voters()) == ["node2", "node3", "node4"]


def test_a_failing_node_replaces_itself_through_the_group(lab):
    """README, Failmarker: above failtolerance, while the rest is healthy, a node whose
    etcd fails removes itself (fenced by the kill lock), marks its own server unhealthy
    and asks for +1; Heat swaps its server for a new one."""
    lab = lab(failtolerance=10, dead_member_periods=200)  # the dead-member rule stays out
    nodes = start_initial(lab, 3)
    leader = next(m.name for m in lab.client().members() if m.is_leader)
    victim = next(n for n in nodes if n.name != leader)
    victim.service.signal(signal.SIGSTOP)  # its etcd hangs; its agent runs
    assert wait_until(lambda: victim.name in lab.record.deleted, timeout=40)
    marks = lab.record.calls_of("mark_unhealthy")
    said = {n.name: lab.state(n.name).last_cycle for n in nodes}
    assert [(m[1], m[3]) for m in marks] == [(victim.name, victim.server_id)], (marks, said)
    # its +1 (the leader may ask one too, once the cluster is below capacity)
    assert victim.name in [u[1] for u in lab.record.calls_of("scale_up")]
    (record,) = lab.client().removal_records()
    assert (record["member"], record["via"]) == (victim.name, "replace")
    assert "failmarker" in record["reason"] and "> 10" in record["reason"]
    assert victim.name not in lab.voters()
    assert lab.record.calls_of("scale_down") == []


def test_the_leaver_checks_again_once_it_holds_the_kill_lock(lab):
    """README, Scale-down: the oldest wins the kill lock, then checks again; a member that
    went unhealthy meanwhile makes it release the lock and remove nothing."""
    from dataclasses import replace

    lab = lab()
    nodes = start_initial(lab, 4)
    oldest = nodes[0]
    real_observe = oldest.agent.observe
    rechecks: list[str] = []

    def observe(*, count: bool = True):
        seen = real_observe(count=count)
        if count or seen.members is None:
            return seen
        rechecks.append("looked")
        if len(rechecks) % 2 == 0:  # the re-check, after the lock was won: node4 sick
            sick = tuple(replace(m, healthy=m.name != "node4") for m in seen.members)
            return replace(seen, members=sick)
        return seen

    oldest.agent.observe = observe  # type: ignore[method-assign]
    for node in nodes:
        lab.idle[node.name] = 97.0
    assert wait_until(lambda: len(rechecks) >= 4, timeout=30)
    assert lab.record.deleted == [] and lab.client().removal_records() == []
    assert "re-check after winning the lock: wait" in lab.state("node1").last_cycle
    assert "lock released" in lab.state("node1").last_cycle
    # released, not held for its TTL (3 s): the re-check that saw node4 sick may still be
    # finishing its cycle when the fourth observe returns
    assert wait_until(lambda: lab.client().lock_holder("kill") is None, timeout=1.0)
    oldest.agent.observe = real_observe  # type: ignore[method-assign]
    assert wait_until(lambda: lab.record.deleted == ["node1"], timeout=30)


def test_configscript_after_join_and_cleanupscript_on_leave(tmp_path, etcd_bin):
    """README: configscript runs once a node has joined, cleanupscript before it leaves,
    each with the AUTOSCALE_* variables."""
    out = tmp_path / "hooks-ran"
    out.mkdir()
    scripts = {}
    for hook in ("configscript", "cleanupscript"):
        path = tmp_path / f"{hook}.sh"
        path.write_text(
            f'#!/bin/sh\nenv | grep ^AUTOSCALE_ | sort > "{out}/{hook}-$AUTOSCALE_NODE_NAME"\n'
        )
        path.chmod(0o755)
        scripts[hook] = str(path)
    lab = Lab(tmp_path / "lab", etcd_bin, hooks=scripts)
    try:
        nodes = start_initial(lab, 4)

        def written() -> list[object]:
            """A hook's file exists from its redirection on, before `sort` wrote into it."""
            return [f for f in out.glob("configscript-*") if f.read_text().endswith("\n")]

        assert wait_until(lambda: len(written()) == 4, timeout=20)
        config = (out / "configscript-node2").read_text()
        assert "AUTOSCALE_NODE_NAME=node2" in config and "AUTOSCALE_CLUSTER=itest" in config
        assert f":{lab.client_port}" in config.split("AUTOSCALE_ENDPOINTS=")[1]
        assert not list(out.glob("cleanupscript-*"))
        for node in nodes:
            lab.idle[node.name] = 97.0
        assert wait_until(lambda: lab.record.deleted == ["node1"], timeout=40)
        (cleanup,) = out.glob("cleanupscript-*")
        assert cleanup.name == "cleanupscript-node1"
        text = cleanup.read_text()
        assert "AUTOSCALE_REASON=4 members > capacity 3" in text
        assert len(list(out.glob("configscript-*"))) == 4  # once per node, not per cycle
    finally:
        lab.close()
