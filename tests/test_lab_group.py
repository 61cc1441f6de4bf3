"""The lab's cloud keeps Heat's group rules: unit tests, no processes.

The rules are checked two ways: by cases written from Heat's source (openstack-heat
27.0.1, installed beside the lab), and by a property test that runs Heat's own ordering
(grouputils.get_members) and capacity (scalingutil.calculate_new_capacity) beside
lab/cloud/heat.py on random groups. The model itself calls Heat's member_definitions and
CooldownMixin. Then the same cloud through its OpenStack API, as the agents reach it.
"""

from __future__ import annotations

import itertools
import random
import warnings
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cloud import CloudError
from agent.cloud_openstack import OpenStackGroup
from infra.access_rules import ACCESS_RULES, access_rules
from lab.cloud.heat import Member, Policy, ScalingGroup
from lab.cloud.keystone import AccessRule
from lab.cloud.openstack import AddressPool, AlarmSpec, LabCloud
from lab.events import EventLog
from tests.fake_openstack import CREDENTIAL_ID, FakeOpenStack, Machines
from tests.tools import need_module

POLICIES = {
    "scale_up": Policy("scale_up", +1, 240.0),
    "scale_down": Policy("scale_down", -1, 200.0),
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lab_cloud(nova: Machines, clock: Clock, *, min_size: int = 3, max_size: int = 5) -> LabCloud:
    return LabCloud(
        min_size=min_size,
        max_size=max_size,
        policies=dict(POLICIES),
        hypervisor=nova,
        addresses=AddressPool(f"127.{random.randint(100, 254)}.{random.randint(0, 255)}"),
        events=EventLog(clock=clock),
        clock=clock,
        seed=7,
        background=False,
    )


def make_cloud(
    capacity: int = 3, *, min_size: int = 3, max_size: int = 5
) -> tuple[LabCloud, Machines, Clock]:
    clock = Clock()
    nova = Machines()
    cloud = lab_cloud(nova, clock, min_size=min_size, max_size=max_size)
    cloud.create(capacity)
    clock.now += 1
    return cloud, nova, clock


def names(members: list[Member]) -> list[str]:
    return [m.name for m in members]


# --- Heat's rules, case by case -------------------------------------------------------------


def test_create_boots_capacity_initial_servers_with_distinct_names_and_addresses():
    cloud, nova, _ = make_cloud(3)
    members = cloud.members()
    assert len(members) == 3 and all(m.status == "ACTIVE" for m in members)
    # the nested stack's CREATE, never updated: what the agents read as "initial"
    assert cloud.nested_status() == ("CREATE_COMPLETE", 1000.0, None)
    assert len({m.name for m in members}) == 3 and len({m.ip for m in members}) == 3
    assert nova.booted == names(members)


def test_scale_up_adds_a_new_server_then_the_cooldown_ignores_the_next_signal():
    cloud, nova, clock = make_cloud(3)
    first = cloud.signal("scale_up", "alarm")
    assert first.action == "resize" and cloud.group.capacity() == 4
    new = cloud.members()[-1]
    assert new.name not in names(cloud.members()[:3])
    assert cloud.nested_status()[0] == "UPDATE_COMPLETE"  # no member is initial any more
    clock.now += 239
    inside = cloud.signal("scale_up", "alarm")
    assert inside.action == "no-action" and "cooldown" in inside.reason
    assert cloud.group.capacity() == 4
    clock.now += 2
    assert cloud.signal("scale_up", "alarm").action == "resize"
    assert cloud.group.capacity() == 5
    assert len(nova.booted) == 5


def test_at_max_size_a_signal_is_no_action_before_the_cooldown_is_even_looked_at():
    cloud, _, _clock = make_cloud(5)
    outcome = cloud.signal("scale_up", "alarm")
    assert outcome.action == "no-action" and "no change in capacity" in outcome.reason
    # NoActionRequired for an unchanged capacity does not start a cooldown
    assert cloud.group.cooldown_end is None


def test_the_cooldown_belongs_to_the_group_not_to_the_policy():
    """heat/scaling/cooldown.py keeps one cooldown_end in the group's metadata."""
    cloud, _, clock = make_cloud(3)
    assert cloud.signal("scale_up", "alarm").action == "resize"
    clock.now += 100  # inside scale_up's 240 s, past nothing of scale_down's own
    outcome = cloud.signal("scale_down", "someone")
    assert outcome.action == "no-action" and "cooldown" in outcome.reason


def test_mark_unhealthy_only_marks_the_member_failed():
    cloud, nova, _ = make_cloud(4, min_size=3)
    victim = cloud.members()[2]
    cloud.mark_unhealthy(victim.server_id, "etcd member dead")
    assert cloud.server(victim.server_id).status == "FAILED"
    assert nova.deleted == [] and len(nova.booted) == 4
    # get_size() leaves FAILED members out
    assert cloud.group.capacity() == 3


def test_shrinking_deletes_failed_members_first_then_the_oldest():
    cloud, nova, _clock = make_cloud(5, min_size=1)
    members = cloud.members()
    cloud.mark_unhealthy(members[3].server_id, "leaving")
    plan = cloud.update(3)
    # FAILED first, then the oldest healthy one: the last 3 of [FAILED, oldest, ...] stay
    assert names(plan.deleted) == [members[3].name, members[0].name]
    assert names(cloud.members()) == [members[1].name, members[2].name, members[4].name]
    assert nova.deleted == [members[3].name, members[0].name]


def test_scale_down_after_marking_one_of_five_removes_it_and_the_oldest():
    """Heat 27: the FAILED member is not counted, so -1 goes from 4 healthy to 3."""
    cloud, nova, _ = make_cloud(5)
    members = cloud.members()
    cloud.mark_unhealthy(members[2].server_id, "scale-down")
    outcome = cloud.signal("scale_down", members[2].server_id)
    assert outcome.action == "resize" and outcome.reason == "4 -> 3"
    assert sorted(nova.deleted) == sorted([members[2].name, members[0].name])


def test_scale_down_at_min_size_replaces_a_failed_member_with_a_new_server():
    cloud, nova, _clock = make_cloud(3)
    dead = cloud.members()[1]
    cloud.mark_unhealthy(dead.server_id, "etcd member dead")
    outcome = cloud.signal("scale_down", cloud.members()[0].server_id)
    # 2 healthy - 1 = 1, clamped to min_size 3: a resize to 3 that keeps the FAILED slot
    assert outcome.action == "resize" and outcome.reason == "2 -> 3"
    after = cloud.members()
    assert dead.server_id not in {m.server_id for m in after}
    fresh = next(m for m in after if m.slot == dead.slot)
    assert fresh.name != dead.name and fresh.ip != dead.ip and fresh.server_id != dead.server_id
    assert fresh.status == "ACTIVE" and cloud.nested_status()[2] is not None
    assert fresh.created_at > max(m.created_at for m in after if m is not fresh)
    assert nova.deleted == [dead.name] and nova.booted[-1] == fresh.name


def test_a_signal_that_leaves_the_capacity_unchanged_keeps_a_failed_member():
    cloud, nova, _ = make_cloud(4)
    leaving = cloud.members()[3]
    cloud.mark_unhealthy(leaving.server_id, "scale-down")
    outcome = cloud.signal("scale_down", leaving.server_id)
    # 3 healthy - 1 = 2, clamped to 3 = unchanged: NoActionRequired, the FAILED one stays
    assert outcome.action == "no-action" and "no change in capacity" in outcome.reason
    assert cloud.server(leaving.server_id).status == "FAILED" and nova.deleted == []


def test_scale_up_with_a_failed_member_replaces_it_on_the_way():
    cloud, nova, _ = make_cloud(3)
    dead = cloud.members()[0]
    cloud.mark_unhealthy(dead.server_id, "dead")
    assert cloud.signal("scale_up", "leader").action == "resize"
    assert len(cloud.members()) == 3 and cloud.group.capacity() == 3
    assert nova.deleted == [dead.name]


def test_a_stack_update_without_desired_capacity_removes_failed_members_only():
    cloud, nova, _ = make_cloud(5)
    failed = cloud.members()[4]
    cloud.mark_unhealthy(failed.server_id, "leaving")
    cloud.update(None)
    assert nova.deleted == [failed.name] and cloud.group.capacity() == 4


def test_the_alarm_averages_the_group_and_repeats_its_signal_while_in_alarm():
    cloud, _, clock = make_cloud(3)
    loads = {m.server_id: 95.0 for m in cloud.members()}
    cloud.cpu_of = lambda member, period: loads.get(member.server_id)
    spec = AlarmSpec(threshold=80, period=60, evaluation=6, repeat_actions=True)
    assert cloud.evaluate_alarm(spec) == "alarm" and cloud.group.capacity() == 4
    clock.now += 6  # in alarm again, inside the cooldown: Heat ignores the repeat
    assert cloud.evaluate_alarm(spec) == "alarm" and cloud.group.capacity() == 4
    clock.now += 240
    assert cloud.evaluate_alarm(spec) == "alarm" and cloud.group.capacity() == 5
    for member in cloud.members():
        loads[member.server_id] = 50.0
    clock.now += 6
    assert cloud.evaluate_alarm(spec) == "ok"
    kinds = [e.kind for e in cloud.events.all()]
    assert kinds.count("alarm") == 1 and kinds.count("alarm-ok") == 1
    assert kinds.count("scale-up") == 2


# --- the same rules, by Heat's own code -----------------------------------------------------


@dataclass
class _HeatResource:
    """What heat.common.grouputils.get_members reads of a nested stack's resource."""

    name: str
    status: str
    created_time: float
    FAILED = "FAILED"


class _HeatGroup:
    def __init__(self, resources: list[_HeatResource]) -> None:
        self._resources = {r.name: r for r in resources}

    def nested(self) -> dict[str, _HeatResource]:
        return self._resources


@pytest.fixture(scope="module")
def heat():
    need_module("heat")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from heat.common import grouputils
        from heat.scaling import scalingutil, template
    return grouputils, scalingutil, template


@settings(max_examples=150, deadline=None)
@given(
    failed=st.lists(st.booleans(), min_size=1, max_size=7),
    min_size=st.integers(0, 4),
    extra=st.integers(0, 4),
    adjustment=st.sampled_from([-2, -1, 1, 2]),
    seed=st.integers(0, 10_000),
)
def test_resize_keeps_exactly_the_members_heat_would_keep(
    heat, failed, min_size, extra, adjustment, seed
):
    grouputils, scalingutil, template = heat
    max_size = min_size + extra
    rng = random.Random(seed)
    counter = itertools.count()
    group = ScalingGroup(
        min_size=min_size,
        max_size=max_size,
        policies={"p": Policy("p", adjustment, 0.0)},
        new_server=lambda slot: Member(
            slot=slot, server_id=f"s{next(counter)}", name=slot, ip="", created_at=1e9
        ),
        new_slot=lambda: f"new-{next(counter)}",
    )
    times = rng.sample(range(1000), len(failed))
    group.members = [
        Member(
            slot=f"m{i}",
            server_id=f"id{i}",
            name=f"m{i}",
            ip="",
            created_at=float(t),
            status="FAILED" if bad else "ACTIVE",
        )
        for i, (bad, t) in enumerate(zip(failed, times, strict=True))
    ]
    resources = [
        _HeatResource(m.slot, "FAILED" if m.status == "FAILED" else "COMPLETE", m.created_at)
        for m in group.members
    ]
    heat_group = _HeatGroup(resources)
    capacity = len(grouputils.get_members(heat_group, include_failed=False))
    new = scalingutil.calculate_new_capacity(
        capacity, adjustment, scalingutil.CHANGE_IN_CAPACITY, None, min_size, max_size
    )
    before = {m.slot: m for m in group.members}
    outcome = group.signal("p", now=0.0)
    if new == capacity:
        assert outcome.action == "no-action"
        return
    ordered = [(r.name, "definition") for r in grouputils.get_members(heat_group, True)]
    heat_defs = list(template.member_definitions(ordered, "definition", new, 0, lambda: "new"))
    heat_kept = sorted(name for name, _ in heat_defs if name != "new")
    heat_created = sum(1 for name, _ in heat_defs if name == "new")
    assert outcome.action == "resize" and outcome.resize is not None
    assert sorted(m.slot for m in group.members if m.slot in before) == heat_kept
    assert len(outcome.resize.created) == heat_created
    # every kept FAILED member is replaced by a new server in its slot (UpdateReplace)
    assert sorted(old.slot for old, _ in outcome.resize.replaced) == sorted(
        s for s in heat_kept if before[s].status == "FAILED"
    )
    assert all(m.status != "FAILED" for m in group.members)


# --- the same cloud through its OpenStack API, as the agents reach it ------------------------


@pytest.fixture
def served():
    fake = FakeOpenStack()
    fake.start()
    yield fake
    fake.stop()


def driver(fake: FakeOpenStack, member: Member, **changes) -> OpenStackGroup:
    return OpenStackGroup(
        fake.settings(metadata_url=fake.cloud.metadata_url(member.server_id), **changes),
        timeout=2,
    )


def test_the_agents_driver_sees_each_server_as_itself_and_lists_the_group(served):
    me = served.members[1]
    group = driver(served, me)
    identity = group.whoami()
    assert (identity.id, identity.name, identity.ip) == (me.server_id, me.name, me.ip)
    listed = group.group_members()
    assert [n.name for n in listed] == names(served.members)
    assert all(n.initial and n.status == "ACTIVE" for n in listed)


def test_a_signal_through_the_api_changes_the_group_as_heat_does(served):
    """Heat's rules behind the API: mark + -1 deletes the FAILED member and the oldest
    healthy one (4 healthy -> 3); the nested stack is updated, so nobody is initial."""
    served.cloud.update(5)
    members = served.members
    group = driver(served, members[0])
    group.mark_unhealthy(members[3].server_id, "etcd member dead")
    group.scale_down()
    assert sorted(served.machines.deleted) == sorted([members[3].name, members[0].name])
    assert [n.initial for n in group.group_members()] == [False] * 3
    assert served.events.of("scale-down")


def test_a_signal_during_a_resize_is_dropped_as_heat_drops_it(served):
    """Heat's adjust() raises NoActionRequired while the group is not COMPLETE: the API
    still answers 200 (the signal is handled behind the answer) and nothing changes."""
    import threading

    gate = threading.Event()
    served.cloud.background = True
    booting = served.machines.boot

    def slow_boot(member: Member) -> None:
        gate.wait(10)
        booting(member)

    served.machines.boot = slow_boot  # type: ignore[method-assign]
    group = driver(served, served.members[0])
    group.scale_up()  # 3 -> 4, its new server still booting
    assert served.cloud.nested_status()[0] == "UPDATE_IN_PROGRESS"
    group.scale_up()  # answered, dropped
    gate.set()
    for thread in served.cloud._engine:
        thread.join(10)
    assert len(served.members) == 4 and served.cloud.nested_status()[0] == "UPDATE_COMPLETE"
    assert [o.action for _, _, o in served.cloud.outcomes] == ["resize", "no-action"]
    assert "not COMPLETE" in served.cloud.outcomes[1][2].reason


def test_the_agents_access_rules_are_checked_as_keystonemiddleware_checks_them():
    """The agents' credential carries the infra's rules for the lab's catalog (its Heat
    under /heat-api, its Nova under /compute): every call the driver makes passes. The
    same rules written for endpoints without a prefix are refused, 401 for every call."""
    for kind in ("none", "catalog", "no prefix"):
        fake = FakeOpenStack()
        fake.start()
        try:
            rules = {
                "none": None,
                "catalog": access_rules(f"{fake.url}/heat-api/v1/p", f"{fake.url}/compute/v2.1"),
                "no prefix": ACCESS_RULES,
            }[kind]
            fake.keystone.credentials[CREDENTIAL_ID].access_rules = (
                None
                if rules is None
                else tuple(AccessRule(r.service, r.method, r.path) for r in rules)
            )
            group = driver(fake, fake.members[0])
            if kind == "no prefix":
                with pytest.raises(CloudError, match=r"HTTP 401.*no access rule allows GET"):
                    group.group_members()
                continue
            group.group_members()
            group.mark_unhealthy(fake.members[2].server_id, "dead")
            group.scale_up()  # Heat replaces the marked member: a new server in its slot
            assert len(fake.members) == 3 and all(m.status == "ACTIVE" for m in fake.members)
            assert fake.machines.deleted, kind
        finally:
            fake.stop()


def test_a_service_without_service_type_refuses_every_access_rule_token(served):
    served.keystone.credentials[CREDENTIAL_ID].access_rules = tuple(
        AccessRule(r.service, r.method, r.path)
        for r in access_rules(f"{served.url}/heat-api/v1/p", f"{served.url}/compute/v2.1")
    )
    served.api.service_types["compute"] = None  # [keystone_authtoken] service_type unset
    with pytest.raises(CloudError, match=r"nova show server .*HTTP 401.*service_type"):
        driver(served, served.members[0]).group_members()


def test_nova_reboot_and_delete_through_the_api(served):
    from agent.httpclient import Http

    http = Http()
    auth = http.request(
        "POST",
        f"{served.url}/identity/v3/auth/tokens",
        json={
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {
                        "id": served.cloud.operator.id,
                        "secret": served.cloud.operator.secret,
                    },
                }
            }
        },
        timeout=5,
    )
    headers = {"X-Auth-Token": auth.headers["X-Subject-Token"]}
    target = served.members[2]
    url = f"{served.url}/compute/v2.1/servers/{target.server_id}"
    reboot = http.request(
        "POST", url + "/action", json={"reboot": {"type": "HARD"}}, headers=headers, timeout=5
    )
    assert reboot.status_code == 202 and served.machines.rebooted == [target.name]
    assert http.request("DELETE", url, headers=headers, timeout=5).status_code == 204
    assert served.machines.deleted == [target.name]
    gone = http.request("GET", url, headers=headers, timeout=5)
    assert gone.status_code == 404
    assert driver(served, served.members[0]).group_members()[2].status == "DELETED"


# --- a rolling update: a changed member definition (issue 13) ------------------------------


def roll_template(image: str, min_in_service: int, pause: float = 0.0) -> dict:
    """The parts of the program's template a rolling update reads: the group's bounds,
    cooldown, `rolling_updates` and member definition (its server's image)."""
    return {
        "resources": {
            "etcd_group": {
                "type": "OS::Heat::AutoScalingGroup",
                "properties": {
                    "min_size": 3,
                    "max_size": 5,
                    "cooldown": 60,
                    "rolling_updates": {
                        "max_batch_size": 1,
                        "min_in_service": min_in_service,
                        "pause_time": pause,
                    },
                    "resource": {"type": "OS::Nova::Server", "properties": {"image": image}},
                },
            }
        }
    }


class SignalsDuringBoots(Machines):
    """A hypervisor whose boots send the scale-up signal: what Heat does with a signal that
    arrives while the group is updating."""

    def __init__(self) -> None:
        super().__init__()
        self.cloud: LabCloud | None = None
        self.outcomes: list[str] = []

    def boot(self, member: Member) -> None:
        super().boot(member)
        if self.cloud is not None:
            self.outcomes.append(self.cloud.signal("scale_up").reason)


@pytest.mark.parametrize(
    ("min_in_service", "batches", "replaced", "deleted_first"),
    [
        # capacity 3, max_batch_size 1 (the program's): three batches of (3, 1); each
        # replaces the oldest member still on the old definition, its new server up first
        (0, [(3, 1), (3, 1), (3, 1)], [["A"], ["B"], ["C"]], ["A", "B", "C"]),
        # min_in_service 3: Heat grows first (4, 1), replaces two, and the last (3, 0)
        # drops the oldest, the only original left (heat.scaling.rolling_update)
        (3, [(4, 1), (4, 1), (4, 1), (3, 0)], [[], ["A"], ["B"], []], ["A", "B", "C"]),
    ],
)
def test_a_changed_member_definition_rolls_as_heats_replace_does(
    min_in_service, batches, replaced, deleted_first
):
    cloud, _, clock = make_cloud(3)
    hypervisor = SignalsDuringBoots()
    cloud.hypervisor = hypervisor
    originals = {m.name: letter for m, letter in zip(cloud.group.ordered(), "ABC", strict=True)}
    cloud.load_template(roll_template("image-1", min_in_service))
    hypervisor.cloud = cloud
    notes = cloud.stack_update(roll_template("image-2", min_in_service))
    assert f"batches {batches}" in " ".join(notes)
    done = [e.detail for e in cloud.events.of("rolling-update") if "batch" in e.detail]
    assert [int(b.split(": ")[1].split(" ")[0]) for b in done] == [size for size, _ in batches]
    for detail, letters in zip(done, replaced, strict=True):
        assert sorted(originals[n] for n in originals if f"{n} by " in detail) == letters
    # every server on the new definition at the end; the size kept; the old ones deleted,
    # the oldest first
    members = cloud.group.ordered()
    assert len(members) == 3 and {m.definition for m in members} == {cloud.group.definition}
    assert not {m.name for m in members} & set(originals)
    assert [originals[n] for n in hypervisor.deleted] == deleted_first
    # a signal during the update is dropped, as Heat's adjust() drops it (NoActionRequired)
    assert hypervisor.outcomes and all("not COMPLETE" in r for r in hypervisor.outcomes)
    assert not cloud.group.in_progress
    assert cloud.group.cooldown_end is not None and cloud.group.cooldown_end >= clock.now


# --- members that are stacks of their own: the roll waits for each new server's vote -------


def member_stack(image: str, timeout: int = 30):
    """The program's member template (infra.heat.MemberStack) for the dev stack with `image`."""
    import dataclasses

    from infra.cluster import cluster_template
    from infra.render import find_stack_file, stack_config
    from infra.settings import parse_settings, strip_namespace

    raw = {**strip_namespace(stack_config(find_stack_file("dev"))), "image": image}
    member = cluster_template(parse_settings(raw), "autoscale-etcd-dev").member()
    return dataclasses.replace(member, timeout=timeout)


def stacked_template(member) -> tuple[dict, dict[str, str]]:
    template = roll_template("unused", 0)
    template["resources"]["etcd_group"]["properties"]["resource"] = member.to_hot()
    return template, {member.url: member.text()}


class Ticking(Clock):
    """A clock a second further at each look: a wait condition's timeout comes in a test."""

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class Voting(Machines):
    """A hypervisor whose servers' agents signal their member stack a moment after the boot
    (from another thread, as an agent does), except those whose name starts with
    `silent` (names end in a random suffix); it records the order."""

    def __init__(self) -> None:
        super().__init__()
        self.cloud: LabCloud | None = None
        self.silent = "-"
        self.log: list[tuple[str, str]] = []

    def boot(self, member: Member) -> None:
        import threading

        super().boot(member)
        self.log.append(("boot", member.name))
        if member.name.startswith(self.silent) or self.cloud is None:
            return
        body = {"status": "SUCCESS", "reason": "votes", "data": "", "id": member.server_id}

        def vote() -> None:
            self.log.append(("vote", member.name))
            assert self.cloud is not None
            self.cloud.member_ready(member.stack_id, member.handle, body)

        threading.Timer(0.2, vote).start()

    def delete(self, member: Member) -> None:
        super().delete(member)
        self.log.append(("delete", member.name))


def stacked_cloud(clock: Clock) -> tuple[LabCloud, Voting, object]:
    nova = Voting()
    cloud = lab_cloud(nova, clock)
    nova.cloud = cloud
    old = member_stack("image-1")
    template, files = stacked_template(old)
    cloud.load_template(template, {}, files)
    cloud.create(3)
    return cloud, nova, old


def test_a_roll_of_member_stacks_deletes_each_old_server_after_its_new_one_votes():
    cloud, nova, old = stacked_cloud(Clock())
    assert cloud.group_status == "CREATE_COMPLETE"  # the three voted
    before = {m.slot: m for m in cloud.group.ordered()}
    new = member_stack("image-2")
    assert new.url != old.url and new.handle != old.handle
    template, files = stacked_template(new)
    notes = cloud.stack_update(template, None, files)
    assert "batches [(3, 1), (3, 1), (3, 1)]" in " ".join(notes)
    after = {m.slot: m for m in cloud.group.ordered()}
    # each member updated in place: the same resource, stack and creation time (Heat's
    # order), a new server under the new template's handle
    assert set(after) == set(before)
    for slot, member in after.items():
        was = before[slot]
        assert (member.stack_id, member.created_at) == (was.stack_id, was.created_at)
        assert member.server_id != was.server_id and member.type == new.url
        assert member.handle == new.handle and member.resource_status == "UPDATE_COMPLETE"
    # each old server deleted only after its replacement voted, one member at a time
    for slot, member in after.items():
        voted = nova.log.index(("vote", member.name))
        assert nova.log.index(("delete", before[slot].name)) > voted
    assert cloud.group_status == "UPDATE_COMPLETE" and not cloud.lingering


def test_a_new_server_that_never_votes_stops_the_roll_and_keeps_the_old_one():
    clock = Ticking()
    cloud, nova, _ = stacked_cloud(clock)
    first = cloud.group.ordered()[0]
    template, files = stacked_template(member_stack("image-2"))
    nova.silent = f"{cloud.name_prefix}-04"  # the first new server (the fourth made)
    booted_before = len(nova.booted)
    cloud.stack_update(template, None, files)
    replacement = cloud.group.by_slot(first.slot)
    assert replacement is not None and len(nova.booted) == booted_before + 1  # no next batch
    assert replacement.resource_status == "UPDATE_FAILED"
    assert "WaitConditionTimeout" in replacement.reason
    # Heat's clean-up of the old server never ran: kept, running
    assert first.name not in nova.deleted and first in cloud.lingering
    assert cloud.group_status == "UPDATE_FAILED"
    # and adjust() refuses every signal until an update succeeds
    outcome = cloud.signal("scale_up")
    assert outcome.action == "no-action" and "UPDATE_FAILED" in outcome.reason


def test_a_member_stack_waiting_for_its_signal_cannot_be_marked_unhealthy():
    """Heat's engine holds a resource's lock through its create or update: a mark-unhealthy
    then is refused (the API's 409 ActionInProgress); once it is done, it is taken."""
    cloud, _, _ = stacked_cloud(Ticking())
    target = cloud.group.ordered()[0]
    target.resource_status = "UPDATE_IN_PROGRESS"  # as while its new server's wait runs
    with pytest.raises(RuntimeError, match="is locked"):
        cloud.mark_unhealthy(target.server_id, "never joined")
    assert target.status != "FAILED"
    target.resource_status = "UPDATE_COMPLETE"
    cloud.mark_unhealthy(target.server_id, "never joined")
    assert (target.status, target.resource_status) == ("FAILED", "CHECK_FAILED")
