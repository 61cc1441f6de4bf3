"""Heat deletes a member's old server only after its replacement votes: shown with Heat's
own convergence engine (openstack-heat, in this process, offline).

`infra.heat.MemberStack` names its wait condition handle by a digest of everything that
replaces its server, so a new image also renames the handle: the wait condition's
`handle` property changes, it is not `update_allowed`, and the condition is replaced by
one that waits for a signal on the new, empty handle. These tests run a convergence
update of the real member template texts the way `EngineService.update_stack` does for a
convergence stack (`Stack.converge_stack(template, new_stack=...)`), then let Heat's
workers (`heat.engine.worker.WorkerService.check_resource`, which runs
`heat.engine.check_resource.CheckResource.check`) walk the graph Heat computed for the
update (`Stack._compute_convg_dependencies`, stored as `Stack.current_deps`):

- the graph: the old server's clean-up node requires the old wait condition's clean-up
  node, which requires the wait condition's update node, which requires the new handle's
  create node and the server's update node;
- the walk: the server's update node replaces the server, the wait condition's update
  node replaces the condition (`Resource.make_replacement`; the replacement stands in for
  the old node), and it completes only on the new server's agent's signal; the old server
  is deleted after that. Without a signal the update fails at the condition's `timeout`
  and the old server stays;
- the negative: with the handle's name kept (only the image changed), the graph has the
  same chain, but the wait condition's update node finds no property changed
  (`Resource.update`), so it replaces nothing and waits for nothing, and the old server
  is deleted before the new one's agent has said anything. The graph alone does not tell
  the two apart: what gates the delete is that the update node replaces the condition.

Fakes stand for what a cloud would answer: Nova (a server's create, delete, address, and
its ports on replacement), Keystone (the handle's stack-domain user and token), Heat's
own URL, and Glance/Nova/Neutron look-ups of names; any other call towards a cloud fails
the test. The database is an in-memory sqlite one, as in tests/test_infra_heat.py. Time
is a clock the engine's sleeps advance (`TaskRunner._sleep`): the agents and the wait
condition's timeout see it, so no test waits in earnest.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import inspect
import itertools
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest

from infra import heat
from infra.cluster import cluster_template
from infra.heat import MemberStack
from tests.test_infra_heat import heat_context, settings_of
from tests.tools import need_module

NEW_IMAGE = "Ubuntu 24.04 (rebuilt)"
WORLD_SECONDS_PER_SLEEP = 15
"""World seconds that pass in one of the engine's sleeps (`TaskRunner._sleep`, 1 s)."""
VOTE_AFTER = 120
"""World seconds from a server's creation to its agent's signal (boot, join, vote)."""
SERVER, READY = heat.MEMBER_SERVER, heat.MEMBER_READY


class NoCloud(RuntimeError):
    pass


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise NoCloud("the engine tried to reach a cloud")


# --- the member templates ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Version:
    """One member template as the group's nested stack gets it: its text, its handle's
    name and the parameters the group passes it (strings, as Heat gets them)."""

    text: str
    handle: str
    timeout: int
    image: str

    def parameters(self) -> dict[str, str]:
        from heat.common import template_format

        names = template_format.parse(self.text)["parameters"]
        return {name: self.image if name == heat.P.IMAGE else f"{name}-0" for name in names}


def version(member: MemberStack, image: str) -> Version:
    return Version(member.text(), member.handle, member.timeout, image)


@functools.cache
def versions() -> tuple[Version, Version, Version]:
    """The dev stack's member (old); the same with a new image (new), as the program
    renders it; and that new image with the old handle's name (kept), a template whose
    handle would not gate."""
    settings = settings_of("dev")
    old = cluster_template(settings, "gate").member()
    changed = settings.model_copy(update={"image": NEW_IMAGE})
    new = cluster_template(changed, "gate").member()
    kept = dataclasses.replace(new, replaced_by=old.replaced_by)
    return version(old, settings.image), version(new, NEW_IMAGE), version(kept, NEW_IMAGE)


# --- Heat's engine and workers in this process, and the world around them ---------------


@dataclasses.dataclass(frozen=True)
class Event:
    at: float
    """world seconds"""
    what: str
    """boot and delete (Nova), signal (an agent)"""
    server: str


class SyncThreads:
    """Heat's ThreadGroupManager, running what it is given at once."""

    def start(self, stack_id: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        func(*args, **kwargs)

    def add_msg_queue(self, stack_id: Any, msg_queue: Any) -> None:
        pass

    def remove_msg_queue(self, thread: Any, stack_id: Any, msg_queue: Any) -> None:
        pass

    def send(self, stack_id: Any, message: Any) -> None:
        pass


class World:
    """Heat's engine and workers in this process, with what they would reach outside:
    Nova's servers, the members' agents and the clock.

    The workers' messages (`WorkerClient.check_resource`, an RPC cast) are queued and
    handled one at a time by `WorkerService.check_resource`. While one of them waits
    (`TaskRunner._sleep`: a wait condition polling its handle), the world moves on: the
    clock advances, and an agent whose server has been up VOTE_AFTER seconds signals the
    member's handle through `EngineService.resource_signal` (the "Send a signal to a
    resource" API the agent calls)."""

    def __init__(self, ctx: Any) -> None:
        from heat.engine import service, worker
        from heat.rpc import worker_client

        self.ctx = ctx
        self.threads = SyncThreads()
        self.worker = worker.WorkerService(
            "gate-host", "engine_worker", "gate-engine", self.threads
        )
        self.engine = service.EngineService("gate-host", "engine")
        self.engine.thread_group_mgr = self.threads
        self.messages: collections.deque[dict[str, Any]] = collections.deque()
        self._cast_signature = inspect.signature(worker_client.WorkerClient.check_resource)
        self.events: list[Event] = []
        self.servers: dict[str, tuple[str, float]] = {}
        """Nova: server id -> (image, world second of its creation)"""
        self.signalled: set[str] = set()
        self.agents_vote = True
        self.stack_identity: dict[str, Any] | None = None
        self.handle = ""
        """The handle the agents signal: their member stack's (its template's)."""
        self.start = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.now = 0.0
        self._ids = itertools.count(1)

    # --- the clock and the agents -----------------------------------------------------

    def utcnow(self, with_timezone: bool = False) -> datetime.datetime:
        """oslo_utils.timeutils.utcnow, on the world's clock."""
        now = self.start + datetime.timedelta(seconds=self.now)
        return now.replace(tzinfo=datetime.UTC) if with_timezone else now

    def sleep(self, wait_time: float | None) -> None:
        """An engine's sleep: the world's time passes, and agents due to vote do."""
        if wait_time:
            self.now += wait_time * WORLD_SECONDS_PER_SLEEP
        if not self.agents_vote or self.stack_identity is None:
            return
        for server, (_, booted) in list(self.servers.items()):
            if server not in self.signalled and self.now - booted >= VOTE_AFTER:
                self.signalled.add(server)
                self.events.append(Event(self.now, "signal", server))
                details = {"status": "SUCCESS", "reason": "votes", "data": "", "id": server}
                self.engine.resource_signal(self.ctx, self.stack_identity, self.handle, details)

    # --- Nova ---------------------------------------------------------------------------

    def boot(self, server: Any) -> None:
        server_id = f"server-{next(self._ids)}"
        self.servers[server_id] = (server.properties["image"], self.now)
        self.events.append(Event(self.now, "boot", server_id))
        server.resource_id_set(server_id)

    def delete(self, server: Any) -> None:
        if server.resource_id in self.servers:
            del self.servers[server.resource_id]
            self.events.append(Event(self.now, "delete", server.resource_id))

    # --- the workers --------------------------------------------------------------------

    def cast(self, client: Any, *args: Any, **kwargs: Any) -> None:
        """`WorkerClient.check_resource`: its arguments, queued by name."""
        arguments = self._cast_signature.bind(client, *args, **kwargs).arguments
        self.messages.append({k: v for k, v in arguments.items() if k not in ("self", "ctxt")})

    def run(self) -> None:
        """Handle the workers' messages until none is left (the traversal's end)."""
        while self.messages:
            self.worker.check_resource(self.ctx, **self.messages.popleft())

    def order(self, what: str, server: str) -> int | None:
        """Where the event is in the world's history (None: it did not happen)."""
        found = [i for i, e in enumerate(self.events) if (e.what, e.server) == (what, server)]
        return found[0] if found else None


@pytest.fixture
def world() -> Iterator[World]:
    need_module("heat")
    import keystoneauth1.session
    from heat.common import messaging
    from heat.db import api as db_api
    from heat.db import models
    from heat.engine import resource, resources, scheduler
    from heat.engine.clients.os import glance, heat_plugin, neutron, nova
    from heat.engine.clients.os.neutron import neutron_constraints
    from heat.engine.resources.openstack.nova import server
    from heat.rpc import worker_client
    from oslo_config import cfg
    from oslo_db import options
    from oslo_utils import timeutils

    messaging.setup("fake://", optional=True)
    resources.initialise()
    options.set_defaults(cfg.CONF, connection="sqlite://")
    cfg.CONF.set_override("deferred_auth_method", "password")  # no Keystone trust
    cfg.CONF.set_override("convergence_engine", True)
    models.BASE.metadata.create_all(db_api.get_engine())
    ctx = heat_context()
    w = World(ctx)
    users = itertools.count(1)
    keystone = mock.Mock(name="keystone", stack_domain_id="heat-domain")
    keystone.create_stack_domain_project.return_value = "stack-project"
    keystone.create_stack_domain_user.side_effect = lambda **kw: f"user-{next(users)}"
    keystone.stack_domain_user_token.return_value = "token"

    def same(plugin: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        return value

    patches = [
        mock.patch.object(keystoneauth1.session.Session, "request", _refuse),
        # the clock, the agents, the workers
        mock.patch.object(timeutils, "utcnow", w.utcnow),
        mock.patch.object(scheduler, "ENABLE_SLEEP", False),
        mock.patch.object(scheduler.TaskRunner, "_sleep", lambda runner, t: w.sleep(t)),
        mock.patch.object(
            worker_client.WorkerClient, "check_resource", lambda c, *a, **k: w.cast(c, *a, **k)
        ),
        # Keystone: the handles' stack-domain users and tokens; Heat's own URL
        mock.patch.object(resource.Resource, "keystone", return_value=keystone),
        mock.patch.object(
            heat_plugin.HeatClientPlugin,
            "get_heat_url",
            return_value="http://heat.invalid:8004/v1/test_tenant_id",
        ),
        # the server's properties as given (Heat checks them, and resolves names to ids)
        mock.patch.object(glance.ImageConstraint, "validate", return_value=True),
        mock.patch.object(nova.FlavorConstraint, "validate", return_value=True),
        mock.patch.object(nova.KeypairConstraint, "validate", return_value=True),
        mock.patch.object(neutron_constraints.NetworkConstraint, "validate", return_value=True),
        mock.patch.object(glance.GlanceClientPlugin, "find_image_by_name_or_id", same),
        mock.patch.object(nova.NovaClientPlugin, "find_flavor_by_name_or_id", same),
        mock.patch.object(neutron.NeutronClientPlugin, "find_resourceid_by_name_or_id", same),
        # Nova: a server is ACTIVE once created, gone once deleted; no port of the old one
        # to move to its replacement (the template makes none)
        mock.patch.object(server.Server, "handle_create", lambda rsrc: w.boot(rsrc)),
        mock.patch.object(server.Server, "check_create_complete", return_value=True),
        mock.patch.object(server.Server, "handle_delete", lambda rsrc: w.delete(rsrc)),
        mock.patch.object(server.Server, "check_delete_complete", return_value=True),
        mock.patch.object(server.Server, "_resolve_attribute", return_value="10.0.0.10"),
        mock.patch.object(server.Server, "prepare_ports_for_replace", return_value=None),
    ]
    for patch in patches:
        patch.start()
    yield w
    for patch in reversed(patches):
        patch.stop()
    cfg.CONF.clear_override("convergence_engine")
    cfg.CONF.clear_override("deferred_auth_method")


def template_of(v: Version) -> Any:
    """Heat's Template of a member version, with the group's parameters."""
    from heat.common import template_format
    from heat.engine import environment, template

    env = environment.Environment(v.parameters())
    return template.Template(template_format.parse(v.text), env=env)


@dataclasses.dataclass(frozen=True)
class Row:
    """A resource row of the member stack."""

    id: int
    name: str
    state: tuple[str, str]
    replaced_by: int | None


def rows_of(stack: Any) -> list[Row]:
    from heat.objects import resource as resource_objects

    rows = resource_objects.Resource.get_all_active_by_stack(stack.context, stack.id)
    return [Row(r.id, r.name, (r.action, r.status), r.replaced_by) for r in rows.values()]


def create(world: World, v: Version, name: str) -> Any:
    """A member stack as Heat's convergence engine creates it (its agent voting)."""
    from heat.engine import stack as parser

    stack = parser.Stack(world.ctx, name, template_of(v), convergence=True)
    stack.store()
    stack.thread_group_mgr = world.threads
    world.stack_identity = dict(stack.identifier())
    world.handle = v.handle
    stack.converge_stack(template=stack.t, action=stack.CREATE)
    world.run()
    stack = parser.Stack.load(world.ctx, stack_id=stack.id)
    assert stack.state == (stack.CREATE, stack.COMPLETE), stack.status_reason
    assert sorted(r.name for r in rows_of(stack)) == sorted([SERVER, READY, v.handle])
    return stack


@dataclasses.dataclass(frozen=True)
class Update:
    before: dict[str, int]
    """The rows before the update: name -> id."""
    edges: frozenset[tuple[str, str]]
    """The graph Heat computed and stored for the update: (requirer, required), each
    node as "update NAME(old|new)" (Heat's `is_update` node: the create of a new row) or
    "clean-up NAME(old|new)" (old: a row from before the update)."""
    stack: Any
    """The stack after the traversal."""
    after: list[Row]


def update(world: World, stack: Any, v: Version) -> Update:
    """`EngineService.update_stack` for a convergence stack: the new template and its
    parameters, then `converge_stack`. The graph is read as Heat stored it, before any
    worker ran; then the workers walk it."""
    from heat.engine import stack as parser

    before = {r.name: r.id for r in rows_of(stack)}
    tmpl = template_of(v)
    current = parser.Stack.load(world.ctx, stack_id=stack.id)
    new_stack = parser.Stack(world.ctx, current.name, tmpl, **current.get_kwargs_for_cloning())
    current.thread_group_mgr = world.threads
    world.handle = v.handle
    current.converge_stack(template=tmpl, new_stack=new_stack)

    started = parser.Stack.load(world.ctx, stack_id=stack.id)
    names = {r.id: r.name for r in rows_of(started)}

    def label(node: Any) -> str:
        age = "old" if node.rsrc_id in before.values() else "new"
        role = "update" if node.is_update else "clean-up"
        return f"{role} {names[node.rsrc_id]}({age})"

    edges = frozenset(
        (label(requirer), label(required))
        for requirer, required in started.convergence_dependencies.graph().edges()
        if required is not None
    )
    world.run()
    after = parser.Stack.load(world.ctx, stack_id=stack.id)
    return Update(before, edges, after, rows_of(after))


def waits_for(edges: frozenset[tuple[str, str]], start: str, goal: str) -> bool:
    """Whether node `start` requires node `goal`, through any chain of edges."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo += [required for requirer, required in edges if requirer == node]
    return False


def only(rows: list[Row], name: str) -> Row:
    (row,) = [r for r in rows if r.name == name]
    return row


# --- the tests --------------------------------------------------------------------------


def test_a_new_image_renames_the_handle_and_only_that_changes_the_template():
    old, new, kept = versions()
    assert new.handle != old.handle
    assert new.text.replace(new.handle, old.handle) == old.text
    assert kept.handle == old.handle and kept.text == old.text


def test_the_old_server_is_deleted_only_after_the_new_one_votes(world):
    """Heat's convergence graph (`Stack._compute_convg_dependencies`) and its workers
    (`CheckResource.check`): the old server's clean-up waits for the wait condition's
    update node, which replaces the condition (its `handle` changed) and completes only
    on the new server's signal. So a rolling update never takes a voter away before its
    replacement votes."""
    old, new, _ = versions()
    stack = create(world, old, "member-rolled")
    (first,) = world.servers
    result = update(world, stack, new)

    # the graph, as Heat stored it for the workers
    assert {
        (f"clean-up {SERVER}(old)", f"clean-up {READY}(old)"),
        (f"clean-up {READY}(old)", f"update {READY}(old)"),
        (f"update {READY}(old)", f"update {new.handle}(new)"),
        (f"update {READY}(old)", f"update {SERVER}(old)"),
        (f"clean-up {old.handle}(old)", f"clean-up {READY}(old)"),
    } <= result.edges
    assert waits_for(result.edges, f"clean-up {SERVER}(old)", f"update {new.handle}(new)")

    # the walk: the server and the wait condition replaced (new rows), the old rows gone
    assert result.stack.state == (result.stack.UPDATE, result.stack.COMPLETE)
    assert sorted(r.name for r in result.after) == sorted([SERVER, READY, new.handle])
    assert not {r.id for r in result.after} & set(result.before.values())
    # Nova: the old server deleted after the new one's agent signalled, not before
    (second,) = world.servers
    assert world.servers[second][0] == NEW_IMAGE
    booted, signalled = world.order("boot", second), world.order("signal", second)
    deleted = world.order("delete", first)
    assert None not in (booted, signalled, deleted), world.events
    assert booted < signalled < deleted, world.events
    assert world.events[signalled].at - world.events[booted].at >= VOTE_AFTER


def test_without_the_new_server_s_signal_the_old_one_stays(world):
    """The same update with an agent that never votes: the new wait condition times out
    (its `timeout`, the member's join_timeout), the update fails, and the old server is
    kept: Heat never reaches its clean-up node."""
    old, new, _ = versions()
    stack = create(world, old, "member-silent")
    (first,) = world.servers
    world.agents_vote = False
    result = update(world, stack, new)

    assert result.stack.state == (result.stack.UPDATE, result.stack.FAILED)
    assert "WaitConditionTimeout" in result.stack.status_reason, result.stack.status_reason
    assert world.now >= new.timeout
    assert world.order("delete", first) is None
    assert first in world.servers and len(world.servers) == 2
    # Heat's rows: the old server replaced (by the new one) but not deleted, the new
    # wait condition failed
    (old_server,) = [r for r in result.after if r.id == result.before[SERVER]]
    assert old_server.state == ("UPDATE", "COMPLETE")
    new_server = [r for r in result.after if r.name == SERVER and r.id != old_server.id]
    assert [r.id for r in new_server] == [old_server.replaced_by]
    new_ready = [r for r in result.after if r.name == READY and r.id != result.before[READY]]
    assert [r.state for r in new_ready] == [("CREATE", "FAILED")]


def test_with_the_handle_kept_the_old_server_goes_before_the_new_one_votes(world):
    """The negative: a member template whose handle is not renamed when the image changes
    (its digest left the image out). Heat's graph has the same chain from the old
    server's clean-up to the wait condition's update node, but that node finds no
    property changed (`Resource.update`), so the condition is neither replaced nor waited
    for, and the old server is deleted before the new one's agent says anything: the
    gate is the handle's renaming, not the graph alone."""
    old, _, kept = versions()
    stack = create(world, old, "member-kept")
    (first,) = world.servers
    result = update(world, stack, kept)

    # the same chain: the old server's clean-up after the condition's update node...
    assert {
        (f"clean-up {SERVER}(old)", f"clean-up {READY}(old)"),
        (f"clean-up {READY}(old)", f"update {READY}(old)"),
        (f"update {READY}(old)", f"update {SERVER}(old)"),
    } <= result.edges
    # ...but that node depends on the old handle (already signalled), no new one
    assert (f"update {READY}(old)", f"update {old.handle}(old)") in result.edges
    assert not any("(new)" in a or "(new)" in b for a, b in result.edges)

    assert result.stack.state == (result.stack.UPDATE, result.stack.COMPLETE)
    assert only(result.after, SERVER).id != result.before[SERVER]  # a new server...
    assert only(result.after, READY).id == result.before[READY]  # ...the same condition
    (second,) = world.servers
    assert world.order("delete", first) is not None
    assert world.order("signal", second) is None, world.events  # deleted with no vote
