"""A fenced removal that etcd refuses leaves no record behind, and the lock is usable again."""

from __future__ import annotations

import time

import pytest

from agent.etcd import EtcdClient, EtcdError, UnhealthyCluster

pytestmark = pytest.mark.etcd


def test_a_refused_removal_takes_its_record_back(etcd_cluster):
    cluster = etcd_cluster(3)
    client = EtcdClient(cluster.endpoints, prefix="/autoscale-etcd/fence")
    lock = client.acquire_lock("kill", "node-a", ttl=30)
    assert lock is not None
    no_such_member = 0x1234
    with pytest.raises(EtcdError):
        client.fenced_remove(lock, no_such_member, {"member": "ghost", "reason": "test"})
    # the removal did not happen, so nothing says it did
    assert client.last_removal() is None
    assert client.get(client.removal_key(no_such_member)) is None
    assert len(client.members()) == 3
    # a real removal under the same lock works and is recorded; in the first 5 s after
    # the members connected etcd refuses it ("unhealthy cluster"): no record then either
    victim = cluster.nodes[2]
    member_id = cluster.member_id(victim)
    record = {"member": victim.name, "reason": "test"}
    deadline = time.monotonic() + 20
    while True:
        try:
            assert client.fenced_remove(lock, member_id, record)
            break
        except UnhealthyCluster:
            assert client.last_removal() is None
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert client.last_removal()["member"] == victim.name
    assert len(client.members(check_health=False)) == 2
