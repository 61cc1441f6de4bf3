"""The leader's move off the server Heat deletes next (agent/loop.py `_off_heats_next`):
when it moves leadership, to whom, and every case where it must not.

tests/test_agent_leader.py shows the move on a real cluster; here each guard on its own,
with an etcd client that records what it was asked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.loop import Agent
from agent.snapshot import NodeIdentity, Snapshot
from tests.test_agent_follow import node_settings
from tests.test_decide import group, snap


class Recorder:
    """An etcd client: MoveLeader recorded, and the target then says it leads."""

    def __init__(self) -> None:
        self.moves: list[int] = []

    def move_leader(self, endpoint: str, target_id: int) -> None:
        self.moves.append(target_id)

    def status(self, endpoint: str) -> dict[str, object]:
        return {"leader": str(self.moves[-1]) if self.moves else "0"}


class Me:
    def whoami(self) -> NodeIdentity:
        return NodeIdentity(id="srv1", name="node1", ip="127.0.0.1")


@pytest.fixture
def agent(tmp_path: Path) -> tuple[Agent, Recorder]:
    recorder = Recorder()
    made = Agent(
        node_settings(tmp_path),
        cloud=Me(),  # type: ignore[arg-type]
        service=None,  # type: ignore[arg-type]
        client_factory=lambda endpoints: recorder,  # type: ignore[arg-type,return-value]
    )
    return made, recorder


def leading(count: int = 3, **changes: object) -> Snapshot:
    """node1 leads; node1 is the oldest server (Heat's next), node<count> the newest."""
    return snap(count, me=1, leader=1, **{"cloud_nodes": group(count), **changes})


def test_the_leader_on_heats_next_moves_leadership_to_the_newest_server(agent):
    made, recorder = agent
    said = made._off_heats_next(leading(4))
    assert recorder.moves == [0x1004], said
    assert "leadership moved to node4" in said and "Heat deletes next" in said


@pytest.mark.parametrize(
    "why",
    [
        "not Heat's next",
        "a member unhealthy",
        "a member FAILED",
        "being defragmented",
        "a join under way",
        "two voters",
        "the group unread",
    ],
)
def test_no_move(agent, why):
    made, recorder = agent
    snapshot = {
        # node2 created first: Heat deletes node2 next, not this server
        "not Heat's next": leading(cloud_nodes=group(3, oldest_first=2)),
        "a member unhealthy": leading(unhealthy=(3,)),
        "a member FAILED": leading(cloud_nodes=group(3, node2="FAILED")),
        "being defragmented": leading(defragmenting="node2"),
        "a join under way": leading(join_lock_holder="node9"),
        "two voters": leading(2),
        "the group unread": leading(cloud_nodes=None),
    }[why]
    assert made._off_heats_next(snapshot) == ""
    assert recorder.moves == []


def test_a_follower_on_heats_next_does_nothing(agent):
    made, recorder = agent
    assert made._off_heats_next(replace(leading(), members=snap(3, leader=2).members)) == ""
    assert recorder.moves == []
