"""A new agent bundle reaches running nodes one at a time (agent/loop.py `_upgrade`,
agent/upgrade.py): real agents and real etcd in the lab's cloud (tests/agent_lab.py), the
stack holding the settings document and the bundle it names, and this test playing
systemd (`Restart=on-failure`: an agent that exits 75 is started again, on the file it
installed). etcd keeps running through each agent's restart."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.loop import UPGRADE_LOCK, UPGRADING, Agent
from agent.settings import document_sha256
from agent.upgrade import EXIT_UPGRADE, file_sha256, running_bundle
from infra.bundle import Bundle
from infra.heat import AGENT_BUNDLE, SETTINGS, AgentBundle
from infra.userdata import role_settings
from lab.cloud.api import StackResource
from tests.agent_lab import Lab, Node
from tests.etcd_cluster import wait_until

pytestmark = pytest.mark.etcd

OLD = Bundle(b"#!/usr/bin/env python3\n# the agent of the first pulumi up\n")
NEW = Bundle(b"#!/usr/bin/env python3\n# the agent of the second pulumi up\n")


def hold(lab: Lab, bundle: Bundle, *, named: str | None = None) -> dict:
    """The stack holds `bundle` and a settings document naming it (or `named`): the
    agents' own settings, so that only the bundle changes."""
    settings = next(iter(lab.nodes.values())).agent.settings
    document = {
        "bundle_sha256": named or bundle.sha256,
        "roles": {"member": role_settings(settings)},
    }
    document["sha256"] = document_sha256(document)
    lab.cloud.settings_document = document
    metadata = AgentBundle(bundle.sha256, bundle.packed, len(bundle.zipapp)).to_hot()["metadata"]
    kept = [r for r in lab.cloud.extra_resources if r.name != "agent_bundle"]
    lab.cloud.extra_resources = [
        *kept,
        StackResource("agent_bundle", "OS::Heat::RandomString", "bundle", metadata),
    ]
    return document


class Systemd:
    """Starts an agent again when it exits 75, on the same settings, state, etcd and bundle
    file; notes when each node installed and when it freed the lock."""

    def __init__(self, lab: Lab, *, broken: set[str] | None = None) -> None:
        self.lab = lab
        self.broken = broken or set()
        """Nodes whose new agent does not start (a bundle that fails at import)."""
        self.restarts: dict[str, int] = {}
        self.holder_at_exit: dict[str, str | None] = {}
        """Who held the upgrade lock when each node's agent exited to take its bundle."""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.wait(0.05):
            for name, node in list(self.lab.nodes.items()):
                if node.running or node.agent.exit_code != EXIT_UPGRADE:
                    continue
                if name in self.broken:
                    self.restarts.setdefault(name, 0)
                    continue
                self.holder_at_exit[name] = self.lab.client().lock_holder(UPGRADE_LOCK)
                self.restarts[name] = self.restarts.get(name, 0) + 1
                old = node.agent
                agent = Agent(
                    old.settings,
                    cloud=old.cloud,
                    service=node.service,
                    metric_reader=old.read_metric,
                    bundle_path=old.bundle_path,
                )
                fresh = Node(node.name, node.server_id, node.ip, agent, node.service)
                self.lab.nodes[name] = fresh
                fresh.start()


def freed(lab: Lab, name: str) -> bool:
    state = lab.state(name)
    return state.upgrade_lease is None and state.upgraded_from is not None


@pytest.fixture
def lab(make_agent_lab):
    return make_agent_lab()


def start_on(lab: Lab, tmp_path: Path, bundle: Bundle, count: int = 3) -> list[Node]:
    nodes = lab.create(count)
    for node in nodes:
        path = tmp_path / node.name / "agent.pyz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bundle.zipapp)
        node.agent.bundle_path = path
        node.agent.bundle_sha256 = file_sha256(path)
        node.start()
    assert wait_until(lambda: len(lab.voters()) == count, timeout=30), lab.voters()
    assert wait_until(lambda: all(lab.state(n.name).phase == "member" for n in nodes), 30)
    return nodes


@pytest.mark.parametrize("count", [3, 5])
def test_every_node_takes_the_new_bundle_one_at_a_time_and_the_cluster_stays_whole(
    lab, tmp_path, count
):
    """On a cluster at capacity and on one grown to five (max_cluster)."""
    start_on(lab, tmp_path, OLD, count)
    members = {m.name: m.id for m in lab.client().members(check_health=False)}
    systemd = Systemd(lab)
    systemd.thread.start()
    hold(lab, NEW)
    voters_seen: list[int] = []

    def done() -> bool:
        voters_seen.append(len(lab.voters()))
        return all(freed(lab, name) for name in lab.nodes)

    try:
        assert wait_until(done, timeout=90, interval=0.1), {n: lab.state(n) for n in lab.nodes}
    finally:
        systemd.stop.set()
    for name in lab.nodes:
        assert (tmp_path / name / "agent.pyz").read_bytes() == NEW.zipapp
        assert lab.nodes[name].agent.bundle_sha256 == NEW.sha256
        assert systemd.restarts[name] == 1
        assert lab.state(name).upgraded_from == OLD.sha256
    # one node at a time: each installed holding the (exclusive) lock, which it frees only
    # once it is a healthy member again; and nobody lost its membership
    assert systemd.holder_at_exit == {name: name for name in lab.nodes}
    assert min(voters_seen) == count, voters_seen
    assert {m.name: m.id for m in lab.client().members(check_health=False)} == members
    assert not lab.record.deleted and not lab.record.calls_of("mark_unhealthy")


def test_a_bundle_that_is_not_the_named_one_is_not_installed(lab, tmp_path):
    start_on(lab, tmp_path, OLD)
    hold(lab, NEW, named=Bundle(b"what the settings name").sha256)
    node = next(iter(lab.nodes.values()))
    said = wait_until(
        lambda: (
            "not installed" in (lab.state(node.name).last_cycle or "")
            and lab.state(node.name).last_cycle
        ),
        timeout=30,
    )
    assert "has sha256" in said
    assert (tmp_path / node.name / "agent.pyz").read_bytes() == OLD.zipapp
    assert all(n.running for n in lab.nodes.values())  # nobody restarted
    assert wait_until(lambda: lab.client().lock_holder(UPGRADE_LOCK) is None, timeout=10)
    # the refused bundle is not downloaded every cycle, only after each look at the stack

    def count(part: str) -> int:
        return len(lab.cloud.api.calls("GET", f"/resources/{part}/metadata"))

    fetched, looked = count(AGENT_BUNDLE), count(SETTINGS)
    assert wait_until(lambda: count(SETTINGS) >= looked + 2 * len(lab.nodes), timeout=30)
    looks = count(SETTINGS) - looked
    assert count(AGENT_BUNDLE) - fetched <= looks + len(lab.nodes), (looks, count(AGENT_BUNDLE))


def test_a_new_agent_that_never_runs_stops_the_roll_at_its_node(lab, tmp_path, monkeypatch):
    """The upgrade lock's lease expires (a short one here); the next node still waits, for
    the mark the first node's new agent never cleared: a bundle whose agent cannot start
    is on one node, not on all. Once that agent runs, the roll goes on."""
    import agent.loop

    monkeypatch.setattr(agent.loop, "UPGRADE_TTL", 0.5)  # ttl: 12 periods, 4.8 s
    start_on(lab, tmp_path, OLD)
    systemd = Systemd(lab, broken=set(lab.nodes))
    systemd.thread.start()
    hold(lab, NEW)
    try:
        assert wait_until(lambda: len(systemd.restarts) == 1, timeout=30)
        (first,) = systemd.restarts
        ttl = 12 * lab.nodes[first].agent.settings.scaling.lockattemptperiod
        assert wait_until(lambda: lab.client().lock_holder(UPGRADE_LOCK) is None, ttl + 5)
        others = [name for name in lab.nodes if name != first]
        waiting = wait_until(
            lambda: all("has not run yet" in (lab.state(n).last_cycle or "") for n in others),
            timeout=10,
        )
        assert waiting, {n: lab.state(n).last_cycle for n in others}
        assert list(systemd.restarts) == [first]  # nobody else installed
        assert all((tmp_path / n / "agent.pyz").read_bytes() == OLD.zipapp for n in others)
        assert lab.client().get(f"{lab.client().prefix}/{UPGRADING}") == first
        systemd.broken.clear()  # the first node's new agent runs after all
        assert wait_until(lambda: all(freed(lab, n) for n in lab.nodes), timeout=90)
    finally:
        systemd.stop.set()
    assert lab.client().get(f"{lab.client().prefix}/{UPGRADING}") is None


def test_an_agent_run_from_its_sources_takes_no_bundle():
    assert running_bundle("/opt/x/agent/__init__.py") is None
    assert running_bundle("/var/lib/autoscale-etcd/agent.pyz/agent/__init__.py") == Path(
        "/var/lib/autoscale-etcd/agent.pyz"
    )
