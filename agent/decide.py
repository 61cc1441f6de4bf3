"""All of the agent's policy: `decide(snapshot, settings) -> Action`, a pure function.

Each rule is a small function returning an Action or None; `decide` tries them in
order of safety. Nothing here does I/O, reads a clock or keeps state: the loop
passes everything in a `Snapshot`, so every rule is a table test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from agent.metrics import compare
from agent.metrics import crosses as metric_crosses
from agent.settings import AgentSettings
from agent.snapshot import CloudNode, Member, Snapshot

ActionKind = Literal[
    "wait",
    "leave",
    "replace_self",
    "remove_dead",
    "replace_server",
    "scale_up",
    "configure",
    "stop",
]

FAILMARKER_UP = 5
FAILMARKER_DOWN = 1

KILL_LOCK = "kill"
MAKE_LOCK = "make"
JOIN_LOCK = "join"


@dataclass(frozen=True)
class Action:
    """What one cycle does, and the sentence saying why."""

    kind: ActionKind
    reason: str
    member: Member | None = None
    lock: str | None = None
    """The lock to win first (its TTL spaces these actions cluster-wide)."""
    server: CloudNode | None = None
    """The group server a `replace_server` marks unhealthy."""

    @property
    def removes(self) -> bool:
        return self.kind in ("leave", "replace_self", "remove_dead")


def quorum(voters: int) -> int:
    return voters // 2 + 1


def next_failmarker(previous: int, etcd_call_ok: bool) -> int:
    """+5 per failed etcd call, -1 per success, never below 0 (the original's rule)."""
    if etcd_call_ok:
        return max(0, previous - FAILMARKER_DOWN)
    return previous + FAILMARKER_UP


def track_unhealthy(
    previous: Mapping[int, float],
    members: tuple[Member, ...] | None,
    now: float,
    booting: frozenset[int] = frozenset(),
) -> dict[int, float]:
    """Member id -> when it was first seen unhealthy (or unstarted), in a row.

    Unknown (etcd unreachable this cycle) keeps the record as it was: a blind
    cycle neither convicts nor clears anyone. A member whose server the cloud shows
    booting (`booting`: Nova building, rebuilding or rebooting it) starts its count again
    from now: its time down so far is a boot, not a death, so its window runs from the
    end of the boot.
    """
    if members is None:
        return dict(previous)
    tracked: dict[int, float] = {}
    for member in members:
        if member.healthy is False or not member.started:
            tracked[member.id] = now if member.id in booting else previous.get(member.id, now)
    return tracked


def starting_over(snapshot: Snapshot) -> frozenset[int]:
    """The members whose unhealthy count starts again this cycle (`track_unhealthy`'s
    `booting`): those whose server the cloud shows in BUILD (Nova building, rebuilding or
    rebooting it), the one the leader's agent is defragmenting (it serves nothing until
    done), and, while a join holds the join lock, the learners. A learner catching
    up a large snapshot fails its health checks for as long as that takes; counted from its
    first failure, the first check it missed after its promotion would convict it at once.
    A learner left behind once the lock is gone is counted (a joiner that died)."""
    members = snapshot.members or ()
    building = {
        m.id
        for m in members
        if (server := snapshot.server_of(m)) is not None and server.status == "BUILD"
    }
    joining = {m.id for m in members if m.is_learner} if snapshot.join_lock_holder else set()
    defragmenting = {m.id for m in members if m.name and m.name == snapshot.defragmenting}
    return frozenset(building | joining | defragmenting)


def decide(snapshot: Snapshot, settings: AgentSettings) -> Action:
    for rule in RULES:
        action = rule(snapshot, settings)
        if action is not None:
            return action
    return Action("wait", _steady_reason(snapshot, settings))


# --- the rules, in order ---------------------------------------------------------


def _unreachable(snapshot: Snapshot, settings: AgentSettings) -> Action | None:
    if snapshot.members is not None:
        return None
    return Action(
        "wait",
        f"no etcd member answered; failmarker {snapshot.failmarker}"
        f" (tolerance {settings.scaling.failtolerance}) but nobody is seen healthy, so stay",
    )


def _removed_by_cluster(snapshot: Snapshot, settings: AgentSettings) -> Action | None:
    if snapshot.my_member is not None:
        return None
    return Action(
        "stop",
        "this node is no longer a member of the cluster (removed by another agent); stop etcd"
        " for good: a removed member must not restart on its old data dir",
    )


def _failmarker(snapshot: Snapshot, settings: AgentSettings) -> Action | None:
    tolerance = settings.scaling.failtolerance
    if snapshot.failmarker <= tolerance:
        return None
    if snapshot.own_etcd_ok:
        # it answers again: after an outage every node has a high marker; it decays
        return Action(
            "wait",
            f"failmarker {snapshot.failmarker} > {tolerance} but this node's etcd answers"
            " again; the marker decays by one per success",
        )
    me = snapshot.my_member
    others = [m for m in snapshot.voters if me is None or m.id != me.id]
    healthy = [m for m in others if m.healthy]
    leader_elsewhere = any(m.is_leader and m.healthy for m in others)
    if others and len(healthy) >= quorum(len(others)) and leader_elsewhere:
        if snapshot.kill_lock_holder not in (None, snapshot.me.name):
            return Action(
                "wait",
                f"failmarker {snapshot.failmarker} > {tolerance}, but {snapshot.kill_lock_holder}"
                " holds the kill lock; leave after it expires",
            )
        return Action(
            "replace_self",
            f"failmarker {snapshot.failmarker} > {tolerance} and the rest of the cluster is"
            f" healthy without this node ({len(healthy)}/{len(others)} healthy, leader elsewhere)",
            member=me,
            lock=KILL_LOCK,
        )
    return Action(
        "wait",
        f"failmarker {snapshot.failmarker} > {tolerance}, but the rest of the cluster is not seen"
        f" healthy without this node ({len(healthy)}/{len(others)} healthy): an outage or a"
        " partition must not make nodes delete themselves",
    )


def dead_member_window(settings: AgentSettings) -> float:
    """Seconds from a member's first failed health check to the check that convicts it.

    A member is dead at its `dead_member_periods`-th failed check in a row, one check a
    period: the first failed check comes within a period of its death, so it is removed
    within `dead_member_periods` periods of dying (the issue's target), not one period
    later. The window runs from the first failed check, so it is (n - 1) periods; half a
    period less absorbs the checks' own timing (a check answered a little sooner than the
    one before it must not cost another period)."""
    periods = settings.scaling.dead_member_periods
    return max(0.0, (periods - 1.5) * settings.scaling.lockattemptperiod)


def unstarted_member_window(settings: AgentSettings) -> float:
    """Seconds an entry that never started, whose server is gone or FAILED, is given from
    when it was first seen: `dead_member_periods` whole periods (it has no death to count
    from). One whose server is still in the group gets `join_timeout` instead
    (`_unstarted_bound`): servers created together start etcd minutes apart on a cloud (a
    plain image installs first)."""
    return settings.scaling.dead_member_periods * settings.scaling.lockattemptperiod


def _unstarted_bound(snapshot: Snapshot, member: Member, settings: AgentSettings) -> float:
    """How long an entry that never started is waited for: as long as a server that has not
    joined yet (`join_timeout`) while a live group server holds it, or while the group could
    not be read; the short window once its server is gone."""
    server = snapshot.server_of(member)
    if snapshot.cloud_nodes is None or (server is not None and server.status in _ALIVE):
        return settings.scaling.join_timeout
    return unstarted_member_window(settings)


_ALIVE = ("BUILD", "ACTIVE")


def _dead_members(snapshot: Snapshot, settings: AgentSettings) -> Action | None:
    me = snapshot.my_member
    if me is None or not me.is_leader or not me.healthy:
        return None  # one decider: the agent beside the current leader
    window = dead_member_window(settings)
    checks = settings.scaling.dead_member_periods
    members = snapshot.members or ()
    for member in members:
        since = snapshot.unhealthy_since.get(member.id)
        if member.id == me.id or since is None:
            continue
        bound = window if member.started else _unstarted_bound(snapshot, member, settings)
        if snapshot.now - since < bound:
            continue
        if snapshot.join_lock_holder and (member.is_learner or not member.started):
            continue  # a join in progress: its entry is new, not dead
        server = snapshot.server_of(member)
        if server is not None and server.status == "BUILD":
            continue  # the cloud is (re)building or rebooting its server: booting, not dead
        remaining = [m for m in snapshot.voters if m.id != member.id]
        healthy = [m for m in remaining if m.healthy]
        if not remaining or len(healthy) < quorum(len(remaining)):
            return Action(
                "wait",
                f"{_label(member)} has failed for {snapshot.now - since:.0f}s but removing it"
                f" would leave {len(healthy)}/{len(remaining)} healthy, short of quorum",
            )
        why = (
            f"failed {checks} health checks in a row (the first {snapshot.now - since:.0f}s ago)"
            if member.started
            else f"has not started in {snapshot.now - since:.0f}s"
        )
        return Action(
            "remove_dead",
            f"{_label(member)} {why}; {len(healthy)}/{len(remaining)} remain healthy",
            member=member,
        )
    return None


def _joins_in_progress(snapshot: Snapshot) -> list[Member]:
    return [m for m in snapshot.members or () if m.is_learner or not m.started]


def _not_joined(snapshot: Snapshot) -> list[CloudNode]:
    """Group servers alive in the cloud that are not etcd members and not leaving."""
    return [
        node
        for node in snapshot.cloud_nodes or ()
        if node.status in _ALIVE
        and not snapshot.is_member(node)
        and node.name not in snapshot.leaving
    ]


def _pending_servers(snapshot: Snapshot, settings: AgentSettings) -> int:
    """Servers that are not members yet but may still join (within `join_timeout` of their
    creation): joins to come. One past it is replaced (`_stray_servers`), not waited for."""
    bound = settings.scaling.join_timeout
    return sum(1 for node in _not_joined(snapshot) if snapshot.now - _booted(node) <= bound)


def _booted(node: CloudNode) -> float:
    """When the node's server was made (join_timeout counts from it): the server's own
    creation time when a member stack holds it, else the member's."""
    return node.booted_at if node.booted_at is not None else node.created_at


def _stray_servers(snapshot: Snapshot, settings: AgentSettings) -> Action | None:
    """A group server that is not a member `join_timeout` after its creation never will be
    (its boot or install failed, its agent crash-loops, a mark that failed): the leader's
    agent marks it unhealthy, and the scale-up that follows makes Heat replace it."""
    me = snapshot.my_member
    if me is None or not me.is_leader or not me.healthy or snapshot.cloud_nodes is None:
        return None
    bound = settings.scaling.join_timeout
    for node in _not_joined(snapshot):
        age = snapshot.now - _booted(node)
        if age <= bound or node.name == snapshot.join_lock_holder:
            continue
        return Action(
            "replace_server",
            f"server {node.name} ({node.status}, created {age:.0f}s ago) is not a member"
            f" {bound:.0f}s (join_timeout) after its creation: replace it",
            server=node,
        )
    return None


def _scale_up(snapshot: Snapshot, settings: AgentSettings) -> Action | None:
    """Below capacity: ask for one more. A member that is only unhealthy still counts:
    the dead-member rule removes it after its window, and then this rule fires."""
    scaling = settings.scaling
    voters = [m for m in snapshot.voters if m.started]
    if len(voters) >= scaling.capacity:
        return None
    me = snapshot.my_member
    if me is None or not me.is_leader:
        return None
    coming = len(_joins_in_progress(snapshot)) + _pending_servers(snapshot, settings)
    if len(voters) + coming >= scaling.capacity:
        return Action(
            "wait",
            f"{len(voters)} voters < capacity {scaling.capacity}, {coming} joining already",
        )
    if snapshot.last_scale_up is not None and (
        snapshot.now - snapshot.last_scale_up < scaling.scaleupcooldown
    ):
        return None
    return Action(
        "scale_up",
        f"{len(voters)} voters < capacity {scaling.capacity} and nothing joining:"
        " ask the group for one more",
        lock=MAKE_LOCK,
    )


def _replace_failed(snapshot: Snapshot, settings: AgentSettings) -> Action | None:
    """A FAILED server still in the group: its replacement was asked for but Heat may have
    ignored the signal (its group cooldown, an update in progress). Ask again, once per
    scaleupcooldown: +1 makes Heat swap the FAILED server for a new one."""
    me = snapshot.my_member
    if me is None or not me.is_leader or snapshot.cloud_nodes is None:
        return None
    failed = [n for n in snapshot.cloud_nodes if n.status == "FAILED"]
    if not failed:
        return None
    if any(n.status == "BUILD" for n in snapshot.cloud_nodes):
        return Action("wait", f"{failed[0].name} is FAILED; its replacement is building")
    if snapshot.last_scale_up is not None and (
        snapshot.now - snapshot.last_scale_up < settings.scaling.scaleupcooldown
    ):
        return None
    return Action(
        "scale_up",
        f"{failed[0].name} is FAILED in the group: a scale-up makes Heat replace it",
        lock=MAKE_LOCK,
    )


def _configure(snapshot: Snapshot, settings: AgentSettings) -> Action | None:
    if snapshot.configured or settings.hooks.configscript is None:
        return None
    me = snapshot.my_member
    if me is None or me.is_learner:
        return None
    return Action("configure", "joined as a voter; run the configscript once")


def reading_fresh_for(settings: AgentSettings) -> float:
    """Seconds a published reading counts: its lease's TTL (three periods)."""
    return 3 * settings.scaling.lockattemptperiod


def load_verdict(snapshot: Snapshot, settings: AgentSettings) -> tuple[bool | None, str]:
    """Whether the load says "fewer nodes would do", and the figures that say it.

    node scope: this node's own reading against the threshold. cluster scope (the
    default): the mean of every voter's fresh published reading (Kubernetes' horizontal
    autoscaler's rule: the average against the target), so that a busy oldest server does
    not keep an idle cluster large. A voter with no reading, or one older than its lease,
    means no decision (None), as an unreadable metric does."""
    metric = settings.metric
    if metric.scope == "node":
        crosses = metric_crosses(snapshot.metric, metric)
        if crosses is None:
            return None, f"no metric ({snapshot.metric.error})"
        return crosses, (
            f"{metric.name} {snapshot.metric.value:g} {metric.comparator} {metric.threshold:g}"
        )
    if snapshot.readings is None:
        return None, "the members' readings could not be read"
    values: list[float] = []
    for voter in snapshot.voters:
        reading = snapshot.readings.get(voter.name)
        if reading is None:
            return None, f"no metric reading from {_label(voter)}"
        age = snapshot.now - reading.time
        if age > reading_fresh_for(settings):
            return None, f"the reading of {voter.name} is {age:.0f}s old"
        values.append(reading.value)
    if not values:
        return None, "no member's reading"
    mean = sum(values) / len(values)
    crosses = compare(mean, metric.comparator, metric.threshold)
    return crosses, (
        f"mean {metric.name} {mean:.1f} over {len(values)} members"
        f" ({min(values):.1f}..{max(values):.1f})"
        f" {metric.comparator if crosses else 'not ' + metric.comparator} {metric.threshold:g}"
    )


def _scale_down(snapshot: Snapshot, settings: AgentSettings) -> Action | None:
    scaling = settings.scaling
    me = snapshot.my_member
    voters = snapshot.voters
    if me is None or me.is_learner or len(voters) <= scaling.capacity:
        return None
    crosses, figures = load_verdict(snapshot, settings)
    if crosses is None:
        return Action(
            "wait",
            f"{len(voters)} members > capacity {scaling.capacity} but {figures}: no decision",
        )
    if not crosses:
        return None
    if _joins_in_progress(snapshot):
        return Action("wait", "a member is joining; scale down after it has")
    unhealthy = [m for m in voters if not m.healthy]
    if unhealthy:
        return Action(
            "wait",
            f"{len(unhealthy)} member(s) unhealthy ({', '.join(_label(m) for m in unhealthy)});"
            " no scale-down until the cluster is whole",
        )
    if snapshot.kill_lock_holder is not None:
        return Action(
            "wait",
            f"metric crosses but {snapshot.kill_lock_holder} holds the kill lock"
            f" (one removal per {scaling.scaledownperiod:.0f}s)",
        )
    not_oldest = _not_heats_next(snapshot)
    if not_oldest is not None:
        return Action("wait", f"{figures}, but {not_oldest}")
    return Action(
        "leave",
        f"{len(voters)} members > capacity {scaling.capacity} and {figures},"
        " and this is the group's oldest server (the one Heat's scale-down deletes)",
        member=me,
        lock=KILL_LOCK,
    )


def heat_order(nodes: tuple[CloudNode, ...] | list[CloudNode]) -> list[CloudNode]:
    """The group's servers in the order Heat removes and replaces its members.

    `grouputils.get_members`: FAILED members first, then by the resource's created_time,
    then by resource name. A scale-down's resize keeps the last ones; a rolling update's
    `member_definitions` gives the new definition to the first ones still on the old one
    (a replaced server gets a new created_time, so it goes to the end; a member stack is
    updated in place and keeps its own, the new server inside it). Heat's API shows
    `creation_time` to the second (and a MySQL DATETIME keeps no more), so two members made
    in the same second are ordered by resource name, as Heat orders them.
    """
    return sorted(
        nodes,
        key=lambda n: (n.status != "FAILED", int(n.created_at), n.resource or n.name, n.name),
    )


def running_in_heat_order(snapshot: Snapshot) -> list[CloudNode]:
    """The group's ACTIVE servers, in Heat's order (`heat_order`): the first is the one a
    scale-down removes, the last the one Heat deletes last."""
    return heat_order([n for n in snapshot.cloud_nodes or () if n.status == "ACTIVE"])


def last_to_go(snapshot: Snapshot, names: Iterable[str]) -> str | None:
    """Of `names`, the one whose running server Heat deletes last (None: none runs)."""
    wanted = set(names)
    last_first = reversed(running_in_heat_order(snapshot))
    return next((n.name for n in last_first if n.name in wanted), None)


def heats_next(snapshot: Snapshot) -> CloudNode | None:
    """The running server Heat deletes next: the oldest ACTIVE one, unless a member is
    FAILED (that one goes first). A scale-down removes it. In a rolling update of member
    stacks (updated in place, each keeping its creation time) it may be a member already
    on its new server: the server a roll deletes is the old one of the member being
    updated, which the group no longer lists (`Agent._off_heats_next` moves leadership off
    it)."""
    if any(n.status == "FAILED" for n in snapshot.cloud_nodes or ()):
        return None
    active = running_in_heat_order(snapshot)
    return active[0] if active else None


def _not_heats_next(snapshot: Snapshot) -> str | None:
    """Why this node is not the server a scale-down signal makes Heat delete (or None).

    Heat's adjust() counts only members that are not FAILED, and resize() drops
    FAILED members first, then the oldest (grouputils.get_members). So a node can
    shrink the group by exactly itself only when it is the oldest server, no member is
    FAILED or still building, and the group itself is not being updated (adjust() drops
    the signal then).
    """
    if snapshot.cloud_nodes is None:
        return "the group's servers could not be listed"
    if any(n.group_updating for n in snapshot.cloud_nodes):
        # adjust() refuses while the group is not COMPLETE: the signal would be dropped,
        # and a roll updates the oldest member in place (its new server is the oldest)
        return "the group is being updated (a rolling update): Heat drops a scale-down signal"
    others = [n for n in snapshot.cloud_nodes if n.status in ("FAILED", "BUILD")]
    if others:
        return f"{others[0].name} is {others[0].status}; the group settles first"
    active = running_in_heat_order(snapshot)
    if not active or active[0].name != snapshot.me.name:
        oldest = active[0].name if active else "none"
        return f"Heat removes the oldest server ({oldest}) first, not this one"
    return None


RULES: tuple[Callable[[Snapshot, AgentSettings], Action | None], ...] = (
    _unreachable,
    _removed_by_cluster,
    _failmarker,
    _dead_members,
    _stray_servers,
    _replace_failed,
    _scale_up,
    _configure,
    _scale_down,
)


def _label(member: Member) -> str:
    return member.name or f"unstarted member {member.id:x}"


def _steady_reason(snapshot: Snapshot, settings: AgentSettings) -> str:
    voters = snapshot.voters
    crosses = metric_crosses(snapshot.metric, settings.metric)
    metric = (
        f"{settings.metric.name} {snapshot.metric.value:g}"
        if snapshot.metric.value is not None
        else f"no metric ({snapshot.metric.error})"
    )
    if len(voters) <= settings.scaling.capacity:
        return f"{len(voters)} members <= capacity {settings.scaling.capacity}; {metric}"
    return f"{len(voters)} members > capacity; {metric}, crosses threshold: {bool(crosses)}"
