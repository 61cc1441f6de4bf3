"""Chaos (lab/chaos.py): the seeded plan, the kill hook, the round checks, and a short real run.

The run boots a lab on a random 127.X.Y.0/24 under tmp_path (real etcd, the real agent
per node) and injects one fault of every kind, in the order its seed gives; every
invariant must hold after every round, and no process may be left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.settings import PROJECT_DIR, load_stack_file, stack_file
from lab.chaos import (
    HOOK,
    KINDS,
    VICTIM_KINDS,
    PlannedFault,
    check_left,
    check_no_removal_while_bad,
    check_nothing_removed,
    check_victim,
    plan,
    restart_sec,
    run_chaos,
    stop_strays,
)
from lab.cluster import Lab, NodeView, Sample
from lab.events import Event
from lab.nodes import pid_alive
from lab.timings import FAST_FACTOR, LabTimings

# --- the plan ----------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_faults_and_another_seed_others():
    assert plan(30, 7) == plan(30, 7)
    assert plan(30, 7) != plan(30, 8)
    assert plan(5, 7) == plan(30, 7)[:5]  # a longer run starts with the same faults


@pytest.mark.parametrize("seed", [1, 2, 3, 2026])
def test_every_kind_comes_once_first_then_any(seed):
    faults = plan(40, seed, max_grow=2)
    assert sorted(f.kind for f in faults[: len(KINDS)]) == sorted(KINDS)
    assert [f.round for f in faults] == list(range(1, 41))
    for f in faults:
        assert 0 <= f.grow <= 2
        if f.kind == "split":  # a minority of two: the leader's side or two followers
            assert f.target in ("leader", "followers") and f.grow == 2
            assert f.mode in ("cloud", "no-cloud")
        elif f.kind in VICTIM_KINDS or f.kind == "kill-agent":
            assert f.target in ("leader", "follower", "oldest")
        if f.kind == "kill-agent":
            assert f.grow == 0
        if f.kind == "netdata-garbage":
            assert f.mode in ("garbage", "error", "missing") and f.grow >= 1
        if f.kind == "netdata-silence":
            assert f.mode == "hang" and f.grow >= 1
        if f.kind == "restart-leaving":
            assert f.stage in ("leaving", "lock") and f.grow >= 1 and f.target == "oldest"
        if f.kind == "reboot-one":
            assert f.target in ("leader", "follower", "oldest") and f.grow == 0
        if f.kind == "roll-kill":
            assert f.target in ("leader", "follower") and f.grow == 0
        if f.kind in ("reboot-majority", "reboot-all"):
            assert f.target == f.kind.removeprefix("reboot-") and f.grow == 0


def test_the_ci_seed_plans_each_ci_kind_once_and_kills_the_leaver_at_once():
    """What CI_SEED was picked for, kept true if `plan` changes how it draws."""
    stack = load_stack_file(stack_file("dev"))
    planned = plan(CI_ROUNDS, CI_SEED, max_grow=stack.max_cluster - stack.capacity, kinds=CI_KINDS)
    assert sorted(p.kind for p in planned) == sorted(CI_KINDS)
    (leaving,) = [p for p in planned if p.kind == "restart-leaving"]
    assert leaving.delay == 0


def test_the_plan_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="unknown fault kinds"):
        plan(3, 1, kinds=["kill-node", "flood"])
    with pytest.raises(ValueError, match="max_cluster > capacity"):
        plan(3, 1, max_grow=0, kinds=["restart-leaving"])
    assert {f.kind for f in plan(6, 1, max_grow=0, kinds=["kill-node", "kill-agent"])} == {
        "kill-node",
        "kill-agent",
    }


def test_cli_prints_the_plan_of_its_seed():
    shown = subprocess.run(
        [sys.executable, "-m", "lab", "chaos", "--rounds", "9", "--seed", "11", "--plan"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    stack = load_stack_file(stack_file("dev"))
    expected = plan(9, 11, max_grow=stack.max_cluster - stack.capacity)
    lines = [line for line in shown.stdout.splitlines() if line.startswith("round")]
    assert lines == [f"round {p.round:>3}: {p.describe()}" for p in expected]
    bad = subprocess.run(
        [sys.executable, "-m", "lab", "chaos", "--plan", "--kinds", "kill-node,meteor"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "unknown fault kinds ['meteor']" in bad.stderr


def test_the_agent_restart_delay_is_the_units():
    unit = (PROJECT_DIR / "infra" / "units" / "autoscale-agent.service").read_text()
    assert f"RestartSec={restart_sec():g}s" in unit


# --- the kill hook and the stray check, on real processes -----------------------------------


def _sleeper(tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    """A stand-in process whose command line names a file under tmp_path (like an agent)."""
    marker = tmp_path / name
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(marker)],
        stdin=subprocess.DEVNULL,
    )


def _hook(tmp_path: Path, target: subprocess.Popen[bytes], **extra: object):
    args = {
        "state": str(tmp_path / "state.json"),
        "pid": target.pid,
        "needle": str(tmp_path / "agent.json"),
        "delay": 0.0,
        "timeout": 20.0,
        "name": "etcd-01-test",
        "lock_key": "",
        "endpoints": [],
        **extra,
    }
    hook = subprocess.Popen(
        [sys.executable, "-c", HOOK, "chaos-hook", json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert hook.stdout is not None and hook.stdout.readline().strip() == "ready"
    return hook


def _finish(hook: subprocess.Popen[str], timeout: float = 10) -> tuple[str, str]:
    """The rest of the hook's output. Not communicate(): it reads the pipes' descriptors,
    and lines the readline() of "ready" already buffered ("gone" comes right after when
    the pid is not the agent's) would be lost."""
    assert hook.stdout is not None and hook.stderr is not None
    hook.wait(timeout=timeout)
    return hook.stdout.read(), hook.stderr.read()


def test_the_hook_kills_the_agent_the_moment_it_leaves(tmp_path):
    agent = _sleeper(tmp_path, "agent.json")
    try:
        (tmp_path / "state.json").write_text(json.dumps({"phase": "member"}))
        hook = _hook(tmp_path, agent)
        time.sleep(0.3)
        assert agent.poll() is None  # a member is left alone
        (tmp_path / "state.json").write_text(json.dumps({"phase": "leaving"}))
        out, _ = _finish(hook)
        assert out.split() == ["killed", "leaving"]
        assert agent.wait(timeout=5) == -9
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_the_hook_leaves_a_process_that_is_not_the_agent(tmp_path):
    other = _sleeper(tmp_path, "something-else")
    try:
        (tmp_path / "state.json").write_text(json.dumps({"phase": "leaving"}))
        hook = _hook(tmp_path, other)
        out, err = _finish(hook)
        # the pid is not the agent's: never killed
        assert out.split() == ["gone"], (out, err, hook.returncode)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_stop_strays_stops_what_runs_from_the_labs_dir(tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    stray = _sleeper(root, "nodes/etcd-09/state/etcd.yaml")
    outside = _sleeper(tmp_path, "elsewhere")
    try:
        deadline = time.monotonic() + 5
        while not pid_alive(stray.pid, str(root)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stop_strays(root) == [stray.pid]
        assert stray.wait(timeout=5) == -9
        assert outside.poll() is None
        assert stop_strays(root) == []
    finally:
        for proc in (stray, outside):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- the round checks, on made-up events ---------------------------------------------------------


def _view(name: str) -> NodeView:
    return NodeView(
        name=name,
        ip="127.1.1.1",
        server_id=f"srv-{name}",
        client_url="",
        status="ACTIVE",
        agent_pid=1,
        agent_alive=True,
        etcd_pid=2,
        member="voter",
        healthy=True,
        leader=False,
        load=2.0,
        phase="member",
        failmarker=0,
        frozen=False,
        crashed=False,
    )


def _sample(*names: str) -> Sample:
    return Sample(
        t=50.0,
        members=list(names),
        ids={},
        voters=len(names),
        healthy=len(names),
        leader=names[0],
        lock_holder=None,
        group_size=len(names),
        group_failed=0,
        mean_load=2.0,
        demand=0.0,
        alarm="ok",
        acked=10,
        nodes=[_view(n) for n in names],
    )


def test_a_victim_must_be_gone_and_replaced():
    replaced = [
        Event(10.0, "kill", "etcd-02"),
        Event(12.0, "replace", "etcd-02", "by etcd-04 (127.1.1.13)"),
        Event(12.1, "delete", "etcd-02"),
        Event(14.0, "joined", "etcd-04"),
    ]
    final = _sample("etcd-01", "etcd-03", "etcd-04")
    assert check_victim(replaced, final, "etcd-02", 9.0, 2.0).ok
    still = _sample("etcd-01", "etcd-02", "etcd-03")
    assert not check_victim(replaced, still, "etcd-02", 9.0, 2.0).ok
    not_replaced = [Event(10.0, "kill", "etcd-02"), Event(12.0, "removed", "etcd-02")]
    assert not check_victim(not_replaced, _sample("etcd-01", "etcd-03"), "etcd-02", 9.0, None).ok
    before_the_fault = [Event(5.0, "replace", "etcd-02", "by etcd-04")]
    assert not check_victim(before_the_fault, final, "etcd-02", 9.0, 2.0).ok


def test_an_agent_restart_must_remove_nothing():
    same = {"etcd-01", "etcd-02", "etcd-03"}
    quiet = [Event(11.0, "kill-agent", "etcd-02"), Event(11.4, "agent-restart", "etcd-02")]
    assert check_nothing_removed(quiet, 10.0, 20.0, same, same).ok
    removal = [*quiet, Event(15.0, "removed", "etcd-02")]
    assert not check_nothing_removed(removal, 10.0, 20.0, same, same).ok
    assert not check_nothing_removed(quiet, 10.0, 20.0, same, same - {"etcd-02"}).ok


def test_no_removal_while_netdata_is_bad_and_the_agent_said_why():
    said = ["saw 4 members | did wait: 4 members > capacity 3 but no metric (HTTP 500)"]
    assert check_no_removal_while_bad([], 10.0, 30.0, True, said).ok
    mark = [Event(20.0, "mark-unhealthy", "etcd-01")]
    assert not check_no_removal_while_bad(mark, 10.0, 30.0, True, said).ok
    assert not check_no_removal_while_bad([], 10.0, 30.0, False, said).ok  # never grew
    assert not check_no_removal_while_bad([], 10.0, 30.0, True, ["did wait: 3 members"]).ok


def test_the_interrupted_leaver_must_finish_leaving():
    gone = [Event(20.0, "kill-agent", "etcd-01"), Event(24.0, "delete", "etcd-01")]
    final = _sample("etcd-02", "etcd-03", "etcd-04")
    assert check_left(gone, final, "etcd-01", 10.0, "phase leaving").ok
    stuck = _sample("etcd-01", "etcd-02", "etcd-03")
    assert not check_left([gone[0]], stuck, "etcd-01", 10.0, "phase leaving").ok
    assert not check_left(gone, final, None, 10.0, "").ok  # no leave was caught


# --- a short real run ---------------------------------------------------------------------

CI_KINDS = (
    "kill-etcd",
    "kill-agent",
    "restart-leaving",
    "netdata-silence",
    "reboot-one",
    "net-blip",
)
"""The kinds whose machinery only chaos has (the scenarios run a node kill, a freeze, the
network cuts, bad netdata and reboots of a majority and of all); the long seeded run has
every kind."""
CI_SEED = 7
"""Its rounds: each CI kind once, the leaving agent killed at once (no delay)."""
CI_ROUNDS = len(CI_KINDS)


@pytest.mark.etcd
@pytest.mark.slow
def test_a_short_seeded_run_holds_every_invariant(etcd_bin, tmp_path):
    stack = load_stack_file(stack_file("dev"))
    timings = LabTimings.scaled(stack, FAST_FACTOR)
    report_path = tmp_path / "chaos.json"
    outcome = run_chaos(
        stack,
        timings,
        tmp_path / "lab",
        rounds=CI_ROUNDS,
        seed=CI_SEED,
        kinds=CI_KINDS,
        json_path=report_path,
        etcd_binary=etcd_bin,
    )
    report = json.loads(report_path.read_text())
    assert report == json.loads(json.dumps(outcome.report))
    violated = [f"round {v['round']}: {v['name']}: {v['detail']}" for v in report["violated"]]
    assert not violated, "\n".join(violated)
    assert report["ok"] is True and report["rounds_run"] == CI_ROUNDS
    planned = plan(CI_ROUNDS, CI_SEED, max_grow=stack.max_cluster - stack.capacity, kinds=CI_KINDS)
    assert [r["kind"] for r in report["rounds"]] == [p.kind for p in planned]
    assert report["faults"] == {kind: 1 for kind in CI_KINDS}
    assert report["writes"]["acked"] > 0 and report["writes"]["lost"] == 0
    for entry in report["rounds"]:
        assert entry["settled"] and entry["invariants"] and entry["ok"]
        assert entry["injected"], entry
        if entry["kind"] in VICTIM_KINDS:
            assert entry["injected"] and entry["removed_after"] is not None
    kinds = [e["kind"] for e in report["events"]]
    for kind in (
        "kill-etcd",
        "kill-agent",
        "agent-restart",
        "replace",
        "reboot",
        "booted",
        "cut",
        "heal",
    ):
        assert kind in kinds, kind
    assert any(i["name"] == "no process left once the lab stopped" for i in report["final"])
    assert not list((tmp_path / "lab").glob("nodes/*/state/etcd.pid")) or all(
        not pid_alive(int(p.read_text()), "etcd")
        for p in (tmp_path / "lab").glob("nodes/*/state/etcd.pid")
    )


def test_planned_faults_describe_themselves():
    fault = PlannedFault(3, "restart-leaving", "oldest", grow=2, stage="lock", delay=0.005)
    assert fault.describe() == "restart-leaving oldest at lock +0.005s group +2"


# --- what the long run found --------------------------------------------------------------------


@pytest.mark.etcd
@pytest.mark.slow
def test_a_replacement_heat_refused_is_asked_again(etcd_bin, tmp_path):
    """4 members (capacity 3); A killed: its replacement's +1 starts the group's cooldown;
    B killed at once. B's +1 comes inside the cooldown and Heat answers NoActionRequired;
    the members are back at capacity, so no below-capacity rule asks again. B's FAILED
    server must still be replaced once the cooldown is over (found by `python -m lab chaos
    --seed 2026 --factor 0.1`, round 32: it stayed, and blocked every scale-down)."""
    stack = load_stack_file(stack_file("dev"))
    timings = LabTimings.scaled(stack, FAST_FACTOR)
    lab = Lab(stack, timings, tmp_path / "lab", etcd_binary=etcd_bin)
    try:
        lab.start()
        assert lab.wait_for(lab.settled, 60, "3 members")
        lab.set_demand(40 * 4)  # busy: nobody leaves for load
        lab.cloud.update(4)  # a stack update: no cooldown
        assert lab.wait_for(lambda s: lab.settled(s, 4), 60, "4 members")
        first = lab.latest()
        assert first is not None and first.members
        a, b = sorted(n for n in first.members if n != first.leader)[:2]
        lab.crash(a)
        # the resize that replaced A ends when A's replacement votes (its member stack's wait
        # condition): the group's cooldown runs from then
        assert lab.wait_for(
            lambda s: (
                lab.settled(s, 4) and a not in (s.members or []) and not lab.cloud.group.in_progress
            ),
            30,
        )
        left = (lab.cloud.group.cooldown_end or 0) - lab.cloud.clock()
        # B's +1 must come inside the cooldown: B is convicted within dead_member_periods
        # periods of its kill, then marked and its +1 sent within a cycle
        needed = (timings.dead_member_periods + 2) * timings.lockattemptperiod
        assert left > needed, f"A's replacement took the cooldown ({left:.1f}s < {needed:.1f}s)"
        lab.crash(b)  # the members are back at capacity once B is out

        # the agent removes B's member first and marks its server next: wait for both
        def b_out(s: Sample) -> bool:
            marked = any(e.node == b for e in lab.events.of("mark-unhealthy"))
            return marked and b not in (s.members or [])

        assert lab.wait_for(b_out, 30, "B removed and its server marked")
        marked = next(e.t for e in lab.events.of("mark-unhealthy") if e.node == b)
        lab.wait_for(lambda s: False, 1.0)
        refused = [e for e in lab.events.of("no-action") if e.t >= marked]
        assert refused and "cooldown" in refused[0].detail, lab.events.of("scale-up", "no-action")

        def whole(s: Sample) -> bool:
            servers = sorted(n.name for n in s.nodes)
            return (
                s.group_failed == 0
                and servers == sorted(s.members or [])
                and lab.settled(s, len(servers))
            )

        assert lab.wait_for(whole, timings.scaleupcooldown + 20, "no FAILED server")
    finally:
        lab.stop()
        stop_strays(tmp_path / "lab")
