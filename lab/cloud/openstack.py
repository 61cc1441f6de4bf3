"""The lab's cloud: Keystone, Heat's group and Nova behind the OpenStack APIs.

`LabCloud` holds one Heat stack (the infra's: an autoscaling group, its scaling policies,
the agent bundle) whose group's members are Nova servers booted by a `Hypervisor` (the
lab's nodes, lab.nodes.Nova, or a recorder in tests). It keeps Heat's rules
(lab.cloud.heat) and carries out what they decide as Heat's engine does: a signal is
answered at once and its resize runs behind it (the group UPDATE_IN_PROGRESS meanwhile,
dropping further signals), new servers are created before the ones a resize cuts are
deleted, and the group's cooldown starts once the resize is done.

The agents reach it through the OpenStack APIs (lab.cloud.api) with the application
credential the infra would make for them, restricted by the infra's access rules.
"""

from __future__ import annotations

import itertools
import random
import string
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from lab.cloud.api import OpenStackApi, StackResource
from lab.cloud.heat import Member, Policy, Resize, ScalingGroup, SignalOutcome, WaitHandle
from lab.cloud.keystone import AccessRule, AppCredential, Keystone
from lab.events import EventLog

GROUP = "etcd_group"
SCALE_UP = "scale_up"
SCALE_DOWN = "scale_down"
SETTINGS = "agent_settings"
"""infra.heat's names (the lab's cloud does not import the infra)."""


class UnsupportedUpdate(ValueError):
    """A stack update the lab's Heat does not carry out (it says why)."""


@dataclass(frozen=True)
class MemberKind:
    """What a group member is, by its definition: a server, or a provider template (a
    stack of its own, infra.heat.MemberStack) whose wait condition (`handle`, `timeout`)
    holds the member unfinished until its agent signals."""

    type: str = "OS::Nova::Server"
    handle: str = ""
    timeout: float = 0.0

    @property
    def gated(self) -> bool:
        return bool(self.handle)

    @property
    def stacked(self) -> bool:
        """A provider template: the member is a stack of its own."""
        return self.type.endswith((".yaml", ".template"))


def member_kind(resource: dict[str, Any] | None, files: dict[str, str]) -> MemberKind:
    """The kind of the group's `resource` definition. A `type` ending in .yaml is a
    provider template Heat reads from the request's `files` (it fetches no file:// URL
    itself: heat/engine/resources/template_resource.py `template_data`); a wait
    condition in it gates the member."""
    import yaml

    kind = str((resource or {}).get("type") or "OS::Nova::Server")
    if not MemberKind(kind).stacked:
        return MemberKind(kind)
    text = files.get(kind)
    if text is None:
        raise UnsupportedUpdate(
            f'Could not fetch remote template "{kind}": not in the request\'s files (Heat'
            " fetches no file:// URL itself)"
        )
    resources = (yaml.safe_load(text) or {}).get("resources") or {}
    condition = next(
        (r for r in resources.values() if r.get("type") == "OS::Heat::WaitCondition"), None
    )
    if condition is None:
        return MemberKind(kind)
    handle = (condition.get("properties") or {}).get("handle") or {}
    name = handle.get("get_resource") if isinstance(handle, dict) else None
    if not name or (resources.get(name) or {}).get("type") != "OS::Heat::WaitConditionHandle":
        raise UnsupportedUpdate(f"{kind}: the wait condition's handle is not a handle of it")
    return MemberKind(kind, str(name), float((condition.get("properties") or {})["timeout"]))


def _digest(value: Any) -> str:
    import hashlib
    import json

    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Hypervisor(Protocol):
    """What Nova does to a server's machine: boot it, power it off for good, reboot it."""

    def boot(self, member: Member) -> object: ...

    def delete(self, member: Member) -> None: ...

    def reboot(self, member: Member, kind: str) -> None: ...


@dataclass(frozen=True)
class AlarmSpec:
    threshold: float
    period: float
    evaluation: float
    repeat_actions: bool = True


def _short_id(rng: random.Random, size: int = 4) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(size))


class AddressPool:
    """Fresh addresses `prefix.n`, never handed out twice (a replacement gets a new one)."""

    def __init__(self, prefix: str, first: int = 10, last: int = 250) -> None:
        self.prefix = prefix
        self._next = itertools.count(first)
        self.last = last

    def take(self) -> str:
        n = next(self._next)
        if n > self.last:
            raise RuntimeError(f"the lab's range {self.prefix}.0/24 has no address left")
        return f"{self.prefix}.{n}"


class LabCloud:
    def __init__(
        self,
        *,
        min_size: int,
        max_size: int,
        policies: dict[str, Policy],
        hypervisor: Hypervisor,
        addresses: AddressPool,
        events: EventLog,
        stack_name: str = "autoscale-etcd-lab",
        name_prefix: str = "etcd",
        access_rules: Sequence[AccessRule] | None = None,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        background: bool = True,
        project_id: str | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.addresses = addresses
        self.events = events
        self.clock = clock
        self.name_prefix = name_prefix
        self.background = background
        """Resizes run behind the signal (Heat's engine); False: before it returns (tests)."""
        self._rng = random.Random(seed)
        self._seq = itertools.count(1)
        self._slots = itertools.count()
        self._lock = threading.RLock()
        self.stack_name = stack_name
        self.stack_id = str(uuid.UUID(int=self._rng.getrandbits(128)))
        self.group_resource = GROUP
        self.nested_name = f"{stack_name}-{GROUP}-{_short_id(self._rng, 12)}"
        self.nested_id = str(uuid.UUID(int=self._rng.getrandbits(128)))
        self.group = ScalingGroup(
            min_size=min_size,
            max_size=max_size,
            policies=policies,
            new_server=self._new_server,
            new_slot=self._new_slot,
        )
        self.extra_resources: list[StackResource] = []
        """Resources of the parent stack besides the group and policies (agent_bundle)."""
        self.settings_document: dict[str, Any] | None = None
        """The agents' settings the stack holds (infra.heat.SettingsDocument's metadata)."""
        self.update_listeners: list[Callable[[dict[str, Any]], None]] = []
        """Called with the template after each stack update."""
        self.member_definition: str | None = None
        self.parameters: dict[str, str] = {}
        """The stack's parameters as the lab knows them (lab.timings.lab_parameters)."""
        """A digest of the group's member definition in the template the stack was made
        from (None: not known); an update changing it is one the lab does not model."""
        self.kinds: dict[str, MemberKind] = {"member": MemberKind()}
        """What a member of each definition (Member.definition) is."""
        self.files: dict[str, str] = {}
        """The stack's `files` (the provider templates), old and new kept, as Heat merges
        them for a rolling update (grouputils.get_child_template_files)."""
        self.group_status = "CREATE_IN_PROGRESS"
        """The group resource's own status in the stack: *_IN_PROGRESS while the stack is
        created or updated (Heat's `adjust` drops every signal then)."""
        self.lingering: list[Member] = []
        """Old servers of members whose update failed: Heat keeps them (no clean-up ran)."""
        self.wait_handles: dict[str, WaitHandle] = {}
        """The stack's OS::Heat::WaitConditionHandle resources by name (agents_ready_handle)."""
        self.deleted: list[Member] = []
        self.outcomes: list[tuple[float, str, SignalOutcome]] = []
        self.keystone = Keystone(
            project_id=project_id or uuid.UUID(int=self._rng.getrandbits(128)).hex, clock=clock
        )
        self.agents: AppCredential = self.keystone.add_credential(
            f"{stack_name}-agents", access_rules
        )
        """The agents' credential (the infra's, restricted by its access rules)."""
        self.operator: AppCredential = self.keystone.add_credential(f"{stack_name}-operator")
        """The lab's own credential (unrestricted), for `python -m lab reboot` and tests."""
        self.api = OpenStackApi(self, self.keystone)
        self._stopping = threading.Event()
        self._engine: list[threading.Thread] = []
        self._alarm_thread: threading.Thread | None = None
        self.alarm_state = "insufficient data"
        self.cpu_of: Callable[[Member, float], float | None] = lambda member, period: None

    # --- the API server ---------------------------------------------------------------------

    def serve(self, host: str, port: int = 0, *, tls: tuple[str, str] | None = None) -> str:
        url = self.api.serve(host, port, tls=tls)
        self.keystone.endpoints = self.api.default_endpoints()
        return url

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def auth_url(self) -> str:
        return f"{self.api.url}/identity/v3"

    def metadata_url(self, server_id: str) -> str:
        return self.api.metadata_url(server_id)

    def stop(self) -> None:
        self._stopping.set()
        self.api.stop()
        for thread in list(self._engine):
            thread.join(timeout=30)
        if self._alarm_thread is not None:
            self._alarm_thread.join(timeout=5)

    # --- Nova: new servers ----------------------------------------------------------------

    def _new_slot(self) -> str:
        """A member's resource name, 12 characters as Heat's `short_id`s. Heat's are
        random; members made in the same second are ordered by them (grouputils), so the
        lab's begin with a counter: its same-second members go in the order they were made,
        the order its tests and scenarios name them in. The agents order by these names
        (agent.decide.heat_order) as Heat does, whatever they are."""
        return f"{next(self._slots):03x}{_short_id(self._rng, 9)}"

    def _new_server(self, slot: str) -> Member:
        seq = next(self._seq)
        return Member(
            slot=slot,
            server_id=str(uuid.UUID(int=self._rng.getrandbits(128))),
            name=f"{self.name_prefix}-{seq:02d}-{_short_id(self._rng)}",
            ip=self.addresses.take(),
            created_at=self.clock(),  # the resource's creation time
            status="BUILD",
        )

    # --- the Orchestrator the API serves ----------------------------------------------------

    def resources(self) -> list[StackResource]:
        policies = [
            StackResource(name, "OS::Heat::ScalingPolicy", f"policy-{name}")
            for name in self.group.policies
        ]
        group = StackResource(
            GROUP, "OS::Heat::AutoScalingGroup", self.nested_id, status=self.group_status
        )
        handles: list[StackResource] = []
        for name, handle in self.wait_handles.items():
            handles.append(
                StackResource(name, "OS::Heat::WaitConditionHandle", f"stack-user-{name}")
            )
            status, reason = handle.outcome(self.clock())
            handles.append(
                StackResource(
                    handle.name,
                    "OS::Heat::WaitCondition",
                    f"{self.stack_name}-{handle.name}",
                    status="INIT_COMPLETE" if status == "INIT" else f"CREATE_{status}",
                    reason=reason or "state changed",
                )
            )
        settings = []
        if self.settings_document is not None:
            sha = str(self.settings_document.get("sha256"))
            settings.append(
                StackResource(
                    SETTINGS,
                    "OS::Heat::RandomString",
                    f"settings-{sha[:12]}",
                    dict(self.settings_document),
                )
            )
        return [group, *policies, *handles, *settings, *self.extra_resources]

    # --- Heat: a stack update ---------------------------------------------------------------

    def load_template(
        self,
        template: dict[str, Any],
        parameters: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
    ) -> None:
        """What the stack was created from, as far as the lab keeps it: the settings
        document and the members' definition (the digest of its resource and the stack's
        parameters: a new image is a new parameter value, not a new template), and what a
        member is (`member_kind`, from the request's `files`)."""
        resources = template.get("resources") or {}
        self.settings_document = dict((resources.get(SETTINGS) or {}).get("metadata") or {})
        group = (resources.get(GROUP) or {}).get("properties") or {}
        member = group.get("resource")
        self.files = dict(files or {})
        self.kinds[self.group.definition] = member_kind(member, self.files)
        self.parameters = dict(parameters or {})
        self.member_definition = _digest([member, self.parameters]) if member is not None else None
        self.group.group_cooldown = float(group.get("cooldown", self.group.group_cooldown))

    def stack_update(
        self,
        template: dict[str, Any],
        parameters: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
    ) -> list[str]:
        """Heat's "Update stack" with a new template, for what the lab models: the settings
        document (its RandomString replaced: new metadata), the group's sizes and cooldown
        (the group's `handle_update`: resized to its current size within the new bounds,
        no desired_capacity, and its cooldown starts after, `_finished_scaling`), the
        policies' cooldowns. A changed member definition (its resource, or a parameter it
        names: a new image) makes Heat replace every member, a rolling update (`_roll`),
        in the background; refused while the group is already updating.
        Returns what changed, one note each."""
        resources = template.get("resources") or {}
        group_props = (resources.get(GROUP) or {}).get("properties") or {}
        member = group_props.get("resource")
        values = {**self.parameters, **(parameters or {})}  # PATCH: the others kept
        rolling = (
            self.member_definition is not None
            and member is not None
            and _digest([member, values]) != self.member_definition
        )
        if rolling and self.group.in_progress:
            raise UnsupportedUpdate("the group is being resized or updated: Heat refuses")
        merged = {**self.files, **(files or {})}
        kind = member_kind(member, merged) if rolling else None
        notes: list[str] = []
        document = (resources.get(SETTINGS) or {}).get("metadata")
        current = (self.settings_document or {}).get("sha256")
        if isinstance(document, dict) and document.get("sha256") != current:
            self.settings_document = dict(document)
            notes.append(f"{SETTINGS} replaced: settings {str(document.get('sha256'))[:12]}")
        for name, policy in list(self.group.policies.items()):
            props = (resources.get(name) or {}).get("properties") or {}
            cooldown = float(props.get("cooldown", policy.cooldown))
            if cooldown != policy.cooldown:
                self.group.policies[name] = Policy(name, policy.adjustment, cooldown)
                notes.append(f"{name} cooldown {policy.cooldown:g} -> {cooldown:g} s")
        g = self.group
        bounds = (
            int(group_props.get("min_size", g.min_size)),
            int(group_props.get("max_size", g.max_size)),
        )
        cooldown = float(group_props.get("cooldown", g.group_cooldown))
        # the lab's own view follows the new document before any server boots from it
        for listener in self.update_listeners:
            listener(template)
        if rolling:
            assert member is not None
            updates = group_props.get("rolling_updates") or {}
            batch = int(updates.get("max_batch_size", 1))
            least = int(updates.get("min_in_service", 0))
            pause = float(updates.get("pause_time", 0))
            with self._lock:
                g.min_size, g.max_size = bounds
                g.group_cooldown = cooldown
                g.in_progress = True  # UPDATE_IN_PROGRESS: a policy's signal is dropped
                self.member_definition = _digest([member, values])
                self.parameters = values
                self.files = merged
                g.definition = self.member_definition[:12]
                assert kind is not None
                self.kinds[g.definition] = kind
                batches = g.rolling_batches(batch, least)
            notes.append(
                f"{GROUP} members' definition {g.definition}: a rolling update, batches"
                f" {batches} (max_batch_size {batch}, min_in_service {least}, pause_time"
                f" {pause:g} s)"
            )
            self.group_status = "UPDATE_IN_PROGRESS"
            self._run(lambda: self._roll(batches, pause, cooldown), "rolling-update")
        elif bounds != (g.min_size, g.max_size) or cooldown != g.group_cooldown:
            with self._lock:
                g.min_size, g.max_size = bounds
                g.group_cooldown = cooldown
                plan = g.update(None, self.clock())
            notes.append(
                f"{GROUP} min {bounds[0]} max {bounds[1]} cooldown {cooldown:g} s:"
                f" {plan.capacity_before} -> {plan.capacity_after} members"
            )
            self._resize_in_update(plan, cooldown, size_changed=True)
        for note in notes:
            self.events.add("stack-update", "", note)
        if not notes:
            self.events.add("stack-update", "", "no change")
        return notes

    def _roll(self, batches: list[tuple[int, int]], pause: float, cooldown: float) -> None:
        """Heat's `_replace`: each batch is one nested-stack update
        (`_create_template(size, num_new)`: the oldest members not yet on the new definition
        get it; each a new server, the old one deleted once the new one is up), waited for;
        the group's cooldown restarts after each (`_finished_scaling`), then `pause_time`
        before the next. Then `handle_update`'s resize to the current size. The group stays
        UPDATE_IN_PROGRESS throughout: a policy's signal is dropped (NoActionRequired).
        A batch whose new member's wait condition fails (its agent never said it votes)
        fails the update: the roll stops there, the old servers kept."""
        failed: list[Member] = []
        ended = False  # every batch done and nothing failed (an exception is a failure too)
        try:
            for number, (size, count) in enumerate(batches, 1):
                with self._lock:
                    plan = self.group.resize(size, self.clock(), num_new=count)
                self.events.add(
                    "rolling-update",
                    "",
                    f"batch {number}/{len(batches)}: {size} members, {count} on the new"
                    f" definition: {', '.join(f'{a.name} by {b.name}' for a, b in plan.replaced)}"
                    f"{' +' + ', '.join(m.name for m in plan.created) if plan.created else ''}"
                    f"{' -' + ', '.join(m.name for m in plan.deleted) if plan.deleted else ''}",
                )
                failed = self._carry_out(plan)
                if failed:
                    self.events.add(
                        "rolling-update",
                        "",
                        f"failed at batch {number}/{len(batches)}: "
                        + "; ".join(f"{m.name}: {m.reason}" for m in failed),
                    )
                    return
                with self._lock:
                    self.group.cooldown.finished(cooldown, "rolling update", self.clock(), True)
                if number < len(batches) and pause > 0 and self._stopping.wait(pause):
                    return
            with self._lock:
                plan = self.group.resize(self.group.clamp(self.group.capacity()), self.clock())
            failed = self._carry_out(plan)
            self.events.add("rolling-update", "", "done" if not failed else "failed at the end")
            ended = not failed
        finally:
            with self._lock:
                self.group.finished(self.clock(), cooldown, size_changed=True)
                self.group_status = "UPDATE_COMPLETE" if ended else "UPDATE_FAILED"

    def add_wait_handle(
        self, name: str, *, condition: str, count: int, timeout: float
    ) -> tuple[str, str]:
        """An OS::Heat::WaitConditionHandle and the WaitCondition `condition` on it (`count`,
        `timeout`): the handle's `endpoint` and `token` attributes, as a template's
        get_attr hands them to the servers. Heat's endpoint names the stack user's project;
        the lab serves one project, so the endpoint keeps the stack's."""
        heat = next(e for e in self.keystone.endpoints if e.service_type == "orchestration")
        endpoint = f"{heat.url}/stacks/{self.stack_name}/{self.stack_id}/resources/{name}/signal"
        token = self.keystone.stack_user_token(name, urlsplit(endpoint).path)
        self.wait_handles[name] = WaitHandle(condition, count, timeout)
        return endpoint, token.id

    def start_waits(self) -> None:
        """The wait conditions begin (Heat: once the group they depend on is created)."""
        for handle in self.wait_handles.values():
            if handle.started_at is None:
                handle.started_at = self.clock()

    def wait_signal(self, name: str, details: Any) -> None:
        self.wait_handles[name].signal(details)

    def members(self) -> list[Member]:
        with self._lock:
            return list(self.group.members)

    def nested_status(self) -> tuple[str, float | None, float | None]:
        with self._lock:
            return self.group.status, self.group.created_at, self.group.updated_at

    def member_by_slot(self, slot: str) -> Member | None:
        with self._lock:
            return self.group.by_slot(slot)

    def server(self, server_id: str) -> Member | None:
        with self._lock:
            return self.group.find(server_id)

    # --- Heat -------------------------------------------------------------------------------

    def create(self, desired: int) -> Resize:
        """Create the stack: the group with `desired` servers."""
        with self._lock:
            plan = self.group.create(desired, self.clock())
        try:
            self._boot(plan)
        except BaseException:
            with self._lock:
                self.group.finished(self.clock(), 0.0, size_changed=False)
            raise
        self.events.add("stack-create", "", f"{len(plan.created)} servers")

        def done() -> None:  # Heat's create goes on behind the API's answer
            try:
                failed = self._finish(plan)
            finally:
                with self._lock:
                    self.group.finished(self.clock(), 0.0, size_changed=False)
            self.group_status = "CREATE_FAILED" if failed else "CREATE_COMPLETE"

        self._run(done, "stack-create")
        return plan

    def mark_unhealthy(self, server_id: str, reason: str, caller: str = "") -> Member:
        """Heat's mark-unhealthy; refused (the API's 409) while a member stack's create or
        update runs: Heat's engine holds the resource's lock for the whole action."""
        with self._lock:
            found = self.group.find(server_id)
            if (
                found is not None
                and found.stack_id
                and found.resource_status.endswith("_IN_PROGRESS")
            ):
                raise RuntimeError(
                    f"resource {found.slot} is locked: {found.resource_status} (its wait"
                    " condition waits)"
                )
            member = self.group.mark_unhealthy(server_id, reason)
        by = self._name_of(caller)
        self.events.add("mark-unhealthy", member.name, f"by {by}: {reason}" if by else reason)
        return member

    def signal(self, policy: str, caller: str = "") -> SignalOutcome:
        """A policy's signal, as Heat's engine handles it: adjust() at once, the resize behind
        the answer (before it, when `background` is off)."""
        if policy not in self.group.policies:
            raise KeyError(policy)
        by = self._name_of(caller) or caller or "an agent"
        with self._lock:
            if not self.group_status.endswith("_COMPLETE"):
                # adjust(): the group resource is not COMPLETE (its create or last update
                # is running or failed): NoActionRequired until an update succeeds
                status = self.group_status
                outcome = SignalOutcome(policy, "no-action", f"group is not COMPLETE ({status})")
            else:
                outcome = self.group.signal(policy, self.clock())
            self.outcomes.append((self.events.now(), by, outcome))
        kind = "scale-up" if self.group.policies[policy].adjustment > 0 else "scale-down"
        if outcome.resize is None:
            self.events.add("no-action", by, f"{policy}: {outcome.reason}")
            return outcome
        self.events.add(kind, by, f"{policy}: {outcome.reason}")
        cooldown = self.group.policies[policy].cooldown
        self._run(lambda: self._resize(outcome.resize, cooldown, True), f"resize-{policy}")
        return outcome

    def check(self) -> list[Member]:
        """`openstack stack check`: each member's `Server.handle_check` (Heat 27,
        heat/engine/resources/openstack/nova/server.py) asks Nova for its server and expects
        ACTIVE; a server Nova does not know (NotFound) or in any other status fails the
        check and its resource is CHECK_FAILED, which the next update replaces. A member
        marked unhealthy whose server is ACTIVE passes (`Resource.check`: CHECK_COMPLETE),
        so it is no longer FAILED. The members that failed."""
        failed = []
        with self._lock:
            for member in self.group.members:
                status = member.nova_status
                if status == "ACTIVE":
                    if member.status == "FAILED":
                        member.status, member.resource_status = "ACTIVE", "CHECK_COMPLETE"
                        member.reason = ""
                    continue
                why = "Server not found (HTTP 404)" if status is None else f"status {status}"
                self.group.mark_unhealthy(member.server_id, f"CHECK: {why}")
                failed.append(member)
        for member in failed:
            self.events.add("check-failed", member.name, member.reason or "")
        return failed

    def update(self, desired: int | None) -> Resize:
        """A stack update by the operator: resize to `desired` (or the current capacity).
        Like `pulumi up`, it comes after the stack's create or last update is done: a
        group whose members still wait for their agents' signals is waited for (at most
        their wait conditions' timeout)."""
        self.wait_idle()
        with self._lock:
            plan = self.group.update(desired, self.clock())
        self.events.add(
            "stack-update",
            "",
            f"desired_capacity {desired}: {plan.capacity_before} -> {plan.capacity_after}",
        )
        self._resize_in_update(plan, 0.0, size_changed=False)
        return plan

    def wait_idle(self, timeout: float = 900.0) -> None:
        """Wait while the group is being created, resized or updated (a roll takes a join
        and a pause per member); RuntimeError if it still is after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.group.in_progress and time.monotonic() < deadline:
            if self._stopping.wait(0.1):
                break
        if self.group.in_progress:
            raise RuntimeError(f"the group is still being created or updated after {timeout:g}s")

    def _resize_in_update(self, plan: Resize, cooldown: float, *, size_changed: bool) -> None:
        """A stack update's resize: the group resource UPDATE_IN_PROGRESS meanwhile, then
        UPDATE_COMPLETE, or UPDATE_FAILED when a member's wait failed (or anything did)."""
        self.group_status = "UPDATE_IN_PROGRESS"
        failed: list[Member] | None = None
        try:
            failed = self._resize(plan, cooldown, size_changed)
        finally:
            self.group_status = "UPDATE_COMPLETE" if failed == [] else "UPDATE_FAILED"

    def _resize(self, plan: Resize | None, cooldown: float, size_changed: bool) -> list[Member]:
        """Carry out `plan`; the members whose wait condition failed."""
        try:
            return self._carry_out(plan) if plan is not None else []
        finally:
            with self._lock:
                self.group.finished(self.clock(), cooldown, size_changed=size_changed)

    def _run(self, work: Callable[[], None], name: str) -> None:
        if not self.background:
            work()
            return
        thread = threading.Thread(target=work, name=name, daemon=True)
        self._engine = [t for t in self._engine if t.is_alive()] + [thread]
        thread.start()

    def _carry_out(self, plan: Resize) -> list[Member]:
        """The nested stack's update: new servers first, then the deletes (the replaced and
        the cut), each a hard power-off as Nova's delete is. A member stack whose kind has
        a wait condition is done only once its agent signals it (or its timeout fails it):
        the deletes wait for that, and the old server of a member whose new one failed is
        kept (Heat's clean-up of it never runs). The members whose wait failed."""
        self._boot(plan)
        return self._finish(plan)

    def _boot(self, plan: Resize) -> None:
        """The new servers of `plan`, booted; a member stack's wait condition begins."""
        for old, new in plan.replaced:
            self.events.add("replace", old.name, f"by {new.name} ({new.ip})")
        # a member stack updated in place keeps its stack (lab.cloud.heat.ScalingGroup.resize)
        in_place = {id(new) for old, new in plan.replaced if new.stack_id == old.stack_id != ""}
        for member in plan.boots:
            kind = self.kinds.get(member.definition, MemberKind())
            with self._lock:
                member.type, member.handle = kind.type, kind.handle
                if kind.stacked and not member.stack_id:
                    member.stack_id = str(uuid.UUID(int=self._rng.getrandbits(128)))
                    member.stack_name = (
                        f"{self.nested_name}-{member.slot}-{_short_id(self._rng, 12)}"
                    )
                action = "UPDATE" if id(member) in in_place else "CREATE"
                member.resource_status = f"{action}_IN_PROGRESS"
                if kind.gated:  # the handle exists before the server: signals are kept
                    member.ready = WaitHandle("ready", 1, kind.timeout)
            try:
                self.hypervisor.boot(member)
                with self._lock:
                    member.status = "ACTIVE"
                    member.nova_status = "ACTIVE"
                    member.server_created_at = self.clock()
                    if member.ready is not None:  # the condition waits from the server's ACTIVE
                        member.ready.started_at = self.clock()
                    else:
                        member.resource_status = f"{action}_COMPLETE"
            except Exception as error:  # a server that fails to boot is FAILED, as in Nova
                with self._lock:
                    member.status = "FAILED"
                    member.nova_status = "ERROR"
                    member.resource_status = f"{action}_FAILED"
                    member.reason = f"boot failed: {error}"
                    member.ready = None
                self.events.add("boot-failed", member.name, str(error))

    def _finish(self, plan: Resize) -> list[Member]:
        """The rest of `plan` once its new members are done: the deletes."""
        failed = self._await_ready([m for m in plan.boots if m.ready is not None])
        replaced_by = {old.server_id: new for old, new in plan.replaced}
        for member in plan.deletes:
            new = replaced_by.get(member.server_id)
            if new is not None and new in failed:
                # the replacement never signalled: Heat's update failed before the clean-up
                member.reason = f"kept: its replacement {new.name} failed ({new.reason})"
                with self._lock:
                    self.lingering.append(member)
                self.events.add("kept", member.name, member.reason)
                continue
            if new is not None and member.status != "FAILED":
                member.reason = f"replaced by {new.name}: a new member definition"
            elif member.status != "FAILED":
                member.reason = "not FAILED: cut by the resize (Heat keeps the newest)"
            self.hypervisor.delete(member)
            with self._lock:
                member.nova_status = None
                self.deleted.append(member)
        return failed

    def _await_ready(self, members: list[Member]) -> list[Member]:
        """Wait until each member stack's wait condition completes or fails (Heat's
        `HeatWaitCondition._wait`, in lab.cloud.heat.WaitHandle); the members it failed,
        FAILED as Heat leaves them (`*_FAILED`, the condition's reason)."""
        pending = list(members)
        failed: list[Member] = []
        while pending:
            for member in list(pending):
                ready = member.ready
                assert ready is not None
                status, reason = ready.outcome(self.clock())
                if status == "IN_PROGRESS" or status == "INIT":
                    continue
                pending.remove(member)
                with self._lock:
                    action = member.resource_status.split("_", 1)[0]
                    if status == "COMPLETE":
                        member.resource_status = f"{action}_COMPLETE"
                        self.events.add("member-ready", member.name, "its wait condition completed")
                    else:
                        member.status = "FAILED"
                        member.resource_status = f"{action}_FAILED"
                        member.reason = reason
                        failed.append(member)
                if status != "COMPLETE":
                    self.events.add("member-failed", member.name, reason)
            if pending and self._stopping.wait(0.1):
                break
        return failed

    def member_ready(self, stack_id: str, handle: str, details: Any) -> bool:
        """A signal to the handle `handle` of member stack `stack_id`; False: no such handle."""
        with self._lock:
            member = next((m for m in self.group.members if m.stack_id == stack_id), None)
        ready = member.ready if member is not None else None
        if member is None or member.handle != handle or ready is None:
            return False
        ready.signal(details)
        return True

    # --- Nova actions -------------------------------------------------------------------------

    def reboot(self, server_id: str, kind: str = "HARD") -> None:
        """Nova's reboot: HARD_REBOOT while the machine powers off and boots again."""
        with self._lock:
            member = self.group.find(server_id)
            if member is None:
                raise KeyError(server_id)
            member.nova_status = "HARD_REBOOT" if kind == "HARD" else "REBOOT"
        self.events.add("reboot", member.name, f"{kind.lower()} reboot")

        def cycle() -> None:
            try:
                self.hypervisor.reboot(member, kind)
            finally:
                with self._lock:
                    if member.nova_status in ("HARD_REBOOT", "REBOOT"):
                        member.nova_status = "ACTIVE"

        self._run(cycle, f"reboot-{member.name}")

    def delete_server(self, server_id: str) -> None:
        """Someone deletes a server behind Heat's back: Nova forgets it, Heat keeps the member
        (its resource now points at a server Nova does not know)."""
        with self._lock:
            member = self.group.find(server_id)
            if member is None:
                raise KeyError(server_id)
        self.hypervisor.delete(member)
        with self._lock:
            member.nova_status = None
        self.events.add("server-deleted", member.name, "deleted outside Heat")

    # --- reading ----------------------------------------------------------------------------

    def _name_of(self, server_id: str) -> str:
        member = self.server(server_id) if server_id else None
        if member is not None:
            return member.name
        gone = next((m for m in self.deleted if m.server_id == server_id), None)
        return gone.name if gone else ""

    # --- Aodh -------------------------------------------------------------------------------

    def evaluate_alarm(self, spec: AlarmSpec) -> str:
        """One evaluation: the mean CPU use of the group's servers over the period."""
        values = [
            cpu
            for member in self.members()
            if (cpu := self.cpu_of(member, spec.period)) is not None
        ]
        if not values:
            state = "insufficient data"
        else:
            mean = sum(values) / len(values)
            state = "alarm" if mean > spec.threshold else "ok"
        if state != self.alarm_state:
            shown = f"mean CPU {sum(values) / len(values):.0f}%" if values else "no data"
            self.events.add(
                "alarm" if state == "alarm" else "alarm-ok",
                "",
                f"{shown} over {spec.period:g}s vs {spec.threshold:g}%",
            )
        previous, self.alarm_state = self.alarm_state, state
        if state == "alarm" and (spec.repeat_actions or previous != "alarm"):
            self.signal(SCALE_UP, caller="alarm")
        return state

    def start_alarm(self, spec: AlarmSpec) -> None:
        def run() -> None:
            while not self._stopping.wait(spec.evaluation):
                try:
                    self.evaluate_alarm(spec)
                except Exception as error:  # keep evaluating, as Aodh does
                    self.events.add("alarm-error", "", str(error))

        self._alarm_thread = threading.Thread(target=run, name="aodh", daemon=True)
        self._alarm_thread.start()
