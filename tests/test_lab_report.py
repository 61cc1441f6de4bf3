"""The lab's judges (lab/report.py's common invariants), each fed a history where it must
say "no", and one where it must say "yes". A checker nobody has seen fail proves nothing:
break any of them (make it return ok) and a test here fails."""

from __future__ import annotations

import pytest

from lab.cluster import NodeView, Sample
from lab.events import Event
from lab.report import Fault, RunFacts, common_invariants
from lab.writer import WriteResult

NAMES = ("a", "b", "c")


def node(name: str, *, status: str = "ACTIVE", member: str = "voter") -> NodeView:
    return NodeView(
        name=name,
        ip="127.1.1.1",
        server_id=f"s-{name}",
        client_url="http://127.1.1.1:2379",
        status=status,
        agent_pid=1,
        agent_alive=True,
        etcd_pid=2,
        member=member,
        healthy=True,
        leader=name == "a",
        load=5.0,
        phase="member",
        failmarker=0,
        frozen=False,
        crashed=False,
    )


def sample(
    t: float,
    members: tuple[str, ...] | None = NAMES,
    *,
    healthy: int | None = None,
    servers: tuple[str, ...] | None = None,
    failed: int = 0,
) -> Sample:
    listed = list(members) if members is not None else None
    servers = servers if servers is not None else (members or ())
    return Sample(
        t=t,
        members=listed,
        ids={f"{n}id": n for n in listed or ()},
        voters=len(listed or ()),
        healthy=len(listed or ()) if healthy is None else healthy,
        leader="a" if listed else None,
        lock_holder=None,
        group_size=len(servers),
        group_failed=failed,
        mean_load=5.0,
        demand=0.0,
        alarm="ok",
        acked=0,
        nodes=[node(n, status="FAILED" if i < failed else "ACTIVE") for i, n in enumerate(servers)],
    )


def cluster(name: str, cluster_id: str = "c1", leader: str = "a") -> dict[str, object]:
    return {"name": name, "cluster_id": cluster_id, "leader": leader, "members": list(NAMES)}


def facts(**changes: object) -> RunFacts:
    base = RunFacts(
        capacity=3,
        max_cluster=5,
        scaledownperiod=8.0,
        lockattemptperiod=0.4,
        election_s=1.0,
        interval=0.25,
        settled_at=1.0,
        samples=[sample(float(t)) for t in range(1, 20)],
        events=[],
        faults=[],
        writes=WriteResult(acked=100, failed=2, checked=True),
        final_settled=True,
        clusters=[cluster(n) for n in NAMES],
        removal_records=[],
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def verdicts(run: RunFacts) -> dict[str, bool]:
    return {inv.name: inv.ok for inv in common_invariants(run)}


def failing(run: RunFacts) -> list[str]:
    return [name for name, ok in verdicts(run).items() if not ok]


def test_a_clean_history_holds_every_invariant():
    assert failing(facts()) == []


BOUNDS = "members within [capacity, max_cluster] once settled"
SPACING = "no two removals inside one scaledownperiod"
QUORUM = "quorum never lost because of an agent action"
WRITES = "no acknowledged write lost"
DEAD = "every dead member removed and replaced"
GROUP = "the group holds exactly the members"
ONE = "one cluster at the end (no split brain)"


def _roll(start: float, end: float, done: float | None = None) -> list[Event]:
    """A roll from `start`, done at `done` (`end` by default), as the lab's Heat writes it:
    its last batch deleted n0's server, and the agents removed n0 at `end`."""
    done = end if done is None else done
    return [
        Event(start, "rolling-update", "", "batch 1/5: 5 members, 1 on the new definition"),
        Event(done - 0.2, "rolling-update", "", "batch 5/5: 5 members, 1 on the new definition"),
        Event(done - 0.1, "delete", "n0", "replaced by n9: a new member definition"),
        Event(done, "rolling-update", "", "done"),
        Event(end, "removed", "n0", "5 members"),
    ]


def test_max_cluster_plus_one_inside_a_rolling_update_is_within_bounds():
    assert verdicts(facts(samples=_grown(6), events=_roll(1.5, 2.5)))[BOUNDS]
    # and after `done`, until the member whose server the last batch deleted is removed
    assert verdicts(facts(samples=_grown(6), events=_roll(0.5, 2.5, done=1.5)))[BOUNDS]
    # a member removed after `done` whose server the roll did not delete closes nothing
    stray = [
        e if e.kind != "delete" else Event(e.t, "delete", "n7", e.detail)
        for e in _roll(0.5, 2.5, done=1.5)
    ]
    assert not verdicts(facts(samples=_grown(6), events=stray))[BOUNDS]


def _grown(n: int) -> list[Sample]:
    names = tuple(f"n{i}" for i in range(n))
    return [sample(2.0, names), sample(3.0)]


@pytest.mark.parametrize(
    ("changes", "broken"),
    [
        ({"samples": _grown(6)}, BOUNDS),  # six voters with max_cluster 5
        # one more only inside a rolling update (Heat adds it): seven is too many even then
        ({"samples": _grown(7), "events": _roll(1.5, 2.5)}, BOUNDS),
        # six after the roll's end is the agents' doing again
        ({"samples": _grown(6), "events": _roll(0.5, 1.5)}, BOUNDS),
        ({"samples": [sample(2.0, ("a", "b"))]}, BOUNDS),  # ends below capacity
        ({"final_settled": False}, BOUNDS),
        (
            {
                "removal_records": [
                    {"member": "x", "lock_time": 100.0},
                    {"member": "y", "lock_time": 105.0},  # 5 s after, period 8 s
                ]
            },
            SPACING,
        ),
        ({"removal_records": None}, SPACING),  # unreadable records prove nothing
        (
            {"samples": [sample(1.0), *[sample(t, healthy=1) for t in (2.0, 3.0, 4.0, 6.0)]]},
            QUORUM,
        ),
        ({"samples": [sample(1.0), *[sample(t, None) for t in (2.0, 3.0, 4.0, 6.0)]]}, QUORUM),
        ({"writes": WriteResult(acked=100, failed=0, lost=[42], checked=True)}, WRITES),
        ({"writes": None}, WRITES),
        ({"writes": WriteResult(acked=100, failed=0, checked=False, error="timeout")}, WRITES),
        ({"writes": WriteResult(acked=0, failed=9, checked=True)}, WRITES),
        (
            {
                "faults": [Fault("kill", 5.0, 6.0, ("c",))],
                "events": [Event(7.0, "removed", "c")],  # gone, but nobody joined since
            },
            DEAD,
        ),
        ({"faults": [Fault("kill", 5.0, 6.0, ("c",))]}, DEAD),  # still a member
        ({"samples": [sample(2.0, servers=("a", "b", "c", "stray"))]}, GROUP),
        ({"samples": [sample(2.0, servers=("a", "b", "c"), failed=1)]}, GROUP),
        ({"clusters": [cluster("a"), cluster("b"), cluster("c", cluster_id="c2")]}, ONE),
        ({"clusters": [cluster("a"), cluster("b"), cluster("c", leader="c")]}, ONE),
        ({"clusters": []}, ONE),
    ],
)
def test_each_invariant_says_no_to_a_history_that_breaks_it(changes, broken):
    assert broken in failing(facts(**changes)), verdicts(facts(**changes))


def test_a_poll_that_missed_a_quorum_writes_went_through_is_not_a_loss():
    """etcd acknowledges a put only once a quorum has it: polls that saw no healthy quorum
    while writes were acknowledged between them are the poll's failure (a loaded machine).
    Acknowledgements that stop halfway leave the rest of the stretch a loss."""
    blind = [sample(1.0), *[sample(t, None) for t in (2.0, 3.0, 4.0, 5.0, 6.0, 7.0)]]
    assert QUORUM in failing(facts(samples=blind))
    through = facts(samples=blind, acked_at=[1.5, 2.5, 3.5, 4.5, 5.5, 6.5])
    assert QUORUM not in failing(through)
    detail = next(i.detail for i in common_invariants(through) if i.name == QUORUM)
    assert "6 poll(s) without a healthy quorum while writes were acknowledged" in detail
    halfway = facts(samples=blind, acked_at=[1.5, 2.5])
    assert QUORUM in failing(halfway)
    detail = next(i.detail for i in common_invariants(halfway) if i.name == QUORUM)
    assert "3.0s, 4.0s to 7.0s (no member answered at its start)" in detail


def test_removals_a_whole_period_apart_and_faults_in_their_window_are_fine():
    spaced = facts(
        removal_records=[
            {"member": "x", "lock_time": 100.0},
            {"member": "y", "lock_time": 108.05},
        ]
    )
    assert SPACING not in failing(spaced)
    outage = [sample(1.0), *[sample(t, None) for t in (2.0, 3.0, 4.0, 6.0)], sample(7.0)]
    injected = facts(samples=outage, faults=[Fault("outage", 1.5, 6.0)])
    assert QUORUM not in failing(injected)
    replaced = facts(
        faults=[Fault("kill", 5.0, 6.0, ("z",))],
        events=[Event(6.5, "removed", "z"), Event(9.0, "joined", "c")],
    )
    assert DEAD not in failing(replaced)
