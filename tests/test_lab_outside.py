"""The outside checks (lab/outside.py): etcdctl against a real cluster, and each judge
fed a view where it must say "no"."""

from __future__ import annotations

import pytest

from lab.chaos import check_rebooted
from lab.events import Event
from lab.outside import (
    Etcdctl,
    OutsideView,
    members_kept,
    one_healthy_cluster,
    same_members,
    writes_readable,
)
from lab.report import no_heat_writes
from tests.tools import need


def view(
    members: dict[str, int] | None = None,
    *,
    cluster_ids: tuple[int, ...] = (0xC1,),
    leader: int = 1,
    healthy: tuple[bool, ...] = (True, True, True),
    learners: tuple[str, ...] = (),
    errors: tuple[str, ...] = (),
) -> OutsideView:
    members = {"a": 1, "b": 2, "c": 3} if members is None else members
    endpoints = [f"http://127.0.0.{n}:2379" for n in range(1, len(healthy) + 1)]
    ids = list(cluster_ids) + [cluster_ids[-1]] * (len(endpoints) - len(cluster_ids))
    return OutsideView(
        endpoints,
        members=[{"ID": i, "name": n, "isLearner": n in learners} for n, i in members.items()],
        statuses=[
            {"Endpoint": e, "Status": {"header": {"cluster_id": c}, "leader": leader}}
            for e, c in zip(endpoints, ids, strict=True)
        ],
        health=[{"endpoint": e, "health": h} for e, h in zip(endpoints, healthy, strict=True)],
        errors=list(errors),
    )


def test_one_healthy_cluster_says_yes_to_a_whole_cluster():
    assert one_healthy_cluster(view(), 3).ok


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        (view(cluster_ids=(0xC1, 0xC2)), "two cluster ids: a split brain"),
        (view(healthy=(True, False, True)), "an endpoint unhealthy"),
        (view(leader=9), "a leader nobody lists"),
        (view({"a": 1, "b": 2}), "a member missing"),
        (view(learners=("c",)), "a learner left"),
        (view(errors=("member list: timed out",)), "etcdctl failed"),
    ],
)
def test_one_healthy_cluster_says_no(broken, why):
    assert not one_healthy_cluster(broken, 3).ok, why


def test_same_members_says_no_to_a_member_removed_and_added_again():
    assert same_members(view(), view(), "x").ok
    readded = same_members(view(), view({"a": 1, "b": 2, "c": 7}), "x")
    assert not readded.ok and "changed" in readded.detail
    assert not same_members(view({}), view({}), "x").ok  # nothing seen is no proof


def test_members_kept_says_no_when_the_majority_lost_one_of_its_own():
    before = view({"a": 1, "b": 2, "c": 3})
    # the cut-off c removed and d in its place: the majority kept a and b
    assert members_kept(before, view({"a": 1, "b": 2, "d": 4}), ["c"], "x").ok
    assert not members_kept(before, view({"a": 1, "d": 4}), ["c"], "x").ok  # b gone
    assert not members_kept(before, view({"a": 1, "b": 9, "d": 4}), ["c"], "x").ok  # re-added
    failed = view({"a": 1, "b": 2}, errors=("member list: timed out",))
    assert not members_kept(before, failed, ["c"], "x").ok
    assert not members_kept(view({"c": 3}), view({}), ["c"], "x").ok  # nothing kept to see


def test_no_heat_writes_says_no_to_a_mark_from_the_cut_off_side():
    assert no_heat_writes([], "a").ok
    assert not no_heat_writes(["PATCH /heat-api/v1/p/stacks/s/i/resources/r"], "a").ok


def test_writes_readable_says_no_to_a_lost_write():
    keys = [f"/lab/writes/{n}" for n in range(10)]
    assert writes_readable(list(range(10)), keys, "/lab/writes/").ok
    lost = writes_readable(list(range(10)), keys[:7] + keys[8:], "/lab/writes/")
    assert not lost.ok and "1 missing (first [7])" in lost.detail
    assert not writes_readable([], [], "/lab/writes/").ok


def test_check_rebooted_says_no_when_a_rebooted_member_was_replaced():
    ids = {"a": 1, "b": 2, "c": 3}
    assert check_rebooted([], 0, 10, ["a"], ids, ids, True).ok
    removed = [Event(5.0, "removed", "a", "")]
    assert not check_rebooted(removed, 0, 10, ["a"], ids, ids, True).ok
    assert not check_rebooted([], 0, 10, ["a"], ids, {**ids, "a": 9}, True).ok
    assert not check_rebooted([], 0, 10, ["a"], ids, ids, False).ok
    # the same kind of event for another node, or outside the round, is not the reboot's
    assert check_rebooted([Event(5.0, "removed", "x", "")], 0, 10, ["a"], ids, ids, True).ok
    assert check_rebooted([Event(11.0, "removed", "a", "")], 0, 10, ["a"], ids, ids, True).ok


@pytest.mark.etcd
def test_etcdctl_sees_a_real_cluster_and_its_keys(etcd_cluster):
    need("etcdctl")
    cluster = etcd_cluster(3)
    urls = [node.client_url for node in cluster.nodes]
    for n in range(5):
        cluster.nodes[0].post("kv/put", {"key": _b64(f"/lab/writes/{n}"), "value": _b64("v")})
    etcdctl = Etcdctl()
    seen = etcdctl.look(urls)
    assert one_healthy_cluster(seen, 3).ok, seen.to_json()
    assert set(seen.member_ids()) == {node.name for node in cluster.nodes}
    assert writes_readable(list(range(5)), etcdctl.keys(urls, "/lab/writes/"), "/lab/writes/").ok
    cluster.nodes[2].kill()
    down = etcdctl.look(urls)
    assert not one_healthy_cluster(down, 3).ok  # a dead member: etcdctl says so


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()
