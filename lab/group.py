"""Heat's autoscaling group rules, as openstack-heat 27.0.1 implements them; pure, no I/O.

The lab's cloud (lab/localcloud.py) keeps its group here and only carries out what
this module decides (boot a server, delete one). Every rule below is read from Heat's
source, which the dev environment installs (`openstack-heat==27.0.1`, for the
template validator):

- `adjust()` (heat/engine/resources/aws/autoscaling/autoscaling_group.py, which
  OS::Heat::AutoScalingGroup inherits): nothing while the group is not COMPLETE; the
  current capacity is `grouputils.get_size(group)`, which counts members that are
  *not* FAILED (`include_failed=False`); the new capacity is current + adjustment
  clamped to [min_size, max_size] (heat/scaling/scalingutil.py); equal to the current
  one: NoActionRequired, before any cooldown is looked at. Then the cooldown
  (heat/scaling/cooldown.py): one `cooldown_end` per *group*, set after each resize to
  max(old end, now + the signalling policy's cooldown), and "scaling in progress"
  refuses a signal too.
- `resize(n)` (instance_group.py `_create_template` + heat/scaling/template.py
  `member_definitions`): the members, FAILED ones first and then by creation time
  (grouputils.get_members), keep the last `n`; the ones cut off are deleted; missing
  ones are created. A kept member that is FAILED is replaced on the nested-stack update
  (heat/engine/resource.py `_needs_update`: `needs_replace_failed()` -> UpdateReplace):
  same member (resource) name, a new server with a new name, id and address.
- mark-unhealthy (`PATCH .../resources/<name> {"mark_unhealthy": true}`) only sets the
  member CHECK_FAILED: nothing is deleted or replaced until the next resize or update.
- a stack update (`handle_update`) resizes to `desired_capacity` (or, unset, the current
  capacity) clamped to [min, max]: FAILED members go first or are replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

ServerStatus = Literal["BUILD", "ACTIVE", "FAILED"]


@dataclass
class Member:
    """One group member: Heat's resource (`slot`, kept on replacement) and its server."""

    slot: str
    server_id: str
    name: str
    ip: str
    created_at: float
    """The resource's created_time; a replacement gets a new one."""
    status: ServerStatus = "BUILD"
    initial: bool = False
    reason: str = ""

    def sort_key(self) -> tuple[bool, float, str]:
        """grouputils.get_members: FAILED first, then by created_time, then by name."""
        return (self.status != "FAILED", self.created_at, self.slot)


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


NewServer = Callable[[str, bool], Member]
"""(slot, initial) -> a new BUILD member with a fresh server id, name and address."""


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
    ) -> None:
        if not 0 <= min_size <= max_size:
            raise ValueError(f"need 0 <= min_size ({min_size}) <= max_size ({max_size})")
        self.min_size = min_size
        self.max_size = max_size
        self.policies = policies
        self._new_server = new_server
        self._new_slot = new_slot
        self.members: list[Member] = []
        self.cooldown_end: float | None = None
        self.in_progress = False
        """A resize is being carried out (Heat: status not COMPLETE / scaling_in_progress)."""

    # --- reading -------------------------------------------------------------------

    def capacity(self) -> int:
        """grouputils.get_size(group): members not FAILED."""
        return sum(1 for m in self.members if m.status != "FAILED")

    def ordered(self) -> list[Member]:
        return sorted(self.members, key=Member.sort_key)

    def find(self, server_id: str) -> Member | None:
        return next((m for m in self.members if m.server_id == server_id), None)

    def clamp(self, capacity: int) -> int:
        return max(self.min_size, min(self.max_size, capacity))

    # --- the stack's life ------------------------------------------------------------

    def create(self, desired: int) -> Resize:
        """The group's creation: `desired` members, all of them initial."""
        if self.members:
            raise RuntimeError("the group exists already")
        size = self.clamp(desired)
        created = [self._new_server(self._new_slot(), True) for _ in range(size)]
        self.members = list(created)
        return Resize(capacity_before=0, capacity_after=size, created=created)

    def mark_unhealthy(self, server_id: str, reason: str) -> Member:
        """PATCH the member `mark_unhealthy`: CHECK_FAILED, nothing else happens now."""
        member = self.find(server_id)
        if member is None:
            raise KeyError(server_id)
        member.status = "FAILED"
        member.reason = reason
        return member

    def signal(self, policy_name: str, now: float) -> SignalOutcome:
        """A policy's signal: `adjust()`; a resize is planned and the group marked busy."""
        policy = self.policies[policy_name]
        if self.in_progress:
            return SignalOutcome(policy_name, "no-action", "group is not COMPLETE (resizing)")
        current = self.capacity()
        new = self.clamp(current + policy.adjustment)
        if new == current:
            return SignalOutcome(
                policy_name,
                "no-action",
                f"no change in capacity ({current} {policy.adjustment:+d} clamped to"
                f" [{self.min_size}, {self.max_size}])",
            )
        if self.cooldown_end is not None and now < self.cooldown_end:
            return SignalOutcome(
                policy_name,
                "no-action",
                f"due to cooldown ({self.cooldown_end - now:.1f}s left)",
            )
        self.in_progress = True
        return SignalOutcome(policy_name, "resize", f"{current} -> {new}", self.resize(new))

    def update(self, desired: int | None) -> Resize:
        """A stack update (`handle_update`): resize to desired_capacity, or to the current size."""
        self.in_progress = True
        return self.resize(self.clamp(desired if desired else self.capacity()))

    def resize(self, capacity: int) -> Resize:
        """Keep the last `capacity` of the ordered members; replace kept FAILED ones."""
        before = self.capacity()
        ordered = self.ordered()
        kept = ordered[-capacity:] if capacity > 0 else []
        plan = Resize(capacity_before=before, capacity_after=capacity)
        plan.deleted = [m for m in ordered if m not in kept]
        members: list[Member] = []
        for member in kept:
            if member.status == "FAILED":
                fresh = self._new_server(member.slot, False)
                plan.replaced.append((member, fresh))
                members.append(fresh)
            else:
                members.append(member)
        for _ in range(capacity - len(kept)):
            fresh = self._new_server(self._new_slot(), False)
            plan.created.append(fresh)
            members.append(fresh)
        self.members = members
        return plan

    def finished(self, now: float, cooldown: float, size_changed: bool = True) -> None:
        """`_finished_scaling`: the cooldown runs from the end of the resize."""
        if size_changed:
            end = now + max(0.0, cooldown)
            self.cooldown_end = end if self.cooldown_end is None else max(self.cooldown_end, end)
        self.in_progress = False
