"""The proxy role: an etcd gRPC proxy in front of the cluster that follows its membership.

etcd's gRPC proxy (`etcd grpc-proxy start`, https://etcd.io/docs/v3.5/op-guide/grpc_proxy/)
forwards to the `--endpoints` it was started with and, in etcd 3.4 and 3.5, never learns
other ones: its client has no endpoint sync (`--endpoints-auto-sync-interval` comes only
with etcd 3.6). The two flags that sound like it do something else:
`--resolver-prefix`/`--resolver-ttl` make the proxy register *itself* under a key prefix,
so that clients can discover the proxies (the proxy's member list then answers the
registered proxies, not the etcd members), and `--discovery-srv` reads DNS SRV records once,
at start. A proxy started with three members' URLs keeps serving while one of them
remains, then fails, however many members were added meanwhile.

So the agent follows the membership itself. Every `lockattemptperiod` it reads the member
list (etcd's own, a quorum read: `EtcdClient.members()`) through the endpoints the proxy
has, or, when none of them answers (first boot, or every one replaced), through the client
URLs of the group's servers the cloud lists. When the client URLs of the started voters
change, it writes the proxy's environment file and restarts the proxy. Learners are left
out (a learner refuses client requests), and so are members not started yet (no URL).

The proxy speaks gRPC only: it has no JSON gateway (`/v3/...` answers 404 on 3.4 and
3.5). Its `/health` is etcd's (a quorum read through the proxy's own client): once it
answers `{"health": "true"}` the proxy serves, and the `proxyconfig` hook runs, once.

A proxy is not a member: it never adds, removes or promotes one.

Two ways to run the proxy, as for etcd (agent/etcd_server.py): `SystemdProxy` writes
`/etc/autoscale-etcd/proxy.env` and restarts `etcd-autoscale-proxy.service`, whose
`ExecStart` builds the same command line from that file (infra/units); `SubprocessProxy`
runs the command as a child process (tests, lab) beside the same file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

from agent.bootstrap import ClientFactory
from agent.child import ChildProcess
from agent.cloud import Cloud, CloudError
from agent.etcd import EtcdError, normalize_url
from agent.etcd_server import client_url
from agent.files import atomic_write
from agent.hooks import HookResult, hook_environment, run_hook, run_hook_unit
from agent.httpclient import Http, HttpError
from agent.loop import etcd_client_factory
from agent.settings import AgentSettings
from agent.snapshot import Member, NodeIdentity
from agent.state import AgentState
from agent.systemd import Runner, SystemdUnit, run_command

log = logging.getLogger("agent.proxy")

PROXY_UNIT = "etcd-autoscale-proxy.service"
PROXY_ENV = Path("/etc/autoscale-etcd/proxy.env")
ENV_KEYS = (
    "ETCD_PROXY_ENDPOINTS",
    "ETCD_PROXY_LISTEN",
    "ETCD_PROXY_ADVERTISE",
    "ETCD_PROXY_TLS_FLAGS",
)
_UNSAFE = set('"\\$`\n\r')


@dataclass(frozen=True)
class ProxyConfig:
    """What the proxy is started with: `etcd grpc-proxy start <arguments()>`."""

    endpoints: tuple[str, ...]
    """The members' client URLs, sorted."""
    listen: str
    """host:port the proxy listens on (this node's address, the stack's client port)."""
    advertise: str
    """This proxy's client URL (what its member list tells clients)."""
    tls_flags: tuple[str, ...] = ()

    def environment(self) -> dict[str, str]:
        """The variables the unit's ExecStart reads (infra/units/etcd-autoscale-proxy.service)."""
        return {
            "ETCD_PROXY_ENDPOINTS": ",".join(self.endpoints),
            "ETCD_PROXY_LISTEN": self.listen,
            "ETCD_PROXY_ADVERTISE": self.advertise,
            "ETCD_PROXY_TLS_FLAGS": " ".join(self.tls_flags),
        }

    def env_text(self) -> str:
        """The environment file: `KEY="value"` lines (systemd's EnvironmentFile= syntax)."""
        lines = []
        for key, value in self.environment().items():
            if _UNSAFE & set(value):
                raise ValueError(f"{key}={value!r}: no quotes, backslashes, $ or newlines")
            lines.append(f'{key}="{value}"')
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> ProxyConfig | None:
        """The config an environment file holds; None when a variable is missing."""
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                values[key.strip()] = value
        if any(key not in values for key in ENV_KEYS):
            return None
        return cls(
            endpoints=tuple(u for u in values["ETCD_PROXY_ENDPOINTS"].split(",") if u),
            listen=values["ETCD_PROXY_LISTEN"],
            advertise=values["ETCD_PROXY_ADVERTISE"],
            tls_flags=tuple(values["ETCD_PROXY_TLS_FLAGS"].split()),
        )

    def arguments(self) -> list[str]:
        """The arguments after the etcd binary, as the unit's ExecStart expands them."""
        return [
            "grpc-proxy",
            "start",
            f"--endpoints={','.join(self.endpoints)}",
            f"--listen-addr={self.listen}",
            f"--advertise-client-url={self.advertise}",
            *self.tls_flags,
        ]


def proxy_config(settings: AgentSettings, ip: str, endpoints: Sequence[str]) -> ProxyConfig:
    """The proxy of node `ip` in front of `endpoints`, on the stack's client port.

    With https clients the proxy talks TLS both ways with the node's certificate:
    `--cacert/--cert/--key` towards the members (which ask for a client certificate), and
    `--cert-file/--key-file/--trusted-ca-file` to its own clients, who then need a
    certificate of the cluster CA too. etcd 3.4 and 3.5 refuse a `--cert` whose subject has
    a Common Name ("cert has non empty Common Name"), so a proxy's certificate must have none.
    """
    etcd = settings.etcd
    host = f"[{ip}]" if ":" in ip else ip
    flags: tuple[str, ...] = ()
    if etcd.client_scheme == "https" and etcd.tls is not None:
        tls = etcd.tls
        flags = (
            f"--cacert={tls.ca_file}",
            f"--cert={tls.cert_file}",
            f"--key={tls.key_file}",
            f"--cert-file={tls.cert_file}",
            f"--key-file={tls.key_file}",
            f"--trusted-ca-file={tls.ca_file}",
        )
    return ProxyConfig(
        endpoints=tuple(sorted(dict.fromkeys(endpoints))),
        listen=f"{host}:{etcd.client_port}",
        advertise=client_url(ip, etcd),
        tls_flags=flags,
    )


def member_endpoints(members: Sequence[Member]) -> list[str]:
    """The client URLs a proxy forwards to: those of started voters, sorted."""
    urls = {u for m in members if m.started and not m.is_learner for u in m.client_urls}
    return sorted(urls)


def write_env_file(path: Path, config: ProxyConfig) -> None:
    """Write the environment file atomically (mode 0644: it holds no secret)."""
    atomic_write(path, config.env_text(), mode=0o644)


def read_env_file(path: Path) -> ProxyConfig | None:
    try:
        return ProxyConfig.parse(Path(path).read_text(encoding="utf-8"))
    except OSError:
        return None


class ProxyService(Protocol):
    @property
    def env_path(self) -> Path: ...

    def current(self) -> ProxyConfig | None:
        """The config the proxy was last (re)started with; None if never."""
        ...

    def apply(self, config: ProxyConfig) -> None:
        """Write the config and (re)start the proxy with it."""
        ...

    def is_running(self) -> bool: ...

    def stop(self) -> None: ...

    def recent_log(self, chars: int = 3000) -> str:
        """The end of what the proxy logged (why it exited, if it did)."""
        ...


class SystemdProxy:
    """The node's `etcd-autoscale-proxy.service`, which reads `/etc/autoscale-etcd/proxy.env`."""

    def __init__(
        self, *, unit: str = PROXY_UNIT, env_path: Path = PROXY_ENV, runner: Runner = run_command
    ) -> None:
        self.unit = unit
        self.env_path = Path(env_path)
        self.systemd = SystemdUnit(unit, runner)

    def current(self) -> ProxyConfig | None:
        return read_env_file(self.env_path)

    def apply(self, config: ProxyConfig) -> None:
        write_env_file(self.env_path, config)
        self.systemd.restart()

    def is_running(self) -> bool:
        return self.systemd.is_active()

    def stop(self) -> None:
        self.systemd.stop(check=False)

    def recent_log(self, chars: int = 3000) -> str:
        return self.systemd.journal(lines=50)[-chars:]


class SubprocessProxy:
    """The proxy as a detached child process (tests, lab). `proxy.env`, `proxy.log` and
    `proxy.pid` live in `directory`, so another process can find and stop it by pid
    (agent/child.py: a pid counts only while it runs a grpc-proxy where `proxy.env` says)."""

    def __init__(self, binary: str, directory: Path, *, stop_timeout: float = 5.0) -> None:
        self.binary = binary
        self.directory = Path(directory)
        self.stop_timeout = stop_timeout
        self.child = ChildProcess(
            self.directory / "proxy.pid",
            self.directory / "proxy.log",
            identity=self._is_our_proxy,
            stop_timeout=stop_timeout,
        )

    @property
    def env_path(self) -> Path:
        return self.directory / "proxy.env"

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    @property
    def pid_path(self) -> Path:
        return self.child.pid_path

    def current(self) -> ProxyConfig | None:
        return read_env_file(self.env_path)

    def command(self, config: ProxyConfig) -> list[str]:
        return [self.binary, *config.arguments()]

    def apply(self, config: ProxyConfig) -> None:
        self.stop()
        write_env_file(self.env_path, config)
        self.child.spawn(self.command(config), cwd=self.directory)

    @property
    def pid(self) -> int | None:
        return self.child.pid

    def is_running(self) -> bool:
        return self.child.is_running()

    def _is_our_proxy(self, cmdline: list[bytes]) -> bool:
        """A grpc-proxy listening where our env file says."""
        config = self.current()
        listen = f"--listen-addr={config.listen}".encode() if config else None
        return b"grpc-proxy" in cmdline and (listen is None or listen in cmdline)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout`; waits until it is gone."""
        self.child.stop()

    def recent_log(self, chars: int = 3000) -> str:
        return self.child.read_log(since_start=False)[-chars:]


def make_proxy_service(settings: AgentSettings) -> SystemdProxy | SubprocessProxy:
    """The service kind the settings ask for (the same switch as etcd's)."""
    if settings.etcd.service == "systemd":
        return SystemdProxy()
    return SubprocessProxy(settings.etcd.binary, Path(settings.state_dir) / "proxy")


class ProxyAgent:
    """One proxy node's agent: keeps the gRPC proxy pointed at the current members."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        cloud: Cloud,
        service: ProxyService,
        client_factory: ClientFactory | None = None,
        clock: Callable[[], float] = time.time,
        serve_timeout: float | None = None,
    ) -> None:
        if settings.role != "proxy":
            raise ValueError(f"ProxyAgent needs role 'proxy', not {settings.role!r}")
        self.settings = settings
        self.cloud = cloud
        self.service = service
        self.client_factory = client_factory or etcd_client_factory(settings)
        self.clock = clock
        period = settings.scaling.lockattemptperiod
        self.serve_timeout = serve_timeout if serve_timeout is not None else min(30.0, period)
        self.state_dir = Path(settings.state_dir)
        self.state = AgentState.load(self.state_dir)
        self.stopped = threading.Event()

    @cached_property
    def me(self) -> NodeIdentity:
        """This node, as the cloud knows it (asked once it answers)."""
        return self.cloud.whoami()

    @property
    def url(self) -> str:
        """This proxy's client URL."""
        return client_url(self.me.ip, self.settings.etcd)

    # --- observe ---------------------------------------------------------------------------

    def members(self) -> tuple[list[Member] | None, str]:
        """The member list and where it came from; None and why when no member answered.

        First through the endpoints the proxy has (any one member answers for all), then
        through the group's servers as the cloud lists them.
        """
        own = normalize_url(self.url)
        current = self.service.current()
        known = [u for u in (current.endpoints if current else ()) if normalize_url(u) != own]
        failures = []
        if known:
            members, error = self._list(known)
            if members is not None:
                return members, "the proxy's endpoints"
            failures.append(error)
        try:
            servers = self.cloud.group_members()
        except CloudError as error:
            failures.append(f"cloud: {error}")
            return None, "; ".join(failures)
        seeds = [
            client_url(node.ip, self.settings.etcd)
            for node in servers
            if node.ip and node.status in ("ACTIVE", "BUILD")
        ]
        seeds = [u for u in seeds if normalize_url(u) != own and u not in known]
        if not seeds:
            failures.append("the cloud lists no server with an address")
            return None, "; ".join(failures)
        members, error = self._list(seeds)
        if members is not None:
            return members, f"the group's {len(seeds)} servers"
        failures.append(error)
        return None, "; ".join(failures)

    def _list(self, endpoints: list[str]) -> tuple[list[Member] | None, str]:
        client = self.client_factory(endpoints)
        try:
            return client.members(check_health=False), ""
        except EtcdError as error:
            return None, str(error)
        finally:
            client.close()

    def serving(self, timeout: float) -> bool:
        """The proxy's /health answers {"health": "true"} within `timeout` seconds."""
        tls = self.settings.etcd.tls
        verify: bool | str = True
        cert: tuple[str, str] | None = None
        if tls is not None and self.settings.etcd.client_scheme == "https":
            verify, cert = tls.ca_file, (tls.cert_file, tls.key_file)
        deadline = time.monotonic() + timeout
        with Http(verify=verify, cert=cert) as http:
            while True:
                try:
                    answer = http.get(f"{self.url}/health", timeout=2.0)
                    if answer.status_code == 200 and answer.json().get("health") == "true":
                        return True
                except (HttpError, ValueError, AttributeError):
                    pass
                if time.monotonic() >= deadline or self.stopped.is_set():
                    return False
                time.sleep(0.2)

    # --- one cycle ----------------------------------------------------------------------------

    def cycle(self) -> str:
        members, source = self.members()
        current = self.service.current()
        if members is None:
            sentence = f"no etcd answer ({source})"
            if current is not None and not self.service.is_running():
                why = self._last_log_line()
                self.service.apply(current)
                sentence += f"; proxy was down ({why}): restarted on its endpoints {_show(current)}"
            else:
                sentence += "; proxy endpoints unchanged"
        else:
            wanted = proxy_config(self.settings, self.me.ip, member_endpoints(members))
            sentence = f"saw {len(members)} members via {source}"
            if not wanted.endpoints:
                sentence += "; no started voter with a client URL: proxy unchanged"
            elif wanted != current:
                self.service.apply(wanted)
                was = _show(current) if current else "none"
                sentence += f"; proxy endpoints {was} -> {_show(wanted)}: proxy (re)started"
            elif not self.service.is_running():
                why = self._last_log_line()
                self.service.apply(wanted)
                sentence += f"; proxy was down ({why}): started on {_show(wanted)}"
            else:
                sentence += f"; proxy endpoints unchanged ({len(wanted.endpoints)})"
        if not self.state.configured and self.service.current() is not None:
            sentence += "; " + self._configure(members)
        self.state.last_cycle = sentence
        self.state.updated = self.clock()
        self.state.save(self.state_dir)
        log.info("%s", sentence)
        return sentence

    def _configure(self, members: list[Member] | None) -> str:
        """Run the proxyconfig hook once the proxy serves; retried each cycle until it succeeds."""
        if not self.serving(self.serve_timeout):
            why = "" if self.service.is_running() else f" (exited: {self._last_log_line()})"
            return f"proxy at {self.url} not serving yet{why}; proxyconfig waits"
        config = self.service.current()
        if members:
            endpoints = member_endpoints(members)
        else:
            endpoints = list(config.endpoints) if config else []
        env = hook_environment(
            cluster=self.settings.cluster_name,
            endpoints=endpoints,
            node_name=self.me.name,
            node_ip=self.me.ip,
            is_leader=False,
        )
        env.pop("AUTOSCALE_IS_LEADER")
        env["AUTOSCALE_PROXY_URL"] = self.url
        result = self._run_hook(self.settings.hooks.proxyconfig, env)
        if result.ok:
            self.state.configured = True
            return f"proxy serves at {self.url}; proxyconfig: {result.detail}"
        return f"proxyconfig: {result.detail}; retried next cycle"

    def _last_log_line(self) -> str:
        lines = [line.strip() for line in self.service.recent_log().splitlines() if line.strip()]
        return lines[-1][:200] if lines else "no log"

    def _run_hook(self, path: str | None, env: dict[str, str]) -> HookResult:
        """Through systemd on a node (outside the agent's sandbox), as a child otherwise."""
        if self.settings.etcd.service == "systemd":
            return run_hook_unit(path, env, self.settings.hooks.timeout)
        return run_hook(path, env, self.settings.hooks.timeout)

    # --- the whole life ------------------------------------------------------------------------

    def run(self) -> int:
        """Cycle every `lockattemptperiod` until stopped. The proxy keeps running after."""
        period = self.settings.scaling.lockattemptperiod
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                self.cycle()
            except Exception:  # one bad cycle must not kill the agent
                log.exception("proxy cycle failed")
            self.stopped.wait(max(0.0, period - (time.monotonic() - started)))
        return 0


def _show(config: ProxyConfig) -> str:
    return ",".join(config.endpoints) or "(none)"
