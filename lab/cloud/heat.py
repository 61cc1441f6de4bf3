"""Heat's autoscaling group, with Heat's own code where Heat has a function for it.

The lab's cloud keeps its group here and only carries out what this module decides (boot
a server, delete one). openstack-heat 27.0.1 is installed beside the lab, and this model
calls it:

- the members' order and which of them a resize keeps, drops or adds:
  `heat.scaling.template.member_definitions`, fed the members in the order of
  `heat.common.grouputils.get_members` (FAILED first, then by creation time, then by
  name), as `InstanceGroup._create_template` does;
- the new capacity of an adjustment: `heat.scaling.scalingutil.calculate_new_capacity`;
- the cooldown and "scaling in progress": `heat.scaling.cooldown.CooldownMixin`, on a
  metadata dict as Heat keeps it in the group resource's metadata (one `cooldown_end`
  per group, whichever policy signalled).

What this module writes itself, read from Heat's source and held against Heat's functions
by tests/test_lab_group.py:

- `adjust()` (heat/engine/resources/aws/autoscaling/autoscaling_group.py): nothing while
  the group is not COMPLETE (a resize or a stack update in progress); the capacity counts
  members that are not FAILED (`grouputils.get_size`); an unchanged capacity is
  NoActionRequired before the cooldown is looked at. Heat drops such a signal without an
  event: the lab logs it as "no-action" for its report.
- a kept member that is FAILED is replaced on the nested stack's update (heat/engine/
  resource.py `_needs_update`: UpdateReplace): same resource name, a new server.
- mark-unhealthy (`PATCH .../resources/<name> {"mark_unhealthy": true}`) only sets the
  member CHECK_FAILED.
- a stack update (`handle_update`) resizes to `desired_capacity` when the property is set,
  else to the current capacity, clamped to [min, max].
- the nested stack's history: CREATE_COMPLETE with no `updated_time` until its first
  resize or update (what the agents read as "the group's first members").
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

ServerStatus = Literal["BUILD", "ACTIVE", "FAILED"]

_HEAT_LOCK = threading.RLock()
"""Heat's cooldown reads oslo's process-wide clock override: one caller at a time."""


def _heat() -> Any:
    """Heat's modules (imported once, on first use: eventlet and oslo come with them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from heat.common import exception
        from heat.engine import resource
        from heat.scaling import cooldown, scalingutil, template
    return exception, resource, cooldown, scalingutil, template


def _instance_group() -> Any:
    """Heat's InstanceGroup (its `_get_batches`: a rolling update's batches)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from heat.engine.resources.openstack.heat.instance_group import InstanceGroup
    return InstanceGroup


@dataclass
class Member:
    """One group member: Heat's resource (`slot`, kept on replacement) and its server."""

    slot: str
    server_id: str
    name: str
    ip: str
    created_at: float
    """The resource's creation time; a replacement gets a new one."""
    status: ServerStatus = "BUILD"
    reason: str = ""
    definition: str = "member"
    """The member's resource definition (a rolling update changes it)."""
    resource_status: str = "CREATE_IN_PROGRESS"
    """Heat's resource status: CREATE_IN_PROGRESS, CREATE_COMPLETE, CHECK_FAILED, ..."""
    nova_status: str | None = "BUILD"
    """Nova's server status: BUILD, ACTIVE, HARD_REBOOT, ERROR; None once Nova forgot it."""
    stack_id: str = ""
    """The member's own stack (a provider template: infra.heat.MemberStack); "" for a
    member that is a server only. Kept when the member is updated in place."""
    stack_name: str = ""
    type: str = "OS::Nova::Server"
    """The member resource's type: the provider template's URL for a member stack."""
    handle: str = ""
    """The member stack's wait condition handle."""
    ready: WaitHandle | None = None
    """The member stack's wait condition, on `handle` (made when its server is ACTIVE)."""
    server_created_at: float = 0.0
    """The server resource's creation time (a member updated in place keeps `created_at`)."""

    def sort_key(self) -> tuple[bool, int, str]:
        """grouputils.get_members: FAILED first, then by created_time, then by name.

        Heat keeps `created_at` in a DateTime column (heat/db/models.py), a MySQL DATETIME
        of whole seconds, and its API shows whole seconds: members made in the same second
        are ordered by name, here as on such a cloud (and as the agents see it)."""
        return (self.status != "FAILED", int(self.created_at), self.slot)


@dataclass(frozen=True)
class Policy:
    """An OS::Heat::ScalingPolicy with adjustment_type change_in_capacity."""

    name: str
    adjustment: int
    cooldown: float


@dataclass
class Resize:
    """What one resize does: the servers to delete, to boot, and those replaced."""

    capacity_before: int
    capacity_after: int
    deleted: list[Member] = field(default_factory=list)
    created: list[Member] = field(default_factory=list)
    replaced: list[tuple[Member, Member]] = field(default_factory=list)
    """(the FAILED member's old server, its new server) pairs."""

    @property
    def boots(self) -> list[Member]:
        return self.created + [new for _, new in self.replaced]

    @property
    def deletes(self) -> list[Member]:
        return self.deleted + [old for old, _ in self.replaced]


@dataclass(frozen=True)
class SignalOutcome:
    """What a policy signal did: a resize, or Heat's NoActionRequired with its reason."""

    policy: str
    action: Literal["resize", "no-action"]
    reason: str
    resize: Resize | None = None


NewServer = Callable[[str], Member]
"""slot -> a new BUILD member with a fresh server id, name and address."""


class HeatCooldown:
    """The group's cooldown as Heat keeps it: `CooldownMixin` on the group's metadata."""

    def __init__(self, name: str = "etcd_group") -> None:
        exception, resource, cooldown, _, _ = _heat()
        self._no_action = resource.NoActionRequired
        self._not_found = exception.NotFound

        class GroupResource(cooldown.CooldownMixin):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                self.name = name
                self.metadata: dict[str, Any] = {}

            def metadata_get(self) -> dict[str, Any]:
                return dict(self.metadata)

            def metadata_set(self, metadata: dict[str, Any]) -> None:
                self.metadata = dict(metadata)

        self.resource = GroupResource()

    @staticmethod
    @contextmanager
    def _clock(now: float) -> Iterator[None]:
        """Heat's `timeutils.utcnow()` reads the lab's clock (naive UTC, as oslo's)."""
        from unittest import mock

        from oslo_utils import timeutils

        moment = datetime.fromtimestamp(now, UTC).replace(tzinfo=None)
        with _HEAT_LOCK, mock.patch.object(timeutils, "utcnow", lambda *a, **k: moment):
            yield

    def check(self, cooldown: float, now: float) -> str | None:
        """`_check_scaling_allowed`: None (and scaling in progress) or why not."""
        with self._clock(now):
            try:
                self.resource._check_scaling_allowed(cooldown)
            except self._no_action as refused:
                return str(refused)
        return None

    def finished(self, cooldown: float, reason: str, now: float, size_changed: bool) -> None:
        """`_finished_scaling`: the cooldown runs from now; scaling no longer in progress."""
        with self._clock(now):
            self.resource._finished_scaling(cooldown, reason, size_changed=size_changed)

    @property
    def end(self) -> float | None:
        ends = self.resource.metadata.get("cooldown_end")
        if not ends:
            return None
        moment = datetime.fromisoformat(next(iter(ends)))
        return moment.replace(tzinfo=UTC).timestamp()


class ScalingGroup:
    """An OS::Heat::AutoScalingGroup and its policies. Not thread-safe: callers lock."""

    def __init__(
        self,
        *,
        min_size: int,
        max_size: int,
        policies: dict[str, Policy],
        new_server: NewServer,
        new_slot: Callable[[], str],
        group_cooldown: float = 0.0,
    ) -> None:
        if not 0 <= min_size <= max_size:
            raise ValueError(f"need 0 <= min_size ({min_size}) <= max_size ({max_size})")
        self.min_size = min_size
        self.max_size = max_size
        self.policies = policies
        self.group_cooldown = group_cooldown
        self._new_server = new_server
        self._new_slot = new_slot
        self.members: list[Member] = []
        self.cooldown = HeatCooldown()
        self.in_progress = False
        """The group is not COMPLETE: a resize or a stack update is being carried out."""
        self.created_at: float | None = None
        self.updated_at: float | None = None
        """The nested stack's updated_time: None until its first resize or update."""
        self.definition = "member"

    # --- reading -------------------------------------------------------------------

    def capacity(self) -> int:
        """grouputils.get_size(group): members not FAILED."""
        return sum(1 for m in self.members if m.status != "FAILED")

    def ordered(self) -> list[Member]:
        return sorted(self.members, key=Member.sort_key)

    def find(self, server_id: str) -> Member | None:
        return next((m for m in self.members if m.server_id == server_id), None)

    def by_slot(self, slot: str) -> Member | None:
        return next((m for m in self.members if m.slot == slot), None)

    def clamp(self, capacity: int) -> int:
        return max(self.min_size, min(self.max_size, capacity))

    @property
    def cooldown_end(self) -> float | None:
        return self.cooldown.end

    @property
    def status(self) -> str:
        """The nested stack's status as Heat shows it."""
        action = "CREATE" if self.updated_at is None else "UPDATE"
        return f"{action}_{'IN_PROGRESS' if self.in_progress else 'COMPLETE'}"

    # --- the stack's life ------------------------------------------------------------

    def create(self, desired: int, now: float) -> Resize:
        """The group's creation: `desired` members (the nested stack's CREATE)."""
        if self.members:
            raise RuntimeError("the group exists already")
        size = self.clamp(desired)
        created = [self._new_server(self._new_slot()) for _ in range(size)]
        self.members = list(created)
        self.created_at = now
        self.in_progress = True
        return Resize(capacity_before=0, capacity_after=size, created=created)

    def mark_unhealthy(self, server_id: str, reason: str) -> Member:
        """PATCH the member `mark_unhealthy`: CHECK_FAILED, nothing else happens now."""
        member = self.find(server_id)
        if member is None:
            raise KeyError(server_id)
        member.status = "FAILED"
        member.resource_status = "CHECK_FAILED"
        member.reason = reason
        return member

    def signal(self, policy_name: str, now: float) -> SignalOutcome:
        """A policy's signal, Heat's `adjust()`: a resize is planned and the group busy."""
        policy = self.policies[policy_name]
        if self.in_progress:
            return SignalOutcome(policy_name, "no-action", "group is not COMPLETE (resizing)")
        _, _, _, scalingutil, _ = _heat()
        current = self.capacity()
        new = scalingutil.calculate_new_capacity(
            current, policy.adjustment, "change_in_capacity", None, self.min_size, self.max_size
        )
        if new == current:
            return SignalOutcome(
                policy_name,
                "no-action",
                f"no change in capacity ({current} {policy.adjustment:+d} clamped to"
                f" [{self.min_size}, {self.max_size}])",
            )
        refused = self.cooldown.check(policy.cooldown, now)
        if refused is not None:
            end = self.cooldown.end
            left = f" ({end - now:.1f}s left)" if end is not None else ""
            return SignalOutcome(policy_name, "no-action", f"{refused}{left}")
        self.in_progress = True
        return SignalOutcome(policy_name, "resize", f"{current} -> {new}", self.resize(new, now))

    def update(self, desired: int | None, now: float) -> Resize:
        """A stack update (`handle_update`): resize to desired_capacity, or the current size."""
        if self.in_progress:
            raise RuntimeError("the group is being resized or updated")
        self.in_progress = True
        return self.resize(self.clamp(desired if desired else self.capacity()), now)

    def rolling_batches(self, batch_size: int, min_in_service: int) -> list[tuple[int, int]]:
        """A changed member definition: Heat's `InstanceGroup._replace` batches, from its own
        `_get_batches` (heat.scaling.rolling_update's `needs_update`/`next_batch`): each
        (the group's size after the batch, how many members get the new definition)."""
        capacity = len(self.members)  # `_replace`: the nested stack's size, FAILED included
        target = min(self.capacity() or capacity, capacity)
        return list(_instance_group()._get_batches(target, capacity, batch_size, min_in_service))

    def resize(self, capacity: int, now: float, num_new: int = 0) -> Resize:
        """`_create_template(capacity, num_new)` through Heat's `member_definitions`: kept
        FAILED members, and members given the new definition (`num_new` of them, the
        oldest first, in a rolling update), are replaced (a new server for the same
        resource, the old one deleted once the new one is up)."""
        _, _, _, _, template = _heat()
        before = self.capacity()
        ordered = self.ordered()
        old = [(m.slot, m.definition) for m in ordered]
        plan = Resize(capacity_before=before, capacity_after=capacity)
        wanted = list(
            template.member_definitions(old, self.definition, capacity, num_new, self._new_slot)
        )
        kept_slots = {slot for slot, _ in wanted}
        plan.deleted = [m for m in ordered if m.slot not in kept_slots]
        members: list[Member] = []
        for slot, definition in wanted:
            member = self.by_slot(slot)
            if member is None:
                fresh = self._new_server(slot)
                fresh.definition = definition
                plan.created.append(fresh)
                members.append(fresh)
            elif member.status == "FAILED" or member.definition != definition:
                fresh = self._new_server(slot)
                fresh.definition = definition
                if member.stack_id and member.status != "FAILED":
                    # a member stack is updated in place (a TemplateResource keeps its
                    # class): the same resource and stack, a new server inside it
                    fresh.created_at = member.created_at
                    fresh.stack_id, fresh.stack_name = member.stack_id, member.stack_name
                plan.replaced.append((member, fresh))
                members.append(fresh)
            else:
                members.append(member)
        self.members = members
        self.updated_at = now
        return plan

    def finished(self, now: float, cooldown: float, size_changed: bool = True) -> None:
        """`_finished_scaling`: the cooldown runs from the end of the resize."""
        self.cooldown.finished(cooldown, "resize", now, size_changed)
        self.in_progress = False


class WaitHandle:
    """An OS::Heat::WaitConditionHandle (signal_transport TOKEN_SIGNAL) and the
    OS::Heat::WaitCondition waiting on it, with Heat's own code: a signal's body is
    completed and checked by `HeatWaitConditionHandle.normalise_signal_data` and
    `_metadata_format_ok` (keys exactly status, reason, data, id; status SUCCESS or
    FAILURE) and kept by its id; the condition's outcome is `HeatWaitCondition._wait`'s
    (any FAILURE fails it with `WaitConditionFailure`, the reasons joined by ';'; `count`
    successes complete it; past `timeout`, `WaitConditionTimeout`)."""

    def __init__(
        self, condition: str, count: int, timeout: float, started_at: float | None = None
    ) -> None:
        self.name = condition
        self.count = count
        self.timeout = timeout
        self.started_at = started_at
        """When the condition began to wait (after the resources it depends on: the group);
        None: not yet (Heat's INIT_COMPLETE; signals to the handle are kept meanwhile)."""
        self.metadata: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._settle = threading.Lock()
        self._final: tuple[str, str] | None = None

    @staticmethod
    def _heat_handle() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from heat.engine.resources.openstack.heat import wait_condition_handle
        # Heat's methods used here read only class constants: an instance without __init__
        return object.__new__(wait_condition_handle.HeatWaitConditionHandle)

    def signal(self, details: Any) -> None:
        handle = self._heat_handle()
        with self._lock:
            data = handle.normalise_signal_data(details, self.metadata)
            if not handle._metadata_format_ok(data):
                return  # Heat refuses it ("Metadata format invalid") and only logs it
            entry = dict(data)
            self.metadata[str(entry.pop(handle.UNIQUE_ID))] = entry

    def outcome(self, now: float) -> tuple[str, str]:
        """("INIT" | "IN_PROGRESS" | "COMPLETE" | "FAILED", Heat's reason); the first
        COMPLETE or FAILED stays (a finished resource does not time out afterwards)."""
        with self._settle:  # one outcome settles, whoever looks first at the boundary
            if self._final is not None:
                return self._final
            found = self._outcome(now)
            if found[0] in ("COMPLETE", "FAILED"):
                self._final = found
            return found

    def _outcome(self, now: float) -> tuple[str, str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from heat.engine.resources import wait_condition

        handle = self._heat_handle()
        with self._lock:
            entries = list(self.metadata.values())

        class _Handle:
            STATUS_FAILURE = handle.STATUS_FAILURE
            STATUS_SUCCESS = handle.STATUS_SUCCESS

            @staticmethod
            def get_status_reason(status: str) -> list[str]:
                return [e[handle.REASON] for e in entries if e[handle.STATUS] == status]

        class _Condition:
            COUNT = "count"
            properties: ClassVar[dict[str, int]] = {"count": self.count}

        statuses = [e[handle.STATUS] for e in entries]
        if self.started_at is None:
            return "INIT", ""
        if now - self.started_at > self.timeout:
            error = wait_condition.WaitConditionTimeout(_Condition, _Handle)
            return "FAILED", f"WaitConditionTimeout: resources.{self.name}: {error}"
        if any(s != handle.STATUS_SUCCESS for s in statuses):
            error = wait_condition.WaitConditionFailure(_Condition, _Handle)
            return "FAILED", f"WaitConditionFailure: resources.{self.name}: {error}"
        if len(statuses) >= self.count:
            return "COMPLETE", "state changed"
        return "IN_PROGRESS", ""
