"""`python -m agent status`: every member (its health, its db file and how much of it is
free), who holds the kill lock, the alarms raised (NOSPACE) and the last good snapshot in
Swift with its age, for an operator."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Any

from agent.backup import last_backup
from agent.decide import KILL_LOCK
from agent.etcd import EtcdClient, EtcdError
from agent.settings import AgentSettings
from agent.upkeep import db_statuses, mib

LOCK_ROOT = "/autoscale-etcd/"
ELECTION_WAIT = 5.0
"""s: how long `status` asks again while members answer but are unavailable ("leader
changed", "no leader": right after the leader died, when an operator looks first)."""


def cluster_status(
    client: EtcdClient, cluster: str | None, now: float | None = None
) -> dict[str, Any]:
    """Members with health/leader/learner and their latest published metric reading (with
    its age), and kill-lock holders (one cluster, or all)."""
    members = client.members(check_health=True)
    now = time.time() if now is None else now
    readings: dict[str, Any] = {}
    backup: dict[str, Any] | None = None
    if cluster is not None:
        with EtcdClient(
            client.endpoints, timeout=client.timeout, tls=client.tls, prefix=f"{LOCK_ROOT}{cluster}"
        ) as scoped:
            locks = {cluster: scoped.lock_holder(KILL_LOCK)}
            readings = scoped.readings()
            last = last_backup(scoped)
            if last is not None:
                backup = {**asdict(last), "age": round(now - last.time, 1)}
    else:
        suffix = f"/locks/{KILL_LOCK}"
        locks = {
            key[len(LOCK_ROOT) : -len(suffix)]: value
            for key, value in client.get_prefix(LOCK_ROOT).items()
            if key.endswith(suffix)
        }
    dbs = {
        d.member_id: {"size": d.size, "in_use": d.in_use, "free_share": round(d.free_share, 3)}
        for d in db_statuses(client, members)
    }
    return {
        "cluster_id": client.cluster_id(),
        "alarms": [{"member": f"{m:x}", "alarm": a} for m, a in client.alarms()],
        "members": [
            {
                "name": m.name or "(unstarted)",
                "id": f"{m.id:x}",
                "client_url": ",".join(m.client_urls),
                "healthy": bool(m.healthy),
                "leader": m.is_leader,
                "learner": m.is_learner,
                "db": dbs.get(m.id),
                "reading": (
                    None
                    if m.name not in readings
                    else {
                        "value": readings[m.name].value,
                        "age": round(now - readings[m.name].time, 1),
                    }
                ),
            }
            for m in members
        ],
        "kill_lock": locks,
        "last_backup": backup,
    }


def render(status: dict[str, Any]) -> str:
    rows = [
        ("NAME", "ID", "CLIENT URL", "HEALTHY", "LEADER", "LEARNER", "READING (AGE)", "DB (FREE)")
    ]
    for m in status["members"]:
        reading = m.get("reading")
        db = m.get("db")
        rows.append(
            (
                m["name"],
                m["id"],
                m["client_url"],
                "yes" if m["healthy"] else "NO",
                "*" if m["leader"] else "",
                "learner" if m["learner"] else "",
                f"{reading['value']:g} ({reading['age']:g}s)" if reading else "-",
                _db(db) if db else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    locks = status["kill_lock"]
    held = ", ".join(f"{c}: {h}" for c, h in locks.items() if h) or "free"
    lines.append(f"kill lock: {held}")
    alarms = status.get("alarms") or []
    raised = ", ".join(f"{a['alarm']} on {a['member']}" for a in alarms) or "none"
    lines.append(f"alarms: {raised}")
    backup = status.get("last_backup")
    if backup:
        lines.append(
            f"last backup: {backup['object']} (revision {backup['revision']},"
            f" {mib(backup['size'])}), {backup['age']:g}s old"
        )
    else:
        lines.append("last backup: none")
    return "\n".join(lines)


def _db(db: dict[str, Any]) -> str:
    """The member's db file and the share of it that is free pages (agent/upkeep.py)."""
    return f"{mib(db['size'])} ({100 * db['free_share']:.0f}%)"


def status_command(
    *,
    endpoints: list[str] | None,
    settings: AgentSettings | None,
    cluster: str | None,
    as_json: bool,
) -> int:
    if endpoints is None:
        assert settings is not None
        from agent.cloud import make_cloud
        from agent.etcd_server import client_url

        try:
            nodes = make_cloud(settings).group_members()
        except Exception as error:  # the cloud is only a way to find endpoints here
            print(f"cannot list the group's servers: {error}", file=sys.stderr)
            return 1
        endpoints = [client_url(n.ip, settings.etcd) for n in nodes if n.ip]
        cluster = cluster or settings.cluster_name
    tls = settings.etcd.tls if settings is not None else None
    deadline = time.monotonic() + ELECTION_WAIT
    with EtcdClient(endpoints, tls=tls) as client:
        while True:
            try:
                status = cluster_status(client, cluster)
                break
            except EtcdError as error:
                if not error.unavailable:  # nobody answered, or etcd refused for good
                    print(f"no etcd member answered: {error}", file=sys.stderr)
                    return 1
                if time.monotonic() >= deadline:
                    print(
                        f"the members answer but are unavailable (electing a leader?), still"
                        f" after {ELECTION_WAIT:g}s: {error}",
                        file=sys.stderr,
                    )
                    return 1
                time.sleep(0.3)
    print(json.dumps(status, indent=2) if as_json else render(status))
    return 0
