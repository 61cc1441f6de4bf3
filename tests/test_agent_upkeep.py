"""The leader's agent keeps etcd's backend (agent/upkeep.py), with real agents and etcd.

- A backend filled to its quota by history (a few keys written over and over): etcd raises
  NOSPACE and takes no write; the agents compact, defragment and disarm by themselves, and
  etcdctl from outside lists no alarm, the cluster takes a put, the same members serve.
- The control: live data that fills the quota is not disarmed into the next NOSPACE; the
  agent says to raise the quota, and the alarm stays.
- Free pages left by compaction: each member is defragmented, one at a time, the leader
  only after it handed leadership over.
"""

from __future__ import annotations

import logging
import time

import pytest

from agent.decide import KILL_LOCK
from agent.etcd import EtcdError
from agent.settings import EtcdSettings
from agent.upkeep import DEFRAG_LOCK, DbStatus, nospace_order, plan
from lab.outside import Etcdctl
from lab.writer import FILL_PREFIX, FILL_VALUE, fill_until_no_space
from tests.agent_lab import PERIOD, start_initial
from tests.etcd_cluster import wait_until
from tests.tools import need

QUOTA = 4 * 2**20


def said(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def takes_a_put(client, key: str) -> bool:
    try:
        client.put(key, "1")
    except EtcdError:
        return False
    return True


@pytest.mark.etcd
def test_a_full_backend_is_cleared_by_the_agents_and_no_member_is_lost(make_agent_lab, caplog):
    need("etcdctl")
    caplog.set_level(logging.INFO, logger="agent.loop")
    lab = make_agent_lab()
    lab.etcd = {"quota_backend_bytes": QUOTA}
    nodes = start_initial(lab, 3)
    for node in nodes:
        lab.idle[node.name] = 50.0  # busy: nobody leaves for load
    client = lab.client()
    client.timeout = 5.0
    before = {m.name: m.id for m in client.members()}
    refused = fill_until_no_space(client)
    assert refused.no_space
    assert wait_until(lambda: takes_a_put(client, "/after"), timeout=20, message="a put again")
    urls = [f"http://{n.ip}:{lab.client_port}" for n in nodes]
    etcdctl = Etcdctl()
    assert etcdctl.run(urls, "alarm", "list").strip() == ""
    assert etcdctl.run(urls, "put", "/outside", "1").strip() == "OK"
    assert {m.name: m.id for m in client.members()} == before
    assert client.get(FILL_PREFIX + "0") == FILL_VALUE  # the live data kept
    cleared = said(caplog, "NOSPACE cleared")
    assert cleared and "defragmented node" in cleared[0], cleared
    assert not said(caplog, "NOSPACE kept")  # history, not live data: no false alarm
    assert not lab.record.deleted and not lab.record.calls_of("mark_unhealthy")


@pytest.mark.etcd
def test_live_data_over_the_quota_is_said_and_not_disarmed(make_agent_lab, caplog):
    need("etcdctl")
    caplog.set_level(logging.INFO, logger="agent.loop")
    lab = make_agent_lab()
    lab.etcd = {"quota_backend_bytes": QUOTA}
    nodes = start_initial(lab, 3)
    client = lab.client()
    client.timeout = 5.0
    kept = "fills the quota"  # judged on the live data, not the back-off of a NOSPACE back
    # every put a new key of 32 KiB: the data itself grows to the quota. Where the alarm
    # comes first depends on the pages a member had not freed yet (a single etcd here: the
    # live data 0.97-1.09 of the quota; a cluster's busiest member raised it once at 0.89):
    # under 90 % the agent rightly clears it, and the next fill adds to the same live data.
    for round in range(4):
        cleared = len(said(caplog, "NOSPACE cleared"))
        fill_until_no_space(
            client, keys=1000, limit=1000, prefix=f"/live{round}/", value="y" * 32 * 1024
        )

        def judged(cleared: int = cleared) -> bool:
            return bool(said(caplog, kept)) or len(said(caplog, "NOSPACE cleared")) > cleared

        wait_until(judged, timeout=20, message="NOSPACE judged")
        if said(caplog, kept):
            break
    assert said(caplog, kept), said(caplog, "NOSPACE")
    assert "raise quota_backend_bytes" in said(caplog, kept)[0]
    # the rule checked from outside: the live data does fill 90 % of the quota
    urls = [f"http://{n.ip}:{lab.client_port}" for n in nodes]
    assert max(int(client.status(url)["dbSizeInUse"]) for url in urls) >= 0.9 * QUOTA
    time.sleep(3 * PERIOD)
    etcdctl = Etcdctl()
    assert "alarm:NOSPACE" in etcdctl.run(urls, "alarm", "list")
    assert not takes_a_put(client, "/after")
    cleared_after = [
        r
        for r in caplog.records
        if "NOSPACE cleared" in r.getMessage()
        and r.created > next(k.created for k in caplog.records if kept in k.getMessage())
    ]
    assert not cleared_after  # once the live data fills the quota, never disarmed


@pytest.mark.etcd
def test_free_pages_are_given_back_one_member_at_a_time_the_leader_after_a_handover(
    make_agent_lab, caplog
):
    caplog.set_level(logging.INFO, logger="agent.loop")
    lab = make_agent_lab()
    lab.etcd = {"defrag_min_bytes": 2**20, "defrag_free_share": 0.5}
    nodes = start_initial(lab, 3)
    for node in nodes:
        lab.idle[node.name] = 50.0
    client = lab.client()
    client.timeout = 5.0
    urls = [f"http://{n.ip}:{lab.client_port}" for n in nodes]
    first_leader = client.leader_id()
    # the kill lock held (a leave under way): no upkeep until every member applied the
    # compaction, or the leader's agent could find itself the only one due for a moment
    lock = client.acquire_lock(KILL_LOCK, "test", ttl=60)
    assert lock is not None
    for n in range(40):  # 10 MiB of history on 1 MiB of live data
        client.put(f"{FILL_PREFIX}{n % 4}", FILL_VALUE)
    client.compact(int(client.status()["header"]["revision"]))  # etcd's periodic compaction

    def freed() -> bool:
        statuses = [client.status(url) for url in urls]
        return all(int(s["dbSizeInUse"]) < int(s["dbSize"]) / 4 for s in statuses)

    assert wait_until(freed, timeout=10, message="the compaction applied everywhere")
    grown = {url: int(client.status(url)["dbSize"]) for url in urls}
    assert min(grown.values()) > 8 * 2**20, grown
    time.sleep(3 * PERIOD)
    assert not said(caplog, "upkeep:")  # a leave under way holds the upkeep back
    client.release_lock(lock)

    def shrunk() -> bool:
        return all(int(client.status(url)["dbSize"]) < 3 * 2**20 for url in urls)

    assert wait_until(shrunk, timeout=30, message="every member defragmented")
    # the last cycle's sentence comes once its defragmentation answered
    assert wait_until(lambda: len(said(caplog, "defragmented, now")) >= len(nodes), timeout=5)
    # the leader is defragmented only once it no longer leads: the upkeep hands leadership
    # over first, unless the leader's agent already moved it off the server Heat deletes
    # next (agent/loop.py `_off_heats_next`, when the first leader is the oldest server)
    handed = said(caplog, "leadership handed to") + said(caplog, "leadership moved to")
    defragmented = said(caplog, "defragmented, now")
    # one hand-over here; a spontaneous election on a loaded machine may make another
    assert handed and len(defragmented) >= len(nodes), (handed, defragmented)
    done = {n.name for n in nodes if any(f"upkeep: {n.name}'s db" in d for d in defragmented)}
    assert done == {n.name for n in nodes}, defragmented
    assert client.lock_holder(DEFRAG_LOCK) is None  # the lock is given back each time
    assert client.leader_id() != first_leader
    assert client.get(FILL_PREFIX + "3") == FILL_VALUE
    assert not lab.record.deleted


# --- plan(): the rule alone ------------------------------------------------------------------

MiB = 2**20


def db(name: str, size: float, free: float, leader: bool = False) -> DbStatus:
    return DbStatus(
        hash(name) % 1000,
        name,
        f"http://{name}",
        int(size * MiB),
        int(size * MiB * (1 - free)),
        leader,
    )


def test_the_follower_with_the_most_free_pages_goes_first_the_leader_after_a_handover():
    settings = EtcdSettings(defrag_min_bytes=64 * MiB, defrag_free_share=0.5)
    # nothing due: small files, or big files with little free
    assert plan([db("a", 10, 0.9), db("b", 500, 0.3, leader=True)], settings).kind == "none"
    # followers first (the most free of them), the leader last: one hand-over in all
    step = plan([db("a", 100, 0.6), db("b", 100, 0.8), db("c", 100, 0.9, leader=True)], settings)
    assert step.kind == "defragment" and step.member.name == "b"
    step = plan([db("a", 100, 0.1), db("b", 100, 0.2), db("c", 100, 0.9, leader=True)], settings)
    assert step.kind == "hand-over" and step.member.name == "c" and step.target.name == "a"
    step = plan([db("a", 100, 0.6), db("b", 100, 0.8), db("c", 100, 0.1, leader=True)], settings)
    assert step.kind == "defragment" and step.member.name == "b"
    alone = plan([db("c", 100, 0.9, leader=True)], settings)
    assert alone.kind == "defragment" and "only member" in alone.reason
    # a threshold is a threshold: 0.5 free is due at 0.5
    assert plan([db("a", 64, 0.5)], settings).kind == "defragment"


def test_nospace_defragments_followers_first():
    order = nospace_order([db("c", 1, 0), db("a", 1, 0, leader=True), db("b", 1, 0)])
    assert [s.name for s in order] == ["b", "c", "a"]
