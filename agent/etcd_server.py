"""The etcd process on a node: its config file, starting and stopping it, reading why it failed.

etcd reads one `--config-file` (the keys of etcd's `etcd.conf.yml.sample`, the long flag
names without dashes). We write it as JSON, which is YAML too (etcd parses the file with
sigs.k8s.io/yaml), so the agent needs no YAML library on the node.

Two ways to run etcd: `SystemdEtcd` (the node's unit, on a cloud) and `SubprocessEtcd`
(a detached child process, for tests and the lab). Both keep a log the agent can read
back to classify a failed start with `classify_start_failure`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.child import ChildProcess
from agent.files import atomic_write
from agent.settings import EtcdSettings
from agent.systemd import Runner, SystemdUnit, run_command

StartFailure = Literal["already-bootstrapped", "cluster-id-mismatch", "removed", "corrupt", "other"]

SYSTEMD_UNIT = "etcd-autoscale.service"
SYSTEMD_CONFIG = Path("/etc/autoscale-etcd/etcd.yaml")
LOG_FILE = "etcd.log"
PID_FILE = "etcd.pid"


def client_url(ip: str, settings: EtcdSettings) -> str:
    return f"{settings.client_scheme}://{_host(ip)}:{settings.client_port}"


def peer_url(ip: str, settings: EtcdSettings) -> str:
    return f"{settings.peer_scheme}://{_host(ip)}:{settings.peer_port}"


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def etcd_config(
    *,
    name: str,
    ip: str,
    settings: EtcdSettings,
    initial_cluster: Mapping[str, str],
    state: Literal["new", "existing"],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """etcd's config-file keys for member `name` listening on `ip`.

    `initial_cluster` maps member name -> peer URL and must include this member. With
    `state="existing"` the member must have been added (`member add`) before it starts.
    `extra` adds or overrides keys (tuning for tests and the lab).
    """
    if name not in initial_cluster:
        raise ValueError(f"initial_cluster {dict(initial_cluster)} does not include {name!r}")
    if state not in ("new", "existing"):
        raise ValueError(f"state must be 'new' or 'existing', not {state!r}")
    client = client_url(ip, settings)
    peer = peer_url(ip, settings)
    config: dict[str, Any] = {
        "name": name,
        "data-dir": settings.data_dir,
        "listen-client-urls": client,
        "advertise-client-urls": client,
        "listen-peer-urls": peer,
        "initial-advertise-peer-urls": peer,
        "initial-cluster": ",".join(f"{n}={u}" for n, u in initial_cluster.items()),
        "initial-cluster-token": settings.cluster_token,
        "initial-cluster-state": state,
        "heartbeat-interval": settings.heartbeat_ms,
        "election-timeout": settings.election_ms,
        "quota-backend-bytes": settings.quota_backend_bytes,
        # etcd 3.4 turns the HTTP gateway (/v3/...) off when a config file is used
        "enable-grpc-gateway": True,
        # refuse a reconfiguration that would leave the cluster without quorum
        "strict-reconfig-check": True,
        "auto-compaction-mode": "periodic",
        "auto-compaction-retention": "1h",
        "logger": "zap",
        "log-outputs": ["stderr"],
    }
    if settings.tls is not None:
        files = {
            "cert-file": settings.tls.cert_file,
            "key-file": settings.tls.key_file,
            "trusted-ca-file": settings.tls.ca_file,
            "client-cert-auth": True,
            "auto-tls": False,
        }
        if settings.client_scheme == "https":
            config["client-transport-security"] = dict(files)
        if settings.peer_scheme == "https":
            config["peer-transport-security"] = dict(files)
    if extra:
        config.update(extra)
    return config


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Write the config atomically (JSON is valid YAML), mode 0600."""
    atomic_write(path, json.dumps(config, indent=2, sort_keys=True) + "\n", mode=0o600)


def read_config(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def wipe_data_dir(path: Path) -> None:
    """Remove what etcd keeps in its data dir (`member/`, and `proxy/` of old proxies),
    leaving the dir itself (mode 0700): it may be a mounted volume, with `lost+found`."""
    resolved = Path(path).resolve()
    if len(resolved.parts) < 3:
        raise ValueError(f"refusing to wipe {path}: not an etcd data dir")
    for name in ("member", "proxy"):
        target = resolved / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
    resolved.mkdir(mode=0o700, parents=True, exist_ok=True)


# The texts etcd logs (3.4 and 3.5, zap and capnslog wordings) for each failure kind.
_FAILURES: tuple[tuple[StartFailure, re.Pattern[str]], ...] = (
    # etcdserver/server.go (3.4, 3.5): the peers answer 410 Gone with
    # "the member has been permanently removed from the cluster"
    ("removed", re.compile(r"permanently removed from the cluster", re.IGNORECASE)),
    # etcdserver/server.go: `member %s has already been bootstrapped`
    ("already-bootstrapped", re.compile(r"has already been bootstrapped", re.IGNORECASE)),
    # rafthttp: "request sent was ignored due to cluster ID mismatch",
    # "request cluster ID mismatch", errClusterIDMismatch = "cluster ID mismatch"
    ("cluster-id-mismatch", re.compile(r"cluster ID mismatch", re.IGNORECASE)),
)


# The member's own data cannot be read (zap, 3.4 and 3.5), on the line etcd exits with (level
# fatal or panic, or Go's own "panic:"): the bbolt file (mvcc/backend newBackend: "failed to
# open database" with bbolt's "invalid database", "checksum error", "version mismatch",
# "file size too small"; a damaged page later: "invalid freelist page", "page N already
# freed"), the WAL (a CRC mismatch ends in "discovery failed ... crc mismatch";
# etcdserver/storage.go readWAL: "failed to open WAL", "failed to read WAL, cannot be
# repaired", "failed to repair WAL"), or what etcd recovers from them (etcdserver/server.go
# NewServer). Not a warning etcd recovers from (a broken .snap file is renamed and an older
# one used), not the bare word "corrupt" (the start line holds "initial-corrupt-check"), not
# "found data inconsistency with peers" (the peer may be the corrupt one), and not an error
# of the machine rather than the data (permissions, a WAL lock still held, no descriptors,
# a read-only or full file system).
_CORRUPT = re.compile(
    r"failed to open database|crc mismatch|failed to (?:open|read|repair) WAL"
    r"|failed to recover (?:v3 backend|from snapshot|store from backend)"
    r"|invalid freelist page|page \d+ already freed",
    re.IGNORECASE,
)
_EXITS = re.compile(r'"level":"(?:fatal|panic)"|^panic: ')
_NOT_THE_DATA = re.compile(
    r"permission denied|resource temporarily unavailable|too many open files"
    r"|read-only file system|no space left on device",
    re.IGNORECASE,
)


def classify_start_failure(log_text: str) -> StartFailure:
    """Why etcd would not start (or keeps failing), from its log."""
    for kind, pattern in _FAILURES:
        if pattern.search(log_text):
            return kind
    for line in log_text.splitlines():
        if _CORRUPT.search(line) and _EXITS.search(line) and not _NOT_THE_DATA.search(line):
            return "corrupt"
    return "other"


class EtcdService(Protocol):
    def start(self, config_path: Path) -> None: ...

    def stop(self) -> None: ...

    def is_running(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    def recent_log(self) -> str:
        """What etcd logged since the last start (for `classify_start_failure`)."""
        ...


class SubprocessEtcd:
    """etcd as a detached process: `<binary> --config-file <path>`.

    The log (`etcd.log`) and the pid file (`etcd.pid`) sit beside the config file, so
    another process (the lab, a restarted agent) can find and stop it by pid
    (agent/child.py: a pid counts only while it runs etcd on this config).
    """

    def __init__(self, binary: str = "etcd", *, stop_timeout: float = 10.0) -> None:
        self.binary = binary
        self.stop_timeout = stop_timeout
        self._config_path: Path | None = None
        self._child: ChildProcess | None = None

    @property
    def config_path(self) -> Path | None:
        return self._config_path

    @property
    def log_path(self) -> Path | None:
        return None if self._child is None else self._child.log_path

    @property
    def pid_path(self) -> Path | None:
        return None if self._child is None else self._child.pid_path

    def attach(self, config_path: Path) -> None:
        """Know the config (and so the pid and log files) without starting anything."""
        resolved = Path(config_path).resolve()
        if self._child is not None and resolved == self._config_path:
            return
        self._config_path = resolved
        marker = str(resolved).encode()
        self._child = ChildProcess(
            resolved.parent / PID_FILE,
            resolved.parent / LOG_FILE,
            identity=lambda cmdline: marker in cmdline,
            stop_timeout=self.stop_timeout,
        )

    def start(self, config_path: Path) -> None:
        if self.is_running():
            self.stop()
        self.attach(config_path)
        assert self._child is not None
        self._child.spawn([self.binary, "--config-file", str(self._config_path)])

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def is_running(self) -> bool:
        return self._child is not None and self._child.is_running()

    def signal(self, signum: int) -> None:
        """Send a signal to the running etcd (SIGSTOP/SIGCONT in tests, SIGKILL for chaos)."""
        if self._child is None or not self._child.is_running():
            raise ProcessLookupError(f"etcd ({self._config_path}) is not running")
        self._child.signal(signum)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout`; waits until the process is gone."""
        if self._child is not None:
            self._child.stop()

    def kill(self) -> None:
        """SIGKILL at once (a crash), and reap it."""
        if self._child is not None:
            self._child.kill()

    def wait(self, timeout: float) -> int | None:
        """Wait for etcd to exit by itself; its exit code (None if still running)."""
        if self._child is None:
            return 0
        return self._child.wait(timeout)

    def recent_log(self) -> str:
        return "" if self._child is None else self._child.read_log(since_start=True)


def config_path_for(settings: EtcdSettings, state_dir: str | Path) -> Path:
    """Where etcd's config file is: the systemd unit's fixed path, else the state dir."""
    return SYSTEMD_CONFIG if settings.service == "systemd" else Path(state_dir) / "etcd.yaml"


def hand_to_data_dir_owner(config_path: Path) -> None:
    """The unit runs etcd as its own user (User=etcd), the owner of its data dir; the agent
    writes the config as root, mode 0600 (it names the TLS key's path): the file goes to
    the data dir's owner, or etcd could not read it."""
    try:
        data_dir = Path(read_config(config_path)["data-dir"])
        owner = data_dir.stat()
        mine = Path(config_path).stat()
    except (OSError, ValueError, KeyError, TypeError):
        return
    if os.geteuid() == 0 and (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
        os.chown(config_path, owner.st_uid, owner.st_gid)


class SystemdEtcd:
    """etcd as the node's systemd unit, which reads `/etc/autoscale-etcd/etcd.yaml`."""

    def __init__(
        self,
        *,
        unit: str = SYSTEMD_UNIT,
        config_path: Path = SYSTEMD_CONFIG,
        runner: Runner = run_command,
    ) -> None:
        self.unit = unit
        self.config_path = Path(config_path)
        self.systemd = SystemdUnit(unit, runner)
        self._started_at: float | None = None

    def start(self, config_path: Path) -> None:
        if Path(config_path) != self.config_path:
            raise ValueError(
                f"{self.unit} reads {self.config_path}; write the config there, not {config_path}"
            )
        hand_to_data_dir_owner(self.config_path)
        self._started_at = time.time()
        # not blocking: etcd's unit is Type=notify, and etcd notifies only once it serves,
        # after a catch-up that takes as long as the cluster's data takes to arrive
        self.systemd.restart(block=False)

    def stop(self) -> None:
        self.systemd.stop()

    def is_running(self) -> bool:
        """Running or still starting (a member catching up is "activating")."""
        return self.systemd.active_state() in ("active", "activating", "reloading")

    @property
    def pid(self) -> int | None:
        return self.systemd.main_pid()

    def recent_log(self) -> str:
        return self.systemd.journal(since=self._started_at, lines=200)


def make_service(settings: EtcdSettings) -> SystemdEtcd | SubprocessEtcd:
    """The service kind the settings ask for."""
    if settings.service == "systemd":
        return SystemdEtcd()
    return SubprocessEtcd(settings.binary)
