"""TLS of an https stack: the node's certificate as infra/node/issue-cert.sh issues it at boot,
and real etcd 3.4 and 3.5 clusters over https (client and peer) with client-cert-auth.

References: etcd's transport security model (https://etcd.io/docs/v3.5/op-guide/security/:
client-cert-auth, trusted-ca-file, and "server denies incoming peer certs with wrong IP
SAN"); OpenSSL's req, x509 and verify commands
(https://docs.openssl.org/3.0/man1/openssl-x509/); Nova's metadata service
(https://docs.openstack.org/nova/latest/user/metadata.html: EC2 `local-ipv4`,
OpenStack `network_data.json`).
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from agent.etcd import EtcdClient, EtcdError
from agent.etcd_server import SubprocessEtcd, etcd_config, write_config
from agent.settings import EtcdSettings, TlsFiles
from agent.tls import CA, CA_DAYS, ISSUE_CERT_SCRIPT, NODE_DAYS, TlsError, issue_node_cert, make_ca
from infra.settings import PROJECT_DIR
from tests.agent_lab import addresses as _addresses
from tests.etcd_cluster import wait_until
from tests.tools import need, need_etcd

VERSIONS = ["3.4", "3.5"]


@pytest.fixture(autouse=True)
def _openssl() -> None:
    need("openssl")


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return make_ca(tmp_path / "deploy", "tls-test")


# --- reading certificates (with the openssl command, independent of agent.tls) --------------


def openssl(*args: str) -> str:
    return subprocess.run(
        ["openssl", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def cert_text(path: str | Path) -> str:
    return openssl("x509", "-in", str(path), "-noout", "-text")


def sans(path: str | Path) -> list[str]:
    """The subjectAltName entries, as openssl prints them ('IP Address:1.2.3.4', 'DNS:x')."""
    out = openssl("x509", "-in", str(path), "-noout", "-ext", "subjectAltName")
    return [part.strip() for part in out.splitlines()[1].split(",")]


def validity_days(path: str | Path) -> float:
    out = openssl("x509", "-in", str(path), "-noout", "-startdate", "-enddate")
    dates = dict(line.split("=", 1) for line in out.splitlines())
    fmt = "%b %d %H:%M:%S %Y %Z"
    start = datetime.strptime(" ".join(dates["notBefore"].split()), fmt)
    end = datetime.strptime(" ".join(dates["notAfter"].split()), fmt)
    return (end - start).total_seconds() / 86400


def public_key(path: str | Path, *, of: str) -> str:
    if of == "cert":
        return openssl("x509", "-in", str(path), "-noout", "-pubkey")
    return openssl("pkey", "-in", str(path), "-pubout")


def verifies(ca_file: str | Path, cert: str | Path, purpose: str) -> bool:
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_file), "-purpose", purpose, str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


# --- a metadata service on loopback ----------------------------------------------------------


class Metadata:
    """Nova's metadata paths the script reads; `answers[path] = (status, body)`."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, str]] = {}
        self.asked: list[str] = []
        metadata = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                metadata.asked.append(self.path)
                status, body = metadata.answers.get(self.path, (404, "Not Found"))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        ip = _addresses(1)[0][0]
        self.server = ThreadingHTTPServer((ip, 0), Handler)
        self.url = f"http://{ip}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metadata() -> Iterator[Metadata]:
    served = Metadata()
    yield served
    served.close()


def _own_group() -> str:
    return grp.getgrgid(os.getegid()).gr_name


# --- the node's certificate -----------------------------------------------------------------


def test_boot_issues_a_certificate_for_the_metadata_address_and_drops_the_ca_key(
    tmp_path, ca, metadata
):
    metadata.answers["/latest/meta-data/local-ipv4"] = (200, "10.42.0.17")
    pki = tmp_path / "node" / "pki"
    tls = issue_node_cert(ca, pki, name="etcd-node-a", metadata_url=metadata.url)

    assert metadata.asked == ["/latest/meta-data/local-ipv4"]
    assert tls == TlsFiles(
        ca_file=str(pki / "ca.crt"), cert_file=str(pki / "node.crt"), key_file=str(pki / "node.key")
    )
    # the node keeps the CA certificate, its own key and certificate, nothing else
    assert sorted(p.name for p in pki.iterdir()) == ["ca.crt", "node.crt", "node.key"]
    assert ca.key_file.exists()  # the deployer's key is not the node's copy
    text = cert_text(tls.cert_file)
    assert "Subject: CN = etcd-node-a" in text
    assert sans(tls.cert_file) == [
        "IP Address:10.42.0.17",
        "IP Address:127.0.0.1",
        "DNS:etcd-node-a",
    ]
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "ASN1 OID: prime256v1" in text  # EC P-256, as the CA
    assert validity_days(tls.cert_file) == NODE_DAYS
    assert public_key(tls.cert_file, of="cert") == public_key(tls.key_file, of="key")
    # signed by the cluster CA, good for both ends of a TLS connection
    assert verifies(ca.cert_file, tls.cert_file, "sslserver")
    assert verifies(ca.cert_file, tls.cert_file, "sslclient")
    other = make_ca(tmp_path / "other", "other-cluster")
    assert not verifies(other.cert_file, tls.cert_file, "sslserver")
    # etcd's group may read the key, nobody else; the certificates are public
    key = os.stat(tls.key_file)
    assert oct(key.st_mode & 0o777) == "0o640"
    assert grp.getgrgid(key.st_gid).gr_name == _own_group()
    assert oct(os.stat(tls.cert_file).st_mode & 0o777) == "0o644"
    assert oct(os.stat(tls.ca_file).st_mode & 0o777) == "0o644"


def test_the_address_falls_back_to_network_data_json_as_the_agent_does(tmp_path, ca, metadata):
    network_data = {
        "networks": [
            {"id": "n6", "type": "ipv6", "ip_address": "2001:db8::5"},
            {"id": "n4", "type": "ipv4", "ip_address": "10.42.0.23"},
        ]
    }
    metadata.answers["/openstack/latest/network_data.json"] = (200, json.dumps(network_data))
    tls = issue_node_cert(ca, tmp_path / "pki", name="b", metadata_url=metadata.url)
    assert metadata.asked == [
        "/latest/meta-data/local-ipv4",
        "/openstack/latest/network_data.json",
    ]
    assert sans(tls.cert_file)[0] == "IP Address:10.42.0.23"


def test_without_a_metadata_service_the_address_comes_from_the_config_drive(tmp_path, ca, metadata):
    """A cloud with a config drive only: cloud-init's instance data names the address."""
    instance_data = tmp_path / "instance-data.json"
    instance_data.write_text(
        json.dumps(
            {
                "v1": {"instance_id": "5e0c2f4a-1b2c-4d5e-8f90-123456789abc"},
                "ds": {
                    "meta_data": {"uuid": "5e0c2f4a-1b2c-4d5e-8f90-123456789abc", "name": "e"},
                    "ec2_metadata": {"local-ipv4": "10.42.0.55"},
                    "network_json": {"networks": [{"type": "ipv4_dhcp", "id": "n0"}]},
                },
            }
        )
    )
    tls = issue_node_cert(
        ca, tmp_path / "pki", name="e", metadata_url=metadata.url, instance_data=str(instance_data)
    )
    assert metadata.asked[:1] == ["/latest/meta-data/local-ipv4"]  # asked first, 404
    assert sans(tls.cert_file)[0] == "IP Address:10.42.0.55"


def test_no_address_means_no_certificate_and_the_ca_key_stays_for_a_retry(tmp_path, ca, metadata):
    pki = tmp_path / "pki"
    nothing = str(tmp_path / "no-instance-data.json")
    with pytest.raises(TlsError, match=r"issue-cert\.sh failed"):
        issue_node_cert(ca, pki, name="c", metadata_url=metadata.url, instance_data=nothing)
    assert sorted(p.name for p in pki.iterdir()) == ["ca.crt", "ca.key"]
    metadata.answers["/latest/meta-data/local-ipv4"] = (200, "not-an-address")
    with pytest.raises(TlsError, match="not an IPv4 address: 'not-an-address'"):
        issue_node_cert(ca, pki, name="c", metadata_url=metadata.url)
    assert not (pki / "node.crt").exists()
    metadata.answers["/latest/meta-data/local-ipv4"] = (200, "10.42.0.31")
    tls = issue_node_cert(ca, pki, name="c", metadata_url=metadata.url)
    assert sans(tls.cert_file)[0] == "IP Address:10.42.0.31"


def test_running_the_script_again_after_boot_changes_nothing(tmp_path, ca):
    pki = tmp_path / "pki"
    tls = issue_node_cert(ca, pki, ip="10.42.0.40", name="d")
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    # the script itself, as cloud-init would run it again (no CA key left: no new cert)
    env = {"PATH": os.environ["PATH"], "AUTOSCALE_NODE_IP": "10.42.0.99"}
    subprocess.run(["sh", str(ISSUE_CERT_SCRIPT), str(pki)], check=True, env=env, timeout=30)
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before
    assert sans(tls.cert_file)[0] == "IP Address:10.42.0.40"


_MOCK_CLUSTER_CA = """
import json
import pulumi
from infra.tls import ClusterCA, ClusterCAArgs

seen = {}


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        seen[args.typ] = args.inputs
        return args.name + "-id", dict(args.inputs, privateKeyPem="key", certPem="cert")

    def call(self, args):
        return {}


pulumi.runtime.set_mocks(Mocks(), project="autoscale-etcd", stack="tls", preview=False)


@pulumi.runtime.test
def declared():
    return ClusterCA("ca", ClusterCAArgs("tls-test")).cert_pem


declared()
print(json.dumps(seen))
"""


def test_the_lab_ca_is_the_ca_the_program_declares(ca):
    """make_ca mirrors infra.tls.ClusterCA: what the program asks pulumi-tls for, read under
    Pulumi's mocks, is what the lab's and the tests' CA certificate holds."""
    result = subprocess.run(
        [sys.executable, "-c", _MOCK_CLUSTER_CA],
        capture_output=True,
        text=True,
        cwd=PROJECT_DIR,
        timeout=60,
        check=True,
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    key = seen["tls:index/privateKey:PrivateKey"]
    cert = seen["tls:index/selfSignedCert:SelfSignedCert"]
    assert (key["algorithm"], key["ecdsaCurve"]) == ("ECDSA", "P256")
    text = cert_text(ca.cert_file)
    assert "ASN1 OID: prime256v1" in text
    assert cert["isCaCertificate"] is True
    # a subject key identifier: strict verification refuses a chain whose CA has none
    assert cert["setSubjectKeyId"] is True
    assert "Subject Key Identifier" in text
    assert re.search(r"Basic Constraints: critical\s+CA:TRUE", text)
    uses = {
        "cert_signing": "Certificate Sign",
        "crl_signing": "CRL Sign",
        "digital_signature": "Digital Signature",
    }
    assert set(cert["allowedUses"]) == set(uses)
    usage = re.search(r"Key Usage: critical\s+(.+)", text)
    assert usage is not None
    assert {u.strip() for u in usage.group(1).split(",")} == set(uses.values())
    assert cert["validityPeriodHours"] / 24 == CA_DAYS == validity_days(ca.cert_file)
    subject = cert["subject"]
    assert (subject["commonName"], subject["organization"]) == (
        "tls-test etcd CA",
        "autoscale-etcd",
    )
    assert "Subject: O = autoscale-etcd, CN = tls-test etcd CA" in text


# --- real etcd over https ----------------------------------------------------------------------


@pytest.fixture(params=VERSIONS)
def etcd_version_bin(request) -> str:
    return need_etcd(request.param)


class HttpsCluster:
    """etcd members over https (client and peer), each with the certificate its boot would
    issue, configured by agent.etcd_server as the agent configures them."""

    def __init__(self, tmp: Path, binary: str, ca: CA, spare: int = 2) -> None:
        self.tmp = tmp
        self.binary = binary
        self.ca = ca
        self.services: list[SubprocessEtcd] = []
        self.ips: list[str] = []
        self.client_port = self.peer_port = 0
        self.spare = spare

    def settings(self, name: str, tls: TlsFiles) -> EtcdSettings:
        return EtcdSettings(
            client_port=self.client_port,
            peer_port=self.peer_port,
            client_scheme="https",
            peer_scheme="https",
            tls=tls,
            data_dir=str(self.tmp / name / "data"),
            binary=self.binary,
            service="subprocess",
            heartbeat_ms=50,
            election_ms=500,
            cluster_token="tls-test",
        )

    def url(self, ip: str) -> str:
        return f"https://{ip}:{self.client_port}"

    def start(self, size: int) -> list[TlsFiles]:
        """`size` members that bootstrap together; retried on an address clash."""
        for _attempt in range(3):
            self.ips, self.client_port, self.peer_port = _addresses(size + self.spare)
            members = self.ips[:size]
            files = [
                issue_node_cert(self.ca, self.tmp / f"m{n}" / "pki", ip=ip, name=f"m{n}")
                for n, ip in enumerate(members)
            ]
            initial = {f"m{n}": f"https://{ip}:{self.peer_port}" for n, ip in enumerate(members)}
            started = [
                self.run(f"m{n}", ip, tls, initial)
                for n, (ip, tls) in enumerate(zip(members, files, strict=True))
            ]
            try:
                self.wait_formed(members, files[0], started)
                return files
            except TimeoutError:
                logs = " ".join(s.recent_log() for s in started)
                for service in started:
                    service.kill()
                if "address already in use" not in logs:
                    raise AssertionError(f"https cluster did not form: {logs[-3000:]}") from None
                shutil.rmtree(self.tmp, ignore_errors=True)
        raise AssertionError("no free addresses for the https cluster")

    def wait_formed(self, members: list[str], tls: TlsFiles, started: list[SubprocessEtcd]) -> None:
        client = EtcdClient([self.url(ip) for ip in members], timeout=2.0, tls=tls)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not all(service.is_running() for service in started):
                raise TimeoutError("a member exited")
            try:
                if all(m.healthy for m in client.members()):
                    return
            except EtcdError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the https cluster did not form in 20 s")

    def run(self, name: str, ip: str, tls: TlsFiles, initial: dict[str, str]) -> SubprocessEtcd:
        config = etcd_config(
            name=name,
            ip=ip,
            settings=self.settings(name, tls),
            initial_cluster=initial,
            state="new",
        )
        path = self.tmp / name / "etcd.yaml"
        write_config(path, config)
        service = SubprocessEtcd(self.binary, stop_timeout=5)
        self.services.append(service)
        service.start(path)
        return service

    def close(self) -> None:
        for service in self.services:
            service.kill()


@pytest.fixture
def https_cluster(tmp_path, etcd_version_bin, ca) -> Iterator[HttpsCluster]:
    cluster = HttpsCluster(tmp_path / "cluster", etcd_version_bin, ca)
    yield cluster
    cluster.close()


def _client_cert(ca: CA, directory: Path, san: str) -> tuple[str, str]:
    """A client-only certificate with the given subjectAltName (not the node's way)."""
    directory.mkdir(parents=True)
    (directory / "ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=clientAuth\n")
    key, csr, crt = (str(directory / n) for n in ("c.key", "c.csr", "c.crt"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-new", *ec, "-subj", "/CN=someone", "-keyout", key, "-out", csr)
    signer = ["-CA", str(ca.cert_file), "-CAkey", str(ca.key_file), "-CAcreateserial"]
    ext = ["-days", "1", "-extfile", str(directory / "ext")]
    openssl("x509", "-req", "-in", csr, *signer, *ext, "-out", crt)
    return crt, key


REFUSED_CLIENT_CERT = r"bad.certificate|certificate.required|unknown.ca|EOF|reset|aborted"


@pytest.mark.etcd
def test_three_members_over_https_serve_the_agent_and_refuse_strangers(https_cluster, tmp_path, ca):
    files = https_cluster.start(3)
    urls = [https_cluster.url(ip) for ip in https_cluster.ips[:3]]
    # the agent's client: the CA to trust the members, its node certificate to be let in
    client = EtcdClient(urls, timeout=2.0, tls=files[1], prefix="/autoscale-etcd/tls")
    members = client.members()
    assert sorted(m.name for m in members) == ["m0", "m1", "m2"]
    assert all(m.healthy for m in members)
    assert sum(m.is_leader for m in members) == 1
    assert {u.split("://")[0] for m in members for u in m.peer_urls + m.client_urls} == {"https"}
    lock = client.acquire_lock("kill", "m1", ttl=10)
    assert lock is not None
    other = EtcdClient(urls[::-1], timeout=2.0, tls=files[2], prefix="/autoscale-etcd/tls")
    assert other.acquire_lock("kill", "m2", ttl=10) is None
    assert other.lock_holder("kill") == "m1"
    client.release_lock(lock)
    assert other.acquire_lock("kill", "m2", ttl=10) is not None

    # the certificates pass OpenSSL's strict checks too (Python >= 3.13 and urllib3 turn
    # VERIFY_X509_STRICT on by default)
    strict = ssl.create_default_context(cafile=files[0].ca_file)
    strict.verify_flags |= ssl.VERIFY_X509_STRICT
    strict.load_cert_chain(files[1].cert_file, files[1].key_file)
    ip = https_cluster.ips[0]
    with socket.create_connection((ip, https_cluster.client_port), timeout=3) as raw:
        with strict.wrap_socket(raw, server_hostname=ip) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # no CA: the members' certificates are not trusted
    with pytest.raises(EtcdError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        EtcdClient(urls, timeout=2.0).members(check_health=False)
    # the CA but no client certificate: etcd refuses the handshake (client-cert-auth)
    health = f"{urls[0]}/health"
    for port in (https_cluster.client_port, https_cluster.peer_port):
        url = f"https://{https_cluster.ips[0]}:{port}/version"
        with pytest.raises(requests.exceptions.ConnectionError, match=REFUSED_CLIENT_CERT):
            requests.get(url, verify=files[0].ca_file, timeout=3)
    # a certificate of another cluster's CA is refused too
    stranger = make_ca(tmp_path / "stranger", "stranger")
    cert = _client_cert(stranger, tmp_path / "stranger-client", "IP:127.0.0.1")
    with pytest.raises(requests.exceptions.ConnectionError, match=REFUSED_CLIENT_CERT):
        requests.get(health, verify=files[0].ca_file, cert=cert, timeout=3)
    # the peer port checks a certificate's IP SANs against where the connection comes
    # from (127.0.0.1 over loopback): why issue-cert.sh adds 127.0.0.1
    peer = f"https://{https_cluster.ips[0]}:{https_cluster.peer_port}/version"
    elsewhere = _client_cert(ca, tmp_path / "elsewhere", "IP:10.9.9.9")
    node = (files[1].cert_file, files[1].key_file)
    assert requests.get(peer, verify=files[0].ca_file, cert=node, timeout=3).ok
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(peer, verify=files[0].ca_file, cert=elsewhere, timeout=3)
    # the client port does not: a client certificate signed by the CA is enough there
    assert requests.get(health, verify=files[0].ca_file, cert=elsewhere, timeout=3).ok


@pytest.mark.etcd
def test_a_member_serving_a_certificate_for_another_address_is_refused(https_cluster, tmp_path):
    files = https_cluster.start(1)
    ip = https_cluster.ips[1]
    # a node that booted with another node's address in its certificate
    wrong = issue_node_cert(https_cluster.ca, tmp_path / "wrong" / "pki", ip="10.9.9.9", name="w")
    https_cluster.run("w", ip, wrong, {"w": f"https://{ip}:{https_cluster.peer_port}"})
    url = https_cluster.url(ip)

    def answers() -> bool:
        # the TLS handshake completes once etcd listens, whatever the verdict
        with socket.create_connection((ip, https_cluster.client_port), timeout=1):
            return True

    wait_until(answers, timeout=15, message="the wrong member to listen")
    with pytest.raises(EtcdError, match=r"IP address mismatch|doesn't match|not valid for"):
        EtcdClient([url], timeout=2.0, tls=files[0]).members(check_health=False)
    # the right member answers the same client
    assert EtcdClient([https_cluster.url(https_cluster.ips[0])], tls=files[0]).members()
