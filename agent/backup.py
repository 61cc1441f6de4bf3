"""Snapshots of etcd to Swift, and a snapshot back into a data dir.

- **Who.** One agent at a time: the one whose member is the first healthy follower by
  name (the leader only when it is alone), so the leader does not also stream the db.
  It holds the etcd lock `backup` (a lease of `backup.timeout`) while it works; a
  change of leader or of membership meanwhile is harmless, the lock keeps it single.
- **When.** Once the last good snapshot (the etcd key `backup/last`, written after the
  upload was verified) is `backup.period` old, or when there is none.
- **How.** Maintenance "Snapshot" from the agent's own member, streamed to a file under
  the state dir; etcd ends the stream with the sha256 of the db, which is checked
  (and kept at the end of the file, where `etcdutl snapshot restore` checks it again);
  `etcdutl snapshot status` gives the revision where etcdutl is found, else the revision
  the member answered just before. Then the upload (agent/swift.py: its MD5 as the ETag,
  a static large object over `segment_bytes`), a HEAD that Swift holds that ETag and
  size, `backup/last`, and the retention: the newest `backup.keep` snapshots stay.
- **Names** `snapshots/<UTC time>-r<revision, 16 digits>-<member>.db`: time, then
  revision, sort; each object carries `X-Object-Meta-Sha256` (of the whole file) and
  `X-Object-Meta-Revision`.
- **Restore** (`python -m agent restore`): the object downloaded, its sha256 checked
  against its metadata, then etcd's documented restore (`etcdutl snapshot restore`,
  https://etcd.io/docs/v3.5/op-guide/recovery/) into a new data dir with the new
  cluster's membership.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.etcd import EtcdClient, EtcdError
from agent.settings import BackupSettings
from agent.snapshot import Member
from agent.swift import StoredObject, SwiftError, SwiftStore

log = logging.getLogger(__name__)

BACKUP_LOCK = "backup"
LAST_KEY = "backup/last"
PREFIX = "snapshots/"
SEGMENTS = "segments/"
NAME = re.compile(r"snapshots/\d{8}T\d{6}Z-r\d{16}-[^/]+\.db")
HASH_BYTES = 32
SPACE_MARGIN = 256 * 2**20
"""Free space a snapshot must leave on the disk it is written to (etcd's, too)."""


def _listed_time(text: str) -> float:
    """Swift's listing `last_modified` (ISO 8601, UTC, no zone); 0 when unreadable."""
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return 0.0


class BackupError(Exception):
    """A snapshot that could not be taken, checked, stored or restored; says which step."""


@dataclass(frozen=True)
class BackupRecord:
    object: str
    time: float
    revision: int
    size: int
    sha256: str
    member: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BackupRecord | None:
        try:
            data = json.loads(text)
            return cls(
                object=str(data["object"]),
                time=float(data["time"]),
                revision=int(data["revision"]),
                size=int(data["size"]),
                sha256=str(data["sha256"]),
                member=str(data["member"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def object_name(moment: float, revision: int, member: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(moment))
    return f"{PREFIX}{stamp}-r{revision:016d}-{member}.db"


def servers_of(headers: dict[str, str]) -> list[str] | None:
    """The cluster's servers a snapshot's metadata names (`X-Object-Meta-Server-<n>`; HEAD
    headers, lower case); None when it names none (an older snapshot)."""
    found = [v for k, v in headers.items() if re.fullmatch(r"x-object-meta-server-\d+", k)]
    return sorted(found) or None


def backup_taker(voters: list[Member]) -> Member | None:
    """The member whose agent takes the snapshots: the first healthy follower by name, the
    leader when it is the only healthy voter."""
    healthy = sorted((m for m in voters if m.healthy), key=lambda m: m.name)
    followers = [m for m in healthy if not m.is_leader]
    return (followers or healthy or [None])[0]


def last_backup(client: EtcdClient) -> BackupRecord | None:
    text = client.get(client.key(LAST_KEY))
    return BackupRecord.from_json(text) if text else None


def etcdutl_for(etcd_binary: str) -> str | None:
    """etcdutl beside the etcd binary, else on PATH (etcd 3.5 ships it; 3.4 has none)."""
    found = shutil.which(etcd_binary)
    if found:
        beside = Path(found).resolve().parent / "etcdutl"
        if beside.exists():
            return str(beside)
    return shutil.which("etcdutl")


def check_snapshot(path: Path) -> str:
    """The sha256 etcd appended matches the db before it; returns the whole file's sha256
    (what the object's metadata carries)."""
    size = path.stat().st_size
    if size <= HASH_BYTES:
        raise BackupError(f"snapshot {path.name}: {size} B, not an etcd db")
    db = hashlib.sha256()
    whole = hashlib.sha256()
    with path.open("rb") as file:
        left = size - HASH_BYTES
        while left > 0:
            data = file.read(min(1 << 20, left))
            if not data:
                break
            db.update(data)
            whole.update(data)
            left -= len(data)
        trailer = file.read(HASH_BYTES)
    whole.update(trailer)
    if db.digest() != trailer:
        raise BackupError(
            f"snapshot {path.name}: the sha256 etcd appended does not match the db"
            " (a stream cut short, or a file that is not an etcd snapshot)"
        )
    return whole.hexdigest()


def snapshot_revision(etcdutl: str | None, path: Path) -> int | None:
    """`etcdutl snapshot status`'s revision, None without etcdutl."""
    if etcdutl is None:
        return None
    try:
        done = subprocess.run(
            [etcdutl, "snapshot", "status", str(path), "--write-out=json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BackupError(f"etcdutl snapshot status: {error}") from None
    if done.returncode != 0:
        raise BackupError(f"etcdutl snapshot status: {done.stderr.strip()[-300:]}")
    try:
        return int(json.loads(done.stdout)["revision"])
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"etcdutl snapshot status: {done.stdout[:200]!r}") from None


def restore_data_dir(
    snapshot: Path,
    data_dir: Path,
    *,
    name: str,
    peer_url: str,
    cluster_token: str,
    etcd_binary: str = "etcd",
) -> None:
    """etcd's documented restore into `data_dir` (which must not exist): a new cluster of
    one member, `name` at `peer_url`, with the snapshot's keys; the others join it. etcd
    3.5's `etcdutl snapshot restore`, else etcdctl's (3.4). The appended sha256 is checked
    by the tool itself."""
    if data_dir.exists():
        raise BackupError(f"restore: {data_dir} exists; move it aside first")
    etcdutl = etcdutl_for(etcd_binary)
    tool = [etcdutl] if etcdutl else [shutil.which("etcdctl") or "etcdctl"]
    command = [
        *tool,
        "snapshot",
        "restore",
        str(snapshot),
        "--name",
        name,
        "--initial-cluster",
        f"{name}={peer_url}",
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster-token",
        cluster_token,
        "--data-dir",
        str(data_dir),
    ]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BackupError(f"restore: {' '.join(command[:3])}: {error}") from None
    if done.returncode != 0:
        raise BackupError(f"restore: {' '.join(command[:3])}: {done.stderr.strip()[-400:]}")


@dataclass
class Backups:
    settings: BackupSettings
    store: SwiftStore
    workdir: Path
    etcd_binary: str = "etcd"
    read_timeout: float = 60.0

    def take(
        self, client: EtcdClient, member: Member, now: float, servers: Sequence[str] = ()
    ) -> BackupRecord:
        """A snapshot of `member` to Swift, verified there, recorded in etcd; then the
        retention. `servers`: the ids of the cluster's members' servers (the object's
        metadata: agent/disaster.py asks the cloud whether they are gone). Raises
        BackupError or SwiftError (the step, the cause)."""
        path = self.workdir / "snapshot.db"
        # the `backup` lock's lease is timeout + 60 s: past the timeout the work stops, so no
        # second snapshot overlaps it and the retention's orphan cutoff never meets a live
        # upload's segments (one segment's PUT may run past it by its own length)
        deadline = time.monotonic() + self.settings.timeout
        try:
            sha256, revision = self.snapshot(client, member, path)
            size = path.stat().st_size
            if time.monotonic() > deadline:
                raise BackupError(
                    f"snapshot of {member.name} took longer than backup.timeout"
                    f" ({self.settings.timeout:g} s): not uploaded"
                )
            name = self.upload(path, sha256, revision, member.name, now, servers, deadline)
        finally:
            path.unlink(missing_ok=True)
        record = BackupRecord(name, now, revision, size, sha256, member.name)
        client.put(client.key(LAST_KEY), record.to_json())
        self.prune(keep_name=name, now=time.time())
        return record

    def snapshot(self, client: EtcdClient, member: Member, path: Path) -> tuple[str, int]:
        """`member`'s snapshot into `path` (mode 0600 in a 0700 dir: the whole keyspace),
        etcd's hash checked; (the file's sha256, its revision). Refused, before a byte is
        written, when it would leave under SPACE_MARGIN beside etcd's data."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        path.unlink(missing_ok=True)
        url = member.client_urls[0]
        try:
            status = client.status(url)
            need = int(status.get("dbSize", 0)) + SPACE_MARGIN
            free = shutil.disk_usage(path.parent).free
            if free - need < SPACE_MARGIN:
                raise BackupError(
                    f"snapshot of {member.name}: {free // 2**20} MiB free in {path.parent}, a"
                    f" {need // 2**20} MiB snapshot would leave less than"
                    f" {SPACE_MARGIN // 2**20} MiB beside etcd's data"
                )
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                client.snapshot(url, out, self.read_timeout)
        except EtcdError as error:
            raise BackupError(f"snapshot of {member.name}: {error}") from None
        sha256 = check_snapshot(path)
        before = int(status.get("header", {}).get("revision", 0))
        return sha256, snapshot_revision(etcdutl_for(self.etcd_binary), path) or before

    def upload(
        self,
        path: Path,
        sha256: str,
        revision: int,
        member: str,
        now: float,
        servers: Sequence[str] = (),
        deadline: float | None = None,
    ) -> str:
        """The snapshot file to Swift under its name, verified by a HEAD; the name."""
        name = object_name(now, revision, member)
        meta = {"Sha256": sha256, "Revision": str(revision)}
        # one key per server: Swift allows 256 bytes per value, 90 keys per object
        meta.update({f"Server-{n}": server for n, server in enumerate(sorted(servers), 1)})
        etag = self.store.upload(
            name,
            path,
            meta=meta,
            segment_bytes=self.settings.segment_bytes,
            deadline=deadline,
        )
        self.store.verify_object(name, etag, path.stat().st_size)
        return name

    def snapshots(self) -> list[StoredObject]:
        """The container's snapshots (names as `object_name` makes them; anything else in
        the container is not ours), oldest first."""
        return sorted(
            (o for o in self.store.list(PREFIX) if NAME.fullmatch(o.name)), key=lambda o: o.name
        )

    def prune(self, keep_name: str | None = None, now: float | None = None) -> list[str]:
        """Deletes all but the newest `keep` snapshots (with their segments), never
        `keep_name` (the one just recorded); then segments no manifest names, older than
        a backup's lease (an upload cut short: a dead agent, an upgrade). The names."""
        found = self.snapshots()
        old = [o for o in found[: max(0, len(found) - self.settings.keep)] if o.name != keep_name]
        for stored in old:
            try:
                self.store.delete(stored.name, large=stored.large)
            except SwiftError as error:
                log.warning("backup retention: %s", error)
        gone = [o.name for o in old]
        if now is None:
            return gone
        kept = {o.name for o in found} - set(gone)
        cutoff = now - self.settings.timeout - 120
        for segment in self.store.list(SEGMENTS):
            manifest = segment.name[len(SEGMENTS) :].rsplit("/", 1)[0]
            if manifest in kept or _listed_time(segment.last_modified) > cutoff:
                continue
            try:
                self.store.delete(segment.name)
                gone.append(segment.name)
            except SwiftError as error:
                log.warning("backup retention: %s", error)
        return gone

    def fetch(self, name: str | None, path: Path) -> StoredObject:
        """Snapshot `name` (None: the newest) into `path`, its sha256 checked against the
        object's metadata."""
        found = self.snapshots()
        if not found:
            raise BackupError(f"no snapshot in container {self.store.container!r}")
        chosen = found[-1] if name is None else next((o for o in found if o.name == name), None)
        if chosen is None:
            raise BackupError(
                f"no snapshot {name!r} in container {self.store.container!r}; the newest is"
                f" {found[-1].name}"
            )
        self.store.download(chosen.name, path)
        wanted = self.store.head(chosen.name).get("x-object-meta-sha256", "")
        got = check_snapshot(path)
        if wanted and got != wanted:
            raise BackupError(f"snapshot {chosen.name}: sha256 {got} downloaded, {wanted} uploaded")
        return chosen
