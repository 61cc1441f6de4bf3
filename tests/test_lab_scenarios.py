"""Every lab scenario, end to end, with the tests' time factor: real etcd, the real agent.

Each scenario boots its own lab on a random 127.X.Y.0/24 under tmp_path (the nodes'
netdata on port 19999 of their own addresses, etcd on the stack's ports there), runs,
and must hold every invariant of its JSON report. Every process it started is gone
afterwards (checked by pid).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.settings import load_stack_file, stack_file
from lab.nodes import pid_alive
from lab.scenarios import SCENARIOS, run_scenario
from lab.timings import FAST_FACTOR, LabTimings

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack():
    return load_stack_file(stack_file("dev"))


def failed(report: dict) -> list[str]:
    return [f"{i['name']}: {i['detail']}" for i in report["invariants"] if not i["ok"]]


NEVER_EXCUSED = {
    "the group's first members formed a cluster",
    "no acknowledged write lost",
    "quorum never lost because of an agent action",
    "one cluster at the end (no split brain)",
    "the cluster takes writes at the end",
    "no node removed itself",
    "no removal while netdata was bad",
    "the agents saw no metric (no decision)",
    "the outage outlasted the failtolerance",
}
"""Safety: a known agent issue never excuses these."""


def known_agent_issues(report: dict, stack) -> list[str]:
    """Failures the lab found in the agent (see README "The lab"), by their exact signature.

    - Rule 6 against Heat 27: a member leaves, marks itself unhealthy and signals scale_down;
      Heat counts only non-FAILED members, so -1 also deletes the oldest healthy server
      (a `delete` of a server nobody marked), or is NoActionRequired at min_size.
    - A member that has just joined reads a netdata window that covers the time before it
      served anything, is idle in it, and leaves at once (`mark-unhealthy` by itself within
      one downmetric_window of its `joined`).
    """
    events = report["events"]
    marked = {e["node"] for e in events if e["kind"] == "mark-unhealthy"}
    found = []
    unmarked = [e["node"] for e in events if e["kind"] == "delete" and e["node"] not in marked]
    if unmarked:
        found.append(f"Heat deleted healthy member(s) {unmarked} on a scale_down signal")
    joined = {e["node"]: e["t"] for e in events if e["kind"] == "joined"}
    window = report["timings"]["downmetric_window"]
    hasty = [
        e["node"]
        for e in events
        if e["kind"] == "mark-unhealthy"
        and e["detail"].startswith(f"by {e['node']}:")
        and e["node"] in joined
        and e["t"] - joined[e["node"]] <= float(window.split()[0]) + 1
    ]
    if hasty:
        found.append(f"member(s) {hasty} left right after joining")
    return found


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


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_holds_every_invariant(name, stack, etcd_bin, tmp_path):
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
    safety = [i for i in report["invariants"] if i["name"] in NEVER_EXCUSED and not i["ok"]]
    assert not safety, safety
    if failed(report):
        issues = known_agent_issues(report, stack)
        if issues:
            pytest.xfail("; ".join(issues) + " | failed: " + " | ".join(failed(report)))
    assert not failed(report), "\n".join(failed(report))
    assert report["ok"] is True
    kinds = [e["kind"] for e in report["events"]]
    if name == "burst":
        assert kinds.count("scale-up") >= stack.max_cluster - stack.capacity
        assert max(p["voters"] for p in report["timeline"]) == stack.max_cluster
    if name in ("node-loss", "partition"):
        assert "replace" in kinds and "joined" in kinds
    if name == "etcd-outage":
        assert "removed" not in kinds and "mark-unhealthy" not in kinds
