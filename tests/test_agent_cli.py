"""The agent's command line, run as an operator would: `python -m agent ...`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.etcd import GRPC_UNAVAILABLE, EtcdClient, EtcdError
from tests.etcd_cluster import free_address

ROOT = Path(__file__).resolve().parent.parent


def agent_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.etcd
def test_status_lists_every_member_and_the_kill_lock_holder(etcd_cluster):
    cluster = etcd_cluster(3)
    endpoints = ",".join(cluster.endpoints)
    EtcdClient(cluster.endpoints, prefix="/autoscale-etcd/prod").acquire_lock(
        "kill", "node-b", ttl=30
    )
    done = agent_cli("status", "--endpoints", endpoints, "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    names = sorted(m["name"] for m in status["members"])
    assert names == sorted(node.name for node in cluster.nodes)
    assert sum(m["leader"] for m in status["members"]) == 1
    assert all(m["healthy"] and not m["learner"] for m in status["members"])
    assert status["kill_lock"] == {"prod": "node-b"}
    table = agent_cli("status", "--endpoints", endpoints)
    assert "kill lock: prod: node-b" in table.stdout
    assert table.stdout.splitlines()[0].split() == [
        "NAME",
        "ID",
        "CLIENT",
        "URL",
        "HEALTHY",
        "LEADER",
        "LEARNER",
        "READING",
        "(AGE)",
        "DB",
        "(FREE)",
    ]
    assert "alarms: none" in table.stdout and status["alarms"] == []
    assert all(m["db"]["size"] > 0 for m in status["members"])


@pytest.mark.etcd
def test_status_shows_each_members_latest_reading_and_its_age(etcd_cluster):
    import time

    from agent.snapshot import PeerReading

    cluster = etcd_cluster(3)
    first = cluster.nodes[0].name
    client = EtcdClient(cluster.endpoints, prefix="/autoscale-etcd/prod")
    client.publish_reading(PeerReading(first, 93.5, time.time() - 4), ttl=30)
    done = agent_cli("status", "--endpoints", ",".join(cluster.endpoints), "--cluster", "prod")
    assert done.returncode == 0, done.stderr
    done = agent_cli(
        "status", "--endpoints", ",".join(cluster.endpoints), "--cluster", "prod", "--json"
    )
    members = {m["name"]: m for m in json.loads(done.stdout)["members"]}
    assert members[first]["reading"]["value"] == 93.5
    assert 4 <= members[first]["reading"]["age"] < 60
    assert all(m["reading"] is None for name, m in members.items() if name != first)


@pytest.mark.etcd
def test_status_shows_a_dead_member_unhealthy(etcd_cluster):
    cluster = etcd_cluster(3)
    leader = next(m.name for m in EtcdClient(cluster.endpoints).members() if m.is_leader)
    victim = next(n for n in cluster.nodes if n.name != leader)
    victim.kill()
    done = agent_cli("status", "--endpoints", ",".join(cluster.endpoints), "--json")
    assert done.returncode == 0, done.stderr
    health = {m["name"]: m["healthy"] for m in json.loads(done.stdout)["members"]}
    assert health[victim.name] is False
    assert sum(health.values()) == 2


def test_status_asks_again_while_the_members_elect_a_leader(monkeypatch, capsys):
    """Right after the leader died the members answer "leader changed" until they elect
    (an election timeout or two): status asks again for a few seconds, and says so if the
    election outlasts them. A refused connection is answered at once (the test below)."""
    import agent.status as status

    answers: list[object] = [
        EtcdError("member list", "http://a", "leader changed", status=503, code=GRPC_UNAVAILABLE),
        EtcdError("member list", "http://b", "no leader", status=503, code=GRPC_UNAVAILABLE),
        {"cluster_id": "c", "members": [], "kill_lock": {}},
    ]

    def answer(client, cluster):
        got = answers.pop(0)
        if isinstance(got, EtcdError):
            raise got
        return got

    monkeypatch.setattr(status, "cluster_status", answer)
    args = {"endpoints": ["http://a"], "settings": None, "cluster": None, "as_json": True}
    assert status.status_command(**args) == 0
    assert json.loads(capsys.readouterr().out)["cluster_id"] == "c" and answers == []

    def electing(client, cluster):
        raise EtcdError("member list", "http://a", "leader changed", code=GRPC_UNAVAILABLE)

    monkeypatch.setattr(status, "cluster_status", electing)
    monkeypatch.setattr(status, "ELECTION_WAIT", 0.7)
    assert status.status_command(**args) == 1
    assert "unavailable (electing a leader?), still after 0.7s" in capsys.readouterr().err


def test_status_with_nobody_answering_exits_1_and_says_so():
    ip, port, _ = free_address()
    done = agent_cli("status", "--endpoints", f"http://{ip}:{port}")
    assert done.returncode == 1
    assert "no etcd member answered" in done.stderr


def test_metric_with_netdata_down_exits_1_with_the_reason():
    ip, port, _ = free_address()
    done = agent_cli("metric", "NETDATA_SYSTEM_CPU_IDLE", "--netdata", f"http://{ip}:{port}")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "NETDATA_SYSTEM_CPU_IDLE" in done.stderr or "netdata" in done.stderr.lower()


def test_commands_that_need_a_config_say_so(tmp_path: Path):
    done = agent_cli("run")
    assert done.returncode != 0 and "--config" in done.stderr
    broken = tmp_path / "agent.json"
    broken.write_text('{"cluster_name": "x", "cloud": {"kind": "moon"}}')
    done = agent_cli("--config", str(broken), "run")
    assert done.returncode != 0
    assert "cannot read agent settings" in done.stderr and "kind" in done.stderr


def _node_settings(tmp_path: Path, backups: str) -> Path:
    """A node's settings file (its cloud never asked by these commands)."""
    from agent.settings import AgentSettings

    settings = AgentSettings.model_validate(
        {
            "cluster_name": "cli",
            "etcd": {"data_dir": str(tmp_path / "data"), "service": "subprocess"},
            "backup": (
                {"kind": "swift", "container": "cli-etcd-backups"}
                if backups == "swift"
                else {"kind": "none"}
            ),
            "cloud": {
                "auth_url": "http://127.0.0.1:9/identity/v3",
                "application_credential_id": "x",
                "application_credential_secret": "y",
                "stack_id": "s/1",
            },
            "state_dir": str(tmp_path / "state"),
        }
    )
    path = tmp_path / "agent.json"
    settings.write(path)
    return path


def test_restore_needs_swift_backups_and_join_sets_the_old_data_aside(tmp_path):
    config = _node_settings(tmp_path, "none")
    refused = agent_cli("--config", str(config), "restore", "--latest")
    assert refused.returncode == 2 and "no Swift backups" in refused.stderr
    both = agent_cli("--config", str(config), "restore", "--latest", "--join")
    assert both.returncode == 2 and "not allowed with" in both.stderr  # one of the three
    # --join: the old member's data moved aside (kept), the agent's state reset
    (tmp_path / "data" / "member").mkdir(parents=True)
    (tmp_path / "data" / "member" / "x").write_text("old")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(json.dumps({"phase": "member", "member_id": 7}))
    joined = agent_cli("--config", str(config), "restore", "--join")
    assert joined.returncode == 0, joined.stderr
    assert not (tmp_path / "data" / "member").exists()  # the data dir itself stays
    (aside,) = (tmp_path / "data").glob("member.before-restore-*")
    assert (aside / "x").read_text() == "old"
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["phase"] == "starting" and state["member_id"] is None
