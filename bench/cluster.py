"""The lab benchmarks: real etcd and the real agent per node, the local cloud with Heat's rules.

One lab (the dev stack, max_cluster raised to 7) carries most of them, in order:

1. bootstrap of 3: the group's servers boot together; time until one healthy cluster
   (3 started voters, all healthy, one leader) and every cluster id any etcd reported;
2. footprint at the lab's period: CPU time and RSS of each agent and etcd, from /proc;
3. recovery: kill -9 of a follower's node (and, in the full run, of the leader's): time
   until its member is gone from the list, and until the server Heat booted in its place
   is a healthy voter, from that server's process start;
4. joins: a stack update boots 4 servers at once into the 3-member cluster; time until all
   7 are healthy voters, polling quorum (healthy voters >= voters // 2 + 1) all along;
5. scale-down: the 7 members' CPU load (idle below the threshold so far) drops to idle;
   time until the first member is out, and the spacing of the next removal, from the
   fenced-removal records the agents write (`<prefix>/removals/<id>`) and as seen.

Then labs of 5 and 7 nodes for their bootstrap; labs whose servers' agents start a
random 0..SPREAD s apart (stack time, scaled), as a plain image's installs spread them on
a cloud: no member may be removed and re-added on the way; and, in the full run, a lab at
the stack's own periods (factor 1) for the agent's CPU share at the default period.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.etcd import EtcdError
from bench import probe
from bench.footprint import Usage, Watched, measure
from bench.rows import Row, check, figure
from infra.settings import StackSettings
from lab.chaos import stop_strays
from lab.cluster import Lab
from lab.timings import ETCD_HEALTH_INTERVAL, LabTimings

JOINERS = 4
"""Servers added at once by one stack update in the joins benchmark."""
QUICK_JOINERS = 2
"""The same in the quick run (the tests')."""
LOADED = 50.0
"""CPU use (%) of each of the 3 members before the joins: idle 50 % is not above the
scale-down threshold (90) and the mean is below the scale-up alarm's (80 %)."""


@dataclass(frozen=True)
class Setup:
    factor: float
    root: Path
    etcd_binary: str | None = None
    recovery_runs: int = 1
    """Kills per role (follower, and leader when above 1)."""
    footprint_seconds: float = 5.0
    default_period_seconds: float = 0.0
    """> 0: also measure a lab at the stack's own periods (factor 1) this long."""
    bootstrap_sizes: tuple[int, ...] = (3, 5, 7)
    spread_sizes: tuple[int, ...] = ()
    """Bootstraps whose agents start up to `spread` (stack) seconds after their boot."""
    spread: float = 180.0
    joiners: int = JOINERS
    """Servers the joins benchmark adds at once."""
    client_stalls: bool = False
    """Also a lab measuring what a client feels through each event (bench/client.py)."""


def variant(base: StackSettings, **changes: object) -> StackSettings:
    return StackSettings.model_validate({**base.model_dump(), **changes})


def bench_timings(stack: StackSettings, factor: float) -> LabTimings:
    """The lab's timings, with the stack's own join window (retries x lockattemptperiod,
    100 s at the defaults) left unscaled: etcd spaces member adds by its fixed 5 s health
    interval, which the lab's factor does not shrink, so a scaled window would cut short
    the last of the joins in a row on a busy machine."""
    timings = LabTimings.scaled(stack, factor)
    window = stack.retries * stack.lockattemptperiod
    return replace(
        timings, retries=max(timings.retries, math.ceil(window / timings.lockattemptperiod))
    )


STRAYS: list[int] = []
"""Processes found running from a lab's directory after it stopped (then stopped by pid)."""


@contextmanager
def lab_of(stack: StackSettings, factor: float, setup: Setup, name: str) -> Iterator[Lab]:
    """A lab (not started: the caller times its start); stopped, every process by pid.
    Its nodes are on loopback: the bench measures the agent and etcd, and its figures stay
    comparable with the runs before the lab's network namespaces."""
    lab = Lab(
        stack,
        bench_timings(stack, factor),
        setup.root / name,
        stack_name="dev",
        etcd_binary=setup.etcd_binary,
        network="loopback",
    )
    try:
        yield lab
    finally:
        lab.stop()
        STRAYS.extend(stop_strays(lab.root))


def join_time(timings: LabTimings) -> float:
    """An upper bound for one join: lock, learner add, start, catch-up, promote; etcd's
    5 s wait for a new voter before the next add."""
    return timings.join_time + ETCD_HEALTH_INTERVAL


# --- bootstrap ---------------------------------------------------------------------------------


@dataclass
class Bootstrap:
    size: int
    seconds: float
    ids: set[str]
    removed: list[str] = field(default_factory=list)
    """Members removed before the cluster was whole (an initial member taken for dead)."""
    spread: float = 0.0
    """The agents started up to this many (lab) seconds after their servers' boot."""


def bootstrap(lab: Lab, size: int) -> Bootstrap:
    """Start the lab's group; poll until one healthy cluster of `size`, then a little more."""
    start = lab.events.now()
    spread = lab.nova.start_spread
    lab.start()
    ids: set[str] = set()
    done: float | None = None
    deadline = time.monotonic() + 30 + 2 * size + 10 * lab.timings.lockattemptperiod + spread
    while time.monotonic() < deadline:
        ids |= set(probe.cluster_ids(lab).values())
        if done is None:
            seen = probe.health(lab)
            if seen is not None and seen.whole(size):
                done = lab.events.now()
                deadline = time.monotonic() + 1.0  # a second more of cluster ids
        time.sleep(0.1)
    seconds = (done - start) if done is not None else math.nan
    removed = [e.node for e in lab.events.of("removed")]
    return Bootstrap(size, seconds, ids, removed, spread)


def bootstrap_rows(results: list[Bootstrap]) -> list[Row]:
    section = "bootstrap (servers booted together)"
    rows = []
    for b in results:
        if b.spread:
            name = f"{b.size} nodes, agents starting over {b.spread:.0f} s"
            rows.append(figure(section, f"{name}: to one healthy cluster", b.seconds, "s"))
            rows.append(
                check(
                    section,
                    f"{name}: members removed and re-added on the way",
                    len(b.removed),
                    "members",
                    "==",
                    0,
                    note=", ".join(b.removed),
                )
            )
            continue
        name = f"{b.size} nodes to one healthy cluster"
        if b.size == 5:
            rows.append(check(section, name, b.seconds, "s", "<", 15.0))
        else:
            rows.append(figure(section, name, b.seconds, "s"))
        rows.append(
            check(
                section,
                f"{b.size} nodes: cluster ids seen",
                len(b.ids),
                "ids",
                "==",
                1,
                note=", ".join(sorted(b.ids)) or "none",
            )
        )
        rows.append(
            check(
                section,
                f"{b.size} nodes: members removed and rejoined or replaced on the way",
                len(b.removed),
                "members",
                "==",
                0,
                note=", ".join(b.removed),
            )
        )
    return rows


# --- footprint ---------------------------------------------------------------------------------


def processes(lab: Lab) -> list[Watched]:
    watched = []
    for node in lab.nova.live():
        if node.agent_pid is not None and node.agent_alive():
            watched.append(Watched(node.agent_pid, "agent", node.dir / "agent.log"))
        pid = node.etcd_pid()
        if pid is not None:
            watched.append(Watched(pid, "etcd"))
    return watched


def footprint(lab: Lab, seconds: float) -> list[Usage]:
    return measure(processes(lab), seconds)


def footprint_rows(
    at_lab: list[Usage], lab_period: float, default_period: float, direct: list[Usage]
) -> list[Row]:
    section = "footprint (from /proc, beside etcd)"
    agents = [u for u in at_lab + direct if u.role == "agent"]
    etcds = [u for u in at_lab + direct if u.role == "etcd"]
    rows = [
        check(
            section,
            f"agent RSS, largest of {len(agents)}",
            max((u.rss_mb for u in agents), default=math.nan),
            "MiB",
            "<",
            40.0,
            note=f"peak {max((u.peak_mb for u in agents), default=math.nan):.1f} MiB",
        ),
        figure(
            section, "etcd RSS, largest", max((u.rss_mb for u in etcds), default=math.nan), "MiB"
        ),
    ]
    lab_agents = [u for u in at_lab if u.role == "agent"]
    per_cycle = [u.per_cycle for u in lab_agents if u.cycles]
    cycle_cost = max(per_cycle) if per_cycle else math.nan
    direct_agents = [u for u in direct if u.role == "agent"]
    if direct_agents:
        share = max(u.share for u in direct_agents)
        wall = direct_agents[0].wall_seconds
        rows.append(
            check(
                section,
                f"agent CPU at the default period ({default_period:g} s), busiest agent",
                100 * share,
                "%",
                "<",
                1.0,
                note=f"measured over {wall:.0f} s at the stack's own periods",
            )
        )
    else:
        rows.append(
            check(
                section,
                f"agent CPU at the default period ({default_period:g} s), busiest agent",
                100 * cycle_cost / default_period,
                "%",
                "<",
                1.0,
                note="its CPU per cycle at the lab's period / the default period",
            )
        )
    rows += [
        figure(section, "agent CPU per cycle, busiest agent", 1000 * cycle_cost, "ms"),
        figure(
            section,
            f"agent CPU at the lab's period ({lab_period:g} s), busiest agent",
            100 * max((u.share for u in lab_agents), default=math.nan),
            "%",
        ),
        figure(
            section,
            "etcd CPU, busiest member (no client writes; the lab polls it twice a period)",
            100 * max((u.share for u in etcds), default=math.nan),
            "%",
        ),
    ]
    return rows


# --- recovery ----------------------------------------------------------------------------------


@dataclass
class Recovery:
    role: str
    """follower or leader (killed once the group's cooldown is over), or back-to-back: a
    follower killed as soon as the previous replacement is a voter."""
    victim: str
    removed: float
    """kill -> member gone from the list (s)."""
    replacement: str
    boot_to_healthy: float
    """the replacement's process start -> a healthy voter (s)."""
    kill_to_healthy: float


def recovery(lab: Lab, role: str) -> Recovery:
    t = lab.timings
    if role != "back-to-back":  # an independent loss: Heat's group cooldown is over
        time.sleep(probe.cooldown_left(lab) + 0.5)
    listed = probe.members(lab) or []
    leader = next((m.name for m in listed if m.is_leader), None)
    followers = sorted(m.name for m in listed if m.name and m.name != leader)
    victim = leader if role == "leader" and leader else followers[0]
    before = {n.name for n in lab.nova.nodes.values()}
    kill = lab.events.now()
    lab.crash(victim)
    timeout = (t.dead_member_periods + 6) * t.lockattemptperiod + join_time(t)

    def gone() -> bool:
        now = probe.listed(lab)
        return now is not None and victim not in now

    removed = probe.wait_until(lab, gone, timeout)

    probe.wait_until(
        lab, lambda: probe.booted_since(lab, kill, before) is not None, timeout + t.scaleupcooldown
    )
    booted = probe.booted_since(lab, kill, before)
    new, boot = (booted.node, booted.t) if booted else (None, math.nan)
    healthy = (
        probe.wait_until(lab, lambda: probe.healthy_voter(lab, new), 2 * join_time(t))
        if new
        else None
    )
    lab.wait_for(lab.settled, 2 * join_time(t), "the cluster whole again")
    return Recovery(
        role=role,
        victim=victim,
        removed=(removed - kill) if removed is not None else math.nan,
        replacement=new or "-",
        boot_to_healthy=(healthy - boot) if healthy is not None else math.nan,
        kill_to_healthy=(healthy - kill) if healthy is not None else math.nan,
    )


def recovery_rows(
    runs: list[Recovery],
    timings: LabTimings,
    stack: StackSettings,
    at_default: list[Recovery] | None = None,
) -> list[Row]:
    """`at_default`: runs at the stack's own periods, where the issue sets its targets; a
    role measured there is checked there, and its scaled figure is shown without a verdict
    (etcd's election is not scaled: 1 s is a tenth of the stack's period, a whole lab one)."""
    section = "recovery (kill -9 of a node)"
    period = timings.lockattemptperiod
    rows = []
    defaults = at_default or []
    for role in ("follower", "leader"):
        mine = [r for r in runs if r.role == role]
        if not mine:
            continue
        removed = [r.removed for r in mine]
        worst = max(removed)
        shown = ", ".join(f"{x:.2f}" for x in removed)
        name = f"{role}'s member removed, in lockattemptperiods"
        note = (
            f"{shown} s at period {period:g} s, {len(mine)} run(s), worst shown;"
            f" removed at failed check {timings.dead_member_periods} in a row"
        )
        if any(r.role == role for r in defaults):
            note += "; checked at the stack's own period below"
            rows.append(figure(section, name, worst / period, "periods", note=note))
        else:
            rows.append(
                check(
                    section,
                    name,
                    worst / period,
                    "periods",
                    "<=",
                    float(timings.dead_member_periods),
                    note=note,
                )
            )
        healthy = [r.boot_to_healthy for r in mine]
        rows.append(
            check(
                section,
                f"{role}'s replacement a healthy voter, from its process start",
                max(healthy),
                "s",
                "<",
                5.0,
                note=", ".join(f"{x:.2f}" for x in healthy) + " s",
            )
        )
        rows.append(
            figure(
                section,
                f"{role}: kill to a healthy replacement",
                statistics.median(r.kill_to_healthy for r in mine),
                "s",
                note="median; the original: ~70 s with Packer images, ~200 s without, VM boot"
                " included",
            )
        )
    own = stack.lockattemptperiod
    for r in defaults:
        rows.append(
            check(
                section,
                f"{r.role}'s member removed at the stack's own period ({own:g} s), in"
                " lockattemptperiods",
                r.removed / own,
                "periods",
                "<=",
                float(stack.dead_member_periods),
                note=f"{r.removed:.2f} s; etcd's election included; the target is the stack's"
                f" dead-member window ({stack.dead_member_periods} periods)",
            )
        )
        rows.append(
            figure(
                section,
                f"{r.role}: kill to a healthy replacement at the stack's own period",
                r.kill_to_healthy,
                "s",
                note=f"replacement a healthy voter {r.boot_to_healthy:.2f} s after its start",
            )
        )
    for r in (r for r in runs if r.role == "back-to-back"):
        rows.append(
            figure(
                section,
                "a second node killed as the first replacement joined: kill to a healthy"
                " replacement",
                r.kill_to_healthy,
                "s",
                note=f"removed after {r.removed:.2f} s; Heat refuses the +1 until the group's"
                f" cooldown (scaleupcooldown {timings.scaleupcooldown:g} s) is over",
            )
        )
    return rows


# --- joins -------------------------------------------------------------------------------------


@dataclass
class Joins:
    joiners: int
    seconds: float
    polls: int
    without_quorum: int
    longest_without: float
    size: int


def joins(lab: Lab, joiners: int) -> Joins:
    capacity = lab.stack.capacity
    size = capacity + joiners
    lab.set_demand(LOADED * capacity)
    start = lab.events.now()
    lab.cloud.update(size)
    polls = lost = 0
    lost_since: float | None = None
    longest = 0.0
    done: float | None = None
    deadline = time.monotonic() + joiners * join_time(lab.timings) + 30
    while time.monotonic() < deadline:
        seen = probe.health(lab)
        now = lab.events.now()
        polls += 1
        if seen is None or not seen.quorum_ok:
            lost += 1
            lost_since = now if lost_since is None else lost_since
            longest = max(longest, now - lost_since)
        else:
            lost_since = None
        if seen is not None and seen.whole(size):
            done = now
            break
        time.sleep(0.1)
    return Joins(
        joiners=joiners,
        seconds=(done - start) if done is not None else math.nan,
        polls=polls,
        without_quorum=lost,
        longest_without=longest,
        size=size,
    )


def joins_rows(j: Joins) -> list[Row]:
    section = f"joins ({j.joiners} servers at once into a 3-member cluster)"
    return [
        figure(
            section,
            f"until all {j.size} are healthy voters",
            j.seconds,
            "s",
            note="one join at a time; etcd allows the next add 5 s after a new voter",
        ),
        check(
            section,
            f"polls without a healthy quorum, of {j.polls}",
            j.without_quorum,
            "polls",
            "==",
            0,
        ),
    ]


# --- scale-down ----------------------------------------------------------------------------------


@dataclass
class ScaleDown:
    first_out: float
    target: float
    spacing_records: list[float] = field(default_factory=list)
    spacing_seen: list[float] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def removal_records(lab: Lab) -> list[dict[str, object]]:
    """The agents' fenced-removal records (time: the agent's clock once it won the lock)."""
    client = lab.client()
    if client is None:
        return []
    try:
        stored = client.get_prefix(f"/autoscale-etcd/{lab.cluster_name}/removals/")
    except EtcdError:
        return []
    finally:
        client.close()
    records = []
    for text in stored.values():
        try:
            records.append(json.loads(text))
        except ValueError:
            continue
    return sorted(records, key=lambda r: float(r.get("time", 0)))  # type: ignore[arg-type]


def _at_most(lab: Lab, size: int) -> bool:
    now = probe.listed(lab)
    return now is not None and len(now) <= size


def scale_down(lab: Lab, removals: int = 2) -> ScaleDown:
    """From a loaded group above capacity: load to idle; the first `removals` members out."""
    t = lab.timings
    size = len(probe.listed(lab) or ())
    target = t.downmetric_window + t.lockattemptperiod + 5.0
    start = lab.events.now()
    wall_start = lab.events.t0 + start
    lab.set_demand(0)
    seen: list[float] = []
    for n in range(1, removals + 1):
        gone = probe.wait_until(
            lab,
            lambda n=n: _at_most(lab, size - n),
            target + 2 * t.scaledownperiod + join_time(t),
        )
        if gone is None:
            break
        seen.append(gone)
    records = [
        r
        for r in removal_records(lab)
        if r.get("via") == "scale_down" and float(r.get("time", 0)) >= wall_start  # type: ignore[arg-type]
    ]
    times = [float(r["time"]) for r in records]  # type: ignore[arg-type]
    return ScaleDown(
        first_out=(seen[0] - start) if seen else math.nan,
        target=target,
        spacing_records=[b - a for a, b in itertools.pairwise(times)],
        spacing_seen=[b - a for a, b in itertools.pairwise(seen)],
        removed=[str(r.get("member")) for r in records],
    )


def scale_down_rows(s: ScaleDown, timings: LabTimings) -> list[Row]:
    section = "scale-down (the metric crosses the threshold)"
    return [
        check(
            section,
            "load drop to the first member out",
            s.first_out,
            "s",
            "<=",
            s.target,
            note=f"target: window {timings.downmetric_window:g} s + period"
            f" {timings.lockattemptperiod:g} s + 5 s",
        ),
        check(
            section,
            "spacing of removals, by the fenced-removal records",
            min(s.spacing_records, default=math.nan),
            "s",
            ">=",
            timings.scaledownperiod,
            note=f"scaledownperiod {timings.scaledownperiod:g} s; {', '.join(s.removed)}",
        ),
        figure(
            section,
            "spacing of removals, members seen gone",
            min(s.spacing_seen, default=math.nan),
            "s",
        ),
    ]


# --- the whole lab part ------------------------------------------------------------------------


def bench_cluster(
    stack: StackSettings, setup: Setup, shout: Callable[[str], None] = print
) -> list[Row]:
    """Every lab benchmark; the rows in the order of the table."""
    STRAYS.clear()
    main_stack = variant(stack, max_cluster=max(stack.max_cluster, stack.capacity + setup.joiners))
    boots: list[Bootstrap] = []
    runs: list[Recovery] = []
    with lab_of(main_stack, setup.factor, setup, "main") as lab:
        timings = lab.timings
        boots.append(bootstrap(lab, stack.capacity))
        shout(f"bootstrap {stack.capacity}: {boots[-1].seconds:.2f} s, ids {boots[-1].ids}")
        lab.wait_for(lab.settled, join_time(timings), "the first members")
        at_lab = footprint(lab, setup.footprint_seconds)
        shout(f"footprint at the lab's period: {len(at_lab)} processes")
        roles = ["follower", "leader"] if setup.recovery_runs > 1 else ["follower"]
        for role in roles:
            for _ in range(setup.recovery_runs):
                runs.append(recovery(lab, role))
                shout(f"recovery ({role}): {runs[-1]}")
        if setup.recovery_runs > 1:
            runs.append(recovery(lab, "back-to-back"))
            shout(f"recovery (back-to-back): {runs[-1]}")
        time.sleep(ETCD_HEALTH_INTERVAL)  # etcd's wait after the replacement's add passes
        joined = joins(lab, setup.joiners)
        shout(f"joins: {joined}")
        down = scale_down(lab)
        shout(f"scale-down: {down}")
    for size in setup.bootstrap_sizes:
        if size == stack.capacity:
            continue
        sized = variant(
            stack, capacity=size, min_cluster=size, max_cluster=max(size, stack.max_cluster)
        )
        with lab_of(sized, setup.factor, setup, f"bootstrap-{size}") as lab:
            boots.append(bootstrap(lab, size))
            shout(f"bootstrap {size}: {boots[-1].seconds:.2f} s, ids {boots[-1].ids}")
    for size in setup.spread_sizes:
        sized = variant(
            stack, capacity=size, min_cluster=size, max_cluster=max(size, stack.max_cluster)
        )
        with lab_of(sized, setup.factor, setup, f"spread-{size}") as lab:
            lab.nova.start_spread = setup.spread * setup.factor
            boots.append(bootstrap(lab, size))
            shout(
                f"bootstrap {size}, agents over {lab.nova.start_spread:.0f} s:"
                f" {boots[-1].seconds:.2f} s, removed {boots[-1].removed}"
            )
    felt: list[Row] = []
    if setup.client_stalls:
        from bench.client import client_stalls, stall_rows

        with lab_of(stack, setup.factor, setup, "client") as lab:
            lab.start()
            if lab.wait_for(lab.settled, 60, "the first members"):
                found = client_stalls(lab)
                shout(f"client stalls: quiet {found.quiet.to_json()}")
                felt = stall_rows(
                    found, lab.timings.election_ms / 1000, lab.timings.heartbeat_ms / 1000
                )
    direct: list[Usage] = []
    at_default: list[Recovery] = []
    if setup.default_period_seconds > 0:
        with lab_of(stack, 1.0, setup, "default-period") as lab:
            lab.start()
            if lab.wait_for(lab.settled, 120, "the first members"):
                lab.wait_for(lambda s: False, stack.lockattemptperiod)  # one cycle settles in
                direct = footprint(lab, setup.default_period_seconds)
                shout(f"footprint at the default period: {len(direct)} processes")
                at_default.append(recovery(lab, "leader"))
                shout(f"recovery (leader, default period): {at_default[-1]}")
    rows = (
        recovery_rows(runs, timings, stack, at_default)
        + scale_down_rows(down, timings)
        + bootstrap_rows(sorted(boots, key=lambda b: (b.spread, b.size)))
        + joins_rows(joined)
        + footprint_rows(at_lab, timings.lockattemptperiod, stack.lockattemptperiod, direct)
        + felt
    )
    rows.append(
        check(
            "labs",
            "processes left running once a lab stopped",
            len(STRAYS),
            "processes",
            "==",
            0,
            note=f"pids {STRAYS}" if STRAYS else "",
        )
    )
    return rows
