"""The automatic restore's judge (agent/disaster.py `verdict`): one case where it says yes,
and for each of its rules a case where it must say no. The whole path, on real etcd, a
real Swift and the real agents, is the lab's `disaster` scenario (tests/test_lab_scenarios.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.backup import servers_of
from agent.disaster import Evidence, RollCall, restorer, verdict
from agent.snapshot import CloudNode, NodeIdentity
from infra.settings import SettingsError, parse_settings
from tests.test_settings import REQUIRED

SINCE = 1796061600.0
"""Swift's X-Timestamp of the restorer's first roll call of the episode."""
LATER = SINCE + 5
EARLIER = SINCE - 60
OLD = ("old-1", "old-2", "old-3")
"""The servers of the snapshot's cluster, deleted with the zone."""


def node(name: str, status: str = "ACTIVE") -> CloudNode:
    return CloudNode(id=f"id-{name}", name=name, ip="10.0.0.1", status=status, created_at=0.0)


def evidence(**changes) -> Evidence:
    nodes = [node("etcd-04"), node("etcd-05"), node("etcd-06")]
    base = Evidence(
        me=NodeIdentity(id="id-etcd-04", name="etcd-04", ip="10.0.0.4"),
        nodes=nodes,
        snapshot="snapshots/20261130T175900Z-r0000000000000150-etcd-02.db",
        snapshot_servers=list(OLD),
        rolls={n.id: RollCall(n.id, n.name, holds_data=False, modified=LATER) for n in nodes[1:]},
        since=SINCE,
        waited=90.0,
        window=60.0,
        gone=lambda server: "deleted" if server in OLD else None,
    )
    return replace(base, **changes)


def test_every_rule_met_the_restorer_restores():
    assert verdict(evidence()) == []


def test_only_the_first_server_up_restores():
    others = evidence(me=NodeIdentity(id="id-etcd-05", name="etcd-05", ip="10.0.0.5"))
    assert verdict(others) == ["etcd-04 restores, not this node"]
    # the first by name that is up: a FAILED or deleted server is passed over
    nodes = [node("etcd-04", "FAILED"), node("etcd-05"), node("etcd-06", "DELETED")]
    assert restorer(nodes).name == "etcd-05"
    assert restorer([node("etcd-04", "DELETED")]) is None


def test_not_before_the_window():
    assert verdict(evidence(waited=30.0)) == ["no cluster for 30 s of the 60 s window"]


def test_a_snapshot_that_names_no_servers_is_not_restored_by_itself():
    (reason,) = verdict(evidence(snapshot_servers=None))
    assert "names no servers" in reason


def test_an_old_server_nova_still_has_holds_it_back():
    # old-2 is SHUTOFF, or rebooting in another zone: it may come back with newer data
    gone = evidence(gone=lambda server: "deleted" if server != "old-2" else None)
    assert verdict(gone) == ["old-2: not gone by Nova, and no word from its agent"]


def test_a_server_of_the_group_that_says_nothing_holds_it_back():
    rolls = evidence().rolls
    del rolls["id-etcd-06"]
    assert verdict(evidence(rolls=rolls)) == [
        "etcd-06: not gone by Nova, and no word from its agent"
    ]


def test_a_roll_call_from_before_this_episode_does_not_count():
    stale = evidence().rolls
    stale["id-etcd-05"] = RollCall("id-etcd-05", "etcd-05", holds_data=False, modified=EARLIER)
    assert verdict(evidence(rolls=stale)) == [
        "etcd-05: not gone by Nova, and no word from its agent"
    ]


def test_a_server_holding_member_data_holds_it_back():
    rolls = evidence().rolls
    rolls["id-etcd-05"] = RollCall("id-etcd-05", "etcd-05", holds_data=True, modified=LATER)
    assert verdict(evidence(rolls=rolls)) == ["etcd-05 holds member data"]
    # an old server that lost its disk to a rebuild and says so is no longer a suspect
    rolls = evidence().rolls
    rolls["old-1"] = RollCall("old-1", "etcd-01", holds_data=False, modified=LATER)
    assert verdict(evidence(rolls=rolls, gone=lambda s: "deleted" if s != "old-1" else None)) == []


def test_a_server_nova_confirms_gone_needs_no_roll_call():
    # etcd-06's server is in ERROR: Nova says so, its agent need not
    rolls = evidence().rolls
    del rolls["id-etcd-06"]
    gone = evidence(
        rolls=rolls, gone=lambda s: "in ERROR" if s == "id-etcd-06" or s in OLD else None
    )
    assert verdict(gone) == []


def test_the_snapshot_names_its_servers_in_its_metadata():
    headers = {
        "x-object-meta-sha256": "abc",
        "x-object-meta-server-2": "old-2",
        "x-object-meta-server-1": "old-1",
        "x-object-meta-revision": "150",
    }
    assert servers_of(headers) == ["old-1", "old-2"]
    assert servers_of({"x-object-meta-sha256": "abc"}) is None


def test_auto_recovery_needs_backups():
    with pytest.raises(SettingsError) as error:
        parse_settings({**REQUIRED, "disaster_recovery": "auto"})
    text = str(error.value)
    assert "disaster_recovery" in text and "'auto'" in text and "backups: swift" in text
    ok = parse_settings({**REQUIRED, "disaster_recovery": "auto", "backups": "swift"})
    assert ok.disaster_recovery == "auto"
