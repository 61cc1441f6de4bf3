"""The lab's clock: the stack's periods scaled down by one factor, shown up front.

A node in the lab gets the very `AgentSettings` the infra would write for it
(`infra.settings.agent_settings`), with only what a laptop changes: etcd runs as a
child process on the node's 127.X.Y.n address with its data under the node's dir,
netdata is the node's stub, the hook scripts are copies in the node's dir, and every
period is multiplied by the factor. The group, its policies and its alarm are read
from the Heat template the infra builds (`infra.heat.ClusterTemplate`), then scaled.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.settings import AgentSettings, EtcdSettings, MetricSettings, OpenStackCloud
from infra.heat import (
    ALARM,
    GROUP,
    SCALE_DOWN,
    SCALE_UP,
    ClusterTemplate,
    MemberStack,
    UserData,
    pause_for,
)
from infra.settings import StackSettings, agent_settings, join_timeout, script_path

DEFAULT_FACTOR = 0.1
"""`make lab`: the burst scenario of the dev stack in about two minutes."""
FAST_FACTOR = 0.04
"""`--fast` and the test suite."""

ETCD_HEALTH_INTERVAL = 5.0
"""etcd refuses a member add (strict-reconfig-check) unless the leader has been connected
to every voter for this long (etcdserver's HealthInterval, 5 s in 3.4 and 3.5). It does
not scale, so a join must be allowed to retry for longer than that."""
AODH_EVALUATION_INTERVAL = 60.0
"""Aodh's default `evaluation_interval` (s): how often the alarm looks at the metric."""
NOVA_BOOT_SECONDS = 0.0
"""The lab boots a server by starting processes; no extra delay is added."""
REBOOT_SECONDS = 30.0
"""A server's hard reboot, from its power-off to its agent's start at boot (scaled)."""
MIN_JOIN_TIMEOUT = 30.0
"""A lab join takes etcd's fixed 5 s health interval and a few periods: join_timeout is
scaled, but never below this."""


@dataclass(frozen=True)
class GroupSpec:
    """The autoscaling group, its policies and alarm as the infra's Heat template has them."""

    min_size: int
    """Also the group's first size: the template sets no desired_capacity (the agents grow
    it to capacity; a stack update keeps its size)."""
    max_size: int
    group_cooldown: float
    policies: dict[str, tuple[int, float]]
    """policy name -> (adjustment, cooldown s), unscaled."""
    alarm: bool
    alarm_threshold: float
    """Mean CPU use in percent across the group's servers."""
    alarm_period: float
    repeat_actions: bool


def group_spec(stack: StackSettings) -> GroupSpec:
    """Read min/max, cooldowns, policies and the alarm out of the infra's template."""
    resources = ClusterTemplate(stack, member_user_data=UserData("#cloud-config\n")).resources()
    group = resources[GROUP]["properties"]
    policies = {
        name: (
            int(resources[name]["properties"]["scaling_adjustment"]),
            float(resources[name]["properties"]["cooldown"]),
        )
        for name in (SCALE_UP, SCALE_DOWN)
    }
    alarm = resources.get(ALARM)
    return GroupSpec(
        min_size=int(group["min_size"]),
        max_size=int(group["max_size"]),
        group_cooldown=float(group["cooldown"]),
        policies=policies,
        alarm=alarm is not None,
        # the gnocchi alarm's threshold is in ns per granularity; it stands for upthreshold %
        alarm_threshold=stack.upthreshold,
        alarm_period=float(stack.alarmperiod),
        repeat_actions=bool(alarm and alarm["properties"].get("repeat_actions")),
    )


MIN_DEAD_WINDOW = 4.0
"""s: the shortest dead-member window the lab scales to. After a reboot the node's agent
and etcd start (Python, etcd's WAL replay, a catch-up) in real time; on a loaded 2-core
host that took 2.1 s once, beyond the 2.4 s a factor of 0.04 leaves of the stack's 60 s,
and a rebooted member was removed."""


@dataclass(frozen=True)
class LabTimings:
    factor: float
    lockattemptperiod: float
    scaledownperiod: float
    scaleupcooldown: float
    alarmperiod: float
    alarm_evaluation: float
    downmetric_window: int
    metric_timeout: float
    hook_timeout: float
    heartbeat_ms: int
    election_ms: int
    dead_member_periods: int
    failtolerance: int
    retries: int
    join_timeout: float
    boot_delay: float

    @property
    def join_time(self) -> float:
        """An upper bound for one join: the join lock, learner add, start, catch-up,
        promote (a few cycles)."""
        return 10.0 + 6 * self.lockattemptperiod

    @classmethod
    def scaled(cls, stack: StackSettings, factor: float = DEFAULT_FACTOR) -> LabTimings:
        if not 0 < factor <= 1:
            raise ValueError(f"the lab's time factor must be in (0, 1], not {factor}")
        window = stack.downmetric_window
        return cls(
            factor=factor,
            lockattemptperiod=stack.lockattemptperiod * factor,
            scaledownperiod=stack.scaledownperiod * factor,
            scaleupcooldown=stack.scaleupcooldown * factor,
            alarmperiod=stack.alarmperiod * factor,
            alarm_evaluation=max(0.5, AODH_EVALUATION_INTERVAL * factor),
            # netdata keeps one value a second: a window is whole seconds, at least one
            downmetric_window=0 if window == 0 else max(1, round(window * factor)),
            metric_timeout=max(0.5, MetricSettings().timeout * factor),
            hook_timeout=max(5.0, 600 * factor),
            # etcd's own timings are not scaled: a 2-core host would flap
            heartbeat_ms=stack.etcd_heartbeat_ms,
            election_ms=stack.etcd_election_ms,
            # a rebooted node's agent and etcd start in real time, not scaled time
            dead_member_periods=max(
                stack.dead_member_periods,
                math.ceil(MIN_DEAD_WINDOW / (stack.lockattemptperiod * factor)),
            ),
            failtolerance=stack.failtolerance,
            # the join window (retries x lockattemptperiod) must outlast etcd's fixed 5 s
            retries=max(
                stack.retries,
                math.ceil(3 * ETCD_HEALTH_INTERVAL / (stack.lockattemptperiod * factor)),
            ),
            join_timeout=max(MIN_JOIN_TIMEOUT, join_timeout(stack) * factor),
            boot_delay=max(1.0, REBOOT_SECONDS * factor),
        )

    def scale(self, seconds: float) -> float:
        return seconds * self.factor

    def rows(self, stack: StackSettings) -> list[tuple[str, str, str]]:
        """(setting, the stack's value, the lab's value), for the table shown up front."""

        def s(value: float) -> str:
            return f"{value:g} s"

        return [
            ("lockattemptperiod", s(stack.lockattemptperiod), s(self.lockattemptperiod)),
            ("scaledownperiod", s(stack.scaledownperiod), s(self.scaledownperiod)),
            ("scaleupcooldown", s(stack.scaleupcooldown), s(self.scaleupcooldown)),
            ("alarmperiod", s(stack.alarmperiod), s(self.alarmperiod)),
            ("alarm evaluation", s(AODH_EVALUATION_INTERVAL), s(self.alarm_evaluation)),
            ("downmetric_window", s(stack.downmetric_window), s(self.downmetric_window)),
            (
                "dead member after",
                s(stack.dead_member_periods * stack.lockattemptperiod),
                s(self.dead_member_periods * self.lockattemptperiod),
            ),
            ("failtolerance", str(stack.failtolerance), str(self.failtolerance)),
            ("retries (join attempts)", str(stack.retries), str(self.retries)),
            ("join_timeout", s(join_timeout(stack)), s(self.join_timeout)),
            ("reboot (power-off to boot)", s(REBOOT_SECONDS), s(self.boot_delay)),
            (
                "etcd heartbeat/election",
                f"{EtcdSettings().heartbeat_ms}/{EtcdSettings().election_ms} ms",
                f"{self.heartbeat_ms}/{self.election_ms} ms",
            ),
        ]


HOOKS = ("configscript", "cleanupscript")


def install_hooks(stack: StackSettings, hook_dir: Path, base_dir: Path) -> None:
    """Copy the stack's hook scripts into a node's dir, as cloud-init installs them."""
    hook_dir.mkdir(parents=True, exist_ok=True)
    for key in HOOKS:
        source = script_path(stack, key, base_dir)
        if source is None:
            continue
        target = hook_dir / key
        shutil.copyfile(source, target)
        target.chmod(0o755)


def node_settings(
    stack: StackSettings,
    timings: LabTimings,
    *,
    cluster_name: str,
    cloud: OpenStackCloud,
    node_dir: Path,
    netdata_url: str,
    etcd_binary: str,
) -> AgentSettings:
    """The node's agent.json: the infra's derivation, then the lab's paths and periods."""

    def adjust(data: dict[str, Any]) -> None:
        etcd = data["etcd"]
        etcd["service"] = "subprocess"
        etcd["binary"] = etcd_binary
        etcd["data_dir"] = str(node_dir / "etcd-data")
        etcd["heartbeat_ms"] = timings.heartbeat_ms
        etcd["election_ms"] = timings.election_ms
        data["state_dir"] = str(node_dir / "state")
        metric = data["metric"]
        metric["netdata_url"] = netdata_url
        metric["window"] = timings.downmetric_window
        metric["timeout"] = timings.metric_timeout
        scaling = data["scaling"]
        scaling["lockattemptperiod"] = timings.lockattemptperiod
        scaling["scaledownperiod"] = timings.scaledownperiod
        scaling["scaleupcooldown"] = timings.scaleupcooldown
        scaling["retries"] = timings.retries
        scaling["join_timeout"] = timings.join_timeout
        scaling["dead_member_periods"] = timings.dead_member_periods
        data["hooks"]["timeout"] = timings.hook_timeout
        data["backup"]["period"] = data["backup"]["period"] * timings.factor

    return agent_settings(
        stack,
        cluster_name=cluster_name,
        cloud=cloud,
        hook_dir=str(node_dir / "hooks"),
        tls_dir=str(node_dir / "pki"),
        adjust=adjust,
    )


def lab_settings_document(
    stack: StackSettings, timings: LabTimings, *, cluster_name: str
) -> dict[str, Any]:
    """The settings document the lab's stack holds (infra.heat.SettingsDocument), as the
    program makes it but with the lab's periods: the agents follow it as they follow the
    real stack's (their paths, which differ per node, they never take from it). The lab
    runs the agents from this checkout's source: no bundle is named. `lab_stack` records
    the stack settings it was made from (`python -m lab update` starts from them)."""
    from agent.settings import document_sha256
    from infra.userdata import role_settings

    settings = node_settings(
        stack,
        timings,
        cluster_name=cluster_name,
        cloud=OpenStackCloud(
            auth_url="http://127.0.0.1:9/identity/v3",
            application_credential_id="lab",
            application_credential_secret="lab",
            stack_id="lab/lab",
        ),
        node_dir=Path("/lab/node"),
        netdata_url="http://127.0.0.1:19999",
        etcd_binary="etcd",
    )
    document: dict[str, Any] = {
        "bundle_sha256": "this checkout's source",
        "etcd_version": stack.etcd_version,
        "roles": {"member": role_settings(settings)},
        "lab_stack": stack.model_dump(mode="json"),
    }
    document["sha256"] = document_sha256(document)
    return document


def lab_template(stack: StackSettings, timings: LabTimings, *, cluster_name: str) -> dict:
    """The program's Heat template for `stack` (infra.cluster.cluster_template), with the
    lab's periods: the group's and the policies' cooldowns scaled, the lab's settings
    document. What the lab's stack is created from and updated with."""
    from infra.cluster import cluster_template
    from infra.heat import SETTINGS

    cluster = cluster_template(stack, cluster_name)
    template = cluster.to_hot()
    resources = template["resources"]
    resources[GROUP]["properties"]["resource"] = lab_member(cluster, timings).to_hot()
    resources[GROUP]["properties"]["cooldown"] = timings.scaleupcooldown
    updates = resources[GROUP]["properties"].get("rolling_updates")
    if updates and "pause_time" in updates:
        # the lab's periods (its dead-member window has a floor: not the stack's, scaled)
        updates["pause_time"] = pause_for(timings.dead_member_periods, timings.lockattemptperiod)
    for name in (SCALE_UP, SCALE_DOWN):
        cooldown = float(resources[name]["properties"]["cooldown"])
        resources[name]["properties"]["cooldown"] = cooldown * timings.factor
    document = lab_settings_document(stack, timings, cluster_name=cluster_name)
    resources[SETTINGS]["metadata"] = document
    resources[SETTINGS]["properties"]["salt"] = document["sha256"]
    return template


def lab_member(cluster: ClusterTemplate, timings: LabTimings) -> MemberStack:
    """The program's member template (infra.heat.MemberStack) with the lab's join_timeout
    as its wait condition's timeout."""
    return dataclasses.replace(cluster.member(), timeout=math.ceil(timings.join_timeout))


def lab_files(stack: StackSettings, factor: float, *, cluster_name: str) -> dict[str, str]:
    """The `files` a `pulumi up` sends with the lab's template: the member template, by the
    URL the template names it (what the provider reads from disk and sends)."""
    from infra.cluster import cluster_template

    cluster = cluster_template(stack, cluster_name)
    member = lab_member(cluster, LabTimings.scaled(stack, factor))
    return {member.url: member.text()}


def planned_update(
    old: StackSettings, new: StackSettings, factor: float, *, cluster_name: str
) -> tuple[Any, dict]:
    """What a `pulumi up` from `old` to `new` does to the lab's stack (infra.plan's
    verdict), and the template Heat is given if it is not refused."""
    from infra.plan import Render, plan

    def template(stack: StackSettings) -> dict:
        return lab_template(stack, LabTimings.scaled(stack, factor), cluster_name=cluster_name)

    after = template(new)
    verdict = plan(Render(template(old), lab_parameters(old)), Render(after, lab_parameters(new)))
    return verdict, after


def lab_parameters(stack: StackSettings) -> dict[str, str]:
    """The stack parameters the program gives Heat that the lab can know (infra.cluster
    `_parameters`): the members' image and flavor. A change of either changes the members'
    definition, as on a real cloud (the template itself names them by `get_param`)."""
    from infra.heat import P

    return {P.IMAGE: stack.image, P.FLAVOR: stack.instance_type}
