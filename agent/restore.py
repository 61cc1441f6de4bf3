"""`python -m agent restore`: a cluster whose majority is gone for good, made again from
its newest snapshot in Swift (or a named one).

etcd's own procedure (https://etcd.io/docs/v3.5/op-guide/recovery/): a snapshot restored
into a new data dir makes a new cluster (a new cluster id) holding the snapshot's keys.
Here one node restores and the others join it as new members, the way a replacement
joins:

1. On every node of the group: stop the agent (`systemctl stop autoscale-agent`).
2. On one node: `python -m agent --config F restore --latest` (or `--object NAME`). It
   refuses while any server of the group answers as a cluster with quorum (restoring then
   would make a second cluster beside a live one; `--force` overrides, for a cluster
   known to be wrong). It downloads the snapshot, checks its sha256 against the object's
   metadata and etcd's own hash, moves this node's data dir aside (never deleted:
   `<data dir>.before-restore-<UTC time>`), runs `etcdutl snapshot restore` with this
   node as the only member, starts etcd on it and records the member in the agent's
   state. Then start its agent: it resumes on the restored member.
3. On each other node: `python -m agent --config F restore --join`: its data dir is moved
   aside the same way and its state reset, so its agent joins the restored cluster as a
   new member (the old data would otherwise bring back the lost cluster's member). Start
   its agent.

Servers the group replaced have no old data: their agents join without step 3.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from agent.backup import BackupError, Backups, restore_data_dir
from agent.etcd import EtcdClient, EtcdError
from agent.etcd_server import EtcdService, client_url, etcd_config, peer_url, write_config
from agent.settings import AgentSettings
from agent.snapshot import NodeIdentity
from agent.state import AgentState
from agent.swift import SwiftError, SwiftStore

log = logging.getLogger(__name__)


class RestoreError(Exception):
    """The restore did not happen; nothing of this node's data was lost (says why)."""


def config_path(settings: AgentSettings) -> Path:
    if settings.etcd.service == "systemd":
        from agent.etcd_server import SYSTEMD_CONFIG

        return SYSTEMD_CONFIG
    return Path(settings.state_dir) / "etcd.yaml"


def live_cluster(settings: AgentSettings, endpoints: list[str], timeout: float = 3.0) -> str | None:
    """Where a cluster with quorum answers among `endpoints` (a linearizable read), or None."""
    for endpoint in endpoints:
        client = EtcdClient([endpoint], timeout=timeout, tls=settings.etcd.tls)
        try:
            if client.url_healthy(endpoint):
                return endpoint
        except EtcdError:
            continue
        finally:
            client.close()
    return None


def set_aside(data_dir: Path, now: float) -> Path | None:
    """Moves the data dir out of etcd's way (kept); where it went, None if there was none."""
    if not data_dir.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    aside = data_dir.with_name(f"{data_dir.name}.before-restore-{stamp}")
    data_dir.rename(aside)
    return aside


def restore_here(
    settings: AgentSettings,
    *,
    me: NodeIdentity,
    group_endpoints: list[str],
    store: SwiftStore,
    service: EtcdService,
    name: str | None = None,
    force: bool = False,
    clock: Any = time.time,
    start_timeout: float = 60.0,
) -> str:
    """Step 2 above; returns what was done. Raises RestoreError."""
    others = [u for u in group_endpoints if u != client_url(me.ip, settings.etcd)]
    answering = live_cluster(settings, others)
    if answering is not None and not force:
        raise RestoreError(
            f"a cluster with quorum answers at {answering}: restoring would make a second"
            " cluster beside it (stop its members first, or --force)"
        )
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "restore.db"
    backups = Backups(
        settings.backup, store, state_dir / "backup", etcd_binary=settings.etcd.binary
    )
    try:
        chosen = backups.fetch(name, path)
    except (BackupError, SwiftError) as error:
        raise RestoreError(f"fetching the snapshot: {error}") from None
    if service.is_running():
        service.stop()
    data_dir = Path(settings.etcd.data_dir)
    aside = set_aside(data_dir, clock())
    own_peer = peer_url(me.ip, settings.etcd)
    try:
        restore_data_dir(
            path,
            data_dir,
            name=me.name,
            peer_url=own_peer,
            cluster_token=settings.etcd.cluster_token,
            etcd_binary=settings.etcd.binary,
        )
    except BackupError as error:
        raise RestoreError(f"{error}; this node's data is in {aside}") from None
    config = etcd_config(
        name=me.name,
        ip=me.ip,
        settings=settings.etcd,
        initial_cluster={me.name: own_peer},
        state="existing",
    )
    target = config_path(settings)
    write_config(target, config)
    service.start(target)
    own = client_url(me.ip, settings.etcd)
    client = EtcdClient([own], timeout=3.0, tls=settings.etcd.tls)
    deadline = time.monotonic() + start_timeout
    members = []
    while time.monotonic() < deadline:
        try:
            if client.url_healthy(own):
                members = client.members(check_health=False)
                break
        except EtcdError:
            pass
        time.sleep(0.5)
    if not members:
        raise RestoreError(
            f"etcd did not answer on the restored data within {start_timeout:.0f} s:"
            f" {service.recent_log()[-600:]}"
        )
    member = members[0]
    # the snapshot holds the lost cluster's leases (its agents' locks, their readings):
    # etcd starts their TTLs again on the new leader, and a lock of a server that is gone
    # would hold the joins back for its whole TTL. Every lease goes, with its keys.
    stale = client.leases()
    for lease in stale:
        client.revoke_lease(lease)
    state = AgentState.load(state_dir)
    state.phase = "member"
    state.member_id = member.id
    state.failmarker = 0
    state.configured = False
    state.unhealthy_since = {}
    state.leave_via = None
    state.save(state_dir)
    path.unlink(missing_ok=True)
    cluster = client.cluster_id()
    client.close()
    return (
        f"restored {chosen.name} into {data_dir}: a new cluster {cluster}, member"
        f" {member.id:x} ({me.name}), {len(stale)} lease(s) of the lost cluster revoked;"
        f" the old data dir is {aside or '(there was none)'};"
        " start this node's agent, then run `restore --join` on every other node that"
        " holds old data"
    )


def join_restored(settings: AgentSettings, *, service: EtcdService, clock: Any = time.time) -> str:
    """Step 3 above: this node's old member data set aside, its state reset."""
    if service.is_running():
        service.stop()
    aside = set_aside(Path(settings.etcd.data_dir), clock())
    state_dir = Path(settings.state_dir)
    AgentState().save(state_dir)
    config = config_path(settings)
    if config.exists():
        config.unlink()
    return (
        f"data dir set aside ({aside or 'there was none'}), state reset: this node's agent"
        " joins the restored cluster as a new member"
    )
