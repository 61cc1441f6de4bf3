"""Backups' figures (README "Backups and recovery"), on real etcd and a real Swift.

For each database size (10 MB; the full run also 200 MB), on a three-member etcd cluster on
addresses of this machine and a Swift (lab/swift.py) behind the lab's Keystone, with the
agent's own code (agent/backup.py, agent/swift.py):

- **snapshot**: Maintenance "Snapshot" of a follower into a file, etcd's hash checked;
- **upload**: to Swift (its MD5 as the ETag, a static large object over `segment_bytes`),
  then a HEAD that Swift holds it;
- **restore**: `agent.restore.restore_here`, what `python -m agent restore` runs, on a
  node of its own: the snapshot downloaded and its sha256 checked, `etcdutl snapshot
  restore`, etcd started on it until a linearizable read goes through: the time one node
  takes to serve the data again (the recovery time before the others join);
- **write stalls**: the longest put of a writer (one put every 20 ms) while the snapshot is
  taken, and while each member is defragmented (the followers, then the leader), against
  the longest in a quiet stretch of the same run before them.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.backup import Backups
from agent.cloud_openstack import OpenStackGroup
from agent.etcd import EtcdClient, EtcdError
from agent.etcd_server import SubprocessEtcd, client_url, etcd_config, peer_url, write_config
from agent.restore import restore_here
from agent.settings import AgentSettings, BackupSettings, EtcdSettings, OpenStackCloud
from agent.snapshot import Member as EtcdMember
from agent.snapshot import NodeIdentity
from agent.swift import SwiftStore
from bench.rows import Row, check, figure
from lab.cloud.heat import Member, Policy
from lab.cloud.openstack import SCALE_DOWN, SCALE_UP, AddressPool, LabCloud
from lab.cluster import pick_prefix
from lab.events import EventLog
from lab.swift import SwiftServer, start_beside

SECTION = "backups (snapshot to Swift, restore, defragmentation)"
CONTAINER = "bench-etcd-backups"
CLIENT_PORT, PEER_PORT = 22379, 22380
VALUE_BYTES = 48 * 1024
"""Random bytes per key (64 KiB once base64'd): a db that compresses nothing."""


class _NoMachines:
    """The cloud's hypervisor: the bench boots no servers through it."""

    def boot(self, member: Member) -> None: ...

    def delete(self, member: Member) -> None: ...

    def reboot(self, member: Member, kind: str) -> None: ...


@dataclass
class _Writer:
    """One small put every 20 ms; each put's start and duration."""

    client: EtcdClient
    puts: list[tuple[float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                self.client.put("/bench/writer", str(n))
            except EtcdError:
                pass  # counted by its duration: a put that failed took that long to fail
            self.puts.append((start, time.monotonic() - start))
            n += 1
            self.stop.wait(0.02)

    def longest(self, since: float, until: float) -> float:
        """The longest put that overlapped [since, until], in seconds, once the writer has
        started one after `until` (a put still hanging at `until` is counted whole)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(s > until for s, _ in list(self.puts)):
            time.sleep(0.01)
        return max(
            (d for s, d in list(self.puts) if s <= until and s + d >= since), default=float("nan")
        )


@dataclass
class _Cluster:
    root: Path
    binary: str
    prefix: str
    services: list[SubprocessEtcd] = field(default_factory=list)

    def ip(self, n: int) -> str:
        return f"{self.prefix}.{10 + n}"

    def start(self, size: int = 3) -> EtcdClient:
        names = [f"b{n}" for n in range(size)]
        initial = {
            name: peer_url(self.ip(n), self.settings_of(name)) for n, name in enumerate(names)
        }
        for n, name in enumerate(names):
            config = etcd_config(
                name=name,
                ip=self.ip(n),
                settings=self.settings_of(name),
                initial_cluster=initial,
                state="new",
            )
            path = self.root / name / "etcd.yaml"
            write_config(path, config)
            service = SubprocessEtcd(self.binary, stop_timeout=5)
            service.start(path)
            self.services.append(service)
        urls = [client_url(self.ip(n), self.settings_of(name)) for n, name in enumerate(names)]
        client = EtcdClient(urls, timeout=10.0)
        _wait(lambda: all(client.url_healthy(u) for u in urls), 60, "the bench's etcd cluster")
        return client

    def settings_of(self, name: str) -> EtcdSettings:
        """A member's etcd settings (every member on the same ports of its own address)."""
        return EtcdSettings(
            client_port=CLIENT_PORT,
            peer_port=PEER_PORT,
            data_dir=str(self.root / name / "data"),
            binary=self.binary,
            service="subprocess",
            cluster_token="bench-backup",
            quota_backend_bytes=4 * 2**30,
        )

    def stop(self) -> None:
        for service in self.services:
            service.stop()


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except EtcdError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"bench backups: {what} not ready in {timeout:.0f} s")


def _fill(client: EtcdClient, url: str, size: int) -> tuple[int, int]:
    """Random values until the member's db is `size` bytes; (the db size, keys written)."""
    n = 0
    while True:
        for _ in range(16):
            client.put(f"/bench/fill/{n:08d}", base64.b64encode(os.urandom(VALUE_BYTES)).decode())
            n += 1
        db = int(client.status(url)["dbSize"])
        if db >= size:
            return db, n


def bench_backups(root: Path, binary: str, sizes: tuple[int, ...]) -> list[Row]:
    """One cluster and one Swift per size; the rows of every size (etcdutl: beside the
    etcd binary, agent.backup.etcdutl_for)."""
    rows: list[Row] = []
    for size in sizes:
        rows += _one_size(root / f"{size // 10**6}MB", binary, size)
    return rows


def _one_size(root: Path, binary: str, size: int) -> list[Row]:
    label = f"{size / 10**6:.0f} MB"
    prefix = pick_prefix((CLIENT_PORT, PEER_PORT))
    cloud = LabCloud(
        min_size=1,
        max_size=1,
        policies={SCALE_UP: Policy(SCALE_UP, +1, 0.0), SCALE_DOWN: Policy(SCALE_DOWN, -1, 0.0)},
        hypervisor=_NoMachines(),
        addresses=AddressPool(prefix, first=200),
        events=EventLog(),
        stack_name="bench",
        background=False,
    )
    cloud.serve(f"{prefix}.1")
    swift: SwiftServer | None = None
    cluster = _Cluster(root, binary, prefix)
    writer: _Writer | None = None
    restored: SubprocessEtcd | None = None
    try:
        started = start_beside(
            cloud.keystone, cloud.auth_url, root / "swift", f"{prefix}.1", CONTAINER, "bench"
        )
        swift, credential = started.server, started.credential
        cloud_settings = OpenStackCloud(
            auth_url=cloud.auth_url,
            application_credential_id=credential.id,
            application_credential_secret=credential.secret,
            stack_id="bench/x",
        )
        group = OpenStackGroup(cloud_settings, timeout=30)
        store = SwiftStore(group, CONTAINER, timeout=300)
        settings = BackupSettings(kind="swift", container=CONTAINER)
        backups = Backups(settings, store, root / "work", etcd_binary=binary)
        client = cluster.start()
        members = client.members(check_health=True)
        leader = next(m for m in members if m.is_leader)
        followers = sorted((m for m in members if not m.is_leader), key=lambda m: m.name)
        db, written = _fill(client, leader.client_urls[0], size)
        writer = _Writer(EtcdClient(client.endpoints, timeout=10.0))
        threading.Thread(target=writer.run, daemon=True).start()
        quiet_from = time.monotonic()
        time.sleep(3.0)
        quiet = writer.longest(quiet_from, time.monotonic())

        path = root / "snapshot.db"
        t0 = time.monotonic()
        sha256, revision = backups.snapshot(client, followers[0], path)
        t1 = time.monotonic()
        during_snapshot = writer.longest(t0, t1)
        name = backups.upload(path, sha256, revision, followers[0].name, time.time())
        t2 = time.monotonic()

        defrag: list[tuple[EtcdMember, float, float]] = []
        for member in [*followers, leader]:
            start = time.monotonic()
            client.defragment(member.client_urls[0], 600)
            end = time.monotonic()
            defrag.append((member, end - start, writer.longest(start, end)))
        writer.stop.set()

        # what an operator runs (agent/restore.py), on a node of its own
        ip = cluster.ip(9)
        node = AgentSettings.model_validate(
            {
                "cluster_name": "bench",
                "etcd": cluster.settings_of("r").model_dump(),
                "backup": settings.model_dump(),
                "cloud": cloud_settings.model_dump(context={"reveal_secrets": True}),
                "state_dir": str(root / "restored" / "state"),
            }
        )
        restored = SubprocessEtcd(binary, stop_timeout=5)
        own = client_url(ip, node.etcd)
        t3 = time.monotonic()
        restore_here(
            node,
            me=NodeIdentity(id="r", name="r", ip=ip),
            group_endpoints=[own],
            store=store,
            service=restored,
            name=name,
            start_timeout=300,
        )
        t4 = time.monotonic()
        probe = EtcdClient([own], timeout=5.0)
        keys = len(probe.get_prefix("/bench/fill/"))
        probe.close()
    finally:
        if writer is not None:
            writer.stop.set()
        # every one stopped, whatever another's stop raised (Swift's servers run in
        # sessions of their own: nothing else would stop them)
        stops = (restored.stop if restored else None, cluster.stop, swift and swift.stop)
        for stop in (*stops, cloud.stop):
            if stop is None:
                continue
            try:
                stop()
            except Exception as error:  # the next ones still stop
                print(f"  .. bench backups: stopping: {error}", flush=True)
    note = f"db {db / 2**20:.0f} MiB, {written} keys of {VALUE_BYTES // 1024} KiB random bytes"
    rows = [
        figure(SECTION, f"{label}: snapshot of a follower, hash checked", t1 - t0, "s", note),
        figure(SECTION, f"{label}: upload to Swift, verified", t2 - t1, "s"),
        figure(
            SECTION,
            f"{label}: restore (download, check, etcdutl, etcd serving)",
            t4 - t3,
            "s",
            "one node serving the data again; the others join as replacements do",
        ),
        check(
            SECTION,
            f"{label}: keys in the restored member, of those written",
            keys,
            "keys",
            "==",
            written,
        ),
        figure(SECTION, f"{label}: longest write, quiet baseline", quiet, "s"),
        figure(SECTION, f"{label}: longest write during the snapshot", during_snapshot, "s"),
    ]
    for number, (member, took, longest) in enumerate(defrag, start=1):
        role = "the leader" if member.is_leader else f"follower {number}"
        rows.append(
            figure(
                SECTION,
                f"{label}: longest write while {role} is defragmented",
                longest,
                "s",
                f"{member.name}'s defragmentation took {took:.2f} s",
            )
        )
    shutil.rmtree(root, ignore_errors=True)
    return rows
