"""A real netdata daemon (Debian's package), one child process on a loopback address.

Used by the tests (tests/test_netdata_contract.py, tests/test_metrics_server.py) and by
`python -m lab metrics` (lab/metrics_pair.py):

    server = NetdataServer(tmp_path / "netdata")   # or host="127.X.Y.n" for a fixed address
    server.start()            # random 127.0.0.x address (unless given), free port, own dirs
    requests.get(server.url + "/api/v1/allmetrics?format=shell")
    server.stop()             # SIGTERM to its pid, SIGKILL after a grace period

Everything it writes lives under the directory given. It runs in the foreground (`-D`)
as the current user (`run as user` set to it, so root works too), with only the
`proc` collector and the in-memory database: system.cpu, system.load and memory
charts are there after about two seconds. netdata's own phone-home is switched off:
`DO_NOT_TRACK` makes anonymous-statistics.sh exit at once, and `VIRTUALIZATION=none`
keeps system-info.sh from probing 169.254.169.254 for a cloud (this sandbox only has
loopback).
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

# Collectors of the proc plugin not needed for CPU, load and memory: off, for speed.
_PROC_MODULES_OFF = (
    "/proc/net/dev",
    "/proc/diskstats",
    "/proc/interrupts",
    "/proc/softirqs",
    "/proc/net/netstat",
    "/proc/net/snmp",
    "/proc/net/snmp6",
    "/proc/net/sockstat",
    "/proc/net/sockstat6",
    "/proc/net/softnet_stat",
    "/proc/net/stat/conntrack",
    "/proc/net/stat/synproxy",
    "/proc/net/sctp/snmp",
    "/proc/net/wireless",
    "/proc/mdstat",
    "/proc/net/rpc/nfsd",
    "/proc/net/rpc/nfs",
    "/proc/spl/kstat/zfs/arcstats",
    "/proc/spl/kstat/zfs/pool/state",
    "/sys/fs/btrfs",
    "/sys/class/infiniband",
    "/sys/class/power_supply",
    "/sys/devices/system/edac/mc",
    "/sys/devices/system/node",
    "/proc/pressure",
    "ipc",
)


def find_netdata() -> str | None:
    """$NETDATA_BIN, `netdata` on PATH, or Debian's /usr/sbin/netdata; None if none."""
    for candidate in (os.environ.get("NETDATA_BIN"), shutil.which("netdata"), "/usr/sbin/netdata"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_address(host: str | None = None) -> tuple[str, int]:
    """`host` (default: a random 127.0.0.x, x in 2..250) and a port the kernel says is free
    there now."""
    host = host or f"127.0.0.{random.randint(2, 250)}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return host, sock.getsockname()[1]


class NetdataServer:
    """One netdata daemon whose config, cache, lib and log dirs are under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str | None = None,
        extra_config: str = "",
        hostname: str = "netdata-test",
        config_files: dict[str, str] | None = None,
        host: str | None = None,
    ):
        """`config_files`: file name -> text, written to its config dir before it starts
        (e.g. `stream.conf`, which netdata reads from there). `host`: the address to listen
        on (default: a random 127.0.0.x); the port is always a free one."""
        self.workdir = Path(workdir)
        self.binary = binary or find_netdata()
        self.extra_config = extra_config
        self.hostname = hostname
        self.config_files = dict(config_files or {})
        self.fixed_host = host
        self.host = ""
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def config_text(self) -> str:
        user = pwd.getpwuid(os.getuid()).pw_name
        proc_off = "".join(f"\t{module} = no\n" for module in _PROC_MODULES_OFF)
        return (
            "[global]\n"
            f"\trun as user = {user}\n"
            f"\thostname = {self.hostname}\n"
            "[db]\n\tmode = ram\n\tretention = 600\n\tupdate every = 1\n"
            "[directories]\n"
            f"\tconfig = {self.workdir / 'etc'}\n"
            f"\tcache = {self.workdir / 'cache'}\n"
            f"\tlib = {self.workdir / 'lib'}\n"
            f"\tlog = {self.workdir / 'log'}\n"
            "[web]\n"
            f"\tbind to = {self.host}:{self.port}\n"
            "[plugins]\n"
            "\tenable running new plugins = no\n\tproc = yes\n\tstatsd = no\n"
            "\ttc = no\n\tcgroups = no\n\tdiskspace = no\n\ttimex = no\n\tidlejitter = no\n"
            "[plugin:proc]\n" + proc_off + "[ml]\n\tenabled = no\n"
            "[health]\n\tenabled = no\n"
            "[registry]\n\tenabled = no\n" + self.extra_config
        )

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start it on a fresh address; retry elsewhere if the port was taken meanwhile."""
        if self.binary is None:
            raise FileNotFoundError("netdata not found (setup/system-packages.sh installs it)")
        error = ""
        for _ in range(attempts):
            self.host, self.port = free_address(self.fixed_host)
            try:
                self._start_once(timeout)
                return
            except RuntimeError as exc:
                error = str(exc)
                self.stop()
        raise RuntimeError(f"netdata did not start after {attempts} attempts: {error}")

    def _start_once(self, timeout: float) -> None:
        for sub in ("etc", "cache", "lib", "log"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        for name, text in self.config_files.items():
            (self.workdir / "etc" / name).write_text(text, encoding="utf-8")
        config = self.workdir / "netdata.conf"
        config.write_text(self.config_text(), encoding="utf-8")
        env = {**os.environ, "DO_NOT_TRACK": "1", "DISABLE_TELEMETRY": "1"}
        env["VIRTUALIZATION"] = "none"
        output = (self.workdir / "log" / "stdout.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-D", "-c", str(config), "-P", str(self.workdir / "netdata.pid")],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        output.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"netdata exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                if requests.get(self.url + "/api/v1/info", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"netdata API not up at {self.url} in {timeout}s: {self.log_tail()}")

    def wait_for_points(
        self,
        chart: str = "system.cpu",
        dimension: str = "idle",
        count: int = 2,
        timeout: float = 20.0,
    ) -> None:
        """Poll /api/v1/data until the dimension has `count` collected (non-null) points.

        A collector's first sample gives no rate, so system.cpu needs a couple of seconds.
        """
        params = {
            "chart": chart,
            "dimension": dimension,
            "after": str(-(count + 5)),
            "format": "json",
            "options": "unaligned",
        }
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                response = requests.get(self.url + "/api/v1/data", params=params, timeout=2)
                if response.status_code == 200:
                    rows = response.json().get("data") or []
                    if sum(1 for row in rows if row[1] is not None) >= count:
                        return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{chart}/{dimension}: fewer than {count} points after {timeout}s")

    def mirrored_hosts(self) -> list[str]:
        """The hosts it serves (`GET /api/v1/info` `mirrored_hosts`: itself and, on a parent,
        every child streaming to it); [] when it does not answer."""
        try:
            info = requests.get(self.url + "/api/v1/info", timeout=2).json()
        except (requests.RequestException, ValueError):
            return []
        hosts = info.get("mirrored_hosts") if isinstance(info, dict) else None
        return [str(h) for h in hosts] if isinstance(hosts, list) else []

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM its pid, then SIGKILL; its plugins share its new session and go with it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(grace)
        try:  # helpers it spawned (its spawn server, plugins) are in its session
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, chars: int = 2000) -> str:
        parts = []
        for name in ("stdout.log", "error.log"):
            path = self.workdir / "log" / name
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace")[-chars:])
        return "\n".join(parts)
