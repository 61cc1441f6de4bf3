"""`python -m lab up --detach`, `status [--json]` and `down`, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.settings import PROJECT_DIR
from lab.netns import still_there
from lab.netns import unavailable as netns_unavailable
from lab.nodes import pid_alive
from tests.tools import need_netns

pytestmark = pytest.mark.etcd


def lab(*args: str, root: Path, etcd_bin: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args, "--fast", "--root", str(root)],
        cwd=PROJECT_DIR,
        env={**os.environ, "ETCD_BIN": etcd_bin},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_up_detach_status_down(tmp_path, etcd_bin):
    root = tmp_path / "lab"
    pids: list[tuple[int, str]] = []
    try:
        up = lab("up", "--detach", root=root, etcd_bin=etcd_bin)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "lab time: the stack's periods x 0.04" in up.stdout
        assert "python -m lab down" in up.stdout
        state = json.loads((root / "lab.json").read_text())
        daemon = state["pid"]
        assert int((root / "daemon.pid").read_text()) == daemon and pid_alive(daemon, "lab")
        # as root (here and in CI) each node runs in a network namespace of the lab's own
        if os.environ.get("CI"):
            need_netns()
        made = state["network"].get("namespaces", [])
        if netns_unavailable() is None:
            assert state["network"]["mode"] == "netns"
            assert len(made) == 3 and still_there({"namespaces": made}) == made
        pids.append((daemon, "lab"))

        shown = lab("status", "--json", root=root, etcd_bin=etcd_bin)
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        nodes = status["nodes"]
        assert len(nodes) == 3 and status["daemon_pid"] == daemon
        assert sum(n["leader"] for n in nodes) == 1 and status["leader"] is not None
        for node in nodes:
            assert node["member"] == "voter" and node["healthy"] is True
            assert node["client_url"] == f"http://{node['ip']}:12379"
            assert node["failmarker"] == 0 and node["load"] is not None
            assert node["ip"].startswith(state["prefix"] + ".")
            agent_dir = next(n["dir"] for n in state["nodes"] if n["name"] == node["name"])
            assert pid_alive(node["agent_pid"], str(Path(agent_dir) / "agent.json"))
            assert pid_alive(node["etcd_pid"], "etcd")
            pids += [(node["agent_pid"], "agent.json"), (node["etcd_pid"], "etcd")]
        assert status["kill_lock_holder"] is None

        table = lab("status", root=root, etcd_bin=etcd_bin)
        assert table.returncode == 0
        assert all(n["name"] in table.stdout for n in nodes) and "voter*" in table.stdout

        # a `pulumi up` of the lab's stack: refused when it changes a port, else through
        # Heat's "Update stack"; the agents' files follow, no server is made
        refused = lab("update", "--set", "etcdclientport=2379", root=root, etcd_bin=etcd_bin)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "etcd.client_port: 12379 -> 2379: REFUSED" in refused.stdout
        assert "nothing was sent to Heat" in refused.stderr
        update = lab("update", "--set", "threshold=80", root=root, etcd_bin=etcd_bin)
        assert update.returncode == 0, update.stdout + update.stderr
        assert "metric.threshold: 90.0 -> 80.0: applied live" in update.stdout
        assert "stack update accepted by Heat" in update.stdout
        files = [Path(n["dir"]) / "agent.json" for n in state["nodes"]]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(json.loads(f.read_text())["metric"]["threshold"] == 80 for f in files):
                break
            time.sleep(0.2)
        assert [json.loads(f.read_text())["metric"]["threshold"] for f in files] == [80] * 3
        now = json.loads((root / "lab.json").read_text())
        assert now["settings"]["threshold"] == 80
        assert sorted(n["server_id"] for n in now["nodes"]) == sorted(
            n["server_id"] for n in state["nodes"]
        )
        same = lab("update", "--set", "threshold=80", root=root, etcd_bin=etcd_bin)
        assert same.returncode == 0 and same.stdout.startswith("no change"), same.stdout

        again = lab("up", "--detach", root=root, etcd_bin=etcd_bin)
        assert again.returncode != 0 and "a lab is up already" in again.stderr

        down = lab("down", root=root, etcd_bin=etcd_bin)
        assert down.returncode == 0 and f"stopped the lab daemon (pid {daemon})" in down.stdout
        assert not root.exists()
        assert [pid for pid, needle in pids if pid_alive(pid, needle)] == []
        assert still_there({"namespaces": made}) == []

        gone = lab("status", root=root, etcd_bin=etcd_bin)
        assert gone.returncode == 1 and "no lab is up" in gone.stderr
    finally:
        if root.exists():
            lab("down", root=root, etcd_bin=etcd_bin)


def test_a_terminated_chaos_run_stops_every_process_it_started(tmp_path, etcd_bin):
    """SIGTERM to `python -m lab chaos` (a CI timeout, a user's kill) leaves no agent and
    no etcd running behind it."""
    from lab.nodes import kill_pid, pids_of

    root = tmp_path / "lab"
    needle = f"{root.resolve()}/"
    command = [sys.executable, "-m", "lab", "chaos", "--rounds", "3", "--seed", "7"]
    run = subprocess.Popen(
        [*command, "--fast", "--root", str(root)],
        cwd=PROJECT_DIR,
        env={**os.environ, "ETCD_BIN": etcd_bin},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        started: list[int] = []
        while time.monotonic() < deadline and run.poll() is None:
            started = pids_of(needle)
            if len(started) >= 6:  # three agents and their etcds
                break
            time.sleep(0.2)
        assert len(started) >= 6, f"the lab did not start its nodes: {started}"
        run.terminate()
        out, err = run.communicate(timeout=60)
        assert run.returncode == 130, out + err
        assert "interrupted" in err
        left = pids_of(needle)
        assert left == [], f"still running after the chaos run exited: {left}"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for pid in pids_of(needle):
            kill_pid(pid, needle)
