"""The lab's network: every node in a network namespace of its own, on a bridge of the lab's.

On a cloud each server has its own network stack: what it reaches is decided by links and
routes, not by which process asks. In this mode the lab gives each node the same:

- a bridge `ae<tag>br` in this machine's namespace holding `<prefix>.1/24` (the lab's own
  address on the nodes' network: its watcher, writer and etcdctl judges reach the nodes
  through it) and `<cloud>/32`, the address the lab's cloud answers on;
- per node, a namespace `ae<tag>-<n>` with one veth (`eth0`) on the bridge holding
  `<prefix>.<n>/24`, a route to the cloud's address through the bridge, and nothing else:
  no default route, so nothing a node sends leaves the lab's bridge; the node's agent,
  its etcd (the agent's child) and its netdata run there, and its metadata service answers
  at 169.254.169.254 on the namespace's loopback, as a cloud's does;
- the prefix is a 10.X.Y.0/23 no route or address of this machine overlaps (the nodes'
  /24 and the cloud's /24 above it).

A fault is a set of routes inside the namespaces: a cut-off destination is routed to a
gateway that does not exist (`<prefix>.254`, a permanent neighbour entry with a MAC no
port has), so its packets leave and are lost on the bridge, as in a real partition:
connections time out, nobody is told "unreachable". This kernel has no netem (nor tc's
drop actions): latency and loss are out of reach, cuts are not.

- `cut(names, peers=True)`: the named nodes and every other node lose each other (the
  named ones keep each other and the lab's own address);
- `cut(names, cloud=True)`: the named nodes lose the cloud's API (not their metadata
  service);
- both: the named nodes reach nobody but each other.

Everything is made with `ip` (iproute2) and removed by name: `remove()`, `python -m lab
down` (from `lab.json`) and the tests.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
METADATA_IP = "169.254.169.254"
GATEWAY_MAC = "02:ae:00:00:00:fe"
"""The MAC of the gateway that does not exist: locally administered, on no port."""
NS_PREFIX = "ae"
IP = shutil.which("ip") or next(
    (p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), "ip"
)
"""iproute2's `ip` (in sbin, which not every PATH holds)."""


def ip(*args: str, ns: str | None = None, check: bool = True) -> bool:
    """Run `ip [-n ns] args`; False (or RuntimeError with `check`) when it fails."""
    command = [IP, *(["-n", ns] if ns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done.returncode == 0


@functools.cache
def unavailable() -> str | None:
    """Why this machine cannot run the lab's nodes in namespaces (None: it can)."""
    if os.geteuid() != 0:
        return f"network namespaces need root (this is uid {os.geteuid()})"
    if not os.access(IP, os.X_OK) and shutil.which(IP) is None:
        return "no `ip` command (Debian's iproute2)"
    probe = f"{NS_PREFIX}probe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return f"`ip netns add` failed: {error}"
    try:
        ip(
            "link",
            "add",
            f"{probe[:10]}a",
            "type",
            "veth",
            "peer",
            "name",
            f"{probe[:10]}b",
            ns=probe,
        )
    except RuntimeError as error:
        return f"no veth pairs: {error}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def in_namespace(ns: str, make: Callable[[], T]) -> T:
    """`make()` run on a thread that entered namespace `ns` (setns(2) moves only the calling
    thread): a socket it creates and binds lives in `ns` for good, whoever serves it later."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(make())
        except BaseException as error:  # handed to the caller
            failure.append(error)

    thread = threading.Thread(target=run, name=f"setns-{ns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _used_networks() -> list[ipaddress.IPv4Network]:
    found = []
    shown = subprocess.run(
        [IP, "-4", "route", "show", "table", "all"], capture_output=True, text=True, timeout=20
    )
    for line in shown.stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable", "blackhole", "prohibit"):
            word = line.split()[1]
        if word == "default":
            continue
        try:
            found.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    return found


def pick_network(tries: int = 200) -> str:
    """A 10.X.Y (Y even) whose /23 overlaps no route nor address of this machine."""
    used = _used_networks()
    for _ in range(tries):
        prefix = f"10.{random.randint(100, 254)}.{random.randrange(0, 256, 2)}"
        block = ipaddress.ip_network(f"{prefix}.0/23")
        if not any(block.overlaps(net) for net in used):
            return prefix
    raise RuntimeError("no free 10.X.Y.0/23 for the lab's network")


@dataclass(frozen=True, eq=False)
class Cut:
    """One network fault: `names` lose their peers (`peers`), the cloud's API (`cloud`).
    Each cut is its own (compared by identity): two alike may be in force at once."""

    names: frozenset[str]
    peers: bool
    cloud: bool

    def describe(self) -> str:
        what = " and ".join(w for w, on in (("peers", self.peers), ("cloud", self.cloud)) if on)
        return f"{', '.join(sorted(self.names))} cut from {what}"


@dataclass
class Host:
    name: str
    ip: str
    ns: str
    veth: str
    routes: dict[str, str] = field(default_factory=dict)
    """Destination -> how it is routed now ('cloud', 'direct', 'cut')."""


class LabNetwork:
    def __init__(self, prefix: str | None = None, tag: str | None = None) -> None:
        self.tag = tag or f"{random.randrange(16**4):04x}"
        self.prefix = prefix or pick_network()
        first, second, third = (int(p) for p in self.prefix.split("."))
        self.cloud_ip = f"{first}.{second}.{third + 1}.1"
        self.lab_ip = f"{self.prefix}.1"
        self.gateway = f"{self.prefix}.254"
        self.bridge = f"{NS_PREFIX}{self.tag}br"
        self.hosts: dict[str, Host] = {}
        self.made: list[str] = []
        """Every namespace this network made (for `lab down` and the tests' checks)."""
        self.cuts: list[Cut] = []
        self._lock = threading.RLock()

    # --- life ----------------------------------------------------------------------------

    def create(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.lab_ip}/24", "dev", self.bridge)
        ip("addr", "add", f"{self.cloud_ip}/32", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def names(self) -> dict[str, list[str]]:
        """What `remove` deletes, by name (written into lab.json for `lab down`)."""
        with self._lock:
            return {"bridge": [self.bridge], "namespaces": list(self.made)}

    def remove(self) -> None:
        with self._lock:
            hosts = list(self.hosts.values())
            self.hosts.clear()
        for host in hosts:
            ip("netns", "del", host.ns, check=False)
            ip("link", "del", host.veth, check=False)
        ip("link", "del", self.bridge, check=False)

    # --- hosts ---------------------------------------------------------------------------

    def add(self, name: str, address: str) -> Host:
        """A namespace for node `name` at `address` (`<prefix>.n`), wired to the bridge."""
        n = int(address.rsplit(".", 1)[1])
        host = Host(name, address, f"{NS_PREFIX}{self.tag}-{n}", f"{NS_PREFIX}{self.tag}h{n}")
        inner = f"{NS_PREFIX}{self.tag}n{n}"
        ip("netns", "add", host.ns)
        with self._lock:
            self.made.append(host.ns)
        try:
            ip("link", "add", host.veth, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", host.ns)
            ip("link", "set", host.veth, "master", self.bridge, "up")
            ip("link", "set", inner, "name", "eth0", ns=host.ns)
            ip("addr", "add", f"{address}/24", "dev", "eth0", ns=host.ns)
            ip("link", "set", "eth0", "up", ns=host.ns)
            ip("link", "set", "lo", "up", ns=host.ns)
            ip("addr", "add", f"{METADATA_IP}/32", "dev", "lo", ns=host.ns)
            ip(
                "neigh",
                "replace",
                self.gateway,
                "lladdr",
                GATEWAY_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
                ns=host.ns,
            )
        except RuntimeError:
            ip("netns", "del", host.ns, check=False)
            ip("link", "del", host.veth, check=False)
            raise
        with self._lock:
            self.hosts[name] = host
            self._apply(host)
        return host

    def drop(self, name: str) -> None:
        """The node's server is gone: its namespace and veth go."""
        with self._lock:
            host = self.hosts.pop(name, None)
        if host is not None:
            ip("netns", "del", host.ns, check=False)
            ip("link", "del", host.veth, check=False)

    # --- faults --------------------------------------------------------------------------

    def cut(
        self, names: set[str] | frozenset[str], *, peers: bool = False, cloud: bool = False
    ) -> Cut:
        if not names or not (peers or cloud):
            raise ValueError("a cut needs nodes and something to cut them from")
        fault = Cut(frozenset(names), peers, cloud)
        with self._lock:
            self.cuts.append(fault)
            for host in list(self.hosts.values()):
                self._apply(host)
        return fault

    def heal(self, fault: Cut | None = None) -> None:
        """End one cut (default: every cut)."""
        with self._lock:
            self.cuts = [] if fault is None else [c for c in self.cuts if c is not fault]
            for host in list(self.hosts.values()):
                self._apply(host)

    def wanted_routes(self, host: Host) -> dict[str, str]:
        """The routes `host`'s namespace needs for the cuts now in force."""
        routes = {f"{self.cloud_ip}/32": "cloud"}
        rank = {"cloud": 0, "direct": 1, "cut": 2}

        def want(dest: str, how: str) -> None:
            """A cut wins over a direct route (two faults at once: the stricter holds)."""
            if dest not in routes or rank[how] >= rank[routes[dest]]:
                routes[dest] = how

        for fault in self.cuts:
            inside = host.name in fault.names
            if inside and fault.peers:
                want(f"{self.prefix}.0/25", "cut")
                want(f"{self.prefix}.128/25", "cut")
                want(f"{self.lab_ip}/32", "direct")
                for other in fault.names - {host.name}:
                    if other in self.hosts:
                        want(f"{self.hosts[other].ip}/32", "direct")
            if inside and fault.cloud:
                want(f"{self.cloud_ip}/32", "cut")
            if not inside and fault.peers:
                for other in fault.names:
                    if other in self.hosts:
                        want(f"{self.hosts[other].ip}/32", "cut")
        return routes

    def _apply(self, host: Host) -> None:
        wanted = self.wanted_routes(host)
        for dest in list(host.routes):
            if dest not in wanted:
                ip("route", "del", dest, ns=host.ns, check=False)
                del host.routes[dest]
        for dest, how in wanted.items():
            if host.routes.get(dest) == how:
                continue
            if how == "cut":
                ip(
                    "route",
                    "replace",
                    dest,
                    "via",
                    self.gateway,
                    "dev",
                    "eth0",
                    "onlink",
                    ns=host.ns,
                )
            elif how == "direct":
                ip("route", "replace", dest, "dev", "eth0", ns=host.ns)
            else:
                ip("route", "replace", dest, "via", self.lab_ip, "dev", "eth0", ns=host.ns)
            host.routes[dest] = how


def still_there(names: dict[str, list[str]]) -> list[str]:
    """The namespaces and bridge `lab.json` names that exist on this machine."""
    listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=20)
    present = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    left = [ns for ns in names.get("namespaces", []) if ns in present]
    return left + [
        bridge for bridge in names.get("bridge", []) if ip("link", "show", bridge, check=False)
    ]


def remove_by_name(names: dict[str, list[str]]) -> list[str]:
    """`lab down` from another process: delete the namespaces and bridge `lab.json` names."""
    done = []
    for ns in names.get("namespaces", []):
        if ns.startswith(NS_PREFIX) and ip("netns", "del", ns, check=False):
            done.append(f"deleted namespace {ns}")
    for bridge in names.get("bridge", []):
        if bridge.startswith(NS_PREFIX) and ip("link", "del", bridge, check=False):
            done.append(f"deleted bridge {bridge}")
    return done
