"""What a scenario proves: the invariants, the JSON report and the timeline picture."""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.cluster import Sample
from lab.events import Event
from lab.writer import WriteResult


@dataclass(frozen=True)
class Invariant:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Fault:
    """A fault the scenario injected, from `start` to `end` (s); its victims may be removed."""

    kind: str
    start: float
    end: float
    nodes: tuple[str, ...] = ()


@dataclass
class RunFacts:
    """Everything the checks read, gathered by the scenario runner."""

    capacity: int
    max_cluster: int
    scaledownperiod: float
    lockattemptperiod: float
    election_s: float
    interval: float
    settled_at: float
    samples: list[Sample]
    events: list[Event]
    faults: list[Fault] = field(default_factory=list)
    writes: WriteResult | None = None
    final_settled: bool = False
    clusters: list[dict[str, Any]] = field(default_factory=list)
    """One entry per live etcd at the end: name, cluster_id, leader, members."""
    removal_records: list[dict[str, Any]] | None = None
    """The fenced removals' records in etcd (`<prefix>/removals/`): who left, and when
    it won the kill lock. None: they could not be read."""
    acked_at: list[float] = field(default_factory=list)
    """When the writer's puts were acknowledged (the samples' clock). etcd acknowledges a put
    once a quorum of voters has it, so an acknowledgement between two polls shows a quorum
    the polls missed (a poll times out on a loaded machine; the cluster did not)."""

    @property
    def victims(self) -> set[str]:
        return {name for fault in self.faults for name in fault.nodes}

    def removals(self) -> list[Event]:
        return [e for e in self.events if e.kind == "removed"]

    def in_fault(self, t: float, grace: float = 0.0) -> bool:
        return any(f.start <= t <= f.end + grace for f in self.faults)

    def rolls(self) -> list[tuple[float, float]]:
        """The rolling updates, each from its first batch until it is done and the agents
        have removed every server Heat deleted during it (at `done` if those had left
        already). A member's new server joins beside its old one (infra.heat.MemberStack),
        so the cluster may hold `max_cluster` + 1 voters then, by Heat's doing, not the
        agents'."""
        rolls: list[tuple[float, float]] = []
        start: float | None = None
        for event in self.events:
            if event.kind != "rolling-update":
                continue
            if event.detail.startswith("batch 1/"):
                start = event.t
            elif event.detail == "done" and start is not None:
                deleted = {
                    e.node for e in self.events if e.kind == "delete" and start <= e.t <= event.t
                }
                removed = [
                    e.t
                    for e in self.events
                    if e.kind == "removed" and e.node in deleted and e.t >= start
                ]
                rolls.append((start, max([event.t, *removed])))
                start = None
        if start is not None:
            rolls.append((start, float("inf")))
        return rolls


def quorum(voters: int) -> int:
    return voters // 2 + 1


def common_invariants(facts: RunFacts) -> list[Invariant]:
    return [
        _members_in_bounds(facts),
        _removals_spaced(facts),
        _quorum_kept(facts),
        _writes_kept(facts),
        _dead_replaced(facts),
        _group_matches_cluster(facts),
        _one_cluster(facts),
    ]


def _members_in_bounds(facts: RunFacts) -> Invariant:
    after = [s for s in facts.samples if s.t >= facts.settled_at and s.members is not None]
    most = max((s.voters for s in after), default=0)
    rolls = facts.rolls()  # once, not per sample

    def bound(t: float) -> int:
        return facts.max_cluster + (1 if any(a <= t <= b for a, b in rolls) else 0)

    over = [s for s in after if s.voters > bound(s.t)]
    final = after[-1].voters if after else 0
    ok = bool(after) and not over and facts.capacity <= final <= facts.max_cluster
    return Invariant(
        "members within [capacity, max_cluster] once settled",
        ok and facts.final_settled,
        f"at most {most} voters after settling ({len(over)} sample(s) above the bound), {final}"
        " at the end"
        f" (capacity {facts.capacity}, max_cluster {facts.max_cluster});"
        f" settled at the end: {facts.final_settled}",
    )


LOCK_CLOCK = 0.1
"""s: a lock's time is read right after etcd granted its lease (one round trip later)."""


def _removals_spaced(facts: RunFacts) -> Invariant:
    """The fenced removals (scale-downs, failing nodes replacing themselves), one
    scaledownperiod apart: the kill lock's lease lives that long, and each removal's record
    (written in the transaction the lock fences) says when its agent won the lock. So the
    check is exact, not the watcher's view of the member list, which lags by a sample and
    by the removal's own cycle. Without the records (unreadable at the end) it fails."""
    if facts.removal_records is None:
        return Invariant(
            "no two removals inside one scaledownperiod", False, "removal records unreadable"
        )
    records = sorted(
        facts.removal_records, key=lambda r: float(r.get("lock_time") or r.get("time") or 0)
    )
    times = [float(r.get("lock_time") or r.get("time") or 0) for r in records]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    short = [g for g in gaps if g < facts.scaledownperiod - LOCK_CLOCK]
    shown = ", ".join(f"{g:.1f}s" for g in gaps) or "none"
    who = ", ".join(str(r.get("member")) for r in records) or "none"
    return Invariant(
        "no two removals inside one scaledownperiod",
        not short,
        f"{len(times)} fenced removal(s) ({who}); gaps between their locks {shown}"
        f" (scaledownperiod {facts.scaledownperiod:g}s)",
    )


def _quorum_kept(facts: RunFacts) -> Invariant:
    """Outside injected faults, never a stretch longer than an election without quorum.

    A poll that saw no healthy quorum while a write was acknowledged since the poll before
    is the poll's failure, not the cluster's: it does not count (and the detail says how
    many there were)."""
    grace = 2 * facts.election_s + 2 * facts.interval
    acks = sorted(facts.acked_at)
    worst: tuple[Sample, Sample] | None = None
    first: Sample | None = None
    previous: float | None = None
    overruled = 0
    for sample in facts.samples:
        if sample.t < facts.settled_at:
            continue
        lost = sample.members is None or sample.healthy < quorum(max(1, sample.voters))
        if lost and previous is not None and _acked_between(acks, previous, sample.t):
            lost, overruled = False, overruled + 1
        previous = sample.t
        if lost and not facts.in_fault(sample.t, grace):
            first = first or sample
            if worst is None or sample.t - first.t > worst[1].t - worst[0].t:
                worst = (first, sample)
        else:
            first = None
    longest = worst[1].t - worst[0].t if worst else 0.0
    where = ""
    if worst and longest:
        seen = (
            "no member answered"
            if worst[0].members is None
            else f"{worst[0].healthy} healthy of {worst[0].voters} voters"
        )
        where = f", {worst[0].t:.1f}s to {worst[1].t:.1f}s ({seen} at its start)"
    missed = (
        f"; {overruled} poll(s) without a healthy quorum while writes were acknowledged"
        " (the poll's failure, not counted)"
        if overruled
        else ""
    )
    return Invariant(
        "quorum never lost because of an agent action",
        longest <= grace,
        f"longest stretch without a healthy quorum outside injected faults: {longest:.1f}s"
        f"{where} (an election may take {grace:.1f}s){missed}",
    )


def _acked_between(acks: list[float], after: float, until: float) -> bool:
    """A write acknowledged in (after, until]."""
    i = bisect.bisect_right(acks, after)
    return i < len(acks) and acks[i] <= until


def _writes_kept(facts: RunFacts) -> Invariant:
    writes = facts.writes
    if writes is None:
        return Invariant("no acknowledged write lost", False, "no writer ran")
    if not writes.checked:
        return Invariant("no acknowledged write lost", False, writes.error)
    return Invariant(
        "no acknowledged write lost",
        not writes.lost and writes.acked > 0,
        f"{writes.acked} acknowledged, {len(writes.lost)} lost"
        f" ({writes.failed} puts refused or timed out, not acknowledged)"
        + (
            f"; {writes.given_up} acknowledged after the last snapshot, given up by the scenario"
            if writes.given_up
            else ""
        ),
    )


def _dead_replaced(facts: RunFacts) -> Invariant:
    final = facts.samples[-1] if facts.samples else None
    members = set(final.members or []) if final else set()
    dead = sorted(facts.victims)
    still = [name for name in dead if name in members]
    joined_after = {
        e.node
        for e in facts.events
        if e.kind == "joined" and any(e.t > f.start for f in facts.faults if f.nodes)
    }
    required = sum(_replacements_due(facts, fault) for fault in facts.faults if fault.nodes)
    replaced = not dead or len(joined_after) >= required
    return Invariant(
        "every dead member removed and replaced",
        not still and replaced and facts.final_settled,
        f"dead: {', '.join(dead) or 'none'}; still members: {', '.join(still) or 'none'};"
        f" joined since: {', '.join(sorted(joined_after)) or 'none'} ({required} due)",
    )


def replacements_due(capacity: int, voters: int, lost: int) -> int:
    """New members `lost` dead of `voters` call for: one at least (the agent's mark and
    signal make Heat replace a member), and all of them if the group would be below
    capacity without them. Heat's resize for one signal counts the servers not FAILED, so
    two members of a grown group marked before one signal leave it one smaller: the load
    decides the rest."""
    return min(lost, max(1, capacity - (voters - lost))) if lost else 0


def _replacements_due(facts: RunFacts, fault: Fault) -> int:
    before = [s for s in facts.samples if s.t < fault.start]
    voters = before[-1].voters if before else facts.capacity
    return replacements_due(facts.capacity, voters, len(fault.nodes))


def no_heat_writes(writes: Sequence[str], victims: str) -> Invariant:
    """A cut-off side that kept the cloud's API used it for nothing that changes the group
    (its etcd has no quorum: it may not know who is dead)."""
    return Invariant(
        "the cut-off side made no Heat call (no mark, no signal)",
        not writes,
        f"{len(writes)} from {victims}: {list(writes)[:3]}",
    )


def _group_matches_cluster(facts: RunFacts) -> Invariant:
    final = facts.samples[-1] if facts.samples else None
    if final is None or final.members is None:
        return Invariant("the group holds exactly the members", False, "no final sample")
    servers = sorted(n.name for n in final.nodes)
    members = sorted(final.members)
    return Invariant(
        "the group holds exactly the members",
        servers == members and final.group_failed == 0,
        f"servers {servers}, members {members}, FAILED servers {final.group_failed}",
    )


def _one_cluster(facts: RunFacts) -> Invariant:
    ids = {c.get("cluster_id") for c in facts.clusters if c.get("cluster_id")}
    leaders = {c.get("leader") for c in facts.clusters if c.get("leader")}
    views = {tuple(sorted(c.get("members", []))) for c in facts.clusters if c.get("members")}
    ok = len(ids) == 1 and len(leaders) == 1 and len(views) == 1 and bool(facts.clusters)
    return Invariant(
        "one cluster at the end (no split brain)",
        ok,
        f"{len(facts.clusters)} live etcd(s): cluster ids {sorted(ids)},"
        f" leaders {sorted(str(x) for x in leaders)}, {len(views)} member view(s)",
    )


# --- output -----------------------------------------------------------------------------------


def report_json(
    scenario: str,
    invariants: list[Invariant],
    facts: RunFacts,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    writes = facts.writes.to_json() if facts.writes else {"acked": 0, "lost": 0}
    return {
        "scenario": scenario,
        "ok": all(i.ok for i in invariants),
        "invariants": [i.to_json() for i in invariants],
        "events": [e.to_json() for e in facts.events],
        "writes": writes,
        **(extra or {}),
        "timeline": [
            {
                "t": round(s.t, 2),
                "members": None if s.members is None else len(s.members),
                "voters": s.voters,
                "healthy": s.healthy,
                "servers": s.group_size,
                "leader": s.leader,
                "mean_load": s.mean_load,
            }
            for s in facts.samples
        ],
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


MARKS = {
    "scale-up": ("tab:green", "scale-up"),
    "removed": ("tab:red", "member removed"),
    "replace": ("tab:orange", "server replaced"),
    "kill": ("black", "fault"),
    "freeze": ("black", "fault"),
    "metrics": ("tab:purple", "netdata mode"),
}


def plot(
    path: Path,
    scenario: str,
    samples: list[Sample],
    events: Iterable[Event],
    faults: list[Fault],
    *,
    capacity: int,
    max_cluster: int,
    threshold: float,
) -> None:
    """The timeline: members and servers over time, load below, scale events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in samples]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    voters = [s.voters if s.members is not None else float("nan") for s in samples]
    healthy = [s.healthy if s.members is not None else float("nan") for s in samples]
    top.step(
        t,
        [s.group_size for s in samples],
        where="post",
        color="tab:gray",
        ls="--",
        label="servers in the group",
    )
    top.step(t, voters, where="post", color="tab:blue", lw=2, label="etcd voters")
    top.step(t, healthy, where="post", color="tab:cyan", lw=1, label="healthy members")
    top.axhline(capacity, color="tab:green", lw=0.8, ls=":", label=f"capacity {capacity}")
    top.axhline(max_cluster, color="tab:red", lw=0.8, ls=":", label=f"max_cluster {max_cluster}")
    top.set_ylim(0, max_cluster + 1.5)
    top.set_ylabel("members")
    for fault in faults:
        for axis in (top, bottom):
            axis.axvspan(fault.start, fault.end, color="0.85", zorder=0)
    seen: set[str] = set()
    for event in events:
        if event.kind not in MARKS:
            continue
        color, label = MARKS[event.kind]
        top.axvline(event.t, color=color, lw=1, alpha=0.8, label=None if label in seen else label)
        seen.add(label)
    top.legend(loc="upper left", fontsize=8, ncol=3)
    top.set_title(f"lab scenario {scenario}")
    bottom.plot(
        t,
        [s.mean_load for s in samples],
        color="tab:orange",
        lw=2,
        label="mean CPU use of the members (%)",
    )
    names = sorted({n.name for s in samples for n in s.nodes})
    for name in names:
        series = [next((n.load for n in s.nodes if n.name == name), float("nan")) for s in samples]
        bottom.plot(t, series, lw=0.6, alpha=0.5)
    bottom.axhline(threshold, color="tab:red", lw=0.8, ls=":", label=f"alarm at {threshold:g}%")
    bottom.axhline(10, color="tab:green", lw=0.8, ls=":", label="idle > 90% (scale-down)")
    bottom.set_ylim(0, 105)
    bottom.set_ylabel("CPU use %")
    bottom.set_xlabel("seconds since the lab started")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
