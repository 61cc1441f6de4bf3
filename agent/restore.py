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
   metadata and etcd's own hash, runs `etcdutl snapshot restore` with this node as the
   only member into a staging dir, and only then stops etcd, moves the old member dir
   aside (never deleted: `<data dir>/member.before-restore-<UTC time>`), puts the restored
   one in its place (owned as the data dir is: the unit runs etcd as its own user),
   starts etcd on it and records the member in the agent's state. Then start its agent:
   it resumes on the restored member.
3. On each other node: `python -m agent --config F restore --join`: its member dir is
   moved aside the same way and its state reset, so its agent joins the restored cluster as a
   new member (the old data would otherwise bring back the lost cluster's member). Start
   its agent.

Servers the group replaced have no old data: their agents join without step 3.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from agent.backup import BackupError, Backups, restore_data_dir
from agent.etcd import EtcdClient, EtcdError
from agent.etcd_server import (
    EtcdService,
    client_url,
    config_path_for,
    etcd_config,
    peer_url,
    write_config,
)
from agent.settings import AgentSettings
from agent.snapshot import NodeIdentity
from agent.state import AgentState
from agent.swift import SwiftError, SwiftStore
from agent.upgrade import running_bundle

log = logging.getLogger(__name__)


class RestoreError(Exception):
    """The restore did not happen; nothing of this node's data was lost (says why)."""


def agent_command(settings_path: str | Path | None) -> str:
    """This agent as the operator runs it by hand: the bundle it runs from (or the source
    package), with its settings file; what the logged restore commands start with."""
    bundle = running_bundle()
    program = f"{sys.executable} {bundle}" if bundle else f"{sys.executable} -m agent"
    return f"{program} --config {settings_path or '/etc/autoscale-etcd/agent.json'}"


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


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def set_aside(data_dir: Path, now: float) -> Path | None:
    """etcd's member dir moved out of its way, inside the data dir (which stays, with its
    owner and mode: it may be a mounted volume, and the etcd unit's ReadWritePaths names
    it); where it went, None if there was none. Nothing is deleted."""
    member = data_dir / "member"
    if not member.exists():
        return None
    aside = data_dir / f"member.before-restore-{_stamp(now)}"
    member.rename(aside)
    return aside


def _own_like(path: Path, model: Path) -> None:
    """`path` and everything under it owned as `model` is (the etcd unit runs etcd as the
    user who owns its data dir; a restore runs as root)."""
    found = model.stat()
    if os.geteuid() != 0:
        return
    for root, dirs, files in os.walk(path):
        for entry in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(entry, found.st_uid, found.st_gid)


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
    """Step 2 above; returns what was done. Raises RestoreError, with this node's data
    where it was unless the sentence says where it went."""
    own = client_url(me.ip, settings.etcd)
    everyone = [own, *(u for u in group_endpoints if u != own)]

    def refuse_a_live_cluster() -> None:
        answering = live_cluster(settings, everyone)
        if answering is not None and not force:
            raise RestoreError(
                f"a cluster with quorum answers at {answering}: restoring would make a"
                " second cluster beside it (stop its members first, or --force)"
            )

    refuse_a_live_cluster()
    state_dir = Path(settings.state_dir)
    work = state_dir / "restore"
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(work, 0o700)  # the snapshot is the whole keyspace
    path = work / "restore.db"
    backups = Backups(settings.backup, store, work, etcd_binary=settings.etcd.binary)
    data_dir = Path(settings.etcd.data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = data_dir / f".restoring-{_stamp(clock())}"
    own_peer = peer_url(me.ip, settings.etcd)
    try:
        chosen = backups.fetch(name, path)
        # etcdutl into a staging dir first: this node's data moves only once it worked
        restore_data_dir(
            path,
            staging,
            name=me.name,
            peer_url=own_peer,
            cluster_token=settings.etcd.cluster_token,
            etcd_binary=settings.etcd.binary,
        )
    except (BackupError, SwiftError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise RestoreError(f"nothing changed on this node: {error}") from None
    finally:
        path.unlink(missing_ok=True)
    refuse_a_live_cluster()  # again, after a download that may have taken long
    was_running = service.is_running()
    if was_running:
        service.stop()
    aside = set_aside(data_dir, clock())
    (staging / "member").rename(data_dir / "member")
    shutil.rmtree(staging, ignore_errors=True)
    _own_like(data_dir / "member", data_dir)
    config = etcd_config(
        name=me.name,
        ip=me.ip,
        settings=settings.etcd,
        initial_cluster={me.name: own_peer},
        state="existing",
    )
    target = config_path_for(settings.etcd, settings.state_dir)
    write_config(target, config)
    service.start(target)
    client = EtcdClient(
        [own], timeout=3.0, tls=settings.etcd.tls, prefix=f"/autoscale-etcd/{settings.cluster_name}"
    )
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
            f"etcd did not answer on the restored data within {start_timeout:.0f} s (the old"
            f" member data is in {aside or '(there was none)'}): {service.recent_log()[-600:]}"
        )
    member = members[0]
    # the agent's state names the restored member before anything else can fail: its agent
    # then resumes on it (a state naming no member would make it join elsewhere)
    state = AgentState.load(state_dir)
    state.phase = "member"
    state.member_id = member.id
    state.failmarker = 0
    state.configured = False
    state.unhealthy_since = {}
    state.leave_via = None
    state.upgrade_lease = None
    state.save(state_dir)
    notes: list[str] = []
    try:
        # the snapshot holds the lost cluster's leases; etcd starts their TTLs again on the
        # new leader, and a lock of a server that is gone would hold the joins back for a
        # whole TTL. The agents' keys' leases go; users' leases (their own locks) are theirs.
        stale = client.leases_under(client.prefix + "/")
        for lease in stale:
            client.revoke_lease(lease)
        notes.append(f"{len(stale)} lease(s) of the lost cluster's agents revoked")
        # an upgrade marker of the lost cluster would hold every rolling upgrade back
        client.delete(client.key("upgrading"))
        cluster = client.cluster_id()
    except EtcdError as error:
        notes.append(f"the lost cluster's locks not cleared ({error}): they end with their TTL")
        cluster = "?"
    finally:
        client.close()
    return (
        f"restored {chosen.name} into {data_dir}: a new cluster {cluster}, member"
        f" {member.id:x} ({me.name}); {'; '.join(notes)}; the old member data is in"
        f" {aside or '(there was none)'}; start this node's agent, then run `restore"
        " --join` on every other node that holds old data"
    )


def join_restored(settings: AgentSettings, *, service: EtcdService, clock: Any = time.time) -> str:
    """Step 3 above: this node's old member data set aside (inside its data dir), its
    state reset."""
    if service.is_running():
        service.stop()
    aside = set_aside(Path(settings.etcd.data_dir), clock())
    state_dir = Path(settings.state_dir)
    AgentState().save(state_dir)
    config = config_path_for(settings.etcd, settings.state_dir)
    if config.exists():
        config.unlink()
    return (
        f"data dir set aside ({aside or 'there was none'}), state reset: this node's agent"
        " joins the restored cluster as a new member"
    )
