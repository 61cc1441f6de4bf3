"""The generated HOT passes Heat's own validation (openstack-heat, offline, template only).

The way Heat's unit tests do it (heat/tests/common.py, heat/tests/utils.py): parse with
`heat.common.template_format`, build `heat.engine.template.Template` and
`heat.engine.stack.Stack`, call `validate()`, with the clients that would ask the cloud
(image, flavor, network look-ups, Nova limits) replaced by fakes. Any attempt to reach
a cloud fails the test. The member server is also validated as a stack of its own.

The agent bundle the stack holds for its nodes is checked against Heat's engine itself
(an in-memory sqlite database, as Heat's own tests use): after a stack update with a
new bundle, "Show resource metadata" answers the new one; and the template stays under
Heat's `max_template_size`.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from infra import heat
from infra.bundle import Bundle, agent_bundle
from infra.cluster import cluster_template, template_text
from infra.render import find_stack_file, stack_config
from infra.settings import PROJECT_DIR, parse_settings, strip_namespace
from infra.userdata import READY_FILE
from tests.tools import need_module

STACKS = ["dev", "metrics", "ownnet"]


def settings_of(stack: str):
    return parse_settings(strip_namespace(stack_config(find_stack_file(stack))))


def parameters_for(template: dict) -> dict[str, str]:
    """Placeholder values of the right type for every parameter (as StackV1 sends strings)."""
    values = {
        "number": "42",
        "comma_delimited_list": "group-a,group-b",
        "string": "value",
        "json": "{}",
        "boolean": "true",
    }
    return {name: values[p["type"]] for name, p in template.get("parameters", {}).items()}


def heat_context(**extra: object):
    """A request context as Heat's own unit tests make one (heat/tests/utils.py), offline."""
    from heat.common import context

    return context.RequestContext.from_dict(
        {
            "tenant_id": "test_tenant_id",
            "tenant": "test_tenant",
            "username": "test_username",
            "user_id": "test_user",
            "password": "",
            "roles": ["member"],
            "is_admin": False,
            "auth_url": "http://127.0.0.1:9/v3",
            **extra,
        }
    )


class NoCloud(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NoCloud("offline validation tried to reach a cloud")


@pytest.fixture(scope="module")
def heat_validate():
    """validate(template_text) -> None, or raises Heat's StackValidationFailed."""
    need_module("heat")
    import keystoneauth1.session
    from heat.common import messaging, policy, template_format
    from heat.engine import environment, resources, stack, template
    from heat.engine.clients.os import glance, nova
    from heat.engine.clients.os.neutron import neutron_constraints

    messaging.setup("fake://", optional=True)
    resources.initialise()
    ctx = heat_context(auth_token="abcd1234")
    image = mock.Mock(status="active", min_ram=0, min_disk=0)
    flavor = mock.Mock(ram=4096, disk=20)
    limits = {"maxServerMeta": 128, "maxPersonality": 5, "maxPersonalitySize": 10240}
    patches = [
        mock.patch.object(keystoneauth1.session.Session, "request", _refuse),
        mock.patch.object(policy.ResourceEnforcer, "enforce"),
        mock.patch.object(glance.ImageConstraint, "validate", return_value=True),
        mock.patch.object(nova.FlavorConstraint, "validate", return_value=True),
        mock.patch.object(nova.KeypairConstraint, "validate", return_value=True),
        mock.patch.object(neutron_constraints.NetworkConstraint, "validate", return_value=True),
        mock.patch.object(glance.GlanceClientPlugin, "get_image", return_value=image),
        mock.patch.object(nova.NovaClientPlugin, "get_flavor", return_value=flavor),
        mock.patch.object(nova.NovaClientPlugin, "absolute_limits", return_value=limits),
    ]
    for patch in patches:
        patch.start()

    def validate(text: str, files: dict[str, str] | None = None) -> None:
        parsed = template_format.parse(text)
        env = environment.Environment(parameters_for(parsed))
        tmpl = template.Template(parsed, files=files, env=env)
        stack.Stack(ctx, "autoscale-etcd-test", tmpl).validate()

    yield validate
    for patch in reversed(patches):
        patch.stop()


def files_of(template: heat.ClusterTemplate) -> dict[str, str]:
    """The request's `files`, as the provider sends them: the member template by its URL."""
    member = template.member()
    return {member.url: member.text()}


@pytest.mark.parametrize("stack", STACKS)
def test_cluster_template_passes_heat_validation(stack, heat_validate):
    template = cluster_template(settings_of(stack), f"autoscale-etcd-{stack}")
    heat_validate(heat.to_yaml(template.to_hot()), files_of(template))


def test_without_the_member_file_heat_refuses_the_stack(heat_validate):
    """Heat itself fetches no `file://` URL: the member template must come in `files`."""
    from heat.common import exception

    template = cluster_template(settings_of("dev"), "autoscale-etcd-dev")
    with pytest.raises(exception.StackValidationFailed, match="Invalid URL scheme file"):
        heat_validate(heat.to_yaml(template.to_hot()))


@pytest.mark.parametrize("stack", STACKS)
def test_member_stack_alone_passes_heat_validation(stack, heat_validate):
    template = cluster_template(settings_of(stack), f"autoscale-etcd-{stack}")
    heat_validate(template.member().text())


def test_the_program_s_rendered_template_passes_heat_validation(heat_validate, tmp_path):
    """The very text StackV1 would send, from `python -m infra render`."""
    result = subprocess.run(
        [sys.executable, "-m", "infra", "render", "--stack", "metrics", "--out", str(tmp_path)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = (tmp_path / "heat-template.yaml").read_text()
    url = yaml.safe_load(text)["resources"][heat.GROUP]["properties"]["resource"]["type"]
    # the very file the provider would read, and the render's copy of it
    member = (tmp_path / "member-template.yaml").read_text()
    assert Path(url.removeprefix("file://")).read_text() == member
    heat_validate(text, {url: member})


def _broken(mutate) -> tuple[str, dict[str, str]]:
    template = cluster_template(settings_of("metrics"), "autoscale-etcd-metrics")
    document = copy.deepcopy(template.to_hot())
    member = copy.deepcopy(template.member().template())
    mutate(document, member)
    url = document["resources"][heat.GROUP]["properties"]["resource"]["type"]
    return heat.to_yaml(document), {url: heat.to_yaml(member)}


def _rename_min_size(doc: dict, member: dict) -> None:
    props = doc["resources"][heat.GROUP]["properties"]
    props["min_sise"] = props.pop("min_size")


def _unknown_type(doc: dict, member: dict) -> None:
    doc["resources"][heat.SCALE_UP]["type"] = "OS::Heat::ScalingPolicyy"


def _bad_get_attr(doc: dict, member: dict) -> None:
    doc["outputs"]["scale_up_url"]["value"] = {"get_attr": [heat.SCALE_UP, "signal_ur1"]}


def _member_typo(doc: dict, member: dict) -> None:
    server = member["resources"][heat.MEMBER_SERVER]["properties"]
    server["user_data_fromat"] = server.pop("user_data_format")


def _member_property_typo(doc: dict, member: dict) -> None:
    props = doc["resources"][heat.GROUP]["properties"]["resource"]["properties"]
    props["user_dta"] = props.pop("user_data")


def _member_handle_typo(doc: dict, member: dict) -> None:
    ready = member["resources"][heat.MEMBER_READY]["properties"]
    ready["handle"] = {"get_resource": "ready_handle"}


def _undeclared_param(doc: dict, member: dict) -> None:
    del doc["parameters"][heat.P.SERVER_GROUP]


def _bundle_typo(doc: dict, member: dict) -> None:
    props = doc["resources"][heat.AGENT_BUNDLE]["properties"]
    props["sallt"] = props.pop("salt")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_rename_min_size, "min_size not assigned"),
        (_unknown_type, "ScalingPolicyy"),
        (_bad_get_attr, "signal_ur1"),
        (_member_typo, "user_data_fromat"),
        (_member_property_typo, "user_dta"),
        (_member_handle_typo, "ready_handle"),
        (_undeclared_param, "server_group"),
        (_bundle_typo, "sallt"),
    ],
)
def test_a_typo_is_caught_by_the_same_validation(mutate, message, heat_validate):
    from heat.common import exception

    with pytest.raises(
        (exception.StackValidationFailed, exception.InvalidTemplateReference, ValueError)
    ) as caught:
        heat_validate(*_broken(mutate))
    assert message in str(caught.value)


def test_validation_really_refuses_a_cloud_call(heat_validate):
    """The fakes cover what the template needs; anything else would reach for a cloud."""
    with mock.patch("heat.engine.clients.os.nova.NovaClientPlugin.absolute_limits", _refuse):
        with pytest.raises(Exception, match="reach a cloud"):
            heat_validate(
                cluster_template(settings_of("dev"), "autoscale-etcd-dev").member().text()
            )


def test_cpu_threshold_formula():
    # 80 % of 2 vCPUs for 600 s: 0.8 * 600 s * 1e9 ns/s * 2
    assert heat.cpu_threshold_ns(80, 600, 2) == 960_000_000_000
    assert heat.cpu_threshold_ns(100, 60, 1) == 60_000_000_000
    with pytest.raises(ValueError):
        heat.cpu_threshold_ns(80, 600, 0)


def _uses(node, name: str, path: tuple = ()) -> list[tuple]:
    """Every path in `node` where `{get_param: name}` appears."""
    if node == {"get_param": name}:
        return [path]
    found: list[tuple] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _uses(value, name, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _uses(value, name, (*path, index))
    return found


def test_secrets_reach_heat_only_as_parameters_put_into_user_data():
    template = cluster_template(settings_of("metrics"), "autoscale-etcd-metrics").to_hot()
    for name in heat.SECRET_PARAMETERS:
        # not hidden: Heat would answer '******' and every `pulumi up` would update
        # (tests/test_infra_program.py, test_heat_answers_the_parameters_the_program_sent)
        assert "hidden" not in template["parameters"][name]
        uses = _uses(template["resources"], name)
        assert len(uses) == 2, (name, uses)  # the members' and the proxies' user-data
        for path in uses:
            assert path[-4:-1] == ("user_data", "str_replace", "params"), path
    assert _uses(template["outputs"], heat.P.CREDENTIAL_SECRET) == []


def test_to_yaml_round_trips():
    template = cluster_template(settings_of("dev"), "autoscale-etcd-dev").to_hot()
    assert yaml.safe_load(io.StringIO(heat.to_yaml(template))) == template


# --- the agent bundle in the stack --------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_stack_holds_the_bundle_its_nodes_name_and_the_groups_wait_for_it(stack):
    s = settings_of(stack)
    resources = cluster_template(s, f"autoscale-etcd-{stack}").to_hot()["resources"]
    bundle = agent_bundle()
    held = resources[heat.AGENT_BUNDLE]
    assert held["type"] == "OS::Heat::RandomString"
    assert held["properties"] == {"salt": bundle.sha256}  # a new bundle replaces it
    assert held["metadata"] == {
        "sha256": bundle.sha256,
        "size": len(bundle.zipapp),
        "encoding": "gzip+base64",
        "content": bundle.packed,
    }
    assert resources[heat.GROUP]["depends_on"] == [heat.AGENT_BUNDLE, heat.SETTINGS]
    if s.proxies:
        assert resources[heat.PROXY_GROUP]["depends_on"] == [heat.AGENT_BUNDLE, heat.SETTINGS]


@pytest.mark.parametrize("stack", STACKS)
def test_the_stack_waits_for_its_first_member_s_report(stack):
    """`pulumi up` ends only when a member's fetch has reported (tests/test_infra_node.py
    runs the fetcher's side): the wait condition follows the group, waits `join_timeout`
    for one signal, and only members are handed its handle."""
    from infra.settings import join_timeout

    s = settings_of(stack)
    cluster = cluster_template(s, f"autoscale-etcd-{stack}")
    resources = cluster.to_hot()["resources"]
    assert resources[heat.READY_HANDLE] == {"type": "OS::Heat::WaitConditionHandle"}
    assert resources[heat.READY] == {
        "type": "OS::Heat::WaitCondition",
        "depends_on": [heat.GROUP],
        "properties": {
            "handle": {"get_resource": heat.READY_HANDLE},
            "count": 1,
            "timeout": join_timeout(s),
        },
    }
    user_data = resources[heat.GROUP]["properties"]["resource"]["properties"]["user_data"]
    params = user_data["str_replace"]["params"]
    assert {"get_attr": [heat.READY_HANDLE, "endpoint"]} in params.values()
    assert {"get_attr": [heat.READY_HANDLE, "token"]} in params.values()
    assert f"--ready {READY_FILE}" in user_data["str_replace"]["template"]
    if s.proxies:
        proxy = resources[heat.PROXY_GROUP]["properties"]["resource_def"]["properties"]
        proxy_params = proxy["user_data"]["str_replace"]["params"]
        assert heat.READY_HANDLE not in yaml.safe_dump(proxy_params)
        assert "--ready /etc" not in proxy["user_data"]["str_replace"]["template"]


@pytest.mark.parametrize("stack", STACKS)
def test_the_template_is_within_heat_s_max_template_size(stack):
    from heat.common import config  # noqa: F401  (registers max_template_size)
    from oslo_config import cfg

    assert cfg.CONF.max_template_size == heat.MAX_TEMPLATE_SIZE  # Heat's default
    text = template_text(cluster_template(settings_of(stack), f"autoscale-etcd-{stack}"))
    size = len(text.encode())
    # room for the agent to grow: a few times its size today
    assert size + 4 * len(agent_bundle().packed) < heat.MAX_TEMPLATE_SIZE, size


def test_a_template_heat_would_refuse_for_its_size_is_refused_first():
    from heat.common import template_format

    template = cluster_template(settings_of("dev"), "autoscale-etcd-dev")
    # an agent whose gzip+base64 form is 600,000 bytes
    big = heat.ClusterTemplate(
        template.settings,
        template.member_user_data,
        agent_bundle=heat.AgentBundle("0" * 64, _incompressible(600_000), 450_000),
    )
    with pytest.raises(Exception, match="exceeds maximum allowed size"):
        template_format.parse(heat.to_yaml(big.to_hot()))
    with pytest.raises(ValueError, match="max_template_size"):
        template_text(big)


def _incompressible(size: int) -> str:
    blocks = (hashlib.sha256(str(i).encode()).digest() for i in range(size // 32 + 1))
    return base64.b64encode(b"".join(blocks)).decode()[:size]


@pytest.fixture(scope="module")
def heat_engine():
    """create_then_update(first, second) -> the metadata Heat answers after the update.

    Heat's engine on an in-memory sqlite database (the way heat/tests/utils.py sets it
    up), the legacy update path; the answer is what "Show resource metadata" returns
    (heat/engine/service.py describe_stack_resource -> api.format_stack_resource).
    """
    need_module("heat")
    from heat.common import messaging
    from heat.db import api as db_api
    from heat.db import models
    from heat.engine import api, resources, template
    from heat.engine import stack as parser
    from oslo_config import cfg
    from oslo_db import options

    messaging.setup("fake://", optional=True)
    resources.initialise()
    options.set_defaults(cfg.CONF, connection="sqlite://")
    cfg.CONF.set_override("deferred_auth_method", "password")  # no Keystone trust
    engine = db_api.get_engine()
    models.BASE.metadata.create_all(engine)
    ctx = heat_context()

    def stack_of(resource: dict) -> template.Template:
        return template.Template(
            {"heat_template_version": heat.HOT_VERSION, "resources": {"bundle": resource}}
        )

    def create_then_update(first: dict, second: dict) -> dict:
        name = f"bundle-{hashlib.sha256(repr(first).encode()).hexdigest()[:12]}"
        stack = parser.Stack(ctx, name, stack_of(first))
        stack.store()
        stack.create()
        assert stack.state == (stack.CREATE, stack.COMPLETE), stack.status_reason
        stack.update(parser.Stack(ctx, name, stack_of(second)))
        assert stack.state == (stack.UPDATE, stack.COMPLETE), stack.status_reason
        loaded = parser.Stack.load(ctx, stack_id=stack.id)
        return api.format_stack_resource(loaded.resource_get("bundle"))["metadata"]

    yield create_then_update
    cfg.CONF.clear_override("deferred_auth_method")


def test_after_a_stack_update_heat_answers_the_new_bundle(heat_engine):
    old, new = Bundle(b"agent, version 1"), Bundle(b"agent, version 2")
    first = heat.AgentBundle(old.sha256, old.packed, len(old.zipapp)).to_hot()
    second = heat.AgentBundle(new.sha256, new.packed, len(new.zipapp)).to_hot()
    assert heat_engine(first, second) == second["metadata"]
    # why not OS::Heat::None: Heat keeps a resource's metadata through updates in place
    stale = heat_engine({**first, "type": "OS::Heat::None"}, {**second, "type": "OS::Heat::None"})
    assert stale == first["metadata"]


# --- the member template's file, for the provider to send -------------------------------


def test_the_member_file_is_written_where_its_url_says(tmp_path, monkeypatch):
    monkeypatch.setattr(heat, "MEMBER_TEMPLATE_DIR", str(tmp_path / "heat"))
    member = cluster_template(settings_of("dev"), "autoscale-etcd-dev").member()
    path = heat.write_member_file(member)
    assert member.url == f"file://{path}" and path.read_text() == member.text()
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    # content-addressed: another text is another name (a new roll), the same text the same
    other = cluster_template(settings_of("metrics"), "autoscale-etcd-metrics").member()
    assert other.url != member.url
    assert heat.write_member_file(member) == path


def test_a_member_file_directory_others_may_write_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setattr(heat, "MEMBER_TEMPLATE_DIR", str(shared))
    member = cluster_template(settings_of("dev"), "autoscale-etcd-dev").member()
    with pytest.raises(ValueError, match="writable by others") as refused:
        heat.write_member_file(member)
    assert str(shared) in str(refused.value) and "0o777" in str(refused.value)
    assert not list(shared.iterdir())  # nothing written


def test_a_new_image_or_user_data_renames_the_member_s_handle():
    """The wait condition waits for a new signal only when its handle is new: every change
    that replaces the server must rename it (tests/test_infra_member_gate.py shows why)."""
    dev = settings_of("dev")
    base = cluster_template(dev, "autoscale-etcd-dev").member()
    image = cluster_template(dev.model_copy(update={"image": "other"}), "autoscale-etcd-dev")
    flavor = cluster_template(dev.model_copy(update={"instance_type": "m2"}), "autoscale-etcd-dev")
    hooks = cluster_template(dev, "autoscale-etcd-other").member()  # another user-data
    for changed in (image.member(), flavor.member(), hooks):
        assert changed.handle != base.handle and changed.url != base.url
    again = cluster_template(dev, "autoscale-etcd-dev").member()
    assert (again.handle, again.url) == (base.handle, base.url)
