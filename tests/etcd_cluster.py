"""Real etcd clusters for tests: members on random 127.0.0.x addresses, stopped by pid.

Every member is one etcd process started through `agent.etcd_server` (the agent's own
config writer and `SubprocessEtcd`), with fast timings. The helper talks to etcd over
plain HTTP (requests) rather than through `agent.etcd`, so tests of the client do not
lean on the client itself.
"""

from __future__ import annotations

import base64
import random
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import requests

from agent.etcd_server import SubprocessEtcd, etcd_config, write_config
from agent.settings import EtcdSettings
from lab.etcd_binaries import (  # noqa: F401  (re-exported for the tests)
    all_etcd_binaries,
    distro_etcd_binary,
    etcd_version,
    find_etcd_binary,
)

HEARTBEAT_MS = 50
ELECTION_MS = 500

T = TypeVar("T")


def _port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def _free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def free_address(exclude: set[str] | None = None) -> tuple[str, int, int]:
    """(ip, client_port, peer_port): a random 127.0.0.x (x in 2..250) and two ports free on it."""
    exclude = exclude or set()
    for _ in range(100):
        ip = f"127.0.0.{random.randint(2, 250)}"
        if ip in exclude:
            continue
        client = _free_port(ip)
        peer = _free_port(ip)
        if client != peer and _port_free(ip, client) and _port_free(ip, peer):
            return ip, client, peer
    raise RuntimeError("no free address found on 127.0.0.0/8")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy (returned); exceptions count as
    false. Raises TimeoutError naming `message` and the last exception."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


def corrupt_db(data_dir: Path) -> None:
    """Overwrite both of bbolt's meta pages (4 KiB pages 0 and 1) of a member's db: a disk
    that lost them (bbolt falls back to the other page when only one is bad)."""
    db = Path(data_dir) / "member" / "snap" / "db"
    with db.open("r+b") as f:
        f.write(b"\xab" * 8192)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class EtcdNode:
    """One etcd member process on its own 127.0.0.x address."""

    name: str
    ip: str
    client_port: int
    peer_port: int
    directory: Path
    binary: str
    extra: dict[str, Any] = field(default_factory=dict)
    service: SubprocessEtcd = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.service = SubprocessEtcd(self.binary, stop_timeout=5.0)
        self.service.attach(self.config_path)

    @property
    def settings(self) -> EtcdSettings:
        return EtcdSettings(
            client_port=self.client_port,
            peer_port=self.peer_port,
            data_dir=str(self.data_dir),
            binary=self.binary,
            cluster_token=f"test-{self.directory.parent.name}",
            service="subprocess",
            heartbeat_ms=HEARTBEAT_MS,
            election_ms=ELECTION_MS,
        )

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def config_path(self) -> Path:
        return self.directory / "etcd.yaml"

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.service.pid if self.service.is_running() else None

    def start(
        self,
        initial_cluster: dict[str, str],
        state: Literal["new", "existing"],
        *,
        token: str | None = None,
    ) -> None:
        settings = self.settings
        if token is not None:
            settings = settings.model_copy(update={"cluster_token": token})
        config = etcd_config(
            name=self.name,
            ip=self.ip,
            settings=settings,
            initial_cluster=initial_cluster,
            state=state,
            extra=self.extra,
        )
        write_config(self.config_path, config)
        self.service.start(self.config_path)

    def restart(self) -> None:
        """Start again on the config (and data dir) it had."""
        self.service.start(self.config_path)

    def is_running(self) -> bool:
        return self.service.is_running()

    def healthy(self, timeout: float = 0.5) -> bool:
        try:
            answer = requests.get(f"{self.client_url}/health", timeout=timeout)
            return answer.ok and answer.json().get("health") == "true"
        except (requests.RequestException, ValueError):
            return False

    def wait_healthy(self, timeout: float = 15.0) -> None:
        wait_until(
            lambda: self._started_or_fail() and self.healthy(),
            timeout,
            message=f"etcd {self.name} at {self.client_url} to be healthy",
        )

    def _started_or_fail(self) -> bool:
        if not self.is_running():
            raise EtcdStartError(self.name, self.log())
        return True

    def kill(self) -> None:
        """kill -9."""
        self.service.kill()

    def stop(self) -> None:
        self.service.stop()

    def pause(self) -> None:
        """SIGSTOP: the process stays, answers nothing (a hung node)."""
        self.service.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.service.signal(signal.SIGCONT)

    def log(self) -> str:
        """What etcd logged since its last start."""
        return self.service.recent_log()

    def post(self, path: str, body: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
        answer = requests.post(f"{self.client_url}/v3/{path}", json=body, timeout=timeout)
        answer.raise_for_status()
        return answer.json()


class EtcdStartError(RuntimeError):
    def __init__(self, name: str, log: str) -> None:
        super().__init__(f"etcd {name} exited while starting; log tail:\n{log[-3000:]}")
        self.log = log


class EtcdCluster:
    """N real etcd members; `close()` stops every process it started, by pid."""

    def __init__(self, binary: str, base_dir: Path, *, extra: dict[str, Any] | None = None):
        self.binary = binary
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.extra = dict(extra or {})
        self.nodes: list[EtcdNode] = []
        self._all: list[EtcdNode] = []
        self._count = 0

    # -- building ------------------------------------------------------------------------
    def new_node(self, name: str | None = None) -> EtcdNode:
        """A node with its own address and directory, not started, not a member yet."""
        self._count += 1
        name = name or f"n{self._count}"
        used = {node.ip for node in self._all}
        ip, client_port, peer_port = free_address(exclude=used)
        node = EtcdNode(
            name=name,
            ip=ip,
            client_port=client_port,
            peer_port=peer_port,
            directory=self.base_dir / name,
            binary=self.binary,
            extra=dict(self.extra),
        )
        self._all.append(node)
        return node

    def start(self, size: int = 3, *, timeout: float = 20.0) -> EtcdCluster:
        """Bootstrap a new cluster of `size` members and wait until each is healthy."""
        for attempt in range(3):
            nodes = [self.new_node() for _ in range(size)]
            initial = {node.name: node.peer_url for node in nodes}
            for node in nodes:
                node.start(initial, "new")
            try:
                for node in nodes:
                    node.wait_healthy(timeout)
            except EtcdStartError as error:
                for node in nodes:
                    node.kill()
                if "address already in use" in error.log and attempt < 2:
                    continue
                raise
            self.nodes = nodes
            return self
        raise AssertionError("unreachable")

    @property
    def endpoints(self) -> list[str]:
        return [node.client_url for node in self.nodes]

    def node(self, name: str) -> EtcdNode:
        return next(node for node in self._all if node.name == name)

    def running(self) -> list[EtcdNode]:
        return [node for node in self.nodes if node.is_running()]

    # -- plain v3 HTTP calls (independent of agent.etcd) ---------------------------------
    def _post_any(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        errors = []
        for node in self.nodes:
            if not node.is_running():
                continue
            try:
                return node.post(path, body)
            except requests.RequestException as error:
                errors.append(f"{node.name}: {error}")
        raise RuntimeError(f"no member answered {path}: {errors}")

    def member_list(self) -> list[dict[str, Any]]:
        return self._post_any("cluster/member/list", {}).get("members", [])

    def member_id(self, node: EtcdNode) -> int:
        for member in self.member_list():
            if node.peer_url in member.get("peerURLs", []):
                return int(member["ID"])
        raise KeyError(f"{node.name} is not a member")

    def leader(self) -> EtcdNode:
        def find() -> EtcdNode | None:
            for node in self.running():
                status = node.post("maintenance/status", {}, timeout=1.0)
                leader = int(status.get("leader", 0))
                if leader:
                    ids = {int(m["ID"]): m for m in self.member_list()}
                    urls = ids[leader].get("peerURLs", [])
                    return next(n for n in self.nodes if n.peer_url in urls)
            return None

        return wait_until(find, 10.0, message="a leader")

    def put(self, key: str, value: str) -> None:
        self._post_any("kv/put", {"key": _b64(key), "value": _b64(value)})

    def get(self, key: str) -> str | None:
        kvs = self._post_any("kv/range", {"key": _b64(key)}).get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    # -- membership changes --------------------------------------------------------------
    def add_member(
        self, *, learner: bool = False, promote: bool = True, timeout: float = 20.0
    ) -> EtcdNode:
        """`member add` a new node (as a learner if asked), start it with state
        `existing`, wait until healthy; promote a learner once it is in sync if asked."""
        node = self.new_node()
        body: dict[str, Any] = {"peerURLs": [node.peer_url]}
        if learner:
            body["isLearner"] = True
        added = self._post_any("cluster/member/add", body)
        initial = {}
        for member in added["members"]:
            name = member.get("name") or (node.name if node.peer_url in member["peerURLs"] else "")
            initial[name] = member["peerURLs"][0]
        node.start(initial, "existing")
        self.nodes.append(node)
        node.wait_healthy(timeout)
        if learner and promote:
            member_id = int(added["member"]["ID"])
            wait_until(
                lambda: self._post_any("cluster/member/promote", {"ID": str(member_id)}) or True,
                timeout,
                interval=0.2,
                message=f"learner {node.name} to be promoted",
            )
        return node

    def remove_member(self, node: EtcdNode) -> None:
        member_id = self.member_id(node)
        others = [n for n in self.nodes if n is not node and n.is_running()]
        errors = []
        for other in others:
            try:
                other.post("cluster/member/remove", {"ID": str(member_id)})
                break
            except requests.RequestException as error:
                errors.append(error)
        else:
            raise RuntimeError(f"could not remove {node.name}: {errors}")
        self.nodes.remove(node)

    # -- teardown ------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every process this cluster started (by pid), paused ones too."""
        for node in self._all:
            try:
                node.service.kill()
            except ProcessLookupError:
                pass
