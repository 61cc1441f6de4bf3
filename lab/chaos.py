"""Chaos: one lab, one random fault per round, every invariant checked after every round.

    python -m lab chaos --rounds N --seed S [--json FILE] [--fast | --factor F] [--plan]

The seed fixes the fault sequence (`plan(rounds, seed, max_grow)`): each round's kind,
its target (by role: the leader, a follower, the group's oldest server, all nodes), how
far the group is grown first, the netdata mode and the moment of an interrupted
removal. Which node holds a role is only known when the fault comes, so it is resolved
then (followers by name order); the same seed gives the same sequence of faults.

A round starts from a settled cluster at `capacity`, may grow the group first (a stack
update, the CPU load kept above the scale-down threshold so nobody leaves yet), injects
its fault, and waits until the cluster is settled again: `capacity` healthy voters,
every server a member, no FAILED server. The kinds:

- kill-node: kill -9 of a node's agent and etcd; its member must be removed and its
  server replaced.
- kill-etcd: kill -9 of a node's etcd alone (nothing restarts it in the lab; on a node
  systemd would after 5 s, so this is the harder case); removed and replaced.
- kill-agent: kill -9 of an agent alone, started again after the unit's RestartSec
  (scaled), as systemd does; nothing may be removed.
- freeze: a node's etcd SIGSTOPped (its agent running) until it is removed, then thawed;
  removed and replaced.
- partition, peer-cut: a node cut off by the network (lab.netns) from everyone, or from
  its peers only (it keeps the cloud's API), until it is removed, then healed; removed and
  replaced, and it made no Heat call (no mark, no signal) while cut.
- split: the group grown by two and split into a majority and a minority of two (the
  leader on either side; the minority keeps or loses the cloud); both removed and
  replaced by the majority, the minority made no Heat call.
- cloud-cut: a node loses the cloud's API past the dead-member window; nothing removed.
- net-blip: a node (the leader or a follower) reaches nobody for 1.5 agent periods, then
  heals: nothing removed (a short cut is not a death).
- netdata-garbage / netdata-silence: the group grown above capacity while netdata (of
  every node, or of the oldest server, the only one that may leave) answers garbage,
  HTTP 500, no metric, or hangs; no removal for a while; then netdata answers and the
  group shrinks back (the control).
- restart-leaving: the group grown, the load dropped, and the agent that leaves is
  killed when its state file says "leaving" (after its fenced removal, before or while
  it runs its cleanup hook, stops etcd and signals Heat) or when the kill lock first
  names it (before the removal, if the kill is quick enough; the stage hit is recorded),
  then started again; it must finish leaving and its server must go.
- reboot-one, reboot-majority, reboot-all: Nova's hard reboot of one server (the leader,
  a follower or the oldest), of a majority (the leader among them) or of every server:
  a power-off keeping the disk, then the boot; the same members (names and ids) must come
  back by themselves, none removed, marked or replaced.
- roll-kill: a `pulumi up` with a new image (a rolling update of the member stacks);
  once its first batch is done, kill -9 of an original member's node the roll has not
  reached (the leader, or a follower): removed and replaced (Heat's next batch takes its
  FAILED member first), and the roll ends with every member on the new definition.

After each round the scenarios' common invariants (lab/report.py) are checked over the
round (removal spacing and dead members over the whole run so far), with the round's own
expectation. The run stops early only if the cluster does not settle: later rounds
would test a broken cluster. The exit code is 0 only if every invariant held.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.decide import KILL_LOCK
from agent.etcd import EtcdError
from infra.heat import pause_for
from infra.settings import PROJECT_DIR, StackSettings
from lab.cloud.heat import Member
from lab.cluster import Lab, Sample, network_for
from lab.display import Display
from lab.events import Event
from lab.netdata_stub import Mode
from lab.nodes import Node, kill_pid, pids_of
from lab.report import (
    Fault,
    Invariant,
    RunFacts,
    common_invariants,
    no_heat_writes,
    write_json,
)
from lab.scenarios import final_views
from lab.stalls import ack_times
from lab.timings import LabTimings
from lab.writer import Writer, WriteResult

KINDS: tuple[str, ...] = (
    "kill-node",
    "kill-etcd",
    "kill-agent",
    "freeze",
    "partition",
    "peer-cut",
    "cloud-cut",
    "split",
    "net-blip",
    "netdata-garbage",
    "netdata-silence",
    "restart-leaving",
    "reboot-one",
    "reboot-majority",
    "reboot-all",
    "roll-kill",
)
VICTIM_KINDS = ("kill-node", "kill-etcd", "freeze", "partition", "peer-cut", "split", "roll-kill")
"""Faults whose node must be removed and replaced."""
NETWORK_KINDS = ("partition", "peer-cut", "cloud-cut", "split", "net-blip")
"""Faults that cut a network (they need the lab's namespaces, lab.netns)."""
GARBAGE_MODES: tuple[Mode, ...] = ("garbage", "error", "missing")
SILENCE_MODES: tuple[Mode, ...] = ("hang",)
LOADED = 40.0
"""CPU use (%) of each member while the group is grown: idle 60 % is not above the
scale-down threshold, 40 % is below the scale-up alarm's."""
AGENT_UNIT = PROJECT_DIR / "infra" / "units" / "autoscale-agent.service"
READ_BACK_TIMEOUT = 10.0
"""s for one range read of every acknowledged write (tens of thousands in a long run)."""
READ_BACK_SECONDS = 60.0
"""s of retries before a round's writes count as not verified."""


HOOK = r"""
import base64, json, os, signal, sys, time, urllib.request
a = json.loads(sys.argv[2])
deadline = time.monotonic() + a["timeout"]
key = base64.b64encode(a["lock_key"].encode()).decode()

def ours():
    try:
        with open(f"/proc/{a['pid']}/cmdline", "rb") as f:
            return a["needle"].encode() in f.read()
    except OSError:
        return False

def phase():
    try:
        with open(a["state"]) as f:
            return json.load(f).get("phase", "")
    except (OSError, ValueError):
        return ""

def holds_lock():
    for url in a["endpoints"]:
        try:
            req = urllib.request.Request(url + "/v3/kv/range", json.dumps({"key": key}).encode())
            with urllib.request.urlopen(req, timeout=0.5) as r:
                kvs = json.load(r).get("kvs", [])
            return bool(kvs) and base64.b64decode(kvs[0]["value"]).decode() == a["name"]
        except (OSError, ValueError, KeyError):
            continue
    return False

print("ready", flush=True)
while time.monotonic() < deadline:
    now = phase()
    if now == "leaving" or (a["lock_key"] and holds_lock()):
        time.sleep(a["delay"])
        now = phase() or now
        if ours():
            os.kill(a["pid"], signal.SIGKILL)
            print("killed", now or "?", flush=True)
        else:
            print("gone", flush=True)
        sys.exit(0)
    if not ours():
        print("gone", flush=True)
        sys.exit(0)
    time.sleep(0.002)
print("timeout", flush=True)
"""
"""The kill hook of restart-leaving: `python -c HOOK chaos-hook '<json>'`. It polls the
leaver's state file (and for the "lock" stage etcd's kill-lock key) every 2 ms, and kills
the agent (its pid, checked against /proc) the moment it leaves or wins the lock."""


def restart_sec(unit: Path = AGENT_UNIT) -> float:
    """The agent unit's RestartSec (s): how long systemd waits before starting it again."""
    found = re.search(r"^RestartSec=(\d+(?:\.\d+)?)s?\s*$", unit.read_text(), re.MULTILINE)
    if found is None:
        raise ValueError(f"{unit} has no RestartSec=")
    return float(found.group(1))


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFault:
    round: int
    kind: str
    target: str
    """leader, follower, oldest (the group's oldest server) or all."""
    grow: int = 0
    """Members above capacity when the fault comes."""
    mode: str = ""
    """netdata faults: the stub's mode."""
    stage: str = ""
    """restart-leaving: kill when the state file says "leaving", or when the kill lock
    names the node ("lock")."""
    delay: float = 0.0
    """restart-leaving: seconds between the hook and the kill (a leave that is not
    interrupted takes well under a second: cleanup hook, etcd stop, the signal)."""

    def describe(self) -> str:
        parts = [self.kind, self.target]
        if self.mode:
            parts.append(f"mode {self.mode}")
        if self.stage:
            parts.append(f"at {self.stage} +{self.delay:g}s")
        if self.grow:
            parts.append(f"group +{self.grow}")
        return " ".join(parts)


def plan(
    rounds: int, seed: int, *, max_grow: int = 2, kinds: Sequence[str] = KINDS
) -> list[PlannedFault]:
    """The seed's fault sequence: every kind once (in a seeded order), then random kinds."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown fault kinds {unknown}; allowed: {', '.join(KINDS)}")
    if max_grow < 1 and any(k.startswith(("netdata", "restart")) for k in kinds):
        raise ValueError("netdata and restart-leaving faults need max_cluster > capacity")
    if max_grow < 2 and "split" in kinds:
        raise ValueError("split needs max_cluster >= capacity + 2 (a minority of two)")
    rng = random.Random(seed)
    first = list(kinds)
    rng.shuffle(first)
    faults = []
    for n in range(1, rounds + 1):
        kind = first[n - 1] if n <= len(first) else rng.choice(list(kinds))
        faults.append(_planned(rng, n, kind, max_grow))
    return faults


def _planned(rng: random.Random, n: int, kind: str, max_grow: int) -> PlannedFault:
    some_growth = [0, 0, 1] if max_grow >= 1 else [0]
    if kind in ("kill-node", "kill-etcd"):
        target = rng.choice(["leader", "follower", "oldest"])
        return PlannedFault(n, kind, target, grow=rng.choice(some_growth))
    if kind in ("freeze", "partition", "peer-cut"):
        target = rng.choice(["follower", "follower", "leader"])
        return PlannedFault(n, kind, target, grow=rng.choice(some_growth))
    if kind in ("cloud-cut", "net-blip"):
        return PlannedFault(n, kind, rng.choice(["leader", "follower"]))
    if kind == "split":
        return PlannedFault(
            n,
            kind,
            rng.choice(["leader", "followers"]),
            grow=min(2, max_grow),
            mode=rng.choice(["cloud", "no-cloud"]),
        )
    if kind == "kill-agent":
        return PlannedFault(n, kind, rng.choice(["leader", "follower", "oldest"]))
    if kind in ("netdata-garbage", "netdata-silence"):
        modes = GARBAGE_MODES if kind == "netdata-garbage" else SILENCE_MODES
        return PlannedFault(
            n,
            kind,
            rng.choice(["all", "oldest"]),
            grow=rng.randint(1, max_grow),
            mode=rng.choice(modes),
        )
    if kind == "reboot-one":
        return PlannedFault(n, kind, rng.choice(["leader", "follower", "oldest"]))
    if kind == "roll-kill":
        return PlannedFault(n, kind, rng.choice(["leader", "follower"]))
    if kind in ("reboot-majority", "reboot-all"):
        return PlannedFault(n, kind, kind.removeprefix("reboot-"))
    assert kind == "restart-leaving"
    return PlannedFault(
        n,
        kind,
        "oldest",
        grow=min(max_grow, rng.choice([1, 1, 2])),
        stage=rng.choice(["leaving", "leaving", "lock"]),
        delay=rng.choice([0.0, 0.0, 0.005, 0.02]),
    )


# --- checks a round's fault must pass (pure: tested without a lab) --------------------------


def _between(events: Sequence[Event], start: float, end: float, *kinds: str) -> list[Event]:
    return [e for e in events if start <= e.t <= end and e.kind in kinds]


def check_victim(
    events: Sequence[Event],
    final: Sample | None,
    victim: str,
    start: float,
    removed_after: float | None,
) -> Invariant:
    """The victim is no member and no server any more, and Heat replaced its server."""
    members = set(final.members or []) if final else set()
    servers = {n.name for n in final.nodes} if final else set()
    replaced = [e for e in events if e.t >= start and e.kind == "replace" and e.node == victim]
    deleted = any(e.t >= start and e.kind == "delete" and e.node == victim for e in events)
    joined = [e.node for e in events if e.t >= start and e.kind == "joined" and e.node != victim]
    by = replaced[0].detail if replaced else ("; ".join(joined) or "nobody")
    ok = victim not in members and victim not in servers and bool(replaced or (deleted and joined))
    return Invariant(
        "the victim was removed and replaced",
        ok,
        f"{victim} removed after"
        f" {'-' if removed_after is None else f'{removed_after:.1f}s'};"
        f" still a member: {victim in members};"
        f" server still there: {victim in servers}; replaced {by}",
    )


def check_nothing_removed(
    events: Sequence[Event],
    start: float,
    end: float,
    before: set[str],
    after: set[str],
    *,
    what: str = "an agent restart",
) -> Invariant:
    gone = _between(events, start, end, "removed", "mark-unhealthy", "scale-down")
    return Invariant(
        f"{what} removed nothing",
        not gone and before == after,
        f"removals, marks and scale-downs: {[f'{e.kind} {e.node}' for e in gone] or 'none'};"
        f" members before {sorted(before)}, after {sorted(after)}",
    )


def check_no_removal_while_bad(
    events: Sequence[Event], start: float, end: float, grown: bool, reasons: Sequence[str]
) -> Invariant:
    gone = _between(events, start, end, "removed", "mark-unhealthy", "scale-down")
    said = [r for r in reasons if "no metric" in r or "no decision" in r]
    return Invariant(
        "no removal while netdata was bad",
        grown and not gone and bool(said),
        f"grown: {grown}; removals in {end - start:.1f}s: {len(gone)};"
        f" the oldest's agent said: {said[0][-160:] if said else reasons[:1] or '-'}",
    )


def check_left(
    events: Sequence[Event], final: Sample | None, leaver: str | None, start: float, stage: str
) -> Invariant:
    """The interrupted leaver is out of etcd and its server deleted by the group (-1)."""
    if leaver is None:
        return Invariant("the interrupted leaver finished leaving", False, "no leave was caught")
    members = set(final.members or []) if final else set()
    servers = {n.name for n in final.nodes} if final else set()
    deleted = any(e.t >= start and e.kind == "delete" and e.node == leaver for e in events)
    ok = leaver not in members and leaver not in servers and deleted
    return Invariant(
        "the interrupted leaver finished leaving",
        ok,
        f"{leaver} killed at {stage}; still a member: {leaver in members};"
        f" server deleted: {deleted}",
    )


def check_rebooted(
    events: Sequence[Event],
    start: float,
    end: float,
    victims: Sequence[str],
    before: dict[str, int],
    after: dict[str, int],
    back: bool,
) -> Invariant:
    """The rebooted members came back themselves: the same names and ids, none removed,
    marked unhealthy, replaced or deleted."""
    touched = [
        e
        for e in _between(events, start, end, "removed", "mark-unhealthy", "replace", "delete")
        if e.node in victims
    ]
    ok = back and not touched and bool(before) and before == after
    return Invariant(
        "the rebooted members came back as themselves",
        ok,
        f"rebooted {', '.join(victims) or 'none'}; back: {back};"
        f" removed, marked, replaced: {[f'{e.kind} {e.node}' for e in touched] or 'none'};"
        f" members {'unchanged' if before == after else f'{before} -> {after}'}",
    )


# --- running it ----------------------------------------------------------------------------


@dataclass
class RoundResult:
    planned: PlannedFault
    start: float
    end: float = 0.0
    victim: str | None = None
    removed_after: float | None = None
    """Victim faults: seconds from the fault to its member gone from the list."""
    stage: str = ""
    """restart-leaving: where the kill caught the leaver."""
    injected: bool = True
    """False: the fault could not be injected (e.g. the leaver was gone before the kill)."""
    notes: list[str] = field(default_factory=list)
    invariants: list[Invariant] = field(default_factory=list)
    settled: bool = False
    victims: list[str] = field(default_factory=list)
    """The nodes a victim fault hit (two for a split)."""
    heat_writes: list[str] | None = None
    """Network faults whose cut-off side kept the cloud's API: the Heat calls that change
    something it made (None: not judged, no call of theirs could arrive)."""

    @property
    def ok(self) -> bool:
        return bool(self.invariants) and all(i.ok for i in self.invariants)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self.planned),
            "start": round(self.start, 2),
            "end": round(self.end, 2),
            "victim": self.victim,
            "removed_after": None if self.removed_after is None else round(self.removed_after, 2),
            "stage": self.stage,
            "injected": self.injected,
            "settled": self.settled,
            "ok": self.ok,
            "notes": self.notes,
            "invariants": [i.to_json() for i in self.invariants],
        }


@dataclass
class ChaosOutcome:
    ok: bool
    report: dict[str, Any]


class Chaos:
    """Runs planned faults on one lab and checks every round."""

    def __init__(
        self,
        stack: StackSettings,
        timings: LabTimings,
        root: Path,
        *,
        seed: int,
        stack_name: str = "dev",
        etcd_binary: str | None = None,
        out: TextIO | None = None,
        verbose: bool = False,
        network: str = "auto",
        kinds: Sequence[str] = (),
    ) -> None:
        self.stack = stack
        self.timings = timings
        self.seed = seed
        self.out = out
        cutting = sorted(set(kinds) & set(NETWORK_KINDS))
        network = network_for(network, f"the fault kinds {cutting}" if cutting else None)
        self.lab = Lab(
            stack, timings, root, stack_name=stack_name, etcd_binary=etcd_binary, network=network
        )
        if out is not None and verbose:
            self.lab.events.listeners.append(Display(out, tty=False).event)
        self.writer = Writer(
            self.lab.endpoints, interval=0.05, tls=self.lab.client_tls, clock=self.lab.events.now
        )
        self.lab.acked = lambda: len(self.writer.acked)
        self.faults: list[Fault] = []
        self.results: list[RoundResult] = []
        self.restart_after = restart_sec() * timings.factor
        self.started_at = 0.0

    # --- time and waiting --------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.lab.events.now()

    def settle(self, size: int, timeout: float, what: str) -> bool:
        return self.lab.wait_for(lambda s: self.lab.whole(s, size), timeout, what)

    def pause(self, seconds: float) -> None:
        self.lab.wait_for(lambda s: False, seconds)

    def settle_timeout(self, grow: int) -> float:
        t = self.timings
        return (
            30.0
            + 3 * self.timings.join_time
            + t.downmetric_window
            + (grow + 1) * 1.6 * t.scaledownperiod
            + (t.dead_member_periods + 4) * t.lockattemptperiod
        )

    # --- the cluster's roles -----------------------------------------------------------------

    def oldest(self) -> str:
        active = [m for m in self.lab.cloud.members() if m.status == "ACTIVE"]
        return min(active, key=Member.sort_key).name

    def resolve(self, target: str, rng: random.Random) -> str:
        sample = self.lab.latest()
        assert sample is not None and sample.members
        if target == "leader" and sample.leader:
            return sample.leader
        if target == "oldest":
            return self.oldest()
        followers = sorted(n for n in sample.members if n != sample.leader)
        return rng.choice(followers)

    def members(self) -> set[str]:
        sample = self.lab.latest()
        return set(sample.members or []) if sample else set()

    def node(self, name: str) -> Node:
        return self.lab.node(name)

    def _node_or_none(self, name: str) -> Node | None:
        try:
            return self.lab.node(name)
        except KeyError:
            return None

    # --- faults on one node (processes by pid, as the lab's Nova does) -----------------------

    def kill_agent(self, node: Node) -> bool:
        if not kill_pid(node.agent_pid, str(node.dir / "agent.json")):
            return False
        if node.agent is not None:
            node.exit_code = node.agent.wait(timeout=5)
        self.lab.events.add("kill-agent", node.name, f"kill -9 of agent pid {node.agent_pid}")
        return True

    def restart_agent(self, node: Node) -> bool:
        """What systemd's Restart=on-failure does: the same command, its log appended."""
        nova = self.lab.nova
        if node.crashed or node.agent_alive() or nova.get(node.member.server_id) is not node:
            return False  # the server was deleted meanwhile: nothing to restart
        nova.start_agent(node)
        self.lab.events.add("agent-restart", node.name, f"agent pid {node.agent_pid}")
        return True

    def kill_etcd(self, node: Node) -> bool:
        pids = [pid for pid in node.etcd_pids() if kill_pid(pid, node.etcd_config)]
        if pids:
            self.lab.events.add("kill-etcd", node.name, f"kill -9 of etcd pid {pids}")
        return bool(pids)

    # --- growing the group ----------------------------------------------------------------

    def grow(self, extra: int, *, loaded: bool = True) -> bool:
        """A stack update to capacity + extra; loaded: the members busy enough to stay."""
        size = self.stack.capacity + extra
        if loaded:
            self.lab.set_demand(LOADED * size)
        deadline = time.monotonic() + 10 * self.timings.lockattemptperiod + 5
        while True:
            try:
                self.lab.cloud.update(size)
                break
            except RuntimeError:  # a resize in progress
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
        return self.settle(size, (extra + 1) * self.timings.join_time + 10, f"{size} members")

    # --- one round -----------------------------------------------------------------------------

    def run_round(self, planned: PlannedFault) -> RoundResult:
        result = RoundResult(planned, start=self.now)
        self.lab.events.add("round", "", f"{planned.round}: {planned.describe()}")
        rng = random.Random(f"{self.seed}/{planned.round}")
        checks: list[Invariant] = []
        before = self.members()
        if planned.kind in VICTIM_KINDS:
            checks.append(self._victim_round(planned, result, rng))
        elif planned.kind in ("cloud-cut", "net-blip"):
            self._harmless_cut_round(planned, result, rng)
        elif planned.kind == "kill-agent":
            self._kill_agent_round(planned, result, rng)
        elif planned.kind.startswith("netdata"):
            checks.append(self._netdata_round(planned, result))
        elif planned.kind.startswith("reboot"):
            checks.append(self._reboot_round(planned, result, rng))
        else:
            checks.append(self._leaving_round(planned, result))
        self.lab.set_demand(0)
        timeout = self.settle_timeout(planned.grow)
        if planned.kind == "roll-kill":  # the rest of the roll: a join and a pause a member
            t = self.timings
            pause = pause_for(t.dead_member_periods, t.lockattemptperiod)
            timeout += self.stack.max_cluster * (2 * t.join_time + pause)
        result.settled = self.settle(self.stack.capacity, timeout, "the round's end")
        result.end = self.now
        final = self.lab.latest()
        events = self.lab.events.all()
        if planned.kind in ("kill-agent", "cloud-cut", "net-blip") and result.victim:
            checks.append(
                check_nothing_removed(
                    events,
                    result.start,
                    result.end,
                    before,
                    self.members(),
                    what=f"a {planned.kind}",
                )
            )
        if result.heat_writes is not None:
            checks.append(no_heat_writes(result.heat_writes, result.victim or ""))
        if planned.kind == "kill-agent" and result.victim:
            node = self._node_or_none(result.victim)
            alive = node is not None and node.agent_alive()
            phase = node.state().phase if node is not None else "deleted"
            checks.append(
                Invariant(
                    "the killed agent runs again as a member",
                    alive and phase == "member",
                    f"{result.victim}: agent alive {alive}, phase {phase}",
                )
            )
        if planned.kind in VICTIM_KINDS and result.victims:
            checks[0:1] = (
                [
                    check_victim(events, final, victim, result.start, result.removed_after)
                    for victim in result.victims
                ]
                if result.injected
                else [Invariant("the fault was injected", False, "; ".join(result.notes))]
            )
        if planned.kind == "kill-agent" and not result.injected:  # a cut raises instead
            checks.append(Invariant("the fault was injected", False, "; ".join(result.notes)))
        if planned.kind == "restart-leaving":
            checks[0] = check_left(events, final, result.victim, result.start, result.stage)
        if planned.kind == "roll-kill":
            cloud = self.lab.cloud
            old = [m.name for m in cloud.members() if m.definition != cloud.group.definition]
            checks.append(
                Invariant(
                    "the roll ended: every member on the new definition",
                    cloud.group_status == "UPDATE_COMPLETE" and not old,
                    f"the group {cloud.group_status}; on the old definition: {old or 'none'}",
                )
            )
        result.invariants = checks + self._common(result)
        self.results.append(result)
        return result

    def _victim_round(
        self, planned: PlannedFault, result: RoundResult, rng: random.Random
    ) -> Invariant:
        """The victims (one; two for a split: a minority of a group grown by two) killed,
        frozen or cut off until etcd lists none of them, then thawed or healed."""
        t = self.timings
        if planned.grow and not self.grow(planned.grow):
            result.notes.append(f"the group did not grow by {planned.grow}")
        if planned.kind == "split":
            victims = self._minority(planned.target, rng)
        elif planned.kind == "roll-kill":
            victims = self._during_a_roll(planned, result, rng)
            if not victims:
                return Invariant("the victim was removed and replaced", False, "no roll")
        else:
            victims = [self.resolve(planned.target, rng)]
            self.lab.set_demand(0)  # a grown group may shrink meanwhile
        result.victims = victims
        result.victim = ", ".join(victims)
        start = self.now
        node = self.node(victims[0])
        cut = None
        keeps_cloud = planned.kind == "peer-cut" or planned.mode == "cloud"
        if planned.kind in ("kill-node", "roll-kill"):
            self.lab.crash(node.name)
            result.injected = not node.agent_alive() and not node.etcd_pids()
        elif planned.kind == "kill-etcd":
            result.injected = self.kill_etcd(node)
        elif planned.kind in NETWORK_KINDS:
            cut = self.lab.cut(victims, peers=True, cloud=not keeps_cloud)
        else:
            result.injected = self.lab.freeze_etcd(node.name)
        if not result.injected:
            result.notes.append("the fault could not be injected")
        timeout = (t.dead_member_periods + 6) * t.lockattemptperiod
        timeout += (1 + len(victims)) * self.timings.join_time
        removed = self.lab.wait_removed(victims, timeout, "the removal")
        end = self.now
        if removed:
            result.removed_after = end - start
        else:
            result.notes.append(f"not removed within {timeout:.0f}s")
        if planned.kind == "freeze":
            healed = self.lab.thaw_etcd(node.name)
            result.notes.append("thawed" if healed else "deleted before the thaw")
        if cut is not None:
            writes = self.lab.heal(cut)
            result.heat_writes = writes if keeps_cloud else None  # else none could arrive
            result.notes.append("healed")
        if planned.kind == "split":
            self.lab.set_demand(0)
            self.settle(self.stack.capacity + planned.grow, 3 * self.timings.join_time, "the heal")
        if result.injected:
            self.faults.append(Fault(planned.kind, start, end, tuple(victims)))
        return Invariant("the victim was removed and replaced", False, "not checked yet")

    def _during_a_roll(
        self, planned: PlannedFault, result: RoundResult, rng: random.Random
    ) -> list[str]:
        """A `pulumi up` with a new image (a rolling update of member stacks); once its
        first batch is done (a new server voted, Heat deleted its old one and the agents
        removed that member), the victim: an original member the roll has not reached
        yet, the leader if it is one (`target` leader), else a follower. Its agents remove
        it and mark it unhealthy; Heat's next batch replaces it first (FAILED members go
        first). Not inside the dead-member window that follows each batch's delete: the
        cluster has one dead member then, and a second loss stops a cluster of three
        (README "Day two", the roll's one window)."""
        image = f"{self.lab.stack.image.split('-roll')[0]}-roll{planned.round}"
        start = self.now
        try:
            self.lab.update(image=image)
        except ValueError as error:
            result.notes.append(f"the roll was refused: {error}")
            return []
        t = self.timings

        def first_batch_done(_: Sample) -> bool:
            deleted = [e.node for e in self.lab.events.of("delete") if e.t >= start]
            removed = {e.node for e in self.lab.events.of("removed") if e.t >= start}
            return bool(deleted) and deleted[0] in removed

        window = (t.dead_member_periods + 4) * t.lockattemptperiod
        first = self.lab.wait_for(
            first_batch_done, 2 * t.join_time + window + 30.0, "the first batch done"
        )
        new = self.lab.cloud.group.definition
        originals = [m.name for m in self.lab.cloud.members() if m.definition != new]
        sample = self.lab.latest()
        leader = sample.leader if sample is not None else None
        if not first or not originals:
            result.notes.append(f"no original member to kill (first batch done: {first})")
            return []
        if planned.target == "leader" and leader in originals:
            return [str(leader)]
        followers = sorted(n for n in originals if n != leader)
        return [rng.choice(followers)] if followers else [originals[0]]

    def _minority(self, target: str, rng: random.Random) -> list[str]:
        """Two of the members: the leader and a follower, or two followers."""
        sample = self.lab.latest()
        assert sample is not None
        names = sorted(sample.members or [])
        leader = sample.leader or names[0]
        followers = [n for n in names if n != leader]
        rng.shuffle(followers)
        return [leader, followers[0]] if target == "leader" else followers[:2]

    def _harmless_cut_round(
        self, planned: PlannedFault, result: RoundResult, rng: random.Random
    ) -> None:
        """A cut nobody may be removed for: the cloud's API only, past the dead-member
        window; or everything, for 1.5 agent periods."""
        t = self.timings
        victim = self.resolve(planned.target, rng)
        result.victim = victim
        if planned.kind == "cloud-cut":
            cut = self.lab.cut([victim], cloud=True)
            hold = (t.dead_member_periods + 3) * t.lockattemptperiod
        else:
            cut = self.lab.cut([victim], peers=True, cloud=True)
            hold = 1.5 * t.lockattemptperiod
        self.pause(hold)
        self.lab.heal(cut)  # both cut the cloud: no Heat call of theirs could arrive
        self.pause(2 * t.lockattemptperiod)

    def _kill_agent_round(
        self, planned: PlannedFault, result: RoundResult, rng: random.Random
    ) -> None:
        t = self.timings
        victim = self.resolve(planned.target, rng)
        result.victim = victim
        node = self.node(victim)
        if not self.kill_agent(node):
            result.notes.append("the agent was not running")
            result.injected = False
        self.pause(self.restart_after)
        if not self.restart_agent(node):
            result.notes.append("the agent could not be started again")
        # long enough for a restarted agent to do harm: a dead-member window and more
        self.pause((t.dead_member_periods + 3) * t.lockattemptperiod)

    def _member_ids(self) -> dict[str, int]:
        client = self.lab.client()
        if client is None:
            return {}
        try:
            return {m.name: m.id for m in client.members(check_health=False) if m.name}
        except EtcdError:
            return {}
        finally:
            client.close()

    def _booted(self, name: str) -> bool:
        node = self._node_or_none(name)
        return node is not None and node.agent_alive() and not node.rebooting

    def _reboot_round(
        self, planned: PlannedFault, result: RoundResult, rng: random.Random
    ) -> Invariant:
        sample = self.lab.latest()
        assert sample is not None
        names = sorted(sample.members or [])
        leader = sample.leader or names[0]
        if planned.target == "all":
            victims = names
        elif planned.target == "majority":
            victims = [leader, *[n for n in names if n != leader]][: len(names) // 2 + 1]
        else:
            victims = [self.resolve(planned.target, rng)]
        result.victim = ", ".join(victims)
        before = self._member_ids()
        start = self.now
        self.lab.reboot(victims)
        t = self.timings
        back = self.lab.wait_for(
            lambda s: self.lab.whole(s, len(names)) and all(map(self._booted, victims)),
            t.boot_delay + 4 * self.timings.join_time,
            "the rebooted members back",
        )
        end = self.now
        self.faults.append(Fault(planned.kind, start, end))
        return check_rebooted(
            self.lab.events.all(), start, end, victims, before, self._member_ids(), back
        )

    def _netdata_round(self, planned: PlannedFault, result: RoundResult) -> Invariant:
        t = self.timings
        mode: Mode = planned.mode  # type: ignore[assignment]
        oldest = self.oldest()
        names = None if planned.target == "all" else [oldest]
        result.victim = oldest
        start = self.now
        self.lab.set_demand(0)  # were netdata right, the oldest would leave
        if names is None:
            self.lab.nova.default_mode = mode
        self.lab.set_metrics_mode(mode, names)
        grown = self.grow(planned.grow, loaded=False)
        # hold with the kill lock free: only the metric stops the oldest from leaving
        self.lab.wait_for(lambda s: s.lock_holder is None, 1.5 * t.scaledownperiod)
        self.pause(2 * (t.downmetric_window + 3 * t.lockattemptperiod + t.metric_timeout))
        end = self.now
        node = self._node_or_none(oldest)
        reasons = [node.state().last_cycle] if node is not None else []
        self.lab.nova.default_mode = "ok"
        self.lab.set_metrics_mode("ok")
        return check_no_removal_while_bad(self.lab.events.all(), start, end, grown, reasons)

    def _leaving_round(self, planned: PlannedFault, result: RoundResult) -> Invariant:
        t = self.timings
        if not self.grow(planned.grow):
            result.notes.append(f"the group did not grow by {planned.grow}")
        leaver = self.node(self.oldest())  # the only one the rules let leave
        result.victim = leaver.name
        limit = t.downmetric_window + 2 * t.scaledownperiod + 10
        hook = self._start_hook(leaver, planned, limit)
        try:
            self.lab.set_demand(0)
            out, _ = hook.communicate(timeout=limit + 5)
        except subprocess.TimeoutExpired:
            kill_pid(hook.pid, "chaos-hook")
            out, _ = hook.communicate()
        words = (out.strip().splitlines() or ["no answer"])[-1].split()
        if words[0] == "killed":
            leaver.exit_code = leaver.agent.wait(timeout=5) if leaver.agent else None
            self.lab.events.add("kill-agent", leaver.name, f"at phase {words[1]} (the hook)")
            listed = leaver.name in self._members_now()
            result.stage = f"phase {words[1]} +{planned.delay:g}s, " + (
                "still a member" if listed else "no longer a member"
            )
            self.pause(self.restart_after)
            if not self.restart_agent(leaver):
                result.notes.append("not restarted: its server was deleted meanwhile")
        else:
            result.injected = False
            result.stage = {
                "gone": "too late: the agent had exited (its server deleted)",
                "timeout": f"never: {leaver.name} did not start leaving in {limit:.0f}s",
            }.get(words[0], " ".join(words))
        return Invariant("the interrupted leaver finished leaving", False, "not checked yet")

    def _start_hook(
        self, leaver: Node, planned: PlannedFault, timeout: float
    ) -> subprocess.Popen[str]:
        """The kill hook, a process of its own (the lab's threads would delay it)."""
        args = {
            "state": str(leaver.state_dir / "state.json"),
            "pid": leaver.agent_pid,
            "needle": str(leaver.dir / "agent.json"),
            "delay": planned.delay,
            "timeout": timeout,
            "name": leaver.name,
            "lock_key": "",
            "endpoints": [],
        }
        client = self.lab.client()
        if planned.stage == "lock" and client is not None and client.tls is None:
            args["lock_key"] = client.lock_key(KILL_LOCK)
            args["endpoints"] = client.endpoints
        if client is not None:
            client.close()
        hook = subprocess.Popen(
            [sys.executable, "-c", HOOK, "chaos-hook", json.dumps(args)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert hook.stdout is not None
        hook.stdout.readline()  # "ready": it watches before the load drops
        return hook

    def _members_now(self) -> set[str]:
        client = self.lab.client()
        if client is None:
            return set()
        try:
            return {m.name for m in client.members(check_health=False) if m.name}
        except EtcdError:
            return set()
        finally:
            client.close()

    # --- the invariants ----------------------------------------------------------------------

    def _writes_so_far(self) -> WriteResult:
        """Every write acknowledged so far, read back while the writer goes on.

        A read that could not be made (a loaded machine, an election in progress) is retried
        for READ_BACK_SECONDS before it counts as unverified: it is no verdict on the cluster.
        """
        return self.writer.verify(deadline=READ_BACK_SECONDS, timeout=READ_BACK_TIMEOUT)

    def _facts(self, since: float, writes: WriteResult, settled: bool) -> RunFacts:
        t = self.timings
        return RunFacts(
            capacity=self.stack.capacity,
            max_cluster=self.stack.max_cluster,
            scaledownperiod=t.scaledownperiod,
            lockattemptperiod=t.lockattemptperiod,
            election_s=t.election_ms / 1000,
            interval=self.lab.interval,
            settled_at=since,
            samples=[s for s in self.lab.samples if s.t >= since],
            events=self.lab.events.all(),
            faults=list(self.faults),
            writes=writes,
            final_settled=settled,
            clusters=final_views(self.lab),
            removal_records=self.lab.removal_records(),
            acked_at=ack_times(list(self.writer.puts)),
        )

    def _common(self, result: RoundResult) -> list[Invariant]:
        facts = self._facts(result.start, self._writes_so_far(), result.settled)
        return common_invariants(facts)

    # --- the whole run -------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def run(self, planned: Sequence[PlannedFault]) -> ChaosOutcome:
        final: list[Invariant] = []
        writes = WriteResult(acked=0, failed=0)
        try:
            self.lab.start()
            boot = self.settle(
                self.stack.capacity, 30 + 4 * self.timings.join_time, "the first members"
            )
            self.started_at = self.now
            self.say(f"{self.now:7.1f}s  cluster of {self.stack.capacity} settled: {boot}")
            if boot:
                self.writer.start()
                for fault in planned:
                    result = self.run_round(fault)
                    self.say(round_line(result, len(planned)))
                    for inv in result.invariants:
                        if not inv.ok:
                            self.say(f"           FAILED {inv.name}: {inv.detail}")
                    if not result.settled:
                        self.say("           the cluster did not settle: the run stops here")
                        break
            self.writer.stop()
            writes = self.writer.verify(deadline=READ_BACK_SECONDS, timeout=READ_BACK_TIMEOUT)
            facts = self._facts(
                self.started_at, writes, bool(self.results) and all(r.settled for r in self.results)
            )
            final = [Invariant("the cluster formed", boot, f"at {self.started_at:.1f}s")]
            final += common_invariants(facts)
        finally:
            self.writer.stop()
            self.lab.stop()
        strays = stop_strays(self.lab.root)
        final.append(
            Invariant(
                "no process left once the lab stopped",
                not strays,
                f"{len(strays)} stopped by pid: {strays}" if strays else "none",
            )
        )
        report = self.report(planned, final, writes)
        return ChaosOutcome(report["ok"], report)

    def report(
        self, planned: Sequence[PlannedFault], final: list[Invariant], writes: WriteResult
    ) -> dict[str, Any]:
        faults = Counter(r.planned.kind for r in self.results)
        missed = Counter(r.planned.kind for r in self.results if not r.injected)
        violated = [
            {"round": r.planned.round, "name": i.name, "detail": i.detail}
            for r in self.results
            for i in r.invariants
            if not i.ok
        ] + [{"round": None, "name": i.name, "detail": i.detail} for i in final if not i.ok]
        complete = len(self.results) == len(planned)
        return {
            "seed": self.seed,
            "rounds_planned": len(planned),
            "rounds_run": len(self.results),
            "factor": self.timings.factor,
            "timings": {key: ours for key, _, ours in self.timings.rows(self.stack)},
            "faults": dict(sorted(faults.items())),
            "missed": dict(sorted(missed.items())),
            "checks": sum(len(r.invariants) for r in self.results) + len(final),
            "violated": violated,
            "writes": writes.to_json(),
            "ok": complete and not violated,
            "final": [i.to_json() for i in final],
            "rounds": [r.to_json() for r in self.results],
            "plan": [asdict(p) for p in planned],
            "events": [e.to_json() for e in self.lab.events.all()],
            "logs": str(self.lab.nova.logs),
            "cloud_calls": self.lab.cloud_calls(),
        }


def stop_strays(root: Path) -> list[int]:
    """Processes still running from the lab's directory after it stopped (by pid)."""
    needle = f"{root.resolve()}/"
    strays = pids_of(needle)
    for pid in strays:
        kill_pid(pid, needle)
    return strays


def round_line(result: RoundResult, total: int) -> str:
    p = result.planned
    held = sum(i.ok for i in result.invariants)
    verdict = "ok" if result.ok else "FAILED"
    facts = [f"-> {result.victim}"] if result.victim else []
    if result.removed_after is not None:
        facts.append(f"removed after {result.removed_after:.1f}s")
    if result.stage:
        facts.append(f"killed at {result.stage}")
    facts += result.notes
    return (
        f"{result.end:7.1f}s  round {p.round:>3}/{total}  {p.describe()} {'; '.join(facts)};"
        f" {result.end - result.start:.1f}s; {held}/{len(result.invariants)} invariants"
        f" [{verdict}]"
    )


def summary(report: dict[str, Any]) -> list[str]:
    writes = report["writes"]
    missed = report.get("missed", {})
    faults = (
        ", ".join(
            f"{kind} {n}" + (f" ({missed[kind]} missed)" if missed.get(kind) else "")
            for kind, n in report["faults"].items()
        )
        or "none"
    )
    lines = [
        f"chaos: seed {report['seed']}, {report['rounds_run']}/{report['rounds_planned']} rounds,"
        f" time factor {report['factor']:g}",
        f"faults: {faults}",
        f"writes: {writes['acked']} acknowledged, {writes['lost']} lost"
        f" ({writes['failed_puts']} puts refused or timed out, not acknowledged)",
        f"invariants: {report['checks']} checked, {len(report['violated'])} violated",
    ]
    if report.get("cloud_calls"):
        lines.insert(
            3,
            "OpenStack calls: "
            + ", ".join(f"{kind} {n}" for kind, n in report["cloud_calls"].items()),
        )
    for v in report["violated"]:
        where = f"round {v['round']}" if v["round"] is not None else "whole run"
        lines.append(f"  [FAILED] {where}: {v['name']}: {v['detail']}")
    lines.append(f"result: {'every invariant held' if report['ok'] else 'SOME INVARIANTS FAILED'}")
    return lines


def run_chaos(
    stack: StackSettings,
    timings: LabTimings,
    root: Path,
    *,
    rounds: int,
    seed: int,
    kinds: Sequence[str] = KINDS,
    stack_name: str = "dev",
    json_path: Path | None = None,
    out: TextIO | None = None,
    verbose: bool = False,
    etcd_binary: str | None = None,
    network: str = "auto",
) -> ChaosOutcome:
    planned = plan(rounds, seed, max_grow=stack.max_cluster - stack.capacity, kinds=kinds)
    chaos = Chaos(
        stack,
        timings,
        root,
        seed=seed,
        stack_name=stack_name,
        etcd_binary=etcd_binary,
        out=out,
        verbose=verbose,
        network=network,
        kinds=kinds,
    )
    outcome = chaos.run(planned)
    if json_path is not None:
        write_json(json_path, outcome.report)
    if out is not None:
        print("\n".join(summary(outcome.report)), file=out, flush=True)
        if json_path is not None:
            print(f"report: {json_path.resolve()}", file=out)
        print(f"node logs: {outcome.report['logs']}", file=out, flush=True)
    return outcome


def plan_lines(planned: Sequence[PlannedFault]) -> list[str]:
    return [f"round {p.round:>3}: {p.describe()}" for p in planned]
