"""agent.cloud_openstack against the lab's cloud (tests/fake_openstack.py), call by call.

Each test names the API call it checks, with the reference it follows:
- Nova metadata: https://docs.openstack.org/nova/latest/user/metadata.html
- Keystone: https://docs.openstack.org/api-ref/identity/v3/#authenticating-with-an-application-credential
- Heat: https://docs.openstack.org/api-ref/orchestration/v1/ (sections named per test)
- Nova: https://docs.openstack.org/api-ref/compute/#show-server-details
"""

from __future__ import annotations

import logging
import time

import pytest

from agent.cloud import CloudError
from agent.cloud_openstack import OpenStackGroup
from agent.snapshot import NodeIdentity
from tests.fake_openstack import (
    CREDENTIAL_ID,
    CREDENTIAL_SECRET,
    HEAT,
    PROJECT,
    TOKENS,
    FakeOpenStack,
)


@pytest.fixture
def cloud():
    fake = FakeOpenStack()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def group(cloud):
    return OpenStackGroup(cloud.settings(), timeout=2)


def nested_path(cloud: FakeOpenStack) -> str:
    return f"{HEAT}/stacks/{cloud.nested_name}/{cloud.nested_id}"


# ---- Nova metadata service --------------------------------------------------------------


def test_whoami_reads_meta_data_json_and_ec2_local_ipv4(cloud, group):
    # metadata.html: "OpenStack format metadata" meta_data.json (uuid, name) and the
    # EC2-compatible /latest/meta-data/local-ipv4.
    me = group.whoami()
    assert me == NodeIdentity(id=cloud.me.server_id, name="etcd-prod-node-a", ip="10.0.0.11")
    mine = f"/metadata/{cloud.me.server_id}"
    assert [(r.method, r.path) for r in cloud.requests] == [
        ("GET", f"{mine}/openstack/latest/meta_data.json"),
        ("GET", f"{mine}/latest/meta-data/local-ipv4"),
    ]
    assert all("x-auth-token" not in r.headers for r in cloud.requests)


def test_whoami_falls_back_to_network_data_json(cloud, group):
    # metadata.html: network_data.json lists networks; the "ipv4" one has ip_address.
    cloud.api.ec2_metadata = False  # the EC2 API is off on some clouds: 404
    assert group.whoami().ip == "10.0.0.11"
    assert cloud.calls("GET", "network_data.json")


def test_whoami_without_metadata_nor_instance_data_is_a_cloud_error(cloud, tmp_path):
    group = OpenStackGroup(cloud.settings(instance_data=str(tmp_path / "none.json")), timeout=2)
    cloud.fail("GET", "meta_data.json", 500, "metadata proxy down")
    with pytest.raises(
        CloudError, match=r"metadata openstack/latest/meta_data.json: HTTP 500.*none\.json"
    ):
        group.whoami()


def test_whoami_reads_the_config_drive_through_cloud_inits_instance_data(cloud, tmp_path):
    """A cloud with a config drive and no metadata service: cloud-init's instance data
    (ds.meta_data is Nova's meta_data.json, ds.ec2_metadata its EC2 meta-data). On a
    DHCP subnet network_data.json has no ip_address ("ipv4_dhcp"), the EC2 copy has it."""
    import json

    data = tmp_path / "instance-data.json"
    data.write_text(
        json.dumps(
            {
                "v1": {"instance_id": cloud.me.server_id, "local_hostname": "etcd-prod-node-a"},
                "ds": {
                    "meta_data": {
                        "uuid": cloud.me.server_id,
                        "name": "etcd-prod-node-a",
                        "instance-id": cloud.me.server_id,
                    },
                    "network_json": {"networks": [{"id": "n0", "type": "ipv4_dhcp"}]},
                    "ec2_metadata": {"local-ipv4": "10.0.0.11"},
                },
            }
        )
    )
    group = OpenStackGroup(cloud.settings(instance_data=str(data)), timeout=30)
    cloud.hang("GET", "meta_data.json", 30)  # no metadata service: nothing answers
    started = time.monotonic()
    me = group.whoami()
    assert me == NodeIdentity(id=cloud.me.server_id, name="etcd-prod-node-a", ip="10.0.0.11")
    # the metadata service is given METADATA_TIMEOUT (3 s), not the calls' 30 s
    assert time.monotonic() - started < 10
    data.write_text(json.dumps({"ds": {"meta_data": {"uuid": "x", "name": "n"}}}))
    cloud.fail("GET", "meta_data.json", 404)
    with pytest.raises(CloudError, match="no server uuid, name and IPv4"):
        group.whoami()


# ---- Keystone: application credential --------------------------------------------------


def test_authenticates_with_the_application_credential_then_uses_the_token(cloud, group):
    # Keystone "Authenticating with an Application Credential": POST /v3/auth/tokens,
    # the token in the X-Subject-Token header of the 201 answer.
    group.scale_down()
    auth, signal = cloud.requests
    assert (auth.method, auth.path) == ("POST", TOKENS)
    assert auth.body == {
        "auth": {
            "identity": {
                "methods": ["application_credential"],
                "application_credential": {"id": CREDENTIAL_ID, "secret": CREDENTIAL_SECRET},
            }
        }
    }
    assert signal.headers["x-auth-token"] == cloud.issued_tokens[0]


@pytest.mark.parametrize("suffix", ["", "/", "/v3", "/v3/"])
def test_auth_url_with_or_without_v3(cloud, suffix):
    OpenStackGroup(cloud.settings(auth_url=cloud.url + "/identity" + suffix)).scale_down()
    assert cloud.calls("POST")[0].path == TOKENS


@pytest.mark.parametrize(
    ("interface", "region", "prefix"),
    [
        ("public", "RegionOne", "/heat-api/"),
        ("internal", "RegionOne", "/heat-api-internal/"),
        ("public", "RegionTwo", "/heat-api-r2/"),
    ],
)
def test_heat_endpoint_from_the_catalog_by_interface_and_region(cloud, interface, region, prefix):
    OpenStackGroup(cloud.settings(interface=interface, region=region)).scale_down()
    assert cloud.calls("POST", "/signal")[0].path.startswith(prefix)


def test_no_endpoint_for_the_region_is_a_cloud_error_naming_it(cloud):
    group = OpenStackGroup(cloud.settings(region="RegionNine"))
    with pytest.raises(CloudError, match=r"no orchestration endpoint .*'public'.*'RegionNine'"):
        group.scale_down()


def test_wrong_secret_is_a_keystone_error_without_the_secret(cloud, caplog):
    group = OpenStackGroup(cloud.settings(application_credential_secret="wrong-secret-123"))
    with caplog.at_level(logging.DEBUG), pytest.raises(CloudError) as error:
        group.scale_down()
    assert "keystone POST /v3/auth/tokens: HTTP 401" in str(error.value)
    assert "wrong-secret-123" not in str(error.value) + caplog.text


def test_reauthenticates_once_on_401(cloud, group):
    # Keystone tokens can be revoked or expire early: Heat answers 401, one new token.
    group.scale_down()
    cloud.expire_tokens()
    group.scale_down()
    paths = [(r.method, r.path) for r in cloud.requests]
    signal = (
        "POST",
        f"{HEAT}/stacks/{cloud.stack_name}/{cloud.stack_id}/resources/scale_down/signal",
    )
    auth = ("POST", TOKENS)
    assert paths == [auth, signal, signal, auth, signal]
    assert cloud.requests[2].headers["x-auth-token"] == cloud.issued_tokens[0]
    assert cloud.requests[4].headers["x-auth-token"] == cloud.issued_tokens[1]


def test_401_again_after_reauthenticating_is_a_cloud_error(cloud, group):
    cloud.fail("POST", "/signal", 401, '{"error": {"code": 401}}', times=2)
    with pytest.raises(CloudError, match=r"heat scale down signal \(POST .*\): HTTP 401 even with"):
        group.scale_down()
    assert len(cloud.calls("POST", "/v3/auth/tokens")) == 2


def test_a_token_past_its_expiry_is_renewed_before_use(cloud, group):
    cloud.keystone.token_lifetime = 30  # shorter than the renewal margin
    group.scale_down()
    group.scale_down()
    assert len(cloud.calls("POST", "/v3/auth/tokens")) == 2
    assert not [
        r
        for r in cloud.requests
        if r.path.endswith("/signal") and r.headers["x-auth-token"] not in cloud.valid_tokens
    ]


# ---- Heat: the group's members ----------------------------------------------------------


def test_group_members_from_the_nested_stack_and_nova(cloud, group):
    # Heat "Show resource data" (group -> nested stack id), "Find stack" (302),
    # "Show stack details", "List stack resources"; Nova "Show server details".
    nodes = group.group_members()
    assert [(n.id, n.name, n.ip, n.status, n.initial) for n in nodes] == [
        (m.server_id, m.name, m.ip, "ACTIVE", True) for m in cloud.members
    ]
    # Heat shows creation_time to the second (ISO 8601, UTC)
    assert [n.created_at for n in nodes] == [float(int(m.created_at)) for m in cloud.members]
    heat_gets = [r.path for r in cloud.calls("GET") if r.path.startswith(HEAT)]
    assert heat_gets == [
        f"{HEAT}/stacks/{cloud.stack_name}/{cloud.stack_id}/resources/etcd_group",
        f"{HEAT}/stacks/{cloud.nested_id}",
        nested_path(cloud),
        nested_path(cloud) + "/resources",
    ]
    assert [r.path for r in cloud.calls("GET", "/compute/")] == [
        f"/compute/v2.1/servers/{m.server_id}" for m in cloud.members
    ]


def test_members_are_not_initial_once_the_nested_stack_was_updated(cloud, group):
    # Heat "Show stack details": stack_status/updated_time of the group's nested stack.
    assert [n.initial for n in group.group_members()] == [True, True, True]
    cloud.cloud.update(None)  # any resize or stack update is an UPDATE of the nested stack
    assert [n.initial for n in group.group_members()] == [False, False, False]


def test_member_status_from_heat_and_nova(cloud, group):
    a, b, c = cloud.members
    a.resource_status = "CHECK_FAILED"  # what "Mark a resource as unhealthy" leaves
    b.nova_status = None  # Nova: 404 itemNotFound
    c.resource_status, c.nova_status = "CREATE_IN_PROGRESS", "BUILD"
    assert [n.status for n in group.group_members()] == ["FAILED", "DELETED", "BUILD"]
    a.resource_status, a.nova_status = "CREATE_COMPLETE", "ERROR"
    b.nova_status = "ACTIVE"
    c.resource_status, c.nova_status = "UPDATE_FAILED", "ACTIVE"
    assert [n.status for n in group.group_members()] == ["FAILED", "ACTIVE", "FAILED"]
    # Nova rebooting or rebuilding a server: it is booting, not dead
    a.nova_status, b.nova_status = "HARD_REBOOT", "REBUILD"
    c.resource_status, c.nova_status = "CREATE_COMPLETE", "REBOOT"
    assert [n.status for n in group.group_members()] == ["BUILD", "BUILD", "BUILD"]


def test_a_bare_stack_id_is_found_once_through_find_stack(cloud):
    # Heat "Find stack": GET /stacks/{stack_identity} answers 302 to /stacks/{name}/{id}.
    group = OpenStackGroup(cloud.settings(stack_id=cloud.stack_id))
    group.scale_down()
    group.scale_down()
    assert len(cloud.calls("GET", f"/stacks/{cloud.stack_id}")) == 1
    assert len(cloud.calls("GET", f"/stacks/{cloud.stack_name}/{cloud.stack_id}")) == 1
    assert len(cloud.calls("POST", f"/stacks/{cloud.stack_name}/{cloud.stack_id}/resources")) == 2


def test_group_not_created_yet_is_a_cloud_error(cloud, group):
    cloud.fail("GET", "/resources/etcd_group", 404, '{"error": {"type": "EntityNotFound"}}')
    with pytest.raises(
        CloudError, match=r"heat show group \(GET .*/resources/etcd_group\): HTTP 404"
    ):
        group.group_members()


# ---- Heat: mark unhealthy, signal -------------------------------------------------------


def test_mark_unhealthy_patches_the_member_resource_of_the_nested_stack(cloud, group):
    # Heat "Mark a resource as unhealthy":
    # PATCH /v1/{tenant_id}/stacks/{stack_name}/{stack_id}/resources/{resource_name}
    # {"mark_unhealthy": true, "resource_status_reason": ...}
    target = cloud.members[1]
    group.mark_unhealthy(target.server_id, "etcd member etcd-prod-node-b removed itself")
    listing = cloud.calls("GET", nested_path(cloud) + "/resources")[-1]
    assert listing.query == {"nested_depth": ["1"]}
    (patch,) = cloud.calls("PATCH")
    assert patch.path == f"{nested_path(cloud)}/resources/{target.slot}"
    assert patch.body == {
        "mark_unhealthy": True,
        "resource_status_reason": "etcd member etcd-prod-node-b removed itself",
    }
    assert patch.headers["x-auth-token"] == cloud.issued_tokens[-1]
    assert patch.headers["content-type"] == "application/json"
    statuses = {n.id: n.status for n in group.group_members()}
    assert statuses[target.server_id] == "FAILED"
    assert target.reason == "etcd member etcd-prod-node-b removed itself"


def test_mark_unhealthy_of_a_server_outside_the_group_sends_nothing(cloud, group):
    with pytest.raises(CloudError, match="server not-a-member is not a member of the group"):
        group.mark_unhealthy("not-a-member", "gone")
    assert not cloud.calls("PATCH")


def test_scale_down_signals_the_scale_down_policy(cloud, group):
    # Heat "Send a signal to a resource":
    # POST /v1/{tenant_id}/stacks/{stack_name}/{stack_id}/resources/{resource_name}/signal
    group.scale_down()
    (signal,) = cloud.calls("POST", "/signal")
    assert signal.path == (
        f"{HEAT}/stacks/{cloud.stack_name}/{cloud.stack_id}/resources/scale_down/signal"
    )
    assert signal.body is None
    assert signal.headers["x-auth-token"] == cloud.issued_tokens[0]


def test_scale_up_signals_the_scale_up_policy(cloud, group):
    # Heat "Send a signal to a resource", the scale-up ScalingPolicy.
    group.scale_up()
    (signal,) = cloud.calls("POST", "/signal")
    assert signal.path.endswith(
        f"/stacks/{cloud.stack_name}/{cloud.stack_id}/resources/scale_up/signal"
    )


def test_scale_up_url_elsewhere_is_posted_without_the_token(cloud):
    # A pre-signed webhook (Heat's alarm_url) carries its own signature: no token to it.
    arn = f"arn%3Aopenstack%3Aheat%3A%3A{PROJECT}%3Astacks/{cloud.stack_name}/{cloud.stack_id}"
    path = f"/heat-api-cfn/v1/signal/{arn}/resources/scale_up"
    url = cloud.url + path + "?Signature=abc%2Bdef&SignatureVersion=2"
    group = OpenStackGroup(cloud.settings(scale_up_url=url))
    group.scale_up()
    (post,) = cloud.calls("POST")  # no Keystone call either: the webhook needs none
    assert post.query["Signature"] == ["abc+def"] and post.path.endswith("/resources/scale_up")
    assert "x-auth-token" not in post.headers
    assert len(cloud.members) == 4  # Heat took the signal


def test_scale_up_url_on_heats_endpoint_gets_the_token(cloud):
    # Heat's signal_url is the same "Send a signal" call: it needs the token, and only
    # Heat's own endpoint (from the catalog) ever gets it.
    url = f"{cloud.url}{HEAT}/stacks/{cloud.stack_name}/{cloud.stack_id}/resources/scale_up/signal"
    group = OpenStackGroup(cloud.settings(scale_up_url=url))
    group.scale_up()
    plain, signed = cloud.calls("POST", "/signal")
    assert "x-auth-token" not in plain.headers  # tried as a pre-signed URL first: 401
    assert signed.path == plain.path
    assert signed.headers["x-auth-token"] == cloud.issued_tokens[0]


# ---- failures ---------------------------------------------------------------------------


def test_a_failed_call_is_a_cloud_error_naming_it_with_status_and_body(cloud, group):
    cloud.fail("PATCH", "/resources/", 500, '{"error": {"message": "engine down"}}')
    with pytest.raises(CloudError) as error:
        group.mark_unhealthy(cloud.members[0].server_id, "test")
    message = str(error.value)
    assert message.startswith("heat mark unhealthy (PATCH /stacks/")
    assert "HTTP 500" in message and "engine down" in message


def test_a_bad_signal_is_a_cloud_error(cloud):
    group = OpenStackGroup(cloud.settings(scale_down_policy="etcd_group"))
    with pytest.raises(CloudError, match=r"heat scale down signal .*HTTP 400.*not supported"):
        group.scale_down()


def test_every_call_has_a_timeout(cloud):
    group = OpenStackGroup(cloud.settings(), timeout=0.5)
    cloud.hang("GET", "/compute/", 5)
    started = time.monotonic()
    with pytest.raises(
        CloudError, match=r"nova show server \(GET /servers/.*\): timed out after 0.5s"
    ):
        group.group_members()
    assert time.monotonic() - started < 3


def test_unreachable_keystone_is_a_cloud_error(cloud):
    group = OpenStackGroup(cloud.settings(auth_url="http://127.0.0.1:9/v3"), timeout=1)
    with pytest.raises(CloudError, match="keystone POST /v3/auth/tokens: ConnectionRefusedError"):
        group.scale_down()


def test_garbage_from_heat_is_a_cloud_error(cloud, group):
    cloud.fail("GET", "/resources/etcd_group", 200, "<html>proxy</html>")
    with pytest.raises(CloudError, match="heat show group: the answer is not JSON"):
        group.group_members()


# ---- the secret -------------------------------------------------------------------------


def test_the_secret_and_the_token_never_reach_logs_or_errors(cloud, caplog):
    group = OpenStackGroup(cloud.settings(), timeout=0.5)
    texts = []
    with caplog.at_level(logging.DEBUG):
        group.whoami()
        group.group_members()
        group.mark_unhealthy(cloud.members[2].server_id, "test")
        cloud.expire_tokens()
        group.scale_down()
        # A broken server that echoes the request (and the token) back in its error.
        cloud.fail("POST", "/v3/auth/tokens", 500, f"bad body {CREDENTIAL_SECRET}")
        cloud.expire_tokens()
        cloud.fail("POST", "/signal", 502, f"token {cloud.issued_tokens[-1]} refused")
        for call in (group.scale_down, group.scale_down, group.group_members):
            try:
                call()
            except CloudError as error:
                texts.append(str(error))
    assert len(texts) >= 2 and any("bad body ***" in t for t in texts)
    everything = caplog.text + "\n".join(texts) + repr(group.settings) + str(group.settings)
    assert CREDENTIAL_SECRET not in everything
    assert not any(token in everything for token in cloud.issued_tokens)


# ---- a cloud whose APIs a private CA certifies ---------------------------------------------


@pytest.fixture
def private_ca_cloud(tmp_path):
    """The fake cloud over https, its certificate signed by a company CA of its own."""
    import random

    from agent.tls import issue_node_cert, make_ca
    from tests.tools import need

    need("openssl")
    ca = make_ca(tmp_path / "company-ca", "company-ca")
    for _ in range(10):
        host = f"127.0.0.{random.randint(2, 250)}"
        server = issue_node_cert(ca, tmp_path / f"api-{host}", ip=host, name="cloud.example")
        fake = FakeOpenStack()
        try:
            fake.start(host=host, tls=(server.cert_file, server.key_file))
            break
        except OSError:
            continue
    yield fake, str(ca.cert_file)
    fake.stop()


def test_a_private_ca_is_trusted_through_cacert_and_only_then(private_ca_cloud):
    fake, ca_file = private_ca_cloud
    assert fake.url.startswith("https://")
    trusted = OpenStackGroup(fake.settings(cacert=ca_file), timeout=5)
    assert trusted.whoami().name == "etcd-prod-node-a"
    assert [n.name for n in trusted.group_members()] == [m.name for m in fake.members]
    plain = OpenStackGroup(fake.settings(), timeout=5)  # the system store only
    with pytest.raises(CloudError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        plain.group_members()


# ---- who called: the lab's judge of a cut-off side's Heat writes --------------------------


def test_the_cloud_tells_callers_apart_by_address_and_the_judge_finds_a_cut_nodes_mark(cloud):
    """The lab's "the cut-off side made no Heat write" judge rests on the cloud recording
    each caller's address: a mark (PATCH) and a signal from the cut-off node's address are
    found; its GET, and a mark from another address, are not."""
    import http.client
    from urllib.parse import urlsplit

    from lab.cluster import heat_writes_from

    where = urlsplit(cloud.url)
    resource = f"{nested_path(cloud)}/resources/r1"

    def call(source: str, method: str, path: str) -> None:
        connection = http.client.HTTPConnection(
            where.hostname, where.port, timeout=5, source_address=(source, 0)
        )
        connection.request(method, path, body=b"{}", headers={"Content-Type": "application/json"})
        connection.getresponse().read()
        connection.close()

    cut_off, other = "127.0.0.251", "127.0.0.252"
    since = len(cloud.api.requests)
    call(cut_off, "PATCH", resource)
    call(cut_off, "POST", f"{HEAT}/stacks/etcd-prod/s1/resources/scale_down/signal")
    call(cut_off, "GET", resource)
    call(other, "PATCH", resource)
    found = heat_writes_from(cloud.api.requests[since:], {cut_off})
    assert found == [
        f"PATCH {resource}",
        f"POST {HEAT}/stacks/etcd-prod/s1/resources/scale_down/signal",
    ]
    assert heat_writes_from(cloud.api.requests[since:], {"127.0.0.253"}) == []


# ---- members that are stacks of their own (infra.heat.MemberStack) ------------------------


@pytest.fixture
def member_stack():
    """The program's member template, its wait condition's timeout shortened."""
    import dataclasses

    from infra.cluster import cluster_template
    from tests.test_infra_heat import settings_of

    member = cluster_template(settings_of("dev"), "etcd-prod").member()
    return dataclasses.replace(member, timeout=30)


@pytest.fixture
def stacked(member_stack):
    fake = FakeOpenStack(member_files={member_stack.url: member_stack.text()})
    fake.start()
    yield fake
    fake.stop()


def test_member_stacks_list_their_servers_with_the_member_s_name_and_time(stacked, member_stack):
    # Heat "List resources" with nested_depth=1: the member resources of the group's stack
    # (type: the template's URL, physical id: the member's stack) and, with
    # `parent_resource`, each member stack's own (its server)
    group = OpenStackGroup(stacked.settings(), timeout=2)
    nodes = {n.id: n for n in group.group_members()}
    members = stacked.cloud.members()
    assert set(nodes) == {m.server_id for m in members}
    for member in members:
        node = nodes[member.server_id]
        assert member.stack_id and member.type == member_stack.url
        assert node.resource == member.slot and node.name == member.name
        assert node.created_at == int(member.created_at)
        # waiting for its agent's signal: the member is in progress, its server ACTIVE
        assert member.resource_status == "CREATE_IN_PROGRESS"
        assert node.status == "ACTIVE"
    listing = stacked.calls("GET", nested_path(stacked) + "/resources")[-1]
    assert listing.query == {"nested_depth": ["1"]}


def test_member_ready_signals_the_handle_of_its_own_member_stack(stacked, member_stack):
    # Heat "Send a signal to a resource" on the member stack's OS::Heat::WaitConditionHandle:
    # a body of exactly status, reason, data, id (HeatWaitConditionHandle's format)
    group = OpenStackGroup(stacked.settings(), timeout=2)
    target, other = stacked.cloud.members()[:2]
    assert group.member_ready(target.server_id, "votes") is True
    (post,) = stacked.calls("POST", "/signal")
    assert post.path == (
        f"{HEAT}/stacks/{target.stack_name}/{target.stack_id}/resources/"
        f"{member_stack.handle}/signal"
    )
    assert post.body == {"status": "SUCCESS", "reason": "votes", "data": "", "id": target.server_id}
    deadline = time.monotonic() + 5
    while target.resource_status != "CREATE_COMPLETE" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert target.resource_status == "CREATE_COMPLETE"
    assert other.resource_status == "CREATE_IN_PROGRESS"  # its own wait goes on
    # again (an agent restarted): the same id, counted once
    assert group.member_ready(target.server_id, "votes") is True
    assert len(target.ready.metadata) == 1


def test_member_ready_of_a_plain_server_member_sends_nothing(cloud, group):
    target = cloud.members[0]
    assert group.member_ready(target.server_id, "votes") is False
    assert not cloud.calls("POST", "/signal")


def test_mark_unhealthy_of_a_member_stack_patches_the_member_resource(stacked):
    group = OpenStackGroup(stacked.settings(), timeout=2)
    target = stacked.cloud.members()[1]
    # while its wait condition waits, Heat's engine holds the member's lock: 409
    with pytest.raises(CloudError, match="HTTP 409"):
        group.mark_unhealthy(target.server_id, "gone")
    assert group.member_ready(target.server_id, "votes")
    deadline = time.monotonic() + 5
    while target.resource_status != "CREATE_COMPLETE" and time.monotonic() < deadline:
        time.sleep(0.05)
    group.mark_unhealthy(target.server_id, "gone")
    patch = stacked.calls("PATCH")[-1]
    assert patch.path == f"{nested_path(stacked)}/resources/{target.slot}"
    statuses = {n.id: n.status for n in group.group_members()}
    assert statuses[target.server_id] == "FAILED"
