"""What a client feels: the stall of its writes through each event, beside the quiet cluster.

One lab, one writer putting a key every 20 ms (a put gives up after 1 s: the client's
retry) for the whole run, and in that run, one after the other:

- quiet: a window with nothing happening, the baseline;
- scale-down of a follower: the group grown by two (busy), leadership moved off the
  oldest server, then the load falls and the oldest leaves (Heat's -1 deletes it);
- scale-down of the leader: the next oldest made the leader, then it leaves. Its agent
  moves leadership off it within a cycle (the leader is never left on the server Heat
  deletes next), so the window holds that move and then a follower's leave; a leader that
  still leads when it leaves moves leadership first the same way (no election either);
- a replacement joining: a follower killed (kill -9) and its replacement's join, from its
  boot to a healthy voter (the node loss itself is the next row);
- node loss of a follower: kill -9 of a follower's node, until its member is removed;
- node loss of the leader: kill -9 of the leader's node, until a new leader serves.

For each: the longest time between two acknowledged writes and the p99 latency in the
event's window, and both as a ratio to the quiet window's (lab/stalls.py). The targets:
a planned change (a scale-down, the leader's too) stalls no longer than the quiet stall
plus twice the quiet p99 (no election); an unplanned loss of the leader no longer than
etcd's election timeout, a heartbeat and the client's retry (its put timeout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent.etcd import EtcdClient, EtcdError
from bench import probe
from bench.rows import Row, check, figure
from lab.cloud.heat import Member
from lab.cluster import Lab
from lab.stalls import Stall, stall
from lab.writer import Writer

WRITE_EVERY = 0.02
PUT_TIMEOUT = 1.0
QUIET_SECONDS = 4.0


@dataclass
class Stalls:
    quiet: Stall
    events: dict[str, Stall]
    notes: dict[str, str]


def _leader(lab: Lab) -> tuple[str | None, dict[str, int], dict[str, str]]:
    listed = probe.members(lab) or []
    leader = next((m.name for m in listed if m.is_leader), None)
    ids = {m.name: m.id for m in listed if m.name}
    urls = {m.name: m.client_urls[0] for m in listed if m.name and m.client_urls}
    return leader, ids, urls


def _make_leader(lab: Lab, name: str) -> bool:
    """MoveLeader from the current leader to `name` (the bench's own setup, not an agent's)."""
    leader, ids, urls = _leader(lab)
    if leader == name:
        return True
    if leader is None or name not in ids:
        return False
    with EtcdClient([urls[leader]], timeout=3.0, tls=lab.client_tls) as client:
        try:
            client.move_leader(urls[leader], ids[name])
        except EtcdError:
            return False
    return probe.wait_until(lab, lambda: _leader(lab)[0] == name, 5.0)


def _oldest(lab: Lab) -> str:
    return min(lab.cloud.members(), key=Member.sort_key).name


def _leave(lab: Lab, leader_first: bool, writer: Writer) -> tuple[Stall, str]:
    """The oldest server leaves (the load fell); made the leader first, or not."""
    oldest = _oldest(lab)
    if leader_first:
        moved = _make_leader(lab, oldest)
    else:
        others = [n for n in probe.listed(lab) or set() if n != oldest]
        moved = _make_leader(lab, sorted(others)[-1]) if others else False
    before = len(lab.removal_records() or [])
    lab.set_demand(0)
    t = lab.timings
    probe.wait_until(
        lab,
        lambda: len(lab.removal_records() or []) > before,
        t.downmetric_window + 2 * t.scaledownperiod + 20,
    )
    records = lab.removal_records() or []
    record = records[-1] if len(records) > before else None
    lab.set_demand(40.0 * len(lab.nova.live()))  # busy again: nobody else leaves for now
    if record is None:
        return stall([], 0.0, 0.0, PUT_TIMEOUT), f"{oldest} did not leave"
    # the record's times are the agents' wall clock; the writer's is the lab's
    offset = time.time() - lab.events.now()
    start = float(record["lock_time"]) - offset
    probe.wait_until(lab, lambda: lab.events.now() > start + 3.0, 5.0)
    # its agent moves leadership off the server Heat deletes next within a cycle: the
    # leave itself is then a follower's (README, "The agent")
    role = "made the leader first" if leader_first else "follower"
    note = f"{oldest} ({role}{'' if moved else ', not arranged'}): {record['reason'][:80]}"
    return stall(writer.puts, start, start + 3.0, PUT_TIMEOUT), note


def _loss(lab: Lab, role: str, writer: Writer) -> tuple[Stall, Stall | None, str]:
    """kill -9 of a follower's or the leader's node: the loss's window; for the follower,
    also its replacement's join (boot to healthy voter)."""
    leader, _, _ = _leader(lab)
    names = sorted(probe.listed(lab) or set())
    victim = leader if role == "leader" else next(n for n in names if n != leader)
    before = {n.name for n in lab.nova.nodes.values()}
    kill = lab.events.now()
    lab.crash(victim)
    t = lab.timings
    if role == "leader":
        probe.wait_until(lab, lambda: _leader(lab)[0] not in (None, victim), 10.0)
        end = lab.events.now() + 1.0
    else:
        probe.wait_until(
            lab,
            lambda: victim not in (probe.listed(lab) or {victim}),
            (t.dead_member_periods + 6) * t.lockattemptperiod + 10,
        )
        end = lab.events.now() + 1.0
    probe.wait_until(lab, lambda: lab.events.now() > end, 5.0)
    loss = stall(writer.puts, kill, end, PUT_TIMEOUT)

    joined: Stall | None = None
    if role == "follower":
        probe.wait_until(
            lab, lambda: probe.booted_since(lab, kill, before) is not None, t.scaleupcooldown + 30
        )
        boot = probe.booted_since(lab, kill, before)
        if boot is not None:
            probe.wait_until(lab, lambda: probe.healthy_voter(lab, boot.node), 60)
            joined = stall(writer.puts, boot.t, lab.events.now(), PUT_TIMEOUT)
    return loss, joined, f"{victim} ({role}) killed"


def client_stalls(lab: Lab) -> Stalls:
    """Run the events on a started, settled lab at capacity (lab.stack.capacity + 2 <=
    max_cluster), with a writer all along."""
    writer = Writer(
        lab.endpoints,
        interval=WRITE_EVERY,
        timeout=PUT_TIMEOUT,
        clock=lab.events.now,
        tls=lab.client_tls,
    )
    lab.acked = lambda: len(writer.acked)
    writer.start()
    events: dict[str, Stall] = {}
    notes: dict[str, str] = {}
    try:
        start = lab.events.now()
        probe.wait_until(lab, lambda: lab.events.now() > start + QUIET_SECONDS, QUIET_SECONDS + 2)
        quiet = stall(writer.puts, start, start + QUIET_SECONDS, PUT_TIMEOUT)
        size = lab.stack.capacity + 2
        lab.set_demand(40.0 * size)
        lab.cloud.update(size)
        lab.wait_for(lambda s: lab.settled(s, size), 120, f"{size} members")
        events["scale-down of a follower"], notes["scale-down of a follower"] = _leave(
            lab, False, writer
        )
        lab.wait_for(lambda s: lab.settled(s, size - 1), 60, f"{size - 1} members")
        time.sleep(probe.cooldown_left(lab))
        events["scale-down of the leader"], notes["scale-down of the leader"] = _leave(
            lab, True, writer
        )
        lab.wait_for(lambda s: lab.settled(s, lab.stack.capacity), 60, "capacity")
        time.sleep(probe.cooldown_left(lab) + 0.5)
        loss, joined, note = _loss(lab, "follower", writer)
        events["node loss of a follower"], notes["node loss of a follower"] = loss, note
        if joined is not None:
            events["a replacement joining"] = joined
            notes["a replacement joining"] = "from its boot to a healthy voter"
        lab.wait_for(lambda s: lab.settled(s, lab.stack.capacity), 60, "capacity")
        time.sleep(probe.cooldown_left(lab) + 0.5)
        loss, _, note = _loss(lab, "leader", writer)
        events["node loss of the leader"], notes["node loss of the leader"] = loss, note
    finally:
        writer.stop()
    return Stalls(quiet, events, notes)


def stall_rows(found: Stalls, election_s: float, heartbeat_s: float) -> list[Row]:
    section = (
        f"what a client feels (a put every {1000 * WRITE_EVERY:.0f} ms, {PUT_TIMEOUT:g} s timeout)"
    )
    q = found.quiet
    rows = [
        figure(section, "quiet: longest stall", 1000 * q.longest, "ms", f"{q.puts} puts"),
        figure(section, "quiet: p99 latency", 1000 * q.p99, "ms"),
    ]
    planned = ("scale-down of a follower", "scale-down of the leader")
    for name, event in found.events.items():
        ratio = event.longest / q.longest if q.longest else float("nan")
        note = f"{ratio:.1f}x quiet; p99 {1000 * event.p99:.0f} ms"
        note += f" ({event.p99 / q.p99:.1f}x)" if q.p99 else ""
        note += f"; {found.notes.get(name, '')}"
        limit = None
        if name in planned:  # no election: the quiet cluster's stall and two round trips
            limit = q.longest + 2 * q.p99
        elif name == "node loss of the leader":  # one election, noticed and retried
            limit = election_s + heartbeat_s + PUT_TIMEOUT + q.longest
        label, value = f"{name}: longest stall", 1000 * event.longest
        rows.append(
            figure(section, label, value, "ms", note)
            if limit is None
            else check(section, label, value, "ms", "<=", 1000 * limit, note)
        )
    return rows
