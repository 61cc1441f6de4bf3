"""The scenarios: what each one does to the lab, and what it must show.

Every scenario runs on a fresh lab (the stack's `capacity` nodes), with a writer
putting keys the whole time; at the end the common invariants (lab/report.py) and
the scenario's own are checked. Waits are bounded by the lab's timings (the stack's
periods times the factor), so a stuck cluster fails the scenario instead of hanging.

- burst: CPU demand rises above what `max_cluster - 1` nodes can carry; the alarm
  fires and the group grows to max_cluster; the burst lasts one scale-up cooldown;
  demand falls and nodes leave, one per scaledownperiod, back to capacity.
- node-loss: kill -9 the leader's node (agent and etcd); the dead member is removed
  and Heat replaces the server with a new one that joins.
- etcd-outage: SIGSTOP every etcd for longer than the failmarker tolerates; no node
  removes itself; SIGCONT and the cluster is whole again.
- freeze: one follower's etcd is SIGSTOPped (a frozen process), its agent still running;
  it is removed and replaced; it is thawed if it still exists; one cluster.
- partition, split, peer-cut, cloud-cut: network faults (they need the lab's network
  namespaces, lab.netns): a follower reaches nobody; the group grown to max_cluster split
  into a majority and a minority, the leader on each side in turn; the leader cut from its
  peers but not the cloud; the leader cut from the cloud's API only. The majority removes
  and replaces the cut-off members, the cut-off side makes no Heat call, after the heal
  their servers are gone and no etcd of theirs runs (a cloud cut changes nothing); checked
  from outside with etcdctl (the majority's members kept, one healthy cluster).
- bad-metrics: the group is grown to max_cluster (a stack update) while every netdata
  answers garbage, errors, leaves the metric out or hangs; no member leaves; then netdata
  answers again and the cluster scales back down (the control).
- reboot: the group grows by one (a stack update) and shrinks back (a node leaves), so
  its nested stack has been updated and no server is "initial"; then Nova reboots the
  leader's server, then a majority (the leader among them), then every server: each time
  the same members come back healthy by themselves, no server is marked unhealthy, and
  etcdctl, from outside, sees the same member ids and one healthy cluster.
- skewed: the group is grown to max_cluster (a stack update), then the oldest server is
  kept 30 % busy while the others idle: with `downmetric_scope: cluster` (the default) the
  members' mean idle crosses the threshold and the cluster shrinks to capacity, the busy
  oldest leaving first (Heat's -1 deletes it); with `node` the oldest's own reading never
  crosses and nobody leaves (run it with `--set downmetric_scope=node`).
- update: a second `pulumi up`, through the lab's Heat ("Update stack" with the program's
  template): the group is grown by one (everyone busy), then the stack is updated with a
  new threshold and failtolerance (the settings document) and a larger max_cluster (the
  group's bounds): every agent takes the new settings within a minute of lab time, no
  server is made, replaced or deleted, the grown group keeps its size (no desired_capacity
  reset), etcdctl from outside sees the same member ids; an update changing the client
  port is refused before anything changes; then the load falls and the group shrinks
  back under the new threshold.
- update-grown: the same on a group grown to `max_cluster`.
- nospace: the backend's quota (8 MiB in this scenario) filled by history, four keys
  rewritten with 256 KiB values until etcd raises NOSPACE and refuses every put: the
  leader's agent compacts, defragments and disarms by itself, the writer's puts are taken
  again within a few periods, no member is lost, and etcdctl from outside lists no alarm,
  the same member ids and one healthy cluster.
- disaster: backups to the lab's Swift (a real one, lab/swift.py), one every
  `backup_period`; the writer writes; once a snapshot holds the first writes and half a
  period more has been written, every server of the group is deleted behind Heat's back (a
  zone lost); the operator rebuilds the group (`openstack stack check`, which fails every
  member whose server Nova no longer has, then a stack update, which replaces them). The
  new servers find no cluster and Swift's snapshots: with `disaster_recovery: manual` (the
  dev stack's) one agent logs the command and the operator runs it on that node (its agent
  stopped, the command, its agent started); with `auto` that agent restores by itself
  (agent/disaster.py). The others join. etcdctl from outside: one new cluster of new
  servers, every write acknowledged before the snapshot and since the restore readable (the
  writes of the last half period are given up: the RPO), no server gave up.
- rolling-update: a `pulumi up` with a new image changes the members' definition; the
  lab's Heat rolls the group (Heat's `_replace`: one member per batch, the new server up
  before the old is deleted, `pause_time` between): every server replaced, the size kept,
  quorum never lost, no acknowledged write lost, etcdctl sees the same cluster on new
  servers. The leader is never on the server Heat deletes next (its agent moves it).
- rolling-update-grown: the same roll of a group the load grew to `max_cluster`: the
  grown size is kept through the roll.
- rolling-update-fault: the same roll with an original member's node killed (kill -9; a
  follower if one is, not the next Heat replaces) once the first new member votes: quorum
  kept through the batches that follow.
- rolling-update-etcd: etcd's rolling upgrade, 3.4 -> 3.5: a cluster of etcd 3.4 (Debian's)
  rolled by a `pulumi up` of `etcd_version` to servers running 3.5 (the wheel's); etcdctl
  and etcd's /version from outside: every member 3.5 and the cluster version 3.5.
- rolling-update-etcd-grown: the same on a group grown to `max_cluster`.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import requests

from agent.decide import quorum
from agent.etcd import EtcdClient, EtcdError
from infra import heat
from infra.settings import StackSettings, backup_container
from lab.cloud.heat import Member
from lab.cluster import Lab, Sample, network_for
from lab.display import Display
from lab.events import Event
from lab.netdata_stub import each_mode
from lab.nodes import Node
from lab.outside import (
    Etcdctl,
    members_kept,
    one_healthy_cluster,
    same_members,
    writes_readable,
)
from lab.report import (
    Fault,
    Invariant,
    RunFacts,
    common_invariants,
    no_heat_writes,
    plot,
    replacements_due,
    report_json,
    write_json,
)
from lab.stalls import ack_times, stall
from lab.timings import LabTimings
from lab.writer import PREFIX as WRITE_PREFIX
from lab.writer import Writer, fill_until_no_space


@dataclass
class Run:
    """One scenario's lab and what the scenario noted while it ran."""

    lab: Lab
    timings: LabTimings
    stack: StackSettings
    faults: list[Fault] = field(default_factory=list)
    checks: list[Invariant] = field(default_factory=list)
    settled_at: float = 0.0
    outside_writes: bool = False
    """Also read the acknowledged writes back with etcdctl at the end (from outside)."""
    writer: Writer | None = None
    figures: dict[str, float] = field(default_factory=dict)
    """Measured figures the scenario reports (bench/roll.py reads them)."""
    may_lose: Callable[[int], bool] | None = None
    """Acknowledged writes the scenario gives up (a disaster: those after the last
    snapshot); the others must all be readable."""

    @property
    def now(self) -> float:
        return self.lab.events.now()

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Invariant(name, bool(ok), detail))

    def phase(self, text: str) -> None:
        self.lab.events.add("phase", "", text)

    def settle(self, size: int, timeout: float, what: str) -> bool:
        return self.lab.wait_for(lambda s: self.lab.settled(s, size), timeout, what)

    def grow_to(self, size: int, what: str) -> bool:
        """A stack update's growth to `size` settled: a precondition of a scenario, not a
        figure. The wait is generous, one join time per new member and one more, plus
        10 s: on a loaded machine (the suite's two workers) one join time each was once
        too short. It returns as soon as the group has grown."""
        timeout = (size - self.stack.capacity + 2) * self.timings.join_time + 10.0
        return self.settle(size, timeout, what)


Scenario = Callable[[Run], None]


def burst(run: Run) -> None:
    lab, t, stack = run.lab, run.timings, run.stack
    grow = stack.max_cluster - stack.capacity
    run.phase(f"burst: demand {90 * stack.max_cluster}% of one node")
    lab.set_demand(90 * stack.max_cluster)
    timeout = (
        t.alarmperiod * 1.2
        + grow * (t.scaleupcooldown + t.alarm_evaluation + run.timings.join_time)
        + 2 * t.alarm_evaluation
    )
    grown = run.settle(stack.max_cluster, timeout, f"{stack.max_cluster} members")
    grown_at = run.now
    scale_ups = [e for e in lab.events.of("scale-up")]
    run.check(
        "the alarm grew the group to max_cluster",
        grown and len(scale_ups) >= grow,
        f"{len(scale_ups)} scale-up(s); {stack.max_cluster} healthy members:"
        f" {f'at {grown_at:.1f}s' if grown else 'never'}",
    )
    lab.wait_for(lambda s: False, t.scaleupcooldown)  # the burst lasts one cooldown more
    run.phase(f"calm: demand {5 * stack.capacity}% of one node")
    calm_at = run.now
    lab.set_demand(5 * stack.capacity)
    timeout = t.downmetric_window + grow * t.scaledownperiod * 1.6 + 4 * run.timings.join_time
    back = run.settle(stack.capacity, timeout, f"{stack.capacity} members")
    leaves = [e for e in lab.events.of("removed") if e.t >= calm_at]
    # the alarm's window still holds burst samples for a while after the calm: a +1 it
    # takes then (a node left, so capacity is below max again) brings one more to leave
    late = [e for e in lab.events.of("scale-up") if e.t >= calm_at]
    run.check(
        "nodes left one by one back to capacity",
        back and len(leaves) == grow + len(late),
        f"{len(leaves)} member(s) left after the load fell (want {grow}"
        f" + {len(late)} the alarm added after the calm);"
        f" back to {stack.capacity}: {back}",
    )


def node_loss(run: Run) -> None:
    lab, t, stack = run.lab, run.timings, run.stack
    sample = lab.latest()
    assert sample is not None
    victim = sample.leader or sample.members[0]  # type: ignore[index]
    before = {n.name for n in sample.nodes}
    run.phase(f"kill -9 the leader's node {victim}")
    start = run.now
    lab.crash(victim)
    timeout = (t.dead_member_periods + 4) * t.lockattemptperiod + 3 * run.timings.join_time
    removed = lab.wait_removed([victim], timeout, "removal")
    run.faults.append(Fault("kill", start, run.now, (victim,)))
    replaced = run.settle(stack.capacity, timeout, f"{stack.capacity} members again")
    final = lab.latest()
    newcomers = sorted({n.name for n in final.nodes} - before) if final else []
    run.check(
        "the dead member was removed and a new server joined",
        removed and replaced and len(newcomers) == 1,
        f"{victim} removed: {removed}; new node(s): {', '.join(newcomers) or 'none'}",
    )


def etcd_outage(run: Run) -> None:
    lab, t, stack = run.lab, run.timings, run.stack
    sample = lab.latest()
    assert sample is not None
    names = [n.name for n in sample.nodes]
    # only an agent in its loop counts failed calls to its own etcd: one still finishing
    # its bootstrap when etcd freezes would wait the outage out with a failmarker of 0
    deadline = time.monotonic() + run.timings.join_time
    while time.monotonic() < deadline:
        if all(lab.node(name).state().phase == "member" for name in names):
            break
        time.sleep(0.1)
    run.phase(f"SIGSTOP every etcd until the failmarkers pass {t.failtolerance}")
    start = run.now
    frozen = [name for name in names if lab.freeze_etcd(name)]
    # an agent's cycle with no etcd answering lasts its period plus its etcd timeouts
    cycle = t.lockattemptperiod + 1.0 * len(names)
    extra = (t.dead_member_periods + 2) * t.lockattemptperiod
    limit = time.monotonic() + (t.failtolerance // 5 + 4) * cycle
    peak, passed_at = 0, None
    while time.monotonic() < limit:
        peak = max([peak] + [lab.node(name).state().failmarker for name in names])
        if peak > t.failtolerance and passed_at is None:
            passed_at = time.monotonic()
        if passed_at is not None and time.monotonic() - passed_at > extra:
            break  # above the tolerance for a dead-member window more: time enough to do harm
        time.sleep(0.1)
    held = run.now - start
    for name in frozen:
        lab.thaw_etcd(name)
    run.faults.append(Fault("outage", start, run.now))
    run.phase("SIGCONT every etcd")
    whole = run.settle(stack.capacity, 4 * run.timings.join_time, "the cluster whole again")
    final = lab.latest()
    kept = sorted(n.name for n in final.nodes) == sorted(names) if final else False
    leaves = lab.events.of("removed", "mark-unhealthy")
    run.check(
        "the outage outlasted the failtolerance",
        peak > t.failtolerance and len(frozen) == len(names),
        f"{len(frozen)}/{len(names)} etcd frozen for {held:.1f}s;"
        f" highest failmarker {peak} (tolerance {t.failtolerance})",
    )
    run.check(
        "no node removed itself",
        not leaves and kept and whole,
        f"removals and unhealthy marks: {len(leaves)}; the same {len(names)} nodes at the end:"
        f" {kept}; healthy again: {whole}",
    )


def freeze(run: Run) -> None:
    lab, t, stack = run.lab, run.timings, run.stack
    sample = lab.latest()
    assert sample is not None
    followers = [n.name for n in sample.nodes if not n.leader]
    victim = followers[0]
    run.phase(f"freeze {victim}: its etcd SIGSTOPped, its agent running")
    start = run.now
    lab.freeze_etcd(victim)
    timeout = (t.dead_member_periods + 4) * t.lockattemptperiod + run.timings.join_time
    removed = lab.wait_removed([victim], timeout, "the removal")
    healed = lab.thaw_etcd(victim)
    run.faults.append(Fault("freeze", start, run.now, (victim,)))
    run.phase(f"heal: {victim} {'thawed' if healed else 'already deleted by the group'}")
    replaced = run.settle(stack.capacity, 3 * run.timings.join_time, f"{stack.capacity} members")
    final = lab.latest()
    run.check(
        "the frozen node was removed and replaced",
        removed and replaced and final is not None and victim not in (final.members or []),
        f"{victim} removed: {removed}; {stack.capacity} healthy members again: {replaced}",
    )


# --- network faults (the lab's namespaces: lab.netns) ---------------------------------------

NETWORK_SCENARIOS = ("partition", "split", "cloud-cut", "peer-cut")


def _network_fault(
    run: Run, kind: str, victims: list[str], *, peers: bool, cloud: bool, size: int
) -> None:
    """Cut `victims` off (from their peers, the cloud's API or both), wait for what the
    majority must do, heal, and check it from the lab's report and from outside."""
    lab, t = run.lab, run.timings
    outside = Etcdctl(tls=lab.client_tls)
    before = outside.look(lab.endpoints())
    start = run.now
    fault = lab.cut(victims, peers=peers, cloud=cloud)
    run.phase(f"{kind}: {fault.describe()}")
    removed = replaced = False
    capacity = run.stack.capacity
    need = replacements_due(capacity, size, len(victims) if peers else 0)

    def whole(sample: Sample) -> bool:
        """Whole at a size between capacity and the one it had (the marked servers
        deleted), the replacements due joined."""
        joined = [e for e in lab.events.of("joined") if e.t >= start]
        return len(joined) >= need and any(lab.whole(sample, n) for n in range(capacity, size + 1))

    if peers:
        timeout = (t.dead_member_periods + 4) * t.lockattemptperiod + 2 * run.timings.join_time
        removed = lab.wait_removed(victims, timeout, "the majority's removals")
        # two replacements: Heat drops the second signal inside the group's cooldown, and
        # the agents ask again after it
        again = (need - 1) * (t.scaleupcooldown + 3 * t.lockattemptperiod) if need else 0.0
        replaced = lab.wait_for(
            whole, (need + 1) * run.timings.join_time + again, "a whole cluster"
        )
    else:  # held past the dead-member window and the failmarker: nobody may go
        lab.wait_for(lambda s: False, (t.dead_member_periods + 3) * t.lockattemptperiod)
    writes = lab.heal(fault)
    run.faults.append(Fault(kind, start, run.now, tuple(victims) if peers else ()))
    run.phase(f"healed: {fault.describe()}")
    back = lab.wait_for(whole, 2 * run.timings.join_time, "a whole cluster after the heal")
    after = outside.look(lab.endpoints())
    final = lab.latest()
    voters = final.voters if final is not None else 0
    if not cloud:  # with the cloud cut too, no call of theirs could arrive: nothing to judge
        run.checks.append(no_heat_writes(writes, ", ".join(victims)))
    if peers:
        live = {n.name for n in lab.nova.nodes.values()}
        # a deleted server's etcd, too (found in /proc by its config: its files are gone)
        servers = [*lab.nova.nodes.values(), *lab.nova.gone]
        still = sorted({n.name for n in servers if n.name in victims and n.etcd_pids()})
        run.check(
            f"{kind}: the majority removed the cut-off members and is whole again",
            removed and replaced,
            f"removed: {removed}; healthy, every server a member, {need} replacement(s)"
            f" joined: {replaced} ({voters} members, capacity {capacity}, was {size})",
        )
        run.check(
            f"{kind}: after the heal, the removed nodes' servers left and no etcd of theirs runs",
            back and not (set(victims) & live) and not still,
            f"still in the group: {sorted(set(victims) & live)}; etcd running: {still}",
        )
        run.checks.append(members_kept(before, after, victims, kind))
    else:
        run.check(
            f"{kind}: nobody removed, marked or replaced",
            back
            and voters == size
            and not [e for e in lab.events.of("mark-unhealthy", "removed") if e.t >= start],
            f"healthy {voters}/{size} after the heal: {back}",
        )
        run.checks.append(same_members(before, after, kind))
    run.checks.append(one_healthy_cluster(after, voters))


def _names(run: Run) -> tuple[str, list[str]]:
    sample = run.lab.latest()
    assert sample is not None
    leader = sample.leader or sample.nodes[0].name
    return leader, [n.name for n in sample.nodes if n.name != leader and not n.crashed]


def partition(run: Run) -> None:
    """A follower reaches nobody (its peers, the cloud): the majority removes and replaces
    it; it marks nobody; after the heal its server is gone."""
    _, followers = _names(run)
    _network_fault(run, "partition", followers[:1], peers=True, cloud=True, size=run.stack.capacity)
    run.outside_writes = True


def peer_cut(run: Run) -> None:
    """The leader loses its peers but keeps the cloud's API: it must not use it (no mark,
    no scale-down) while the majority elects a leader, removes and replaces it."""
    leader, _ = _names(run)
    _network_fault(run, "peer-cut", [leader], peers=True, cloud=False, size=run.stack.capacity)
    run.outside_writes = True


def cloud_cut(run: Run) -> None:
    """The leader loses the cloud's API only, past the dead-member window: etcd is whole,
    so nothing changes; after the heal, the same members."""
    leader, _ = _names(run)
    _network_fault(run, "cloud-cut", [leader], peers=False, cloud=True, size=run.stack.capacity)
    run.outside_writes = True


def split(run: Run) -> None:
    """The group grown to max_cluster (everyone busy), split twice into a majority and a
    minority: first the minority holds the leader and keeps the cloud's API, then it holds
    followers only and loses the cloud too. Each time the majority removes and replaces the
    minority, which removes and marks nobody; then the load falls and the group shrinks."""
    lab, t, stack = run.lab, run.timings, run.stack
    size = stack.max_cluster
    lab.set_demand(50.0 * size)
    lab.cloud.update(size)
    grown = run.grow_to(size, f"{size} members")
    run.check("the group grew to max_cluster for the split", grown, f"{size} members: {grown}")
    minority = (size - 1) // 2
    leader, followers = _names(run)
    _network_fault(
        run,
        "split-leader-minority",
        [leader, *followers[: minority - 1]],
        peers=True,
        cloud=False,
        size=size,
    )
    leader, followers = _names(run)
    _network_fault(
        run, "split-leader-majority", followers[-minority:], peers=True, cloud=True, size=size
    )
    lab.set_demand(5.0 * stack.capacity)
    run.settle(
        stack.capacity,
        t.downmetric_window
        + (size - stack.capacity) * 1.6 * t.scaledownperiod
        + 2 * run.timings.join_time,
        "back to capacity",
    )
    run.outside_writes = True


def bad_metrics(run: Run) -> None:
    lab, t, stack = run.lab, run.timings, run.stack
    lab.set_demand(0)
    run.phase("netdata answers garbage; the group is grown to max_cluster by a stack update")
    start = run.now
    lab.nova.default_mode = "garbage"
    lab.set_metrics_mode("garbage")
    lab.cloud.update(stack.max_cluster)
    grown = run.grow_to(stack.max_cluster, "growth")
    hold = 2 * t.scaledownperiod
    modes = list(each_mode())
    for mode in modes:
        lab.set_metrics_mode(mode)
        lab.nova.default_mode = mode
        lab.wait_for(lambda s: False, hold / len(modes))
    end = run.now
    gone = [e for e in lab.events.of("removed", "mark-unhealthy") if start <= e.t <= end]
    reasons = _last_cycles(lab)
    run.check(
        "no removal while netdata was bad",
        grown and not gone,
        f"grown to {stack.max_cluster}: {grown}; {len(gone)} removal(s) in {end - start:.1f}s"
        f" of {', '.join(modes)}; an agent said: {reasons[:1] or ['-']}",
    )
    run.check(
        "the agents saw no metric (no decision)",
        any("no metric" in r or "no decision" in r for r in reasons),
        f"{len(reasons)} agents' last cycles checked",
    )
    run.phase("netdata answers again")
    lab.nova.default_mode = "ok"
    lab.set_metrics_mode("ok")
    timeout = t.downmetric_window + (stack.max_cluster - stack.capacity) * t.scaledownperiod * 1.6
    back = run.settle(
        stack.capacity, timeout + 4 * run.timings.join_time, f"{stack.capacity} members"
    )
    run.check(
        "removals resumed once netdata answered (the control)",
        back,
        f"back to {stack.capacity} members: {back}",
    )


def reboot(run: Run) -> None:
    lab, t, stack = run.lab, run.timings, run.stack
    busy = 40.0 * (stack.capacity + 1)  # each node ~40 % busy: nobody leaves, no alarm
    run.phase("the group grows by one (a stack update), then the load falls and one leaves")
    lab.set_demand(busy)
    lab.cloud.update(stack.capacity + 1)
    grown = run.settle(stack.capacity + 1, 2 * run.timings.join_time, "one more member")
    lab.set_demand(5.0 * stack.capacity)
    shrunk = run.settle(
        stack.capacity,
        t.downmetric_window + 1.6 * t.scaledownperiod + 2 * run.timings.join_time,
        "back to capacity",
    )
    run.check(
        "the group grew and shrank once (no server is initial)",
        grown and shrunk and lab.cloud.nested_status()[2] is not None,
        f"grew: {grown}, shrank: {shrunk}, nested stack {lab.cloud.nested_status()[0]}",
    )
    outside = Etcdctl(tls=lab.client_tls)
    for what in ("one", "majority", "all"):
        sample = lab.latest()
        assert sample is not None
        names = sorted(n.name for n in sample.nodes if not n.crashed)
        leader = sample.leader or names[0]
        count = {"one": 1, "majority": len(names) // 2 + 1, "all": len(names)}[what]
        victims = [leader, *[n for n in names if n != leader]][:count]
        before = outside.look(lab.endpoints())
        run.phase(f"reboot {what}: {', '.join(victims)}")
        start, started = run.now, time.time()
        lab.reboot(victims)
        back = lab.wait_for(
            lambda s, victims=victims, started=started: (
                lab.settled(s, stack.capacity)
                and all(_booted(lab, name, started) for name in victims)
            ),
            t.boot_delay + 4 * run.timings.join_time,
            f"the cluster back ({what})",
        )
        run.faults.append(Fault(f"reboot-{what}", start, run.now))
        after = outside.look(lab.endpoints())
        marks = [e for e in lab.events.of("mark-unhealthy", "removed", "replace") if e.t >= start]
        run.check(
            f"reboot {what}: the same members back healthy by themselves",
            back and not marks and sorted(n.name for n in lab.latest().nodes) == names,
            f"{len(victims)} rebooted; back: {back}; marks, removals, replacements: {len(marks)}",
        )
        said = [_resumed_line(lab, name) for name in victims]
        run.check(
            f"reboot {what}: each rebooted agent said what it found and why it started etcd",
            all(said),
            "; ".join(
                f"{name}: {line[:160] or 'nothing'}"
                for name, line in zip(victims, said, strict=True)
            ),
        )
        run.checks.append(same_members(before, after, f"reboot {what}"))
        run.checks.append(one_healthy_cluster(after, stack.capacity))
    run.outside_writes = True


def update(run: Run, grown: int | None = None) -> None:
    import json

    from agent.loop import SETTINGS_POLL_CYCLES

    lab, t, stack = run.lab, run.timings, run.stack
    grown = grown or stack.capacity + 1
    run.phase(f"the group grows to {grown} (an operator's resize), everyone busy")
    lab.set_demand(40.0 * grown)
    lab.cloud.update(grown)
    ok = run.settle(grown, (grown - stack.capacity + 1) * run.timings.join_time, "grown")
    run.check(f"the group grew to {grown}", ok, f"{grown} members: {ok}")
    outside = Etcdctl(tls=lab.client_tls)
    before = outside.look(lab.endpoints())
    servers = sorted(n.member.server_id for n in lab.nova.live())
    threshold = stack.threshold - 5
    changes = {
        "threshold": threshold,
        "failtolerance": stack.failtolerance + 5,
        "max_cluster": stack.max_cluster + 1,
    }
    run.phase(f"pulumi up: {', '.join(f'{k}={v}' for k, v in changes.items())}")
    start = run.now
    refused = ""
    try:
        lab.update(etcdclientport=stack.etcdclientport + 1000)
    except ValueError as error:
        refused = str(error)
    sha_before = (lab.cloud.settings_document or {}).get("sha256")
    run.check(
        "a client port change is refused before anything changes",
        "REFUSED" in refused and "etcd.client_port" in refused,
        refused[:200] or "it was not refused",
    )
    notes = lab.update(**changes)
    sha = (lab.cloud.settings_document or {}).get("sha256")
    run.check(
        "the update reached the stack: a new settings document, the group's new bound",
        sha != sha_before and lab.cloud.group.max_size == stack.max_cluster + 1,
        "; ".join(notes),
    )

    def taken(node: Any) -> bool:
        try:
            state = json.loads((node.state_dir / "state.json").read_text())
            settings = json.loads((node.dir / "agent.json").read_text())
        except (OSError, ValueError):
            return False
        return (
            state.get("settings_sha256") == sha
            and settings["metric"]["threshold"] == threshold
            and settings["scaling"]["failtolerance"] == changes["failtolerance"]
        )

    window = (SETTINGS_POLL_CYCLES + 3) * t.lockattemptperiod + 5
    followed = lab.wait_for(
        lambda s: all(taken(n) for n in lab.nova.live()), window, "every agent on the new settings"
    )
    run.faults.append(Fault("update", start, run.now))
    run.check(
        "every agent took the new settings (its file and its state name the document)",
        followed,
        f"{sum(taken(n) for n in lab.nova.live())} of {len(lab.nova.live())} within {window:g}s",
    )
    made = [e for e in lab.events.of("boot", "delete", "replace") if e.t >= start]
    sample = lab.latest()
    run.check(
        "no server made, replaced or deleted; the grown group kept its size",
        not made
        and sorted(n.member.server_id for n in lab.nova.live()) == servers
        and sample is not None
        and lab.settled(sample, grown),
        f"servers: {len(servers)} -> {len(lab.nova.live())}; events: {len(made)}",
    )
    after = outside.look(lab.endpoints())
    run.checks.append(same_members(before, after, "the update"))
    run.checks.append(one_healthy_cluster(after, grown))
    run.phase("the load falls: back to capacity under the new threshold")
    lab.set_demand(5.0 * stack.capacity)
    back = run.settle(
        stack.capacity,
        t.downmetric_window
        + (grown - stack.capacity) * 1.6 * t.scaledownperiod
        + 2 * run.timings.join_time,
        "back to capacity",
    )
    run.check("the group shrank back to capacity", back, f"{stack.capacity} members: {back}")
    run.outside_writes = True


def update_grown(run: Run) -> None:
    """`update` on a group grown to `max_cluster`."""
    update(run, grown=run.stack.max_cluster)


SKEWED_BUSY = 30.0
"""% CPU of the oldest server in `skewed`: idle 70, below the threshold (90) on its own;
with four idle members (98) the mean of five is 92.4, above it."""


def skewed(run: Run) -> None:
    lab, t, stack = run.lab, run.timings, run.stack
    run.phase(f"the group grows to {stack.max_cluster} (a stack update), everyone busy")
    lab.set_demand(40.0 * stack.max_cluster)
    lab.cloud.update(stack.max_cluster)
    grown = run.grow_to(stack.max_cluster, "growth")
    oldest = min(lab.cloud.members(), key=Member.sort_key).name
    run.phase(f"{oldest} (the oldest) {SKEWED_BUSY:g} % busy, the others idle")
    lab.pin_load(oldest, SKEWED_BUSY)
    lab.set_demand(0)
    start = run.now
    if stack.downmetric_scope == "cluster":
        back = run.settle(
            stack.capacity,
            t.downmetric_window
            + (stack.max_cluster - stack.capacity + 1) * 1.6 * t.scaledownperiod
            + 2 * run.timings.join_time,
            "back to capacity",
        )
        left = [e.node for e in lab.events.of("removed") if e.t >= start]
        run.check(
            "cluster scope: the idle cluster shrank to capacity, its busy oldest first",
            back and left[:1] == [oldest],
            f"grown: {grown}; back to {stack.capacity}: {back}; left in order: {left}"
            f"; the deciding sentence: {_leave_sentence(lab)}",
        )
        return
    # the window fills, then a scaledownperiod and more: time for the oldest to have left
    lab.wait_for(lambda s: False, t.downmetric_window + 1.5 * t.scaledownperiod)
    left = [e.node for e in lab.events.of("removed") if e.t >= start]
    run.check(
        "node scope: nobody left, the busy oldest's own reading never crossed",
        grown and not left,
        f"grown: {grown}; removed: {left or 'none'}; {oldest} said:"
        f" {lab.node(oldest).state().last_cycle[-160:]}",
    )
    lab.pin_load(oldest, None)
    run.phase("the oldest idles too: the control")
    back = run.settle(
        stack.capacity,
        t.downmetric_window
        + (stack.max_cluster - stack.capacity + 1) * 1.6 * t.scaledownperiod
        + 2 * run.timings.join_time,
        "back to capacity",
    )
    run.check("node scope: once the oldest idles, removals resume", back, f"back: {back}")


NOSPACE_QUOTA = 8 * 2**20
"""The nospace scenario's quota_backend_bytes (when the stack's is larger): 256 KiB puts
fill it in a few seconds."""


def nospace(run: Run) -> None:
    lab, t = run.lab, run.timings
    quota = run.stack.quota_backend_bytes
    outside = Etcdctl(tls=lab.client_tls)
    before = outside.look(lab.endpoints())
    run.phase(f"fill the backend's quota ({quota // 2**20} MiB): 4 keys rewritten, 256 KiB each")
    start = run.now
    with EtcdClient(lab.endpoints(), timeout=5.0, tls=lab.client_tls) as client:
        try:
            refused: EtcdError | None = fill_until_no_space(client)
        except (EtcdError, AssertionError) as error:
            refused = None
            run.check("the quota filled", False, str(error)[:300])
    full_at = run.now
    acked = lab.acked()
    # the leader's agent sees the alarm at its next cycle; the defragmentation of 8 MiB
    # takes a fraction of a second per member
    back = lab.wait_for(
        lambda s: lab.acked() >= acked + 5,
        4 * t.lockattemptperiod + 10.0,
        "writes taken again",
    )
    run.faults.append(Fault("nospace", start, run.now))
    run.check(
        "the quota filled: etcd refused a put for space (NOSPACE)",
        refused is not None and refused.no_space,
        f"{refused.detail[:120] if refused else 'no refusal'} at {full_at:.1f}s",
    )
    run.check(
        "the cluster takes writes again by itself",
        back,
        f"writes acknowledged again {run.now - full_at:.1f}s after the refusal: {back};"
        f" the agent said: {_agent_said(lab, 'NOSPACE cleared')[:240] or 'nothing'}",
    )
    after = outside.look(lab.endpoints())
    alarms = outside.run(lab.endpoints(), "alarm", "list").strip()
    run.check("etcdctl: no alarm raised at the end", alarms == "", alarms or "alarm list empty")
    run.checks.append(same_members(before, after, "the NOSPACE"))
    run.checks.append(one_healthy_cluster(after, run.stack.capacity))
    marks = [e for e in lab.events.of("mark-unhealthy", "removed", "replace") if e.t >= start]
    run.check("no member lost", not marks, f"marks, removals, replacements: {len(marks)}")
    run.outside_writes = True


def _snapshots(lab: Lab) -> list[tuple[str, int]]:
    """The backup container's snapshots (name, revision), oldest first, as an operator's
    `swift list` shows them."""
    assert lab.swift_access is not None
    url, token = lab.swift_access
    answer = requests.get(
        f"{url}/{backup_container(lab.cluster_name)}",
        params={"format": "json", "prefix": "snapshots/"},
        headers={"X-Auth-Token": token},
        timeout=10,
    )
    if answer.status_code not in (200, 204):
        return []
    names = sorted(str(o["name"]) for o in (answer.json() if answer.status_code == 200 else []))
    found = [(n, re.search(r"-r(\d{16})-", n)) for n in names]
    return [(n, int(m.group(1))) for n, m in found if m]


def _restore_line(lab: Lab) -> tuple[Node, str] | None:
    """The node whose agent logged the command that restores the newest snapshot on it,
    and that command."""
    for node in lab.nova.live():
        try:
            text = (node.dir / "agent.log").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            found = re.search(r"then `([^`]* restore --latest)`", line)
            if "restore it on this server" in line and found:
                return node, found.group(1)
    return None


ETCD_BEFORE, ETCD_AFTER = "3.4.23", "3.5.17"
"""rolling-update-etcd's versions: Debian's etcd-server (3.4) and the wheel's line (3.5)."""


def rolling_update_etcd(run: Run, *, grown: bool = False) -> None:
    """etcd's rolling upgrade, one minor version: a cluster of etcd 3.4 (the lab's stack
    at `etcd_version` 3.4.23 on a prebuilt image runs Debian's 3.4) gets `etcd_version`
    3.5.17 by a `pulumi up`: every member's server replaced by one running 3.5 (the
    wheel's), each joining the 3.4 cluster beside the old one. From outside, etcdctl and
    etcd's /version: every member serves 3.5 at the end, and the cluster version is 3.5.
    `grown`: on a group grown to `max_cluster` first (rolling_update_grown)."""
    lab = run.lab
    outside = Etcdctl(tls=lab.client_tls)
    first = _versions(outside, lab.endpoints())
    run.check(
        "etcdctl: the cluster runs etcd 3.4 before",
        bool(first) and all(v.startswith("3.4.") for v in first.values()),
        f"{first}",
    )

    def upgraded() -> None:
        after = _versions(outside, lab.endpoints())
        # the leader raises the cluster version once every member runs 3.5 (etcd's version
        # monitor looks every few seconds)
        lab.wait_for(lambda _: _cluster_versions(lab) == {"3.5.0"}, 20.0, "the cluster version 3.5")
        clusters = _cluster_versions(lab)
        run.check(
            "etcdctl: every member serves etcd 3.5, the cluster version is 3.5",
            bool(after)
            and all(v.startswith("3.5.") for v in after.values())
            and clusters == {"3.5.0"},
            f"servers {after}; cluster version {sorted(str(c) for c in clusters)}",
        )

    changes = {"etcd_version": ETCD_AFTER}
    if grown:
        rolling_update_grown(run, changes, then=upgraded)
    else:
        rolling_update(run, changes=changes)
        upgraded()


def _versions(outside: Etcdctl, endpoints: list[str]) -> dict[str, str]:
    """Each endpoint's etcd server version, from `etcdctl endpoint status`."""
    view = outside.look(endpoints)
    return {
        str(s.get("Endpoint")): str((s.get("Status") or {}).get("version"))
        for s in view.statuses
        if isinstance(s, dict)
    }


def _cluster_versions(lab: Lab) -> set[str | None]:
    """The cluster version each member reports (etcd's `GET /version`, `etcdcluster`)."""
    with EtcdClient(lab.endpoints(), timeout=5.0, tls=lab.client_tls) as client:
        found = [client.versions(url) for url in lab.endpoints()]
    return {v[1] if v else None for v in found}


def rolling_update_grown(
    run: Run, changes: dict[str, Any] | None = None, *, then: Callable[[], None] | None = None
) -> None:
    """The roll of a group grown past `capacity` to `max_cluster` (an operator's resize,
    the load kept high so that nobody leaves): every member replaced, and the group keeps
    its grown size (no `desired_capacity` to reset it to), then shrinks back. `changes`:
    what the `pulumi up` changes (default: the image); `then`: checks after the roll."""
    grown = run.stack.max_cluster
    run.phase(f"the group grows to {grown} (max_cluster), everyone busy")
    run.lab.set_demand(40.0 * grown)
    run.lab.cloud.update(grown)
    ok = run.settle(grown, 2 * run.timings.join_time, f"{grown} members")
    run.check("the group grew to max_cluster", ok, f"{grown} members: {ok}")
    if not ok:
        return
    rolling_update(run, size=grown, changes=changes)
    if then is not None:
        then()
    t = run.timings
    run.phase("the load falls: back to capacity")
    run.lab.set_demand(5.0 * run.stack.capacity)
    back = run.settle(
        run.stack.capacity,
        t.downmetric_window + (grown - run.stack.capacity + 1) * 1.6 * t.scaledownperiod + 30,
        "back to capacity",
    )
    run.check("the group shrank back to capacity", back, f"{run.stack.capacity} members: {back}")


def rolling_update_fault(run: Run) -> None:
    """The roll with a member lost during it: once the first batch's new member votes, the
    node of an original member (not the next Heat replaces; a follower if one is) is
    killed (kill -9). Its agents remove it and mark it unhealthy, so Heat's next batch
    replaces it first (FAILED members go first); the quorum holds through each delete."""
    rolling_update(run, fault=True)


def _crash_during_roll(run: Run, start: float, originals: list[str]) -> None:
    lab, t = run.lab, run.timings
    joined = lab.wait_for(
        lambda s: any(e.t >= start for e in lab.events.of("joined")),
        2 * t.join_time + 30.0,
        "the first batch's member a voter",
    )
    sample = lab.latest()
    ordered = [m.name for m in sorted(lab.cloud.members(), key=Member.sort_key)]
    old = [n for n in ordered if n in originals]
    # not the next Heat replaces (its delete would follow anyway); a follower if one is
    leader = sample.leader if sample is not None else None
    victims = sorted(old[1:], key=lambda n: n == leader)
    if not joined or not victims:
        run.check("a member was lost during the roll", False, f"joined {joined}; {old}")
        return
    victim = victims[0]
    role = "the leader" if victim == leader else "a follower"
    run.phase(f"kill -9 of {victim}'s node during the roll (an original member, {role})")
    at = run.now
    lab.crash(victim)
    removed = lab.wait_removed(
        [victim], (t.dead_member_periods + 4) * t.lockattemptperiod + 10.0, "removal"
    )
    run.faults.append(Fault("kill", at, run.now, (victim,)))
    run.check("the lost member was removed during the roll", removed, f"{victim}: {removed}")


def rolling_update(
    run: Run,
    size: int | None = None,
    *,
    fault: bool = False,
    changes: dict[str, Any] | None = None,
) -> None:
    lab, t, stack = run.lab, run.timings, run.stack
    size = size or stack.capacity
    outside = Etcdctl(tls=lab.client_tls)
    before = outside.look(lab.endpoints())
    originals = sorted(m.name for m in lab.cloud.members())
    changes = changes or {"image": f"{stack.image}-next"}
    said = ", ".join(f"{k}={v}" for k, v in changes.items())
    run.phase(f"a `pulumi up` with {said}: Heat replaces every member's server")
    start = run.now
    try:
        notes = lab.update(**changes)
    except ValueError as error:
        run.check("the update was accepted", False, str(error)[:300])
        return
    run.check("the update was accepted: a rolling update", bool(notes), "; ".join(notes)[:300])
    template = lab.template(lab.stack)
    updates = template["resources"][heat.GROUP]["properties"]["rolling_updates"]
    pause = float(updates["pause_time"])
    if fault:
        _crash_during_roll(run, start, originals)
    done = lab.wait_for(
        lambda s: (
            not lab.cloud.group.in_progress
            and lab.settled(s, size)
            and not {n.name for n in s.nodes} & set(originals)
        ),
        len(originals) * (pause + 2 * t.join_time) + 30.0,
        "every member replaced",
    )
    after = outside.look(lab.endpoints())
    batches = [e for e in lab.events.of("rolling-update") if e.t >= start and "batch" in e.detail]
    gaps = [b.t - a.t for a, b in itertools.pairwise(batches)]
    # Heat's batches at min_in_service 0: each member updated in place, one at a time
    planned = [f"{size} members, 1 on"] * len(originals)
    run.check(
        "every server replaced, one batch at a time, pause_time apart, the size kept",
        done
        and all(gap >= pause - 0.5 for gap in gaps)
        # a member lost meanwhile changes Heat's batches (it goes first): not counted then
        and (fault or len(batches) == len(planned))
        and (fault or all(want in b.detail for want, b in zip(planned, batches, strict=False))),
        f"{len(batches)} batches in {run.now - start:.1f}s (pause_time {pause:.1f}s):"
        f" {[b.detail[:60] for b in batches]}",
    )
    new_names = set(after.member_ids())
    run.check(
        "etcdctl: the same cluster, its members all on new servers",
        done
        and len(new_names) == size
        and not new_names & set(originals)
        and after.cluster_ids() == before.cluster_ids(),
        f"before {sorted(before.cluster_ids())} {originals}; after"
        f" {sorted(after.cluster_ids())} {sorted(new_names)}",
    )
    run.checks.append(one_healthy_cluster(after, size))
    run.outside_writes = True
    # Heat's deletes are hard power-offs: the leader's agent moved leadership off each of
    # those servers first (the lab's Nova asks each server's etcd at its power-off)
    deletes = [e for e in lab.events.of("delete") if e.t >= start]
    led = [e.node for e in lab.events.of("leader-deleted") if e.t >= start]
    run.check(
        "no server Heat deleted led the cluster",
        bool(deletes) and not led,
        f"{len(deletes)} deletes; the leader's: {led or 'none'}",
    )
    # the roll's figures: per member, from its batch to its replacement a voter; what the
    # writer felt over the whole roll; polls that saw no healthy quorum (must be none)
    joined = [e for e in lab.events.of("joined") if e.t >= start]
    per_member = [
        min((j.t for j in joined if j.t >= b.t), default=math.nan) - b.t
        for b in batches
        if ", 0 on" not in b.detail  # the last batch only deletes
    ]
    end = run.now
    felt = stall(run.writer.puts, start, end, run.writer.timeout) if run.writer else None
    polls = [s for s in lab.samples if start <= s.t <= end]
    blind = [s for s in polls if s.members is None or s.healthy < quorum(max(1, s.voters))]
    run.figures.update(
        {
            "roll_seconds": end - start,
            "pause_time": pause,
            "member_to_voter_longest": max(per_member, default=math.nan),
            "longest_write_stall": felt.longest if felt else math.nan,
            "polls": len(polls),
            "polls_without_quorum": len(blind),
        }
    )


USER_KEY = "/lab/user/lock"


def disaster(run: Run) -> None:
    lab, t, stack = run.lab, run.timings, run.stack
    writer = run.writer
    assert writer is not None
    auto = stack.disaster_recovery == "auto"
    outside = Etcdctl(tls=lab.client_tls)
    before = outside.look(lab.endpoints())
    period = stack.backup_period * t.factor
    run.phase(f"snapshots to Swift every {period:.1f}s while the writer writes")
    # a user's own leased key (a lock, a registration): the restore keeps it (only the
    # agents' leases are revoked)
    with EtcdClient(lab.endpoints(), timeout=5.0, tls=lab.client_tls) as client:
        client.put(USER_KEY, "mine", lease=client.grant_lease(3600))
    mark = max(writer.revisions.values(), default=0)
    taken = lab.wait_for(
        lambda s: any(rev >= mark for _, rev in _snapshots(lab)),
        3 * period + 4 * t.lockattemptperiod + 10.0,
        "a snapshot after the first writes",
    )
    lab.wait_for(lambda s: False, period / 2)  # writes after the snapshot: lost by design
    run.phase("every server of the group deleted, outside Heat (a zone lost)")
    start = run.now
    names = sorted(m.name for m in lab.cloud.members())
    for member in lab.cloud.members():
        lab.cloud.delete_server(member.server_id)
    # the judge of the rolls ("no server Heat deleted led the cluster") says yes here: the
    # leader's server went with the others, and its etcd said it led at its power-off
    led = [e.node for e in lab.events.of("leader-deleted") if e.t >= start]
    run.check("the lab's Nova saw the leader's server deleted", len(led) == 1, f"{led}")
    last_n = max(writer.acked, default=0)
    snapshots = _snapshots(lab)
    newest, revision = snapshots[-1] if snapshots else ("none", 0)
    kept = [n for n in writer.acked if writer.revisions[n] <= revision]
    run.may_lose = lambda n: n <= last_n and writer.revisions.get(n, 0) > revision
    run.check(
        "snapshots reached Swift before the disaster",
        taken and bool(kept),
        f"{len(snapshots)} in the container, the newest {newest} (revision {revision});"
        f" {len(kept)} acknowledged writes before it, {last_n and len(writer.acked) - len(kept)}"
        " after it (lost by design: one period at most)",
    )
    run.phase("the operator rebuilds the group: `openstack stack check`, then a stack update")
    failed = lab.cloud.check()
    lab.cloud.update(None)
    command_ok = True
    if not auto:
        found: list[tuple[Node, str]] = []

        def logged(_: Sample) -> bool:
            line = _restore_line(lab)
            if line is not None:
                found.append(line)
            return line is not None

        lab.wait_for(logged, 4 * t.join_time + 10.0, "the logged restore command")
        command_ok = bool(found)
        detail = "no agent logged a restore command"
        if found:
            node, command = found[0]
            run.phase(f"on {node.name}: stop its agent, run `{command}`, start its agent")
            lab.nova.stop_agent(node)
            done = lab.nova.run_on(node, shlex.split(command))
            lab.nova.start_agent(node)
            command_ok = done.returncode == 0
            detail = f"on {node.name}: exit {done.returncode}: {done.stdout.strip()[-300:]}"
        run.check("manual: the one logged command restored the cluster", command_ok, detail)
    back = run.settle(
        stack.capacity,
        (t.dead_member_periods + 4) * t.lockattemptperiod + 4 * t.join_time + 20.0,
        "the cluster restored and whole",
    )
    run.faults.append(Fault("disaster", start, run.now, tuple(names)))
    after = outside.look(lab.endpoints())
    since = [n for n in writer.acked if n > last_n]  # before the listing: it must hold them
    keys = outside.keys(lab.endpoints(), WRITE_PREFIX) if back else []
    run.checks.append(writes_readable([*kept, *since], keys, WRITE_PREFIX))
    run.checks.append(one_healthy_cluster(after, stack.capacity))
    kept_key = outside.run(lab.endpoints(), "get", USER_KEY, "--print-value-only") if back else ""
    run.check(
        "etcdctl: a user's leased key restored with its lease",
        kept_key.strip() == "mine",
        f"{USER_KEY} = {kept_key.strip()!r}",
    )
    new_names = set(after.member_ids())
    run.check(
        "etcdctl: a new cluster of new servers, none of the lost ones",
        back
        and bool(new_names)
        and not new_names & set(names)
        and after.cluster_ids().isdisjoint(before.cluster_ids()),
        f"before {sorted(before.cluster_ids())} {names}; after {sorted(after.cluster_ids())}"
        f" {sorted(new_names)}; Heat's check failed {len(failed)} member(s)",
    )
    said = _agent_said(lab, "disaster recovery: no cluster")
    restorers = _agents_saying(lab, "disaster recovery: no cluster")
    gave_up = [e for e in lab.events.of("mark-unhealthy") if e.t >= start]
    run.check(
        "no new server gave up (marked itself) while the cluster was gone",
        not gave_up,
        f"{len(gave_up)} marks: {[e.detail[:80] for e in gave_up][:2]}",
    )
    if auto:
        run.check(
            "auto: one agent restored by itself, and only one",
            len(restorers) == 1,
            f"{', '.join(restorers) or 'none'}: {said[:200] or 'none said so'}",
        )
    else:
        run.check("manual: no agent restored by itself", not said, said[:240] or "none did")


def _agents_saying(lab: Lab, text: str) -> list[str]:
    """The live nodes whose agent log holds `text`."""
    found = []
    for node in lab.nova.live():
        try:
            if text in (node.dir / "agent.log").read_text(errors="replace"):
                found.append(node.name)
        except OSError:
            continue
    return found


def _agent_said(lab: Lab, text: str) -> str:
    """The first line of any live node's agent log holding `text`."""
    for node in lab.nova.live():
        try:
            lines = (node.dir / "agent.log").read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if text in line:
                return line[line.index(text) :]
    return ""


SCENARIO_STACK: dict[str, dict[str, Any]] = {
    "nospace": {"quota_backend_bytes": NOSPACE_QUOTA},
    "disaster": {"backups": "swift", "backup_period": 60},
    "rolling-update-etcd": {"etcd_version": ETCD_BEFORE, "prebuilt_image": True},
    "rolling-update-etcd-grown": {"etcd_version": ETCD_BEFORE, "prebuilt_image": True},
}
"""What a scenario changes in the stack it is given: a number only where the stack's value is
larger (the scenario needs it small), as nospace's quota and disaster's backup period; any
other value always (disaster's backups to Swift)."""


def scenario_stack(name: str, stack: StackSettings) -> StackSettings:
    def wanted(key: str, value: Any) -> bool:
        have = getattr(stack, key)
        if isinstance(value, str):
            return have != value
        return have == 0 or have > value

    changes = {
        key: value for key, value in SCENARIO_STACK.get(name, {}).items() if wanted(key, value)
    }
    return type(stack).model_validate({**stack.model_dump(), **changes}) if changes else stack


def _leave_sentence(lab: Lab) -> str:
    """A leaver's decision as its agent logged it (the figures the cluster decided by)."""
    for node in lab.nova.gone:
        try:
            text = (lab.nova.logs / f"{node.name}.agent.log").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if "did leave:" in line:
                return line.split("did leave:", 1)[1].split("|", 1)[0].strip()[:200]
    return "-"


def _booted(lab: Lab, name: str, since: float) -> bool:
    """The node's agent started again after `since` and is through its bootstrap."""
    try:
        node = lab.node(name)
    except KeyError:
        return False
    state = node.state()
    return not node.rebooting and state.phase == "member" and state.updated > since


def _resumed_line(lab: Lab, name: str) -> str:
    """The last line of the node's agent log saying it found its member's data."""
    try:
        text = (lab.node(name).dir / "agent.log").read_text(errors="replace")
    except (KeyError, OSError):
        return ""
    lines = [line for line in text.splitlines() if "found this node's data of member" in line]
    return lines[-1].split(" INFO ", 1)[-1] if lines else ""


QUIET_SECONDS = 1.0
"""The quiet window a scenario starts with: what a client feels with nothing happening
(20 puts at the writer's 50 ms; the bench's client rows keep a longer one, 4 s)."""


def event_stalls(
    puts: list[tuple[float, float | None]],
    quiet: tuple[float, float] | None,
    events: list[Event],
    faults: list[Fault],
    timeout: float,
) -> dict[str, Any]:
    """What the writer felt: the quiet window, each injected fault's window, and a second
    around each removal and before each join (lab/stalls.py)."""
    windows: list[tuple[str, float, float]] = [
        (f"fault {f.kind} {','.join(f.nodes)}".rstrip(), f.start, f.end + 1.0) for f in faults
    ]
    for event in events:
        if event.kind == "removed":
            windows.append((f"removed {event.node}", event.t - 1.0, event.t + 1.0))
        elif event.kind == "joined":
            windows.append((f"joined {event.node}", event.t - 2.0, event.t + 0.5))
    return {
        "quiet": stall(puts, *quiet, timeout).to_json() if quiet else None,
        "events": [
            {"event": name, **stall(puts, a, b, timeout).to_json()} for name, a, b in windows
        ],
    }


def _last_cycles(lab: Lab) -> list[str]:
    return [n.state().last_cycle for n in lab.nova.live() if n.state().last_cycle]


SCENARIOS: dict[str, Scenario] = {
    "burst": burst,
    "node-loss": node_loss,
    "etcd-outage": etcd_outage,
    "freeze": freeze,
    "partition": partition,
    "split": split,
    "peer-cut": peer_cut,
    "cloud-cut": cloud_cut,
    "bad-metrics": bad_metrics,
    "reboot": reboot,
    "skewed": skewed,
    "update": update,
    "update-grown": update_grown,
    "nospace": nospace,
    "disaster": disaster,
    "rolling-update": rolling_update,
    "rolling-update-grown": rolling_update_grown,
    "rolling-update-fault": rolling_update_fault,
    "rolling-update-etcd": rolling_update_etcd,
    "rolling-update-etcd-grown": lambda run: rolling_update_etcd(run, grown=True),
}


# --- running one -----------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    report: dict[str, Any]
    json_path: Path | None
    plot_path: Path | None


def final_views(lab: Lab) -> list[dict[str, Any]]:
    """What every live etcd says of its cluster: id, leader, members (split-brain check)."""
    views = []
    for node in lab.nova.live():
        if node.etcd_pid() is None:
            continue
        try:
            with EtcdClient([node.client_url], timeout=2.0, tls=lab.client_tls) as client:
                status = client.status(node.client_url)
                members = client.members(check_health=False)
        except EtcdError as error:
            views.append({"name": node.name, "error": str(error)})
            continue
        leader = int(status.get("leader", 0))
        views.append(
            {
                "name": node.name,
                "cluster_id": format(int(status.get("header", {}).get("cluster_id", 0)), "x"),
                "leader": next((m.name for m in members if m.id == leader), None),
                "members": sorted(m.name for m in members),
            }
        )
    return views


def run_scenario(
    name: str,
    stack: StackSettings,
    timings: LabTimings,
    root: Path,
    *,
    stack_name: str = "dev",
    json_path: Path | None = None,
    plot_path: Path | None = None,
    out: TextIO | None = None,
    tty: bool | None = None,
    etcd_binary: str | None = None,
    network: str = "auto",
) -> Outcome:
    scenario = SCENARIOS[name]
    stack = scenario_stack(name, stack)
    network = network_for(network, f"scenario {name}" if name in NETWORK_SCENARIOS else None)
    lab = Lab(stack, timings, root, stack_name=stack_name, etcd_binary=etcd_binary, network=network)
    display = Display(out, tty=tty) if out is not None else None
    if display is not None:
        lab.events.listeners.append(display.event)
        lab.on_sample.append(display.sample)
    run = Run(lab, timings, stack)
    writer = Writer(lab.endpoints, interval=0.05, tls=lab.client_tls, clock=lab.events.now)
    run.writer = writer
    lab.acked = lambda: len(writer.acked)
    quiet: tuple[float, float] | None = None
    facts: RunFacts | None = None
    try:
        lab.start()
        boot = run.settle(stack.capacity, 30 + 4 * run.timings.join_time, "the first members")
        run.settled_at = run.now
        run.check("the group's first members formed a cluster", boot, f"at {run.now:.1f}s")
        writer.start()
        if boot:
            start = run.now
            lab.wait_for(lambda s: False, QUIET_SECONDS)  # the baseline a client feels
            quiet = (start, run.now)
            scenario(run)
        run.phase("settle")
        acked = len(writer.acked)
        more = lab.wait_for(lambda s: len(writer.acked) >= acked + 20, 10 + run.timings.join_time)
        run.check(
            "the cluster takes writes at the end",
            more,
            f"{len(writer.acked) - acked} more writes acknowledged after the scenario",
        )
        final_settled = run.settle(stack.capacity, 2 * run.timings.join_time, "the end state")
        writer.stop()
        writes = writer.verify()
        if run.may_lose is not None:
            given = {n for n in writes.lost if run.may_lose(n)}
            writes.lost = [n for n in writes.lost if n not in given]
            writes.given_up = len(given)
        if run.outside_writes:
            keys = Etcdctl(tls=lab.client_tls).keys(lab.endpoints(), WRITE_PREFIX)
            run.checks.append(writes_readable(writer.acked, keys, WRITE_PREFIX))
        facts = RunFacts(
            capacity=stack.capacity,
            max_cluster=stack.max_cluster,
            scaledownperiod=timings.scaledownperiod,
            lockattemptperiod=timings.lockattemptperiod,
            election_s=timings.election_ms / 1000,
            interval=lab.interval,
            settled_at=run.settled_at,
            samples=list(lab.samples),
            events=lab.events.all(),
            faults=run.faults,
            writes=writes,
            final_settled=final_settled,
            clusters=final_views(lab),
            removal_records=lab.removal_records(),
            acked_at=ack_times(writer.puts),
        )
    finally:
        writer.stop()
        lab.stop()
    invariants = run.checks + common_invariants(facts)
    extra = {
        "stack": stack_name,
        "factor": timings.factor,
        "timings": {key: lab_value for key, _, lab_value in timings.rows(stack)},
        "nodes_range": f"{lab.prefix}.0/24",
        "network": {"mode": lab.network_mode, **(lab.net.names() if lab.net else {})},
        "logs": str(lab.nova.logs),
        "cloud_calls": lab.cloud_calls(),
        "figures": run.figures,
    }
    extra["stalls"] = event_stalls(writer.puts, quiet, facts.events, facts.faults, writer.timeout)
    report = report_json(name, invariants, facts, extra)
    if json_path is not None:
        write_json(json_path, report)
    if plot_path is not None:
        plot(
            plot_path,
            name,
            facts.samples,
            facts.events,
            facts.faults,
            capacity=stack.capacity,
            max_cluster=stack.max_cluster,
            threshold=stack.upthreshold,
        )
    if out is not None:
        summarize(out, report, facts, json_path, plot_path)
    return Outcome(report["ok"], report, json_path, plot_path)


def summarize(
    out: TextIO,
    report: dict[str, Any],
    facts: RunFacts,
    json_path: Path | None,
    plot_path: Path | None,
) -> None:
    from lab.display import headline, node_table

    final = facts.samples[-1] if facts.samples else None
    print("", file=out)
    if final is not None:
        print("\n".join([headline(final), *node_table(final)]), file=out)
    print(f"\nscenario {report['scenario']}:", file=out)
    for inv in report["invariants"]:
        print(f"  [{'ok' if inv['ok'] else 'FAILED'}] {inv['name']}: {inv['detail']}", file=out)
    writes = report["writes"]
    print(f"  writes: {writes['acked']} acknowledged, {writes['lost']} lost", file=out)
    calls = report.get("cloud_calls") or {}
    if calls:
        said = ", ".join(f"{kind} {n}" for kind, n in calls.items())
        print(f"  the agents' OpenStack calls: {said}", file=out)
    stalls = report.get("stalls") or {}
    if stalls.get("quiet"):
        q = stalls["quiet"]
        print(
            f"  what a client felt (longest stall, p99): quiet"
            f" {1000 * q['longest_stall_s']:.0f} ms, {1000 * q['p99_s']:.0f} ms",
            file=out,
        )
        for e in stalls.get("events", []):
            print(
                f"    {e['event']}: {1000 * e['longest_stall_s']:.0f} ms,"
                f" {1000 * e['p99_s']:.0f} ms ({e['failed']} puts failed)",
                file=out,
            )
    verdict = "every invariant held" if report["ok"] else "SOME INVARIANTS FAILED"
    print(f"result: {verdict}", file=out)
    if json_path is not None:
        print(f"report: {json_path.resolve()}", file=out)
    if plot_path is not None:
        print(f"picture: {plot_path.resolve()}", file=out)
    print(f"node logs: {report.get('logs')}", file=out)
    out.flush()
