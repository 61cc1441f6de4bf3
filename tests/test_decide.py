"""decide(): every rule of DESIGN.md as a table test, and its invariants as properties."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.decide import (
    KILL_LOCK,
    MAKE_LOCK,
    Action,
    decide,
    heat_order,
    heats_next,
    next_failmarker,
    quorum,
    starting_over,
    track_unhealthy,
)
from agent.settings import AgentSettings, OpenStackCloud, ScalingSettings
from agent.snapshot import (
    CloudNode,
    Member,
    MetricReading,
    NodeIdentity,
    PeerReading,
    Snapshot,
)
from tests.tools import need_module

SETTINGS = AgentSettings(
    cluster_name="t",
    cloud=OpenStackCloud(
        auth_url="http://127.0.0.1:9/identity/v3",
        application_credential_id="c",
        application_credential_secret="s",
        stack_id="lab/1",
    ),
    scaling=ScalingSettings(
        capacity=3,
        min_cluster=3,
        max_cluster=5,
        scaledownperiod=200,
        lockattemptperiod=10,
        failtolerance=20,
        dead_member_periods=3,
        scaleupcooldown=240,
    ),
)
NO_HOOK = SETTINGS
NODE_SCOPE = SETTINGS.with_changes(metric={"scope": "node"})
WITH_HOOK = SETTINGS.with_changes(hooks={"configscript": "/etc/autoscale-etcd/hooks/configscript"})
IDLE = MetricReading("NETDATA_SYSTEM_CPU_IDLE", 97.0)
BUSY = MetricReading("NETDATA_SYSTEM_CPU_IDLE", 12.0)
BROKEN = MetricReading("NETDATA_SYSTEM_CPU_IDLE", None, "netdata timed out")


def member(n: int, *, healthy: bool | None = True, leader: bool = False, learner: bool = False):
    return Member(
        id=0x1000 + n,
        name=f"node{n}",
        peer_urls=(f"http://127.0.0.{n}:12380",),
        client_urls=(f"http://127.0.0.{n}:12379",),
        is_learner=learner,
        healthy=healthy,
        is_leader=leader,
    )


def unstarted(n: int) -> Member:
    return Member(id=0x1000 + n, name="", peer_urls=(f"http://127.0.0.{n}:12380",), client_urls=())


def snap(
    count: int = 5,
    *,
    me: int = 1,
    leader: int = 1,
    metric: MetricReading = IDLE,
    unhealthy: tuple[int, ...] = (),
    **changes: object,
) -> Snapshot:
    members = tuple(
        member(n, healthy=n not in unhealthy, leader=n == leader) for n in range(1, count + 1)
    )
    base = Snapshot(
        now=10_000.0,
        me=NodeIdentity(id=f"srv{me}", name=f"node{me}", ip=f"127.0.0.{me}"),
        members=members,
        metric=metric,
        configured=True,
        cloud_nodes=group(count),
        readings=readings({f"node{n}": metric.value for n in range(1, count + 1)}),
    )
    return replace(base, **changes)


def readings(values: dict[str, float | None], *, age: float = 5.0) -> dict[str, PeerReading]:
    """The members' published readings (what every member read, `age` s before now)."""
    return {
        name: PeerReading(name, value, 10_000.0 - age)
        for name, value in values.items()
        if value is not None
    }


def group(count: int, *, oldest_first: int = 1, **status: str) -> tuple[CloudNode, ...]:
    """The group's servers; node<oldest_first> was created first, then the others in order,
    all of them within join_timeout (900 s) of the snapshots' `now` (10 000)."""
    order = [oldest_first] + [n for n in range(1, count + 1) if n != oldest_first]
    return tuple(
        CloudNode(
            id=f"srv{n}",
            name=f"node{n}",
            ip=f"127.0.0.{n}",
            status=status.get(f"node{n}", "ACTIVE"),  # type: ignore[arg-type]
            created_at=9_500.0 + rank,
        )
        for rank, n in enumerate(order)
    )


def act(snapshot: Snapshot, settings: AgentSettings = NO_HOOK) -> Action:
    return decide(snapshot, settings)


# --- scale-down ------------------------------------------------------------------


def test_idle_oldest_server_above_capacity_leaves_under_the_kill_lock():
    action = act(snap(5, me=2, metric=IDLE, cloud_nodes=group(5, oldest_first=2)))
    assert action.kind == "leave" and action.lock == KILL_LOCK
    assert action.member is not None and action.member.name == "node2"
    assert "5 members > capacity 3" in action.reason


def test_only_the_server_heat_would_delete_leaves():
    """Heat's scale-down deletes FAILED members first, then the oldest: only that one may go."""
    younger = act(snap(5, me=2, metric=IDLE))  # node1 is older
    assert younger.kind == "wait" and "oldest server (node1)" in younger.reason
    failed = act(snap(5, me=1, leader=2, metric=IDLE, cloud_nodes=group(5, node4="FAILED")))
    assert failed.kind == "wait" and "node4 is FAILED" in failed.reason
    building = act(snap(5, me=1, leader=2, metric=IDLE, cloud_nodes=group(5, node5="BUILD")))
    assert building.kind == "wait"
    blind = act(snap(5, me=1, metric=IDLE, cloud_nodes=None))
    assert blind.kind == "wait" and "could not be listed" in blind.reason


def test_nobody_leaves_while_the_group_is_being_updated():
    """Heat's adjust() drops every signal while the group resource is not COMPLETE (a
    `pulumi up`'s rolling update, its pauses included): the leave's scale-down would be
    lost, and a member stack updated in place holds its new server in the oldest member."""
    nodes = group(5, oldest_first=2)
    assert act(snap(5, me=2, metric=IDLE, cloud_nodes=nodes)).kind == "leave"  # control
    updating = tuple(replace(n, group_updating=True) for n in nodes)
    action = act(snap(5, me=2, metric=IDLE, cloud_nodes=updating))
    assert action.kind == "wait" and "being updated" in action.reason


@pytest.mark.parametrize(
    ("snapshot", "why"),
    [
        (snap(3, me=1), "at capacity"),
        (snap(2, me=1), "below capacity"),
        (snap(5, me=1, metric=BUSY), "busy: 12 is not > 90"),
        (snap(5, me=1, metric=BROKEN), "metric unreadable"),
        (snap(5, me=1, kill_lock_holder="node4"), "someone else removes first"),
        (snap(5, me=1, unhealthy=(4,)), "a member is unhealthy"),
    ],
)
def test_no_scale_down(snapshot, why):
    assert not act(snapshot).removes, why


def test_metric_error_is_no_decision_and_says_why():
    action = act(snap(5, me=2, metric=BROKEN), NODE_SCOPE)
    assert action.kind == "wait" and "netdata timed out" in action.reason
    assert "5 members > capacity 3 but no metric" in action.reason


def test_no_scale_down_while_a_member_joins():
    joining = snap(5, me=2)
    members = (*joining.members, member(6, learner=True))
    assert act(replace(joining, members=members)).kind == "wait"
    assert act(replace(joining, members=(*joining.members, unstarted(6)))).kind == "wait"


# --- the cluster decides (downmetric_scope: cluster, the default) ---------------------------

SKEWED = {"node1": 60.0, "node2": 99.0, "node3": 99.0, "node4": 99.0, "node5": 99.0}
"""The oldest server (node1) 40 % busy, the others idle: the mean idle is 91.2."""


def test_an_idle_cluster_shrinks_although_its_oldest_server_is_busy():
    skewed = snap(5, me=1, metric=MetricReading("NETDATA_SYSTEM_CPU_IDLE", 60.0))
    skewed = replace(skewed, readings=readings(SKEWED))
    action = act(skewed)
    assert action.kind == "leave" and action.member is not None
    assert "mean NETDATA_SYSTEM_CPU_IDLE 91.2 over 5 members (60.0..99.0) > 90" in action.reason
    # node scope keeps the original's rule: the oldest's own 60 % idle is not above 90
    assert act(skewed, NODE_SCOPE).kind != "leave"


def test_one_hot_member_keeps_the_mean_from_crossing():
    """hot-one: a node at 100 % busy among four idle ones: mean idle 79.2, nobody leaves."""
    hot = dict(SKEWED, node1=99.0, node3=0.0)
    action = act(replace(snap(5, me=1), readings=readings(hot)))
    assert action.kind != "leave"
    assert "mean NETDATA_SYSTEM_CPU_IDLE 79.2 over 5 members (0.0..99.0)" in _steady(hot)


def _steady(values: dict[str, float]) -> str:
    from agent.decide import load_verdict

    return load_verdict(replace(snap(5, me=1), readings=readings(values)), NO_HOOK)[1]


@pytest.mark.parametrize(
    ("values", "age", "why"),
    [
        ({**SKEWED, "node4": None}, 5.0, "no metric reading from node4"),
        (SKEWED, 31.0, "the reading of node1 is 31s old"),
    ],
)
def test_a_missing_or_stale_reading_means_no_decision(values, age, why):
    action = act(replace(snap(5, me=1), readings=readings(values, age=age)))
    assert action.kind == "wait" and why in action.reason and "no decision" in action.reason
    blind = act(replace(snap(5, me=1), readings=None))
    assert blind.kind == "wait" and "readings could not be read" in blind.reason


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.floats(0, 100)), min_size=4, max_size=7),
    age=st.floats(0, 60),
)
def test_cluster_scope_leaves_only_on_every_fresh_reading_whose_mean_crosses(values, age):
    count = len(values)
    snapshot = replace(
        snap(count, me=1, cloud_nodes=group(count)),
        readings=readings({f"node{n}": v for n, v in enumerate(values, 1)}, age=age),
    )
    action = decide(snapshot, NO_HOOK)
    if action.kind == "leave":
        assert count > NO_HOOK.scaling.capacity
        assert None not in values and age <= 3 * NO_HOOK.scaling.lockattemptperiod
        assert sum(values) / count > NO_HOOK.metric.threshold  # type: ignore[arg-type]


def test_comparators_compare_numbers():
    low = NO_HOOK.with_changes(metric={"comparator": "<", "threshold": 10})
    assert act(snap(5, me=1, metric=MetricReading("M", 9.5)), low).kind == "leave"
    assert act(snap(5, me=1, metric=MetricReading("M", 10.0)), low).kind != "leave"
    # as strings, "9.5" > "10" would be true: numbers are compared
    high = NO_HOOK.with_changes(metric={"comparator": ">", "threshold": 10})
    assert act(snap(5, me=1, metric=MetricReading("M", 9.5)), high).kind != "leave"


# --- failmarker ------------------------------------------------------------------


def test_failmarker_counts_plus_five_minus_one_floor_zero():
    assert next_failmarker(0, etcd_call_ok=False) == 5
    assert next_failmarker(5, etcd_call_ok=True) == 4
    assert next_failmarker(0, etcd_call_ok=True) == 0


def test_failmarker_above_tolerance_asks_for_its_replacement_when_rest_is_healthy():
    action = act(snap(3, me=2, leader=1, failmarker=25, own_etcd_ok=False, metric=BUSY))
    assert action.kind == "replace_self" and action.lock == KILL_LOCK
    assert action.member is not None and action.member.name == "node2"
    assert "failmarker 25 > 20" in action.reason and "2/2 healthy, leader elsewhere" in (
        action.reason
    )


def test_failmarker_tolerance_is_a_strict_bound():
    """`failtolerance` 20: a marker of 20 is tolerated, 21 is not (the rule is `>`)."""
    at = act(snap(3, me=2, leader=1, failmarker=20, own_etcd_ok=False, metric=BUSY))
    above = act(snap(3, me=2, leader=1, failmarker=21, own_etcd_ok=False, metric=BUSY))
    assert at.kind == "wait" and not at.removes
    assert above.kind == "replace_self" and "failmarker 21 > 20" in above.reason


def test_failmarker_after_recovery_decays_instead_of_removing():
    # after a cluster-wide outage every node has a high marker and sees the rest healthy
    action = act(snap(3, me=2, leader=1, failmarker=60, own_etcd_ok=True, metric=BUSY))
    assert action.kind == "wait" and "answers again" in action.reason


def test_failmarker_at_tolerance_does_nothing():
    action = act(snap(3, me=2, failmarker=20, own_etcd_ok=False, metric=BUSY))
    assert action.kind == "wait" and "failmarker" not in action.reason


def test_failmarker_in_a_cluster_wide_outage_removes_nobody():
    outage = snap(3, me=2, failmarker=60, members=None)
    assert act(outage).kind == "wait"


def test_failmarker_in_a_minority_partition_removes_nobody():
    # this node sees the others unhealthy (it is cut off): it must stay
    action = act(snap(5, me=2, leader=2, unhealthy=(1, 3, 4, 5), failmarker=40, own_etcd_ok=False))
    assert not action.removes and "not seen healthy" in action.reason
    assert "(0/4 healthy)" in action.reason


def test_failmarker_needs_a_leader_elsewhere():
    action = act(snap(3, me=2, leader=2, failmarker=40, own_etcd_ok=False))
    assert not action.removes
    assert "failmarker 40 > 20" in action.reason and "not seen healthy" in action.reason


# --- dead members ----------------------------------------------------------------


def test_dead_member_is_removed_by_the_leaders_agent_at_its_third_failed_check():
    # checks every 10 s: the first failed one 20 s ago, then 10 s ago, now the third
    dead_since = {0x1004: 10_000.0 - 20}
    action = act(snap(5, me=1, leader=1, unhealthy=(4,), unhealthy_since=dead_since))
    assert action.kind == "remove_dead" and action.member is not None
    assert action.member.name == "node4"
    assert "failed 3 health checks in a row" in action.reason


def test_dead_member_not_removed_at_its_second_failed_check():
    for ago in (10, 14.9):  # the second check, even one answered late
        dead_since = {0x1004: 10_000.0 - ago}
        action = act(snap(5, me=1, leader=1, unhealthy=(4,), unhealthy_since=dead_since))
        assert action.kind != "remove_dead", ago


@settings(max_examples=300, deadline=None)
@given(
    periods=st.integers(min_value=1, max_value=6),
    delay=st.lists(st.floats(min_value=0.0, max_value=0.45), min_size=8, max_size=8),
)
def test_a_dead_member_is_convicted_at_exactly_its_nth_failed_check(periods, delay):
    """The agent's own cycle: a cycle starts every period and its observation is taken
    after the health checks, which take their own time (up to 0.45 period here); a member
    that stopped answering is removed at its `dead_member_periods`-th failed check, never
    before, never a period late."""
    lap = 10.0
    config = SETTINGS.with_changes(
        scaling=SETTINGS.scaling.model_copy(update={"dead_member_periods": periods})
    )
    since: dict[int, float] = {}
    failed_checks = 0
    for n, late in enumerate(delay):
        now = 10_000.0 + n * lap + late * lap
        base = snap(5, me=1, leader=1, unhealthy=(4,), now=now)
        since = track_unhealthy(since, base.members, now)
        failed_checks += 1
        action = act(replace(base, unhealthy_since=since), config)
        if failed_checks < periods:
            assert action.kind != "remove_dead", (failed_checks, since, now)
        else:
            assert action.kind == "remove_dead", (failed_checks, since, now)
            break


def test_only_the_leaders_agent_removes_dead_members():
    dead_since = {0x1004: 0.0}
    assert act(snap(5, me=2, leader=1, unhealthy=(4,), unhealthy_since=dead_since)).kind != (
        "remove_dead"
    )


def test_dead_member_kept_when_removal_would_lose_quorum():
    # 5 voters, 3 down: removing one leaves 4 with 2 healthy < quorum(4)=3
    since = {0x1003: 0.0, 0x1004: 0.0, 0x1005: 0.0}
    action = act(snap(5, me=1, leader=1, unhealthy=(3, 4, 5), unhealthy_since=since))
    assert action.kind == "wait" and "short of quorum" in action.reason


def test_unstarted_member_left_by_a_failed_join_is_removed_after_the_window():
    base = snap(3, me=1, leader=1)
    members = (*base.members, unstarted(7))
    action = act(replace(base, members=members, unhealthy_since={0x1007: 0.0}))
    assert action.kind == "remove_dead"


def test_an_entry_that_never_started_gets_whole_periods():
    """Nodes booted together start etcd seconds apart: an initial member not started yet
    is given dead_member_periods whole periods (30 s here), not the 20 s after which a
    member that stopped answering is convicted at its third failed check."""
    base = snap(3, me=1, leader=1)
    members = (*base.members, unstarted(7))
    for ago, removed in ((20, False), (29, False), (30, True)):
        action = act(replace(base, members=members, unhealthy_since={0x1007: 10_000.0 - ago}))
        assert (action.kind == "remove_dead") is removed, ago
    assert "has not started in 30s" in action.reason


def test_an_entry_whose_server_is_still_booting_is_waited_for_join_timeout():
    """Servers created together start etcd minutes apart on a cloud (a plain image installs
    first): an initial entry whose server the group still holds is given join_timeout."""
    base = snap(3, me=1, leader=1)
    late = CloudNode(id="srv7", name="node7", ip="127.0.0.7", status="ACTIVE", created_at=0.0)
    members = (*base.members, unstarted(7))
    for status, ago, removed in (
        ("ACTIVE", 30, False),
        ("ACTIVE", 899, False),
        ("ACTIVE", 901, True),
        ("BUILD", 901, False),  # still booting as far as the cloud knows
    ):
        nodes = (*group(3), replace(late, status=status))
        action = act(
            replace(
                base, members=members, cloud_nodes=nodes, unhealthy_since={0x1007: 10_000.0 - ago}
            )
        )
        assert (action.kind == "remove_dead") is removed, (status, ago)
    blind = replace(base, members=members, cloud_nodes=None, unhealthy_since={0x1007: 9_500.0})
    assert act(blind).kind != "remove_dead"  # the group unread: waited for, not convicted


def test_a_member_whose_server_the_cloud_is_rebooting_is_not_dead():
    dead_since = {0x1004: 10_000.0 - 500}
    rebooting = group(5, node4="BUILD")
    action = act(
        snap(5, me=1, leader=1, unhealthy=(4,), unhealthy_since=dead_since, cloud_nodes=rebooting)
    )
    assert action.kind != "remove_dead"


def stray(ago: float, status: str = "ACTIVE") -> CloudNode:
    return CloudNode(
        id="srv9", name="node9", ip="127.0.0.9", status=status, created_at=10_000.0 - ago
    )  # type: ignore[arg-type]


def test_a_server_that_never_joined_is_replaced_after_join_timeout():
    for status in ("ACTIVE", "BUILD"):
        action = act(snap(3, me=1, leader=1, cloud_nodes=(*group(3), stray(901, status))))
        assert action.kind == "replace_server", status
        assert action.server is not None and action.server.name == "node9"
        assert "node9" in action.reason and "900s (join_timeout)" in action.reason


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"cloud_nodes": (*group(3), stray(899))}, "still within join_timeout"),
        ({"cloud_nodes": (*group(3), stray(901)), "leader": 2}, "not the leader's agent"),
        ({"cloud_nodes": (*group(3), stray(901)), "join_lock_holder": "node9"}, "joining now"),
        ({"cloud_nodes": (*group(3), stray(901)), "leaving": frozenset({"node9"})}, "leaving"),
        ({"cloud_nodes": (*group(3), stray(901, "FAILED"))}, "marked already"),
        ({"cloud_nodes": None}, "the group unread"),
    ],
)
def test_no_server_replaced(changes, why):
    assert act(snap(3, **{"me": 1, "leader": 1, **changes})).kind != "replace_server", why


def test_a_member_stack_s_new_server_counts_from_its_own_boot():
    """A member stack updated in place keeps the member's creation time (Heat's order) for
    a server booted a minute ago: join_timeout counts from the server's own."""
    old_member = stray(5000)
    fresh = replace(old_member, booted_at=10_000.0 - 60)
    assert act(snap(3, me=1, leader=1, cloud_nodes=(*group(3), old_member))).kind == (
        "replace_server"
    )  # the control: the member's time alone would make it a stray
    assert act(snap(3, me=1, leader=1, cloud_nodes=(*group(3), fresh))).kind != "replace_server"
    late = replace(old_member, booted_at=10_000.0 - 901)
    assert act(snap(3, me=1, leader=1, cloud_nodes=(*group(3), late))).kind == "replace_server"


def test_a_server_past_join_timeout_is_not_counted_as_coming():
    """Below capacity, a server that may still join holds back a scale-up; one past its
    join_timeout does not (it is replaced)."""
    coming = act(snap(2, me=1, leader=1, cloud_nodes=(*group(2), stray(100))))
    assert coming.kind == "wait" and "1 joining already" in coming.reason
    late = act(snap(2, me=1, leader=1, cloud_nodes=(*group(2), stray(901))))
    assert late.kind == "replace_server"


def test_a_join_in_progress_is_not_a_dead_member():
    base = snap(3, me=1, leader=1)
    joining = replace(
        base,
        members=(*base.members, unstarted(7)),
        unhealthy_since={0x1007: 0.0},
        join_lock_holder="node7",
    )
    assert act(joining).kind != "remove_dead"


def test_a_boot_restarts_the_count_so_the_window_runs_from_its_end():
    """While Nova reboots a member's server its time down is a boot, not a death: the
    record restarts at every cycle of the boot; once booted, the window runs again."""
    down = snap(3, unhealthy=(2,)).members
    first = track_unhealthy({}, down, now=100.0)
    booting = track_unhealthy(first, down, now=160.0, booting=frozenset({0x1002}))
    assert booting == {0x1002: 160.0}
    assert track_unhealthy(booting, down, now=170.0) == {0x1002: 160.0}
    # the rule then gives it the whole window after the boot, not before it
    late = snap(3, me=1, leader=1, unhealthy=(2,), now=170.0, unhealthy_since={0x1002: 160.0})
    assert act(late).kind != "remove_dead"
    later = replace(late, now=200.0)
    assert act(later).kind == "remove_dead"


def test_a_promoted_learner_starts_its_count_again():
    """A learner catching up a large snapshot fails its health checks for minutes, under
    the join lock; once promoted, its first missed check (a loaded host) must not convict
    it by its record as a learner. A learner left once the lock is gone is counted."""
    base = snap(4, me=1, leader=1, unhealthy=(4,))
    learning = replace(
        base,
        members=tuple(replace(m, is_learner=m.id == 0x1004) for m in base.members),
        join_lock_holder="node4",
    )
    assert starting_over(learning) == {0x1004}
    assert starting_over(replace(learning, join_lock_holder=None)) == frozenset()
    since = track_unhealthy({}, learning.members, now=100.0)
    for now in (200.0, 300.0, 400.0):  # cycles of the catch-up
        since = track_unhealthy(since, learning.members, now, starting_over(learning))
    assert since == {0x1004: 400.0}
    promoted = replace(base, now=400.5, unhealthy_since=since)  # the lock is freed
    assert act(promoted).kind != "remove_dead"
    assert act(replace(promoted, unhealthy_since={0x1004: 100.0})).kind == "remove_dead"


def test_a_member_being_defragmented_is_not_counted_dead():
    """It serves nothing while etcd rewrites its file (minutes for gigabytes): each cycle
    its count starts over; once the defragmentation lock is gone it is counted again."""
    base = snap(3, me=1, leader=1, unhealthy=(3,), now=400.0)
    name = next(m.name for m in base.members if m.id == 0x1003)
    busy = replace(base, defragmenting=name, unhealthy_since={0x1003: 100.0})
    assert starting_over(busy) == {0x1003}
    since = track_unhealthy({0x1003: 100.0}, busy.members, 400.0, starting_over(busy))
    assert since == {0x1003: 400.0}
    assert act(replace(busy, unhealthy_since=since)).kind != "remove_dead"
    assert act(replace(busy, defragmenting=None)).kind == "remove_dead"


def test_track_unhealthy_keeps_first_time_and_ignores_blind_cycles():
    first = track_unhealthy({}, snap(3, unhealthy=(2,)).members, now=100.0)
    assert first == {0x1002: 100.0}
    assert track_unhealthy(first, snap(3, unhealthy=(2,)).members, now=110.0) == first
    assert track_unhealthy(first, None, now=120.0) == first
    assert track_unhealthy(first, snap(3).members, now=130.0) == {}


# --- scale up, configscript, removal ---------------------------------------------


def test_below_capacity_leader_asks_for_one_more_under_the_make_lock():
    action = act(snap(2, me=1, leader=1))
    assert action.kind == "scale_up" and action.lock == MAKE_LOCK


def test_no_scale_up_inside_cooldown_or_when_a_server_is_coming():
    assert act(snap(2, me=1, leader=1, last_scale_up=10_000.0 - 100)).kind != "scale_up"
    building = CloudNode(id="s9", name="node9", ip="127.0.0.9", status="BUILD", created_at=9_900)
    assert act(snap(2, me=1, leader=1, cloud_nodes=(building,))).kind == "wait"
    assert act(snap(2, me=2, leader=1)).kind != "scale_up"


def test_a_failed_server_left_in_the_group_is_replaced_by_the_leaders_agent():
    # Heat ignored the first +1 (cooldown): the cluster is back at capacity, the FAILED
    # server is still there, so the leader asks again once the cooldown is over
    failed = group(4, node4="FAILED")
    action = act(snap(3, me=1, leader=1, cloud_nodes=failed, last_scale_up=10_000.0 - 300))
    assert action.kind == "scale_up" and action.lock == MAKE_LOCK
    assert "node4 is FAILED" in action.reason
    assert act(snap(3, me=1, leader=1, cloud_nodes=failed, last_scale_up=10_000.0 - 100)).kind != (
        "scale_up"
    )
    assert act(snap(3, me=2, leader=1, cloud_nodes=failed)).kind != "scale_up"
    building = group(5, node4="FAILED", node5="BUILD")
    assert act(snap(3, me=1, leader=1, cloud_nodes=building)).kind == "wait"


def test_configscript_runs_once_after_joining_as_a_voter():
    assert act(snap(3, configured=False), WITH_HOOK).kind == "configure"
    assert act(snap(3, configured=True), WITH_HOOK).kind != "configure"
    assert act(snap(3, configured=False), NO_HOOK).kind != "configure"


def test_removed_node_stops():
    others = snap(3)
    action = act(replace(others, me=NodeIdentity(id="x", name="node9", ip="127.0.0.9")))
    assert action.kind == "stop"


# --- properties ------------------------------------------------------------------

healths = st.sampled_from([True, False, None])


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    count = draw(st.integers(1, 7))
    me = draw(st.integers(1, count))
    leader = draw(st.integers(0, count))
    members = tuple(
        member(n, healthy=draw(healths), leader=n == leader) for n in range(1, count + 1)
    )
    metric = draw(
        st.one_of(
            st.builds(MetricReading, st.just("M"), st.floats(0, 100)),
            st.just(BROKEN),
        )
    )
    return Snapshot(
        now=1000.0,
        me=NodeIdentity(id=f"s{me}", name=f"node{me}", ip=f"127.0.0.{me}"),
        members=draw(st.one_of(st.just(members), st.none())),
        metric=metric,
        kill_lock_holder=draw(st.sampled_from([None, "node1", "other"])),
        failmarker=draw(st.integers(0, 100)),
        own_etcd_ok=draw(st.booleans()),
        unhealthy_since=draw(
            st.dictionaries(st.integers(0x1001, 0x1007), st.floats(0, 1000), max_size=3)
        ),
        configured=True,
        cloud_nodes=draw(st.one_of(st.none(), st.just(group(count, oldest_first=me)))),
        readings=draw(
            st.one_of(
                st.none(),
                st.builds(
                    lambda values, age: readings(
                        {f"node{n}": v for n, v in enumerate(values, 1)}, age=age
                    ),
                    st.lists(st.one_of(st.none(), st.floats(0, 100)), min_size=7, max_size=7),
                    st.floats(0, 60),
                ),
            )
        ),
    )


@settings(max_examples=400, deadline=None)
@given(snapshots())
def test_no_scale_down_removal_at_or_below_capacity(snapshot):
    action = decide(snapshot, NO_HOOK)
    if action.kind == "leave":
        assert len(snapshot.voters) > NO_HOOK.scaling.capacity


@settings(max_examples=400, deadline=None)
@given(snapshots())
def test_no_removal_on_a_metric_error(snapshot):
    broken = replace(snapshot, metric=BROKEN)
    assert decide(broken, NO_HOOK).kind != "leave"  # a failing node may be replaced, no more


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_no_removal_in_a_cluster_wide_outage(snapshot):
    outage = replace(snapshot, members=None, failmarker=snapshot.failmarker + 100)
    assert not decide(outage, NO_HOOK).removes
    # everyone unhealthy: nobody may remove anyone
    if snapshot.members:
        sick = tuple(replace(m, healthy=False) for m in snapshot.members)
        assert not decide(replace(snapshot, members=sick), NO_HOOK).removes


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_a_removal_always_keeps_quorum(snapshot):
    action = decide(snapshot, NO_HOOK)
    if action.removes and action.member is not None:
        remaining = [m for m in snapshot.voters if m.id != action.member.id]
        assert len([m for m in remaining if m.healthy]) >= quorum(len(remaining))


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_no_scale_down_while_someone_holds_the_kill_lock(snapshot):
    held = replace(snapshot, kill_lock_holder="someone-else")
    assert decide(held, NO_HOOK).kind not in ("leave", "replace_self")


@settings(max_examples=60, deadline=None)
@given(
    idle=st.lists(st.booleans(), min_size=5, max_size=5),
    offsets=st.lists(st.floats(0, 9.9), min_size=5, max_size=5),
)
def test_never_two_removals_inside_one_scaledownperiod(idle, offsets):
    """Five agents, each on its own clock phase, share a kill lock whose TTL is the period."""
    period = NO_HOOK.scaling.scaledownperiod
    alive = {n: True for n in range(1, 6)}
    lock_until = -1.0
    removals: list[float] = []
    for tick in range(0, 150):
        for n in range(1, 6):
            now = tick * 10 + offsets[n - 1]
            if not alive[n]:
                continue
            holder = "someone" if now < lock_until else None
            members = tuple(
                member(k, leader=k == min(k2 for k2 in alive if alive[k2]))
                for k in range(1, 6)
                if alive[k]
            )
            snapshot = Snapshot(
                now=now,
                me=NodeIdentity(id=f"s{n}", name=f"node{n}", ip=f"127.0.0.{n}"),
                members=members,
                metric=IDLE if idle[n - 1] else BUSY,
                kill_lock_holder=holder,
                configured=True,
                cloud_nodes=tuple(c for c in group(5) if alive[int(c.name[4:])]),
            )
            action = decide(snapshot, NODE_SCOPE)
            if action.kind == "leave":
                # decide must never choose to leave while it sees the lock held
                assert holder is None, (now, lock_until, action.reason)
                lock_until = now + period
                alive[n] = False
                removals.append(now)
    assert all(b - a >= period for a, b in itertools.pairwise(removals))
    assert sum(alive.values()) >= NO_HOOK.scaling.capacity
    # Heat's order: the oldest leaves first, so the idle ones leave only while the oldest is
    if idle[0] and idle[1]:
        assert len(removals) == 2


# --- Heat's order: which server Heat deletes next ------------------------------------------


class _HeatResource:
    """What heat.common.grouputils.get_members reads of a member resource."""

    FAILED = "FAILED"

    def __init__(self, name: str, status: str, created_time: int) -> None:
        self.name, self.status, self.created_time = name, status, created_time


class _HeatGroup:
    def __init__(self, resources: list[_HeatResource]) -> None:
        self._resources = {r.name: r for r in resources}

    def nested(self) -> dict[str, _HeatResource]:
        return self._resources


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ACTIVE", "FAILED", "BUILD"]),
            st.floats(0, 5, allow_nan=False),
            st.text("abcxyz", min_size=4, max_size=4),
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda t: t[2],
    )
)
def test_heat_order_is_heats_own_order_of_members(members):
    """heat_order against grouputils.get_members on the same members, as Heat's API shows
    them: `creation_time` to the second (so several share a second), the resource name as
    the tie-break, and server names that sort otherwise."""
    need_module("heat")
    from heat.common import grouputils

    nodes = [
        CloudNode(
            id=f"id-{res}",
            name=f"server-{9 - i}",
            ip=None,
            status=status,  # type: ignore[arg-type]
            created_at=1_000.0 + created,
            resource=res,
        )
        for i, (status, created, res) in enumerate(members)
    ]
    heat = _HeatGroup(
        [
            _HeatResource(res, "FAILED" if status == "FAILED" else "COMPLETE", int(1_000 + c))
            for status, c, res in members
        ]
    )
    expected = [r.name for r in grouputils.get_members(heat, include_failed=True)]
    assert [n.resource for n in heat_order(nodes)] == expected


def test_heats_next_is_the_oldest_running_server_unless_one_failed():
    nodes = group(4, oldest_first=3)
    assert heats_next(snap(4, me=1, leader=1, cloud_nodes=nodes)).name == "node3"
    # a server still building (a roll's new one) does not change which old one goes next
    building = group(4, oldest_first=3, node1="BUILD")
    assert heats_next(snap(4, me=1, leader=1, cloud_nodes=building)).name == "node3"
    # Heat replaces or removes a FAILED member first: no running server is next
    failed = group(4, oldest_first=3, node2="FAILED")
    assert heats_next(snap(4, me=1, leader=1, cloud_nodes=failed)) is None
    assert heats_next(snap(4, me=1, leader=1, cloud_nodes=None)) is None
