"""Backups with real agents, real etcd and a real Swift (agent/backup.py, lab/swift.py).

- Snapshots go to Swift every `backup.period`, taken by one agent only (the first healthy
  follower's), the newest `backup.keep` kept. Checked from outside: the newest object,
  downloaded with a plain GET, has the sha256 its metadata names and restores (etcdutl)
  into a cluster holding every key written before it.
- The program's access rules (infra.access_rules) in the lab's Keystone allow exactly the
  agents' Swift calls: a static large object up, verified, listed, down, deleted; the
  container itself and another container refused.
- Swift away: the backup fails, is said at ERROR, no member is marked, removed or
  replaced and no record names a snapshot that is not there; Swift back: snapshots again.
- A restore beside a live cluster is refused. The restore itself, end to end (a lost
  cluster made again from the newest snapshot, by the agents or the logged command), is
  the lab's `disaster` scenario; a snapshot restored into a working cluster with every key
  is checked here from outside.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import pytest
import requests

from agent.backup import BackupRecord, Backups, check_snapshot, restore_data_dir, servers_of
from agent.settings import BackupSettings
from agent.status import cluster_status, render
from agent.swift import SwiftStore
from lab.swift import start_beside
from tests.agent_lab import start_initial
from tests.etcd_cluster import wait_until
from tests.tools import TokenAccess, need, need_etcd

CONTAINER = "itest-etcd-backups"


def said(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.fixture
def swift_lab(make_agent_lab, tmp_path):
    """An agent lab whose cloud's catalog names a real Swift, the container made (as the
    program makes it)."""
    for server in ("swift-proxy-server", "swift-object-server"):
        need(server)
    lab = make_agent_lab()
    swift = start_beside(
        lab.cloud.keystone,
        lab.cloud.auth_url,
        tmp_path / "swift",
        "127.0.0.1",
        CONTAINER,
        "operator",
    )
    try:
        lab.backup = {"kind": "swift", "period": 3.0, "keep": 2, "container": CONTAINER}
        lab.swift, lab.swift_url, lab.swift_token = swift.server, swift.url, swift.token
        yield lab
    finally:
        swift.server.stop()


def listing(lab) -> list[dict]:
    answer = requests.get(
        f"{lab.swift_url}/{CONTAINER}",
        params={"format": "json", "prefix": "snapshots/"},
        headers={"X-Auth-Token": lab.swift_token},
        timeout=10,
    )
    assert answer.status_code in (200, 204), answer.text
    return answer.json() if answer.status_code == 200 else []


@pytest.mark.etcd
@pytest.mark.swift
def test_snapshots_to_swift_swift_away_and_no_restore_beside_a_live_cluster(
    swift_lab, caplog, tmp_path
):
    lab = swift_lab
    binary = need_etcd("3.5")
    caplog.set_level(logging.INFO)
    the_programs_access_rules_allow_exactly_the_agents_calls(lab, tmp_path)
    nodes = start_initial(lab, 3)
    client = lab.client()
    client.timeout = 5.0
    written = {f"/data/{n:03d}": f"value {n}" for n in range(100)}
    revision = max(client.put(k, v) for k, v in written.items())

    def newer_than_the_writes() -> BackupRecord | None:
        text = client.get(client.key("backup/last"))
        record = BackupRecord.from_json(text) if text else None
        return record if record and record.revision >= revision else None

    record = wait_until(newer_than_the_writes, timeout=30, message="a snapshot after the writes")
    # two more periods: the retention keeps the newest two
    wait_until(lambda: len(said(caplog, "backup: snapshots/")) >= 4, timeout=30)
    objects = wait_until(lambda: (lambda o: o if len(o) == 2 else None)(listing(lab)), timeout=10)
    names = sorted(o["name"] for o in objects)
    taken_by = {name.rsplit("-", 1)[-1].removesuffix(".db") for name in names}
    leader = next(m.name for m in client.members() if m.is_leader)
    assert len(taken_by) == 1 and leader not in taken_by, (names, leader)

    # from outside: the newest object, downloaded, is what its metadata says, and restores
    newest = names[-1]
    answer = requests.get(
        f"{lab.swift_url}/{CONTAINER}/{newest}",
        headers={"X-Auth-Token": lab.swift_token},
        timeout=30,
    )
    assert answer.status_code == 200
    path = tmp_path / "downloaded.db"
    path.write_bytes(answer.content)
    assert hashlib.sha256(answer.content).hexdigest() == answer.headers["X-Object-Meta-Sha256"]
    assert check_snapshot(path) == answer.headers["X-Object-Meta-Sha256"]
    assert int(answer.headers["X-Object-Meta-Revision"]) >= record.revision
    # the cluster's servers, for the automatic restore's "are they gone" (agent/disaster.py)
    named = servers_of({k.lower(): v for k, v in answer.headers.items()})
    assert named == sorted(n.server_id for n in nodes)
    node_dir = tmp_path / "restored"
    restore_data_dir(
        path,
        node_dir / "data",
        name="restored",
        peer_url="http://127.0.0.1:0",
        cluster_token="restored",
        etcd_binary=binary,
    )
    from tests.etcd_cluster import EtcdCluster

    cluster = EtcdCluster(binary, tmp_path / "restore-cluster")
    try:
        node = cluster.new_node("restored")
        path_restored = node_dir / "data"
        path_restored.rename(node.data_dir)
        node.start({node.name: node.peer_url}, "new")
        node.wait_healthy()
        from agent.etcd import EtcdClient

        restored = EtcdClient([node.client_url], timeout=5.0, prefix=client.prefix)
        assert restored.get_prefix("/data/") == written
    finally:
        cluster.close()

    # the retention: a foreign object is never ours, an upload's segments left by a dead
    # agent go once older than a backup's lease
    headers = {"X-Auth-Token": lab.swift_token}
    orphan = "segments/snapshots/20200101T000000Z-r0000000000000001-gone.db/00000000"
    for name in ("snapshots/manual.db", orphan):
        put = requests.put(f"{lab.swift_url}/{CONTAINER}/{name}", data=b"x", headers=headers)
        assert put.status_code == 201, put.text
    backups = Backups(
        BackupSettings(kind="swift", container=CONTAINER, keep=2),
        SwiftStore(TokenAccess(lab.swift_url, lab.swift_token), CONTAINER),
        tmp_path / "prune",
    )
    assert orphan not in backups.prune(now=time.time())  # recent: maybe an upload under way
    assert orphan in backups.prune(now=time.time() + 3600)
    assert all(o.name != "snapshots/manual.db" for o in backups.snapshots())
    assert "snapshots/manual.db" in {o["name"] for o in listing(lab)}

    status = cluster_status(client, "itest")
    # the agents go on taking one every period: the last is one Swift holds now
    assert status["last_backup"]["object"] in {o["name"] for o in listing(lab)}
    assert "last backup: snapshots/" in render(status)
    assert not lab.record.deleted and not lab.record.calls_of("mark_unhealthy")
    # the same lab and Swift go on (one lab and one Swift fewer for the suite)
    no_restore_beside_a_live_cluster(lab, caplog, nodes)


def the_programs_access_rules_allow_exactly_the_agents_calls(lab, tmp_path) -> None:
    """The credential the program makes (infra.access_rules from the catalog's URLs), in
    the lab's Keystone, through the real Swift: a static large object of three segments
    uploaded, verified, listed, downloaded byte for byte, deleted with its segments; and
    refused what the agents never do (the container itself, another container)."""
    from agent.cloud_openstack import OpenStackGroup
    from agent.settings import OpenStackCloud
    from agent.swift import SwiftError, SwiftStore
    from infra.access_rules import access_rules
    from lab.cloud.keystone import AccessRule as LabRule

    urls = {e.service_type: e.url for e in lab.cloud.keystone.endpoints}
    rules = access_rules(urls["orchestration"], urls["compute"], urls["object-store"], CONTAINER)
    credential = lab.cloud.keystone.add_credential(
        "agents", [LabRule(r.service, r.method, r.path) for r in rules]
    )
    cloud = OpenStackGroup(
        OpenStackCloud(
            auth_url=lab.cloud.auth_url,
            application_credential_id=credential.id,
            application_credential_secret=credential.secret,
            stack_id="itest/x",
        ),
        timeout=10,
    )
    store = SwiftStore(cloud, CONTAINER)
    path = tmp_path / "big.db"
    data = bytes(range(256)) * (3 * 2**20 // 256 + 100)  # a little over 3 MiB
    path.write_bytes(data)
    etag = store.upload("snapshots/big.db", path, meta={"Sha256": "x"}, segment_bytes=2**20)
    store.verify_object("snapshots/big.db", etag, len(data))
    with pytest.raises(SwiftError, match="holds etag"):  # the judge says no
        store.verify_object("snapshots/big.db", etag, len(data) + 1)
    listed = store.list("snapshots/")
    assert [(o.name, o.size, o.large) for o in listed] == [("snapshots/big.db", len(data), True)]
    assert len(store.list("segments/")) == 4
    store.download("snapshots/big.db", tmp_path / "back.db")
    assert (tmp_path / "back.db").read_bytes() == data
    store.delete("snapshots/big.db", large=True)
    assert store.list("snapshots/") == [] and store.list("segments/") == []
    # what the agents never do is refused: the container itself, another container
    with pytest.raises(SwiftError, match="401"):
        SwiftStore(cloud, "other-container").list()
    token = cloud.access("object-store")[1]
    answer = requests.delete(
        f"{lab.swift_url}/{CONTAINER}", headers={"X-Auth-Token": token}, timeout=10
    )
    assert answer.status_code == 401


def swift_away(lab, caplog, client) -> None:
    """Swift stopped: the backup fails loudly, costs no member, records nothing; Swift
    back (its data kept): a snapshot is stored again."""
    lab.swift.stop()
    stopped = time.time()
    wait_until(lambda: said(caplog, "backup failed"), timeout=30)
    time.sleep(1)
    last = BackupRecord.from_json(client.get(client.key("backup/last")) or "")
    assert last is not None and last.time < stopped  # no record of a snapshot not stored
    assert {m.name for m in client.members() if m.healthy} == set(lab.nodes)
    assert not lab.record.deleted and not lab.record.calls_of("mark_unhealthy")
    assert "swift" in said(caplog, "backup failed")[0].lower()
    # Swift back (its data kept): the next attempt stores a snapshot again
    lab.swift.start()
    count = len(said(caplog, "backup: snapshots/"))
    wait_until(lambda: len(said(caplog, "backup: snapshots/")) > count, timeout=90)


def no_restore_beside_a_live_cluster(lab, caplog, nodes) -> None:
    """Swift away for a while (see `swift_away`); then `restore --latest` on a node of the
    live cluster is refused (it would make a second cluster beside it), nothing changed.
    The restore itself, end to end, is the lab's `disaster` scenario
    (tests/test_lab_scenarios.py): a new cluster of new servers from the newest snapshot."""
    from agent.cloud_openstack import OpenStackGroup
    from agent.etcd_server import client_url
    from agent.restore import RestoreError, restore_here
    from agent.swift import SwiftStore

    client = lab.client()
    client.timeout = 5.0
    swift_away(lab, caplog, client)
    old_cluster = client.cluster_id()
    settings = nodes[0].agent.settings
    store = SwiftStore.for_cloud(OpenStackGroup(settings.cloud, timeout=5), settings)
    urls = [client_url(n.ip, settings.etcd) for n in nodes]
    with pytest.raises(RestoreError, match="quorum answers"):
        restore_here(
            settings,
            me=nodes[0].agent.me,
            group_endpoints=urls,
            store=store,
            service=nodes[0].service,
        )
    assert client.cluster_id() == old_cluster and nodes[0].service.is_running()
    data_dir = Path(settings.etcd.data_dir)
    assert (data_dir / "member").is_dir() and not list(data_dir.glob("member.before-*"))


@pytest.mark.etcd
def test_a_lost_quorum_with_backups_on_says_the_restore_commands_and_does_nothing(
    make_agent_lab, caplog
):
    """Two of three servers powered off for good: the survivor's agent keeps its member
    and data, and says, at ERROR, what the cloud shows of the other servers and the exact
    commands that restore the newest snapshot. The control: with backups off it says
    nothing of the kind."""
    from tests.agent_lab import PERIOD, power_off

    caplog.set_level(logging.INFO)
    lab = make_agent_lab(retries=3)
    lab.backup = {"kind": "swift", "period": 3600.0, "container": CONTAINER}
    nodes = start_initial(lab, 3)
    survivor = nodes[0]
    for node in nodes[1:]:
        power_off(node)
    line = wait_until(lambda: said(caplog, "restore --latest"), timeout=30)[0]
    assert "--config" in line and "restore --join" in line and "systemctl stop" in line
    for node in nodes[1:]:
        assert f"{node.name} ACTIVE" in line  # their servers are up: they may come back
    assert lab.state(survivor.name).phase == "member"
    assert Path(survivor.agent.settings.etcd.data_dir, "member").is_dir()
    # the control: backups off, the sentence is due again at once and not said
    agent = survivor.agent
    agent.settings = agent.settings.with_changes(backup={"kind": "none"})
    count = len(said(caplog, "restore --latest"))
    agent._disaster_said = None
    cycles = agent._cycles
    wait_until(lambda: agent._cycles >= cycles + 5, timeout=20 * PERIOD)  # it does cycle
    assert len(said(caplog, "restore --latest")) == count
