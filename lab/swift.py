"""A real OpenStack Swift (Debian bookworm's 2.30 packages) for the lab and the tests.

    swift = SwiftServer(workdir, "127.0.0.1", keystone_url, project_id)
    url = swift.start()     # http://127.0.0.1:<port>/v1/AUTH_<project_id>
    ...                     # the object-store API, tokens from the lab's Keystone
    swift.stop()            # SIGTERM to each pid, SIGKILL after a grace period
    swift.start()           # again: the same ports (and URL) if still free, the same data

Four servers, each a process of its own on `host` (Debian's /usr/bin/swift-*-server, run
by /usr/bin/python3): proxy, account, container, object, as Swift's all-in-one set-up
has them (https://docs.openstack.org/swift/latest/development_saio.html), but with one
device, one replica and small rings built by swift-ring-builder's own code
(https://docs.openstack.org/swift/latest/admin/objectstorage-ringbuilder.html), the data
under `workdir`, `mount_check = false`, `workers = 0` (each server in the foreground, one
process, no forked workers: https://docs.openstack.org/swift/latest/deployment_guide.html)
and no memcache.

The proxy's pipeline is Swift's documented Keystone one
(https://docs.openstack.org/swift/latest/overview_auth.html#keystone-auth) with the lab's
`lab_authtoken` (lab/swift_middleware/lab_authtoken.py: Keystone token validation,
access rules, the project's account) in place of `authtoken keystoneauth` and only the
middlewares the lab uses: `slo`, static large objects, is how big snapshots go up
(https://docs.openstack.org/swift/latest/overview_large_objects.html). The proxy adds
those Swift requires that the pipeline lacks (here `versioned_writes`). The proxy creates
the account AUTH_<project> on first use (`account_autocreate`).

Logs: `-v` sends each server's log to its stderr, kept in `log/<server>.log` (a start
that fails raises with their tails). Swift also always logs to syslog: /dev/log if it is
a socket, else UDP to localhost:514; here UDP to a socket of our own on `host` that no one
reads (its datagrams are dropped once its buffer is full), so no syslog gets them.

What Swift reads outside `workdir`: /etc/swift/swift.conf (the storage policies and the
hash path prefix/suffix; Swift 2.30's servers read only that path, whatever their
`swift_dir`), which Debian's `swift` package installs.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lab.cloud.keystone import AppCredential, Endpoint, Keystone

SWIFT_CONF = Path("/etc/swift/swift.conf")
SERVERS = ("account", "container", "object", "proxy")
BINARIES = {name: f"swift-{name}-server" for name in SERVERS}
PACKAGES = {name: f"swift-{name}" for name in SERVERS}
"""Debian's package of each server."""
MIDDLEWARE_DIR = Path(__file__).resolve().parent / "swift_middleware"
PART_POWER = 6
DEVICE = "d1"
SYSTEM_PYTHON = "/usr/bin/python3"

RINGS = ("account", "container", "object")

# One /usr/bin/python3 runs swift-ring-builder's main once per command (each CLI run
# would cost a second of imports): argv is the builder directory, then
# `name:ip:port` per ring.
_RING_SCRIPT = """
import os, sys
from swift.cli import ringbuilder
os.chdir(sys.argv[1])
for spec in sys.argv[2:]:
    name, ip, port, part_power, device = spec.split(":")
    builder = name + ".builder"
    for command in (
        ["create", part_power, "1", "0"],
        ["add", "r1z1-%s:%s/%s" % (ip, port, device), "100"],
        ["rebalance"],
    ):
        try:
            ringbuilder.main(["swift-ring-builder", builder] + command)
        except SystemExit as done:
            if done.code not in (None, 0):
                sys.exit("swift-ring-builder %s %s: exit %s" % (builder, command, done.code))
"""


def find_server(name: str) -> str | None:
    """The path of swift-<name>-server, None if it is not installed."""
    found = shutil.which(BINARIES[name]) or f"/usr/bin/{BINARIES[name]}"
    return found if os.access(found, os.X_OK) else None


def hash_conf_problem(path: Path = SWIFT_CONF) -> str | None:
    """Why Swift would refuse to start on `path` (no [swift-hash] prefix or suffix), or None."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        if not parser.read(path):
            return f"{path} is missing (Debian package swift)"
    except configparser.Error as error:
        return f"{path} does not parse: {error}"
    if not (
        parser.get("swift-hash", "swift_hash_path_suffix", fallback="")
        or parser.get("swift-hash", "swift_hash_path_prefix", fallback="")
    ):
        return f"{path} has no [swift-hash] swift_hash_path_suffix or _prefix"
    return None


def _free_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports the kernel says are free on `host` now."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SwiftServer:
    """A real Swift: proxy, account, container, object servers on `host` (an address of this
    machine such as 127.0.0.1 or 127.X.Y.n), rings built with swift-ring-builder (1 replica,
    one device, part power small), data under `workdir`, stopped by pid."""

    def __init__(
        self,
        workdir: Path,
        host: str,
        keystone_url: str,
        project_id: str,
        *,
        service_type: str | None = "object-store",
    ) -> None:
        """`keystone_url`: the identity API the proxy validates tokens at (its root, such as
        http://.../identity, or its /v3); `service_type`: the proxy's for access rules
        (None: every token with access rules is refused, as keystonemiddleware does)."""
        self.workdir = Path(workdir)
        self.host = host
        self.keystone_url = keystone_url
        self.project_id = project_id
        self.service_type = service_type
        self.ports: dict[str, int] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._syslog_sink: socket.socket | None = None
        self._log_offsets: dict[str, int] = {}
        """Where each log stood when its server last started (this start's lines follow)."""

    # --- where things are -------------------------------------------------------------------

    @property
    def etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def devices(self) -> Path:
        return self.workdir / "srv" / "node"

    @property
    def proxy_url(self) -> str:
        """The proxy's root (its /healthcheck, /info and /v1 are under it)."""
        return f"http://{self.host}:{self.ports['proxy']}" if "proxy" in self.ports else ""

    @property
    def url(self) -> str:
        """The object-store endpoint, as a Keystone catalog names it ("" until started)."""
        return f"{self.proxy_url}/v1/AUTH_{self.project_id}" if self.proxy_url else ""

    @property
    def log_files(self) -> dict[str, Path]:
        return {name: self.workdir / "log" / f"{name}.log" for name in SERVERS}

    @property
    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` each server logged since it last started, for failure messages."""
        parts = []
        for name in SERVERS:
            text = self._log_since_start(name).splitlines()
            if text:
                parts.append(f"--- {name} ({self.log_files[name]}):\n" + "\n".join(text[-lines:]))
        return "\n".join(parts) or "(the servers logged nothing)"

    def _log_since_start(self, name: str) -> str:
        try:
            with self.log_files[name].open("rb") as log:
                log.seek(self._log_offsets.get(name, 0))
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # --- life -------------------------------------------------------------------------------

    def start(self, timeout: float = 30, attempts: int = 3) -> str:
        """Start the four servers on free ports of `host` and wait until each answers its
        /healthcheck (the proxy's first: it is the one clients see). The endpoint URL.
        Ports taken meanwhile by someone else: again on others, `attempts` times. Started
        again after a stop, the servers keep their ports (and the URL) if they are free."""
        if self.processes:
            return self.url
        missing = [PACKAGES[n] for n in SERVERS if find_server(n) is None]
        if missing:
            raise FileNotFoundError(f"Swift not installed (Debian packages {' '.join(missing)})")
        problem = hash_conf_problem()
        if problem is not None:
            raise RuntimeError(f"Swift cannot start: {problem}")
        deadline = time.monotonic() + timeout
        error = ""
        for attempt in range(attempts):
            try:
                self._start_once(deadline, same_ports=attempt == 0 and bool(self.ports))
                return self.url
            except _PortTaken as taken:
                error = str(taken)
                self.stop()
            except BaseException:
                self.stop()
                raise
        raise RuntimeError(f"Swift did not start in {attempts} attempts: {error}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to each server's pid, SIGKILL to those still there after `grace`."""
        processes, self.processes = self.processes, {}
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for name in processes:
            (self.workdir / "run" / f"{name}.pid").unlink(missing_ok=True)
        if self._syslog_sink is not None:
            self._syslog_sink.close()
            self._syslog_sink = None

    # --- the parts of a start ----------------------------------------------------------------

    def _start_once(self, deadline: float, *, same_ports: bool) -> None:
        for sub in ("etc", "log", "run", "cache"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.devices / DEVICE).mkdir(parents=True, exist_ok=True)
        if self._syslog_sink is None:
            self._syslog_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._syslog_sink.bind((self.host, 0))
        if not same_ports:
            self.ports = dict(zip(SERVERS, _free_ports(self.host, len(SERVERS)), strict=True))
        for name in SERVERS:
            (self.etc / f"{name}-server.conf").write_text(self._config(name), encoding="utf-8")
        if not (same_ports and all((self.etc / f"{r}.ring.gz").exists() for r in RINGS)):
            self._build_rings(deadline)  # a restart on the same ports keeps its rings
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
        }
        for name in SERVERS:
            log = self.log_files[name].open("ab")
            self._log_offsets[name] = log.tell()
            server_env = dict(env)
            if name == "proxy":
                server_env["PYTHONPATH"] = str(MIDDLEWARE_DIR)
            binary = find_server(name)
            assert binary is not None
            self.processes[name] = subprocess.Popen(
                [binary, str(self.etc / f"{name}-server.conf"), "--verbose"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env,
                start_new_session=True,
            )
            log.close()
            pid_file = self.workdir / "run" / f"{name}.pid"
            pid_file.write_text(f"{self.processes[name].pid}\n", encoding="utf-8")
        for name in ("proxy", "account", "container", "object"):
            self._wait_healthy(name, deadline)

    def _wait_healthy(self, name: str, deadline: float) -> None:
        url = f"http://{self.host}:{self.ports[name]}/healthcheck"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            process = self.processes[name]
            if process.poll() is not None:
                tail = self.log_tail()
                if "Could not bind to" in self._log_since_start(name):  # EADDRINUSE only
                    raise _PortTaken(f"{name}: port {self.ports[name]} taken:\n{tail}")
                raise RuntimeError(f"swift {name} server exited ({process.returncode}):\n{tail}")
            try:
                with opener.open(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"swift {name} server: no 200 at {url}:\n{self.log_tail()}")
            time.sleep(0.1)

    def _build_rings(self, deadline: float) -> None:
        for stale in self.etc.glob("*.builder"):
            stale.unlink()
        for stale in self.etc.glob("*.ring.gz"):
            stale.unlink()
        shutil.rmtree(self.etc / "backups", ignore_errors=True)
        specs = [f"{name}:{self.host}:{self.ports[name]}:{PART_POWER}:{DEVICE}" for name in RINGS]
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", _RING_SCRIPT, str(self.etc), *specs],
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )
        (self.workdir / "log" / "rings.log").write_text(done.stdout + done.stderr, "utf-8")
        if done.returncode != 0:
            raise RuntimeError(f"building Swift's rings failed:\n{done.stdout}{done.stderr}")

    def _config(self, name: str) -> str:
        """The paste.deploy config of server `name` (`[DEFAULT]` options: Swift's deployment
        guide; `user`: the current one, as Swift would otherwise switch to `swift`)."""
        assert self._syslog_sink is not None
        common = (
            "[DEFAULT]\n"
            f"bind_ip = {self.host}\n"
            f"bind_port = {self.ports[name]}\n"
            "bind_timeout = 2\n"
            "workers = 0\n"
            f"user = {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"swift_dir = {self.etc}\n"
            f"devices = {self.devices}\n"
            "mount_check = false\n"
            f"recon_cache_path = {self.workdir / 'cache'}\n"
            f"log_name = {name}-server\n"
            "log_level = INFO\n"
            f"log_udp_host = {self.host}\n"
            f"log_udp_port = {self._syslog_sink.getsockname()[1]}\n"
        )
        if name != "proxy":
            return (
                common
                + f"\n[pipeline:main]\npipeline = healthcheck {name}-server\n"
                + "\n[filter:healthcheck]\nuse = egg:swift#healthcheck\n"
                + f"\n[app:{name}-server]\nuse = egg:swift#{name}\n"
            )
        pipeline = (
            "catch_errors gatekeeper healthcheck proxy-logging listing_formats bulk"
            " lab_authtoken copy slo dlo proxy-logging proxy-server"
        )
        auth = f"keystone_url = {self.keystone_url}\n"
        if self.service_type:
            auth += f"service_type = {self.service_type}\n"
        filters = "".join(
            f"\n[filter:{section}]\nuse = egg:swift#{entry}\n"
            for section, entry in (
                ("catch_errors", "catch_errors"),
                ("gatekeeper", "gatekeeper"),
                ("healthcheck", "healthcheck"),
                ("proxy-logging", "proxy_logging"),
                ("listing_formats", "listing_formats"),
                ("bulk", "bulk"),
                ("copy", "copy"),
                ("slo", "slo"),
                ("dlo", "dlo"),
            )
        )
        return (
            common
            + f"\n[pipeline:main]\npipeline = {pipeline}\n"
            + "\n[app:proxy-server]\nuse = egg:swift#proxy\n"
            + "allow_account_management = true\naccount_autocreate = true\n"
            + "\n[filter:lab_authtoken]\nuse = call:lab_authtoken:filter_factory\n"
            + auth
            + filters
        )


class _PortTaken(RuntimeError):
    pass


@dataclass
class CatalogedSwift:
    """A started Swift that a lab cloud's Keystone names (`start_beside`)."""

    server: SwiftServer
    url: str
    """The project's account, http://<host>:<port>/v1/AUTH_<project>."""
    credential: AppCredential
    """The credential that made the container (an operator's, unrestricted)."""
    token: str
    """A token of `credential`."""


def start_beside(
    keystone: Keystone, auth_url: str, workdir: Path, host: str, container: str, who: str
) -> CatalogedSwift:
    """A real Swift beside a lab cloud: started on `host`, named in its Keystone's catalog
    (`object-store`, as a cloud's is), and `container` made with a token of a new
    credential `who`, as the program's `openstack.objectstorage.Container` makes it. Stop
    it with `.server.stop()` (it is stopped here if the container cannot be made)."""
    server = SwiftServer(workdir, host, auth_url, keystone.project_id)
    url = server.start()
    try:
        keystone.endpoints.append(Endpoint("object-store", "swift", "public", "RegionOne", url))
        credential = keystone.add_credential(who)
        token = keystone.issue(credential).id
        request = urllib.request.Request(
            f"{url}/{container}", method="PUT", headers={"X-Auth-Token": token}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status = answer.status
        except urllib.error.HTTPError as error:
            status = error.code
        if status not in (201, 202):
            raise RuntimeError(f"Swift at {url}: container {container}: HTTP {status}")
    except BaseException:
        server.stop()
        raise
    return CatalogedSwift(server, url, credential, token)
