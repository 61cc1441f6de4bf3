"""The lab's Nova: booting a server starts a node's processes, deleting one stops them by pid.

A node is a directory (`<root>/nodes/<name>/`) holding its `agent.json`, its hook
scripts, the agent's state dir (state.json, etcd.yaml, etcd.pid, etcd.log) and etcd's
data dir, plus two things running:

- the agent: `<python> -m agent --config <dir>/agent.json run`, a child of the lab,
  in its own session; it starts etcd itself (detached) and writes etcd's pid file;
- the node's netdata (`lab.netdata_stub`), a server thread in the lab's process on
  the node's address.

Deleting a server is a power-off, as Nova's delete is: SIGKILL to the agent's pid and
to etcd's pid (read from its pid file, checked against /proc so a reused pid is never
hit), then the node's files go (its logs are kept under `<root>/logs/`).

Rebooting one is the same power-off, keeping the node's files (its disk), then, after the
boot delay, its netdata and its agent start again on the same dir, as systemd starts
autoscale-agent.service at boot; the agent finds etcd's data and starts etcd on it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.etcd_server import LOG_FILE, PID_FILE, client_url
from agent.settings import AgentSettings, OpenStackCloud
from agent.state import AgentState
from infra.settings import StackSettings
from lab.cloud.heat import Member
from lab.etcd_binaries import etcd_binary_for
from lab.events import EventLog
from lab.netdata_stub import NETDATA_PORT, Mode, NetdataStub, NodeMetrics
from lab.netns import IP, METADATA_IP, LabNetwork, in_namespace
from lab.timings import LabTimings, install_hooks, node_settings
from lab.tls import LabPki


def pid_alive(pid: int | None, needle: str | None = None) -> bool:
    """The pid runs (not a zombie) and, if `needle` is given, its command line holds it."""
    if pid is None or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return needle is None or needle.encode() in cmdline


def pids_of(needle: str) -> list[int]:
    """Every running process whose command line holds `needle` (a scan of /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            if pid_alive(int(entry.name), needle):
                found.append(int(entry.name))
    return found


def kill_pid(pid: int | None, needle: str, *, graceful: float = 0.0) -> bool:
    """Stop one process by pid (checked against `needle`): SIGTERM first if `graceful`."""
    if not pid_alive(pid, needle):
        return False
    assert pid is not None
    try:
        if graceful > 0:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped process handles SIGTERM once continued
            deadline = time.monotonic() + graceful
            while time.monotonic() < deadline and pid_alive(pid, needle):
                time.sleep(0.05)
        if pid_alive(pid, needle):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid, needle):
        time.sleep(0.02)
    return True


@dataclass
class Node:
    """One booted server and what runs on it."""

    member: Member
    dir: Path
    settings: AgentSettings
    metrics: NodeMetrics
    stub: NetdataStub | None = None
    agent: subprocess.Popen[bytes] | None = None
    agent_pid: int | None = None
    crashed: bool = False
    frozen: bool = False
    rebooting: bool = False
    """Powered off by a reboot, its agent not started again yet."""
    exit_code: int | None = None
    notes: list[str] = field(default_factory=list)
    ns: str | None = None
    """The node's network namespace (None: the loopback mode, on this machine's own)."""
    metadata: ThreadingHTTPServer | None = None
    """Its metadata service at 169.254.169.254 inside `ns`."""
    _etcd_scan: tuple[float, int | None] = field(default=(0.0, None), repr=False)

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def ip(self) -> str:
        return self.member.ip

    @property
    def client_url(self) -> str:
        return client_url(self.ip, self.settings.etcd)

    @property
    def state_dir(self) -> Path:
        return Path(self.settings.state_dir)

    @property
    def etcd_config(self) -> str:
        return str((self.state_dir / "etcd.yaml").resolve())

    def etcd_pid(self) -> int | None:
        """etcd's pid from the agent's pid file, if that pid really is this node's etcd;
        else the etcd /proc shows running on this node's config (the pid file may name a
        later start that failed while the first etcd ran on), looked up at most once a
        second."""
        try:
            pid: int | None = int((self.state_dir / PID_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pid = None
        if pid_alive(pid, self.etcd_config):
            return pid
        now = time.monotonic()
        seen_at, seen = self._etcd_scan
        if now - seen_at > 1.0 or (seen is not None and not pid_alive(seen, self.etcd_config)):
            found = pids_of(self.etcd_config)
            self._etcd_scan = (now, found[0] if found else None)
        return self._etcd_scan[1]

    def etcd_pids(self) -> list[int]:
        """Every etcd running on this node's config (a power-off stops them all)."""
        return pids_of(self.etcd_config)

    def agent_alive(self) -> bool:
        if self.agent is not None:
            code = self.agent.poll()
            if code is not None:
                self.exit_code = code
                return False
            return True
        return pid_alive(self.agent_pid, str(self.dir / "agent.json"))

    def state(self) -> AgentState:
        return AgentState.load(self.state_dir)


class Nova:
    """Boots and deletes the lab's servers (nodes); the local cloud decides which."""

    def __init__(
        self,
        root: Path,
        stack: StackSettings,
        timings: LabTimings,
        *,
        cluster_name: str,
        base_dir: Path,
        etcd_binary: str,
        events: EventLog,
        python: str = sys.executable,
        netdata_port: int = NETDATA_PORT,
    ) -> None:
        self.root = root
        self.stack = stack
        self.timings = timings
        self.cluster_name = cluster_name
        self.base_dir = base_dir
        self.etcd_binary = etcd_binary
        self.events = events
        self.python = python
        self.netdata_port = netdata_port
        self.pki: LabPki | None = None
        """The cluster CA of an https stack (None: http)."""
        self.cloud_url = ""
        self.cloud_for: Callable[[Member], OpenStackCloud] | None = None
        """The node's cloud settings (its credential, its metadata URL): set by the lab."""
        self.boot_delay = 1.0
        """Seconds from a reboot's power-off to the agent's start."""
        self.start_spread = 0.0
        """> 0: each booted server's agent starts a random 0..start_spread s after Nova
        says ACTIVE (a plain image installs first: servers created together start etcd
        minutes apart on a cloud)."""
        self.rng = random.Random()
        self.net: LabNetwork | None = None
        """The lab's namespaces and bridge (None: every node on this machine's loopback)."""
        self.metadata_for: Callable[[Member], type[BaseHTTPRequestHandler]] | None = None
        """The metadata service's handler for one server (the namespaces mode)."""
        self.nodes: dict[str, Node] = {}
        self.gone: list[Node] = []
        self.default_load = 5.0
        self.default_mode: Mode = "ok"
        self._lock = threading.RLock()

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def boot(self, member: Member) -> Node:
        """Create the node's dir and agent.json, start its netdata and its agent."""
        node_dir = self.root / "nodes" / member.name
        node_dir.mkdir(parents=True, exist_ok=False)
        install_hooks(self.stack, node_dir / "hooks", self.base_dir)
        metrics = NodeMetrics(self.default_load)
        metrics.mode = self.default_mode
        metrics.hang_seconds = max(2.0, 3 * self.timings.metric_timeout)
        ns = self.net.add(member.name, member.ip).ns if self.net is not None else None
        stub = self._netdata(member, metrics, ns)
        if self.cloud_for is None:
            raise RuntimeError("the lab's Nova has no cloud settings for its nodes yet")
        settings = node_settings(
            self.stack,
            self.timings,
            cluster_name=self.cluster_name,
            cloud=self.cloud_for(member),
            node_dir=node_dir,
            netdata_url=stub.url,
            etcd_binary=etcd_binary_for(self.stack.etcd_version, self.etcd_binary),
        )
        if self.pki is not None and settings.etcd.tls is not None:
            # as the node's boot does: infra/node/issue-cert.sh for its own address
            self.pki.issue(settings.etcd.tls, ip=member.ip, name=member.name)
        config = node_dir / "agent.json"
        settings.write(config)
        node = Node(
            member=member, dir=node_dir, settings=settings, metrics=metrics, stub=stub, ns=ns
        )
        if ns is not None and self.metadata_for is not None:
            handler = self.metadata_for(member)
            node.metadata = in_namespace(
                ns, lambda: ThreadingHTTPServer((METADATA_IP, 80), handler)
            )
            node.metadata.daemon_threads = True
            threading.Thread(
                target=node.metadata.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
            ).start()
        with self._lock:
            self.nodes[member.server_id] = node
        delay = self.rng.uniform(0, self.start_spread) if self.start_spread > 0 else 0.0
        if delay > 0:
            self.events.add("boot", member.name, f"{member.ip}, agent starts in {delay:.1f}s")
            threading.Timer(delay, self._late_start, (node,)).start()
            return node
        self.start_agent(node)
        self.events.add("boot", member.name, f"{member.ip}, agent pid {node.agent_pid}")
        return node

    def _netdata(self, member: Member, metrics: NodeMetrics, ns: str | None) -> NetdataStub:
        """The node's netdata on its address (bound inside its namespace, if it has one)."""

        def make() -> NetdataStub:
            return NetdataStub(
                metrics, host=member.ip, port=self.netdata_port, hostname=member.name
            )

        return (in_namespace(ns, make) if ns is not None else make()).start()

    def _late_start(self, node: Node) -> None:
        if self.get(node.member.server_id) is node and not node.crashed and node.agent is None:
            self.start_agent(node)
            self.events.add("agent-start", node.name, f"agent pid {node.agent_pid}")

    def start_agent(self, node: Node) -> None:
        """systemd starting autoscale-agent.service: the agent on the node's agent.json."""
        command = [self.python, "-m", "agent", "--config", str(node.dir / "agent.json"), "run"]
        if node.ns is not None:
            command = [IP, "netns", "exec", node.ns, *command]  # execs: the same pid
        with open(node.dir / "agent.log", "ab") as log:
            node.agent = subprocess.Popen(
                command,
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        node.agent_pid = node.agent.pid
        node.exit_code = None

    def stop_agent(self, node: Node, grace: float = 10.0) -> None:
        """`systemctl stop autoscale-agent`: SIGTERM to the agent's pid (SIGKILL after
        `grace`); its etcd, if it runs one, goes on."""
        self._kill_agent(node, graceful=grace)
        self.events.add("agent-stop", node.name, "by the operator")

    def _kill_agent(self, node: Node, *, graceful: float = 0.0) -> None:
        """The node's agent stopped by its pid (SIGTERM first if `graceful`), reaped."""
        kill_pid(node.agent_pid, str(node.dir / "agent.json"), graceful=graceful)
        if node.agent is not None:
            try:
                node.exit_code = node.agent.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def run_on(self, node: Node, command: list[str], timeout: float = 300) -> Any:
        """An operator's command on the node (in its namespace, if it has one), from the
        project's dir; the finished process (its output in `stdout`)."""
        if node.ns is not None:
            command = [IP, "netns", "exec", node.ns, *command]
        return subprocess.run(
            command,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def reboot(self, member: Member, kind: str = "HARD") -> None:
        """Power off (kill -9 of the agent and etcd, netdata down), keep the disk, and after
        the boot delay start netdata and the agent again, as the machine's boot does."""
        node = self.get(member.server_id)
        if node is None:
            raise KeyError(member.server_id)
        node.rebooting = True
        self._power_off(node)
        node.frozen = False
        self.events.add("power-off", node.name, f"{kind.lower()} reboot; disk kept")
        time.sleep(self.boot_delay)
        if self.get(member.server_id) is not node or node.crashed:
            return  # deleted (or crashed) while it was down
        node.stub = self._netdata(member, node.metrics, node.ns)
        self.start_agent(node)
        node.rebooting = False
        self.events.add("booted", node.name, f"agent pid {node.agent_pid} on the same disk")

    def delete(self, member: Member) -> None:
        """Nova's delete: power off (SIGKILL agent, then etcd, by pid), remove the files."""
        with self._lock:
            node = self.nodes.pop(member.server_id, None)
        if node is None:
            return
        led = self._leads(node)  # asked of its etcd at the power-off, not from a sample
        # the event as the server leaves the list: a watcher that no longer sees the server
        # finds its deletion recorded (the power-off and the files take a moment more)
        self.events.add("delete", member.name, member.reason or "")
        if led:
            self.events.add("leader-deleted", member.name, "it led the cluster at its power-off")
        self._power_off(node)
        self._unplug(node)
        self._keep_logs(node)
        shutil.rmtree(node.dir, ignore_errors=True)
        self.gone.append(node)

    def _leads(self, node: Node) -> bool:
        """Whether the node's etcd is the cluster's leader (its own status: `leader` is its
        member id); False when it does not answer."""
        from agent.etcd import EtcdClient, EtcdError

        try:
            with EtcdClient(
                [node.client_url], timeout=1.0, tls=self.pki.client if self.pki else None
            ) as client:
                status = client.status(node.client_url)
        except (EtcdError, OSError):
            return False
        header = status.get("header") or {}
        return str(status.get("leader")) == str(header.get("member_id")) != "None"

    def _unplug(self, node: Node) -> None:
        """The server is gone: its metadata service and its namespace go."""
        if node.metadata is not None:
            node.metadata.shutdown()
            node.metadata.server_close()
            node.metadata = None
        if self.net is not None:
            self.net.drop(node.name)

    def _power_off(self, node: Node, *, graceful: float = 0.0) -> None:
        self._kill_agent(node, graceful=graceful)
        for pid in node.etcd_pids():
            kill_pid(pid, node.etcd_config, graceful=graceful)
        if node.stub is not None:
            node.stub.stop()
            node.stub = None

    def _keep_logs(self, node: Node) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        sources = ((node.dir / "agent.log", "agent"), (node.state_dir / LOG_FILE, "etcd"))
        for source, suffix in sources:
            if source.exists():
                shutil.copyfile(source, self.logs / f"{node.name}.{suffix}.log")

    def shutdown(self) -> None:
        """Stop every node (gracefully: the lab is going away, not a failure) and keep logs."""
        with self._lock:
            nodes = list(self.nodes.values())
            self.nodes.clear()

        def stop(node: Node) -> None:
            self._power_off(node, graceful=1.5)
            self._unplug(node)
            self._keep_logs(node)
            shutil.rmtree(node.dir, ignore_errors=True)

        # all at once, as a cloud stops servers: each agent has 1.5 s after its SIGTERM
        threads = [threading.Thread(target=stop, args=(node,)) for node in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # --- faults the scenarios inject ------------------------------------------------------

    def crash(self, server_id: str) -> Node:
        """kill -9 the whole node: agent, etcd, its netdata; the server stays in the group."""
        node = self.nodes[server_id]
        kill_pid(node.agent_pid, str(node.dir / "agent.json"))
        for pid in node.etcd_pids():
            kill_pid(pid, node.etcd_config)
        if node.stub is not None:
            node.stub.stop()
            node.stub = None
        node.crashed = True
        self.events.add("kill", node.name, "kill -9 of agent and etcd")
        return node

    def signal_etcd(self, server_id: str, signum: int) -> bool:
        node = self.nodes.get(server_id)
        pid = node.etcd_pid() if node else None
        if node is None or pid is None:
            return False
        os.kill(pid, signum)
        node.frozen = signum == signal.SIGSTOP
        return True

    def reap(self) -> None:
        """Notice agents that exited (a node that left) and reap them."""
        with self._lock:
            nodes = list(self.nodes.values())
        for node in nodes:
            if node.agent is not None and node.exit_code is None and not node.agent_alive():
                self.events.add("agent-exit", node.name, f"exit code {node.exit_code}")

    def live(self) -> list[Node]:
        with self._lock:
            return [n for n in self.nodes.values() if not n.crashed]

    def get(self, server_id: str) -> Node | None:
        with self._lock:
            return self.nodes.get(server_id)
