"""Every lab scenario, end to end, with the tests' time factor: real etcd, the real agent.

Each scenario boots its own lab under tmp_path, every node in a network namespace of its
own (lab/netns.py; as root, here and in CI: the network scenarios need it), the nodes'
netdata on port 19999 of their own addresses, etcd on the stack's ports there; it runs,
and must hold every invariant of its JSON report. Every process it started is gone
afterwards (checked by pid), and so are its namespaces and bridge (by name).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.settings import load_stack_file, stack_file
from lab.netns import still_there
from lab.nodes import pid_alive, pids_of
from lab.scenarios import NETWORK_SCENARIOS, SCENARIOS, run_scenario
from lab.timings import FAST_FACTOR, LabTimings
from tests.tools import need_netns

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack():
    return load_stack_file(stack_file("dev"))


def failed(report: dict) -> list[str]:
    return [f"{i['name']}: {i['detail']}" for i in report["invariants"] if not i["ok"]]


def processes_left(root: Path) -> list[str]:
    state = json.loads((root / "lab.json").read_text())
    left = []
    for node in state["nodes"]:
        if pid_alive(node["agent_pid"], str(Path(node["dir"]) / "agent.json")):
            left.append(f"agent {node['agent_pid']}")
    for pid_file in root.glob("nodes/*/state/etcd.pid"):
        pid = int(pid_file.read_text())
        if pid_alive(pid, str(pid_file.parent / "etcd.yaml")):
            left.append(f"etcd {pid}")
    return left


def namespaces_left(root: Path) -> list[str]:
    """The lab's namespaces and bridge still there after it stopped (lab.json names them)."""
    return still_there(json.loads((root / "lab.json").read_text()).get("network") or {})


LEFT_OUT = (
    "freeze",
    "split",
    "update-grown",
    "rolling-update",
    "rolling-update-grown",
    "rolling-update-fault",
    "rolling-update-etcd",
    "rolling-update-etcd-grown",
)
IN_SUITE = [name for name in SCENARIOS if name not in LEFT_OUT]
"""Left out to keep the suite under its ten minutes: `freeze` (one etcd SIGSTOPped, the
partition scenario of before the namespaces: etcd-outage and the chaos kinds run its
machinery) and `split` (over a minute: the group grown to five, cut twice, shrunk back;
its cuts are partition's and peer-cut's, for two nodes at once, which tests/test_lab_netns.py
checks; the long chaos run in README has split rounds). Nor is `skewed` with
`downmetric_scope: node` (half a minute to show that nobody leaves): the per-node rule is
tests/test_decide.py's, and `python -m lab scenario skewed --set downmetric_scope=node` runs
it end to end. Nor are `rolling-update` (half a minute even at the suite's time factor: a
join and a `pause_time` per member), `rolling-update-grown` (five of them),
`rolling-update-fault`, `rolling-update-etcd` and `-etcd-grown`, nor `update-grown`
(`update` on a group of five: two joins and two leaves more than the suite's); their roll
is Heat's `_replace`, which
tests/test_lab_group.py checks batch by batch against Heat's own functions,
tests/test_infra_member_gate.py the member's wait with Heat's engine, and README "Day two"
shows runs."""


SMALLER: dict[str, dict[str, object]] = {
    name: {"max_cluster": 4} for name in ("burst", "skewed", "bad-metrics")
}
"""Scenarios the suite runs with a group of at most four (one join and one removal fewer,
a scaledownperiod and a join shorter each): what they prove does not need the fifth server
(skewed: the busy oldest at idle 70 and three idle at 98 still average 91 > 90; burst: the
alarm's +1, a join, one leave; a +1 refused inside the group's cooldown is chaos's
`test_a_replacement_heat_refused_is_asked_again`). `make lab`, README's figures and
`python -m lab scenario` use the dev stack's five."""


SMALLER["disaster"] = {"backups": "swift", "disaster_recovery": "auto"}
"""The suite's disaster restores by itself (roll calls, Nova's word, the restore inside the
agent's bootstrap); the manual mode's logged command is run in README's lab run and by
`python -m lab scenario disaster` (its default, as the dev stack's)."""


def suite_stack(stack, name: str):
    changes = SMALLER.get(name, {})
    return type(stack).model_validate({**stack.model_dump(), **changes}) if changes else stack


@pytest.mark.parametrize("name", IN_SUITE)
def test_scenario_holds_every_invariant(name, stack, etcd_bin, tmp_path):
    if name in NETWORK_SCENARIOS:
        need_netns()
    stack = suite_stack(stack, name)
    timings = LabTimings.scaled(stack, FAST_FACTOR)
    json_path, plot_path = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    outcome = run_scenario(
        name,
        stack,
        timings,
        tmp_path / "lab",
        json_path=json_path,
        plot_path=plot_path,
        etcd_binary=etcd_bin,
    )
    report = json.loads(json_path.read_text())
    assert report == outcome.report
    assert set(report) >= {"scenario", "ok", "invariants", "events", "writes"}
    assert report["scenario"] == name
    assert report["writes"]["acked"] > 0 and report["writes"]["lost"] == 0
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert processes_left(tmp_path / "lab") == []
    assert pids_of(str(tmp_path / "lab" / "swift")) == []  # the lab's Swift, stopped by pid
    assert not failed(report), "\n".join(failed(report))
    assert report["ok"] is True
    kinds = [e["kind"] for e in report["events"]]
    if name == "burst":
        assert kinds.count("scale-up") >= stack.max_cluster - stack.capacity
        assert max(p["voters"] for p in report["timeline"]) == stack.max_cluster
    if name in ("node-loss", "partition", "peer-cut"):
        assert "replace" in kinds and "joined" in kinds
    calls = report["cloud_calls"]  # through the agents' OpenStack driver
    assert calls["keystone: tokens asked"] >= 1 and calls["heat: GET"] >= 1, calls
    if name in ("node-loss", "partition"):
        assert calls["heat: mark unhealthy"] >= 1 and calls["heat: signal"] >= 1, calls
    if name in NETWORK_SCENARIOS:
        assert "cut" in kinds and "heal" in kinds
    assert namespaces_left(tmp_path / "lab") == []
    if name == "disaster":
        assert report["writes"]["given_up"] > 0  # the writes after the last snapshot
        assert kinds.count("check-failed") == stack.capacity and "server-deleted" in kinds
    if name == "etcd-outage":
        assert "removed" not in kinds and "mark-unhealthy" not in kinds


def test_a_lab_run_with_a_lost_write_goes_red(stack, etcd_bin, tmp_path):
    """The judges seen failing on a live lab: one acknowledged write deleted behind the
    writer's back is a lost write for the lab's own check and for etcdctl's."""
    from lab.cluster import Lab
    from lab.outside import Etcdctl, writes_readable
    from lab.report import RunFacts, common_invariants
    from lab.writer import PREFIX, Writer

    timings = LabTimings.scaled(stack, FAST_FACTOR)
    lab = Lab(stack, timings, tmp_path / "lab", etcd_binary=etcd_bin)
    writer = Writer(lab.endpoints, interval=0.02)
    try:
        lab.start()
        assert lab.wait_for(lambda s: lab.settled(s), 60, "a cluster")
        writer.start()
        assert lab.wait_for(lambda s: len(writer.acked) >= 30, 30, "writes")
        writer.stop()
        victim = writer.acked[10]
        client = lab.client()
        assert client is not None
        client.delete(f"{PREFIX}{victim:08d}")  # the injected bug: an acknowledged write gone
        client.close()
        writes = writer.verify()
        keys = Etcdctl().keys(lab.endpoints(), PREFIX)
        facts = RunFacts(
            capacity=stack.capacity,
            max_cluster=stack.max_cluster,
            scaledownperiod=timings.scaledownperiod,
            lockattemptperiod=timings.lockattemptperiod,
            election_s=1.0,
            interval=lab.interval,
            settled_at=0.0,
            samples=list(lab.samples),
            events=lab.events.all(),
            writes=writes,
            final_settled=True,
            clusters=[],
            removal_records=lab.removal_records(),
        )
    finally:
        writer.stop()
        lab.stop()
    judged = {i.name: i for i in common_invariants(facts)}
    assert not judged["no acknowledged write lost"].ok
    assert "1 lost" in judged["no acknowledged write lost"].detail
    outside = writes_readable(writer.acked, keys, PREFIX)
    assert not outside.ok and f"first [{victim}]" in outside.detail
