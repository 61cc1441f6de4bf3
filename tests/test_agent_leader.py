"""What a client feels when the leader leaves: with the handover, no election.

The oldest server, the one Heat's -1 deletes, is made the leader, then the cluster idles
and it leaves. Its agent moves leadership to the most up-to-date voter first (etcd's
MoveLeader), so the remaining members' logs show no election started by a timeout and a
writer's longest stall stays far below an election. The same run without the handover
(the control) shows the election and the stall: the checks can tell the two apart.
"""

from __future__ import annotations

import time

import pytest

from agent.etcd import EtcdClient
from lab.stalls import stall
from lab.writer import Writer
from tests.agent_lab import ELECTION_MS, PERIOD, start_initial
from tests.etcd_cluster import wait_until

pytestmark = pytest.mark.etcd

ELECTION_S = ELECTION_MS / 1000


def timeout_elections(log: str) -> int:
    """Elections a member started because its election timer ran out: raft logs "is
    starting a new election" for every campaign, and "received MsgTimeoutNow" first for
    one a leadership transfer asked for."""
    return log.count("is starting a new election") - log.count("received MsgTimeoutNow")


@pytest.mark.parametrize("handover", [True, False], ids=["handover", "control-no-handover"])
def test_a_leaving_leader_hands_leadership_over_first(make_agent_lab, handover, monkeypatch):
    lab = make_agent_lab(scaledownperiod=15.0)  # the lock outlasts etcd's 5 s after a transfer
    nodes = start_initial(lab, 4)
    oldest = nodes[0]
    for node in nodes:  # the leader stays on the oldest server until it leaves (see below)
        monkeypatch.setattr(node.agent, "_off_heats_next", lambda snapshot: "")
    if not handover:
        monkeypatch.setattr(oldest.agent, "_hand_over_leadership", lambda snapshot: "")
    client = lab.client()
    ids = {m.name: m for m in client.members()}
    leader = next(m for m in ids.values() if m.is_leader)
    if leader.name != oldest.name:
        client.move_leader(leader.client_urls[0], ids[oldest.name].id)
    assert wait_until(lambda: next(m for m in client.members() if m.is_leader).name == oldest.name)
    urls = [f"http://{n.ip}:{lab.client_port}" for n in nodes]
    writer = Writer(lambda: urls, interval=0.02, timeout=1.0, clock=time.time)
    writer.start()
    time.sleep(2.0)
    quiet = stall(writer.puts, time.time() - 1.5, time.time(), writer.timeout)
    logs = {n.name: n.service.log_path for n in nodes[1:]}
    offsets = {name: path.stat().st_size for name, path in logs.items() if path}
    for node in nodes:
        lab.idle[node.name] = 97.0
    assert wait_until(lambda: lab.record.deleted == [oldest.name], timeout=40)
    (record,) = EtcdClient(urls[1:], prefix="/autoscale-etcd/itest").removal_records()
    window = (record["lock_time"], record["time"] + 3.0)
    # the writer runs past the window's end: a stall is a gap between puts it made, not
    # the writer's own stop (which would count as one)
    time.sleep(max(0.0, window[1] + 0.5 - time.time()))
    writer.stop()
    during = stall(writer.puts, *window, writer.timeout)
    elections = 0
    for name, path in logs.items():
        with open(path, "rb") as log:
            log.seek(offsets[name])
            elections += timeout_elections(log.read().decode(errors="replace"))
    said = lab.state(oldest.name).last_cycle
    figures = f"quiet {quiet.to_json()}, during the leave {during.to_json()}; {said[-300:]}"
    if handover:
        assert "leadership moved to node" in said and "before the removal" in said, figures
        assert elections == 0, figures
        # no election-length gap: a planned change costs a client no more than a few
        # round trips (the bench gives the figures as ratios to the quiet cluster)
        assert during.longest < ELECTION_S, figures
    else:
        assert elections >= 1, figures  # the control: the removal of the leader elects one
        assert during.longest >= ELECTION_S, figures
    assert writer.acked and not writer.verify().lost


def _leader_name(client: EtcdClient) -> str | None:
    return next((m.name for m in client.members() if m.is_leader), None)


def test_the_leader_moves_off_the_server_heat_deletes_next(make_agent_lab, monkeypatch):
    """A rolling update replaces the oldest member first and deletes its server, a hard
    power-off, as soon as the new one is ACTIVE; a scale-down deletes it too. The leader's
    agent on that server moves leadership, while the cluster idles, to the voter on the
    newest server. First the control: with the rule off, the leader stays there."""
    lab = make_agent_lab()
    nodes = start_initial(lab, 3)
    oldest, newest = nodes[0], nodes[-1]
    with monkeypatch.context() as off:
        for node in nodes:
            off.setattr(node.agent, "_off_heats_next", lambda snapshot: "")
        client = lab.client()
        ids = {m.name: m for m in client.members()}
        leader = _leader_name(client)
        if leader is not None and leader != oldest.name:
            client.move_leader(ids[leader].client_urls[0], ids[oldest.name].id)
        assert wait_until(lambda: _leader_name(client) == oldest.name, timeout=5)
        time.sleep(10 * PERIOD)  # ten cycles of every agent
        assert _leader_name(client) == oldest.name
    # the rule on: within a few cycles, on the newest server, and it stays there
    assert wait_until(lambda: _leader_name(client) == newest.name, timeout=15)
    time.sleep(5 * PERIOD)
    assert _leader_name(client) == newest.name
    assert lab.record.deleted == []
