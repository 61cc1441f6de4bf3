"""The real agent on an https stack: etcd over TLS for clients and peers, client-cert-auth.

Each node gets the certificate its boot would issue (infra/node/issue-cert.sh, through
agent.tls) and the settings infra.settings.agent_settings gives an https stack (the
schemes and the three TLS files); otherwise this is tests/test_agent_cluster.py's lab:
agents in threads, etcd processes stopped by pid, the group in the lab's cloud.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.etcd import EtcdClient, EtcdError
from agent.settings import AgentSettings, TlsFiles
from agent.tls import CA, issue_node_cert, make_ca
from lab.cloud.heat import Member
from tests.agent_lab import PERIOD, Lab, Node
from tests.etcd_cluster import wait_until
from tests.tools import need

pytestmark = pytest.mark.etcd


class HttpsLab(Lab):
    """tests/test_agent_cluster.Lab with https for clients and peers."""

    def __init__(self, tmp: Path, etcd_bin: str, **scaling: float) -> None:
        super().__init__(tmp, etcd_bin, **scaling)
        self.ca: CA = make_ca(tmp / "deploy", "itest")
        # the operator's client certificate (any address will do on the client port)
        self.operator = issue_node_cert(self.ca, tmp / "operator", ip="127.0.0.1", name="op")

    def settings(self, member: Member) -> AgentSettings:
        plain = super().settings(member)
        name = member.name
        tls = issue_node_cert(self.ca, self.tmp / name / "pki", ip=member.ip, name=name)
        etcd = plain.etcd.model_dump()
        etcd.update(client_scheme="https", peer_scheme="https", tls=tls.model_dump())
        return plain.with_changes(etcd=etcd)

    def urls(self) -> list[str]:
        return [f"https://{ip}:{self.client_port}" for ip in self.ips]

    def client(self, tls: TlsFiles | None = None) -> EtcdClient:
        return EtcdClient(
            self.urls(), timeout=1.0, tls=tls or self.operator, prefix="/autoscale-etcd/itest"
        )


@pytest.fixture
def https_lab(make_agent_lab: Callable[..., Any]) -> Callable[..., HttpsLab]:
    need("openssl")
    return lambda **scaling: make_agent_lab(HttpsLab, **scaling)


def _start(nodes: list[Node]) -> list[Node]:
    for node in nodes:
        node.start()
    return nodes


def _members_only(lab: HttpsLab, names: list[str], timeout: float) -> None:
    assert wait_until(lambda: lab.voters() == sorted(names), timeout=timeout), lab.voters()
    assert wait_until(
        lambda: all(lab.state(name).phase == "member" for name in names), timeout=timeout
    )


def test_an_https_cluster_forms_lets_one_join_and_one_idle_node_leave(https_lab):
    lab = https_lab()
    first = _start(lab.create(3))
    _members_only(lab, ["node1", "node2", "node3"], timeout=30)
    members = lab.client().members()
    urls = {url for m in members for url in (*m.peer_urls, *m.client_urls)}
    assert urls and all(url.startswith("https://") for url in urls)
    # a late server joins over TLS (member add, learner catch-up on the peer port, promote)
    late = _start(lab.grow(1))
    _members_only(lab, ["node1", "node2", "node3", "node4"], timeout=40)
    assert lab.record.calls_of("scale_down") == []

    # capacity 3, four members, all idle above 90 %: exactly one server leaves the group
    for node in [*first, *late]:
        lab.idle[node.name] = 97.0
    assert wait_until(lambda: len(lab.record.deleted) == 1, timeout=30)
    leaver = lab.record.deleted[0]
    assert wait_until(lambda: len(lab.voters()) == 3, timeout=15)
    assert leaver not in lab.voters()
    assert lab.state(leaver).phase in ("leaving", "left")  # powered off by Heat's delete
    assert wait_until(lambda: not lab.nodes[leaver].service.is_running(), timeout=10)
    time.sleep(4 * PERIOD)
    assert lab.record.deleted == [leaver]  # three left: nobody else goes
    assert len(lab.voters()) == 3

    # certificates are checked: without the CA the members are not trusted
    with pytest.raises(EtcdError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        EtcdClient(lab.urls(), timeout=1.0).members(check_health=False)


def test_a_killed_https_member_is_removed_and_a_replacement_asked_for(https_lab):
    lab = https_lab()
    nodes = _start(lab.create(3))
    _members_only(lab, ["node1", "node2", "node3"], timeout=30)
    victim = nodes[2]
    victim.agent.stopped.set()
    victim.service.kill()  # kill -9 of its etcd; its agent is gone too
    killed_at = time.time()
    assert wait_until(lambda: len(lab.record.calls_of("mark_unhealthy")) == 1, timeout=30)
    mark = lab.record.calls_of("mark_unhealthy")[0]
    assert mark[3] == victim.server_id
    # convicted at its third failed check: never sooner than 1.5 periods after the first
    assert mark[0] - killed_at >= 1.5 * PERIOD
    assert lab.voters() == ["node1", "node2"]
    # the group drops the FAILED server, and a replacement is asked for
    assert wait_until(lambda: lab.record.deleted == [victim.name], timeout=15)
    assert wait_until(lambda: lab.record.calls_of("scale_up"), timeout=15)

    # the replacement boots with its own certificate and joins the two survivors
    (replacement,) = _start(lab.start_new())
    _members_only(lab, ["node1", "node2", replacement.name], timeout=40)
    assert lab.state(replacement.name).phase == "member"
