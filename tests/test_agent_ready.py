"""A new server's agent says when it votes (agent/loop.py `_say_ready`): it signals its
member stack's wait condition (infra.heat.MemberStack) once it is a healthy voter in a
whole cluster, once per agent life, and holds the signal while the leader is on a server
the group no longer lists (the old server of a member being replaced, which Heat deletes
once the signal is given). The signal's HTTP call is tests/test_cloud_openstack.py's; the
lab's scenarios run it end to end (every member of every lab waits for it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from agent.loop import READY_LEADER_WAITS, Agent
from agent.snapshot import CloudNode, NodeIdentity
from tests.test_decide import SETTINGS, group, member, snap


class Cloud:
    """The group as the agent's driver lists it, and the signals it was asked to send."""

    def __init__(self, nodes: tuple[CloudNode, ...]) -> None:
        self.nodes = nodes
        self.signals: list[str] = []
        self.has_handle = True

    def whoami(self) -> NodeIdentity:
        return NodeIdentity(id="srv4", name="node4", ip="127.0.0.4")

    def group_members(self) -> list[CloudNode]:
        return list(self.nodes)

    def member_ready(self, node_id: str, reason: str) -> bool:
        self.signals.append(node_id)
        return self.has_handle


def agent(tmp_path: Path, cloud: Cloud) -> Agent:
    settings = SETTINGS.with_changes(state_dir=str(tmp_path / "state"))
    return Agent(settings, cloud=cloud, service=None)  # type: ignore[arg-type]


def new_server_view(**changes: object):
    """node4 (this agent) joined; node1..3 the other voters; the group lists node2..4 (node1
    is the old server of node4's member: Heat deletes it once node4 signals)."""
    nodes = tuple(n for n in group(4) if n.name != "node1")
    return replace(snap(4, me=4, leader=2), cloud_nodes=nodes, **changes)


def test_a_healthy_voter_in_a_whole_cluster_signals_once(tmp_path):
    cloud = Cloud(group(4))
    a = agent(tmp_path, cloud)
    assert a._say_ready(new_server_view()) == "member ready: signalled"
    assert cloud.signals == ["srv4"]
    # once per agent life (a restarted agent says it again: the same id, counted once)
    assert a._ready_said


def test_no_signal_before_it_votes_or_while_the_cluster_is_not_whole(tmp_path):
    cloud = Cloud(group(4))
    a = agent(tmp_path, cloud)
    learner = new_server_view()
    learner = replace(learner, members=(*learner.members[:3], member(4, learner=True)))
    assert a._say_ready(learner) == ""
    unhealthy = new_server_view(members=snap(4, me=4, leader=2, unhealthy=(3,)).members)
    assert a._say_ready(unhealthy) == ""  # a voter unhealthy
    view = new_server_view()
    assert a._say_ready(replace(view, kill_lock_holder="node2")) == ""  # a removal under way
    assert cloud.signals == []
    # a node that left earlier (its removal record) does not hold it
    assert a._say_ready(replace(view, leaving=frozenset({"node9"}))) == "member ready: signalled"


def test_held_while_the_leader_is_on_the_server_going_then_sent(tmp_path):
    cloud = Cloud(group(4))
    a = agent(tmp_path, cloud)
    on_the_old = new_server_view(members=snap(4, me=4, leader=1).members)
    for _ in range(READY_LEADER_WAITS):
        said = a._say_ready(on_the_old)
        assert "the leader node1 is on a server going" in said
    assert cloud.signals == []
    # its agent did not move leadership in time: the signal goes anyway (an election, not
    # a roll stopped by the wait condition's timeout)
    assert a._say_ready(on_the_old) == "member ready: signalled"
    assert cloud.signals == ["srv4"]


def test_a_member_without_a_wait_condition_is_done_at_once(tmp_path):
    cloud = Cloud(group(4))
    cloud.has_handle = False  # a server of an older template
    a = agent(tmp_path, cloud)
    assert a._say_ready(new_server_view()) == ""
    assert a._ready_said and cloud.signals == ["srv4"]


def test_said_again_only_when_the_member_s_wait_condition_waits_anew(tmp_path):
    """A `pulumi up` that replaces the wait condition and not the server (a new
    join_timeout): Heat empties the handle, and the condition waits for a signal."""
    cloud = Cloud(group(4))
    a = agent(tmp_path, cloud)
    assert a._say_ready(new_server_view()) == "member ready: signalled"
    assert a._say_ready(new_server_view()) == ""  # said, nothing waits
    waits = tuple(replace(n, waiting=n.id == "srv4") for n in new_server_view().cloud_nodes)
    assert a._say_ready(replace(new_server_view(), cloud_nodes=waits)) == "member ready: signalled"
    assert cloud.signals == ["srv4", "srv4"]
