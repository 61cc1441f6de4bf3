"""`python -m lab status` and `down`, from another process: they read `<root>/lab.json`.

`status` asks etcd (members, health, leader, kill-lock holder), each agent's state
file (phase, failmarker), each node's netdata (CPU use) and /proc (are the pids
alive). `down` stops the lab's daemon (SIGTERM: it stops its nodes), then any node
process still alive, by the pids recorded, and removes the lab's files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from agent.decide import KILL_LOCK
from agent.etcd import EtcdClient, EtcdError
from agent.etcd_server import PID_FILE
from agent.metrics import read_metric
from agent.settings import MetricSettings
from agent.state import AgentState
from lab.cluster import STATE_FILE
from lab.netdata_stub import NETDATA_PORT
from lab.nodes import kill_pid, pid_alive
from lab.tls import client_tls_from_state


class NoLab(RuntimeError):
    pass


def read_state(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NoLab(f"no lab is up here ({root / STATE_FILE} does not exist)") from None
    except (OSError, ValueError) as error:
        raise NoLab(f"cannot read {root / STATE_FILE}: {error}") from None


def _etcd_pid(node: dict[str, Any]) -> int | None:
    try:
        pid = int((Path(node["state_dir"]) / PID_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, node["etcd_config"]) else None


def status(root: Path) -> dict[str, Any]:
    state = read_state(root)
    nodes = state.get("nodes", [])
    urls = [n["client_url"] for n in nodes if not n.get("crashed")]
    members: dict[str, Any] = {}
    holder = error = None
    if urls:
        try:
            prefix = f"/autoscale-etcd/{state['cluster']}"
            tls = client_tls_from_state(state)
            with EtcdClient(urls, timeout=1.0, prefix=prefix, tls=tls) as c:
                members = {m.name: m for m in c.members(check_health=True)}
                holder = c.lock_holder(KILL_LOCK)
        except EtcdError as failure:
            error = str(failure)
    rows = []
    for node in nodes:
        member = members.get(node["name"])
        agent = AgentState.load(node["state_dir"])
        reading = read_metric(
            MetricSettings(netdata_url=f"http://{node['ip']}:{NETDATA_PORT}", window=0, timeout=1.0)
        )
        rows.append(
            {
                "name": node["name"],
                "ip": node["ip"],
                "client_url": node["client_url"],
                "etcd_pid": _etcd_pid(node),
                "agent_pid": node["agent_pid"]
                if pid_alive(node["agent_pid"], str(Path(node["dir"]) / "agent.json"))
                else None,
                "member": ("learner" if member.is_learner else "voter") if member else None,
                "healthy": member.healthy if member else None,
                "leader": bool(member and member.is_leader),
                "failmarker": agent.failmarker,
                "phase": agent.phase,
                "settings": (agent.settings_sha256 or "")[:12] or None,
                "load": None if reading.value is None else round(100 - reading.value, 1),
            }
        )
    return {
        "status": state.get("status"),
        "daemon_pid": state.get("pid") if pid_alive(state.get("pid"), "lab") else None,
        "stack": state.get("stack"),
        "factor": state.get("factor"),
        "cloud_url": state.get("cloud_url"),
        "leader": next((r["name"] for r in rows if r["leader"]), None),
        "kill_lock_holder": holder,
        "settings": (state.get("settings_sha256") or "")[:12] or None,
        "etcd_error": error,
        "nodes": rows,
    }


def format_status(data: dict[str, Any]) -> str:
    lines = [
        f"lab ({data['status']}, stack {data['stack']}, time factor {data['factor']},"
        f" daemon pid {data['daemon_pid'] or '-'}) cloud {data['cloud_url']}",
        f"leader {data['leader'] or '-'}, kill lock {data['kill_lock_holder'] or 'free'},"
        f" the stack's settings {data.get('settings') or '-'}"
        + (f", etcd: {data['etcd_error']}" if data["etcd_error"] else ""),
        f"{'node':14} {'ip':16} {'client URL':28} {'etcd pid':>8} {'agent pid':>9}"
        f" {'member':8} {'health':6} {'failmk':>6} {'load%':>6} {'settings':12}",
    ]
    for r in data["nodes"]:
        member = (r["member"] or "-") + ("*" if r["leader"] else "")
        health = "-" if r["healthy"] is None else ("ok" if r["healthy"] else "FAIL")
        load = "-" if r["load"] is None else f"{r['load']:.1f}"
        lines.append(
            f"{r['name']:14} {r['ip']:16} {r['client_url']:28} {r['etcd_pid'] or '-':>8}"
            f" {r['agent_pid'] or '-':>9} {member:8} {health:6} {r['failmarker']:6d} {load:>6}"
            f" {r.get('settings') or '-':12}"
        )
    return "\n".join(lines)


def down(root: Path, *, timeout: float = 30.0) -> list[str]:
    """Stop everything the lab in `root` started, by pid; remove its files. What was done."""
    done: list[str] = []
    try:
        state = read_state(root)
    except NoLab:
        state = {}
    daemon = state.get("pid")
    if daemon and daemon != os.getpid() and pid_alive(daemon, "lab"):
        os.kill(daemon, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(daemon, "lab"):
            time.sleep(0.1)
        if pid_alive(daemon, "lab"):
            kill_pid(daemon, "lab")
        done.append(f"stopped the lab daemon (pid {daemon})")
    for node in state.get("nodes", []):
        if kill_pid(node.get("agent_pid"), str(Path(node["dir"]) / "agent.json")):
            done.append(f"killed agent {node['agent_pid']} of {node['name']}")
        etcd = _etcd_pid(node)
        if etcd is not None and kill_pid(etcd, node["etcd_config"]):
            done.append(f"killed etcd {etcd} of {node['name']}")
    network = state.get("network") or {}
    if network.get("mode") == "netns":
        from lab.netns import remove_by_name

        done.extend(remove_by_name(network))
    if root.exists():
        shutil.rmtree(root)
        done.append(f"removed {root}")
    return done
