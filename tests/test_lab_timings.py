"""The lab derives its nodes' settings and its group exactly as the infra does, then scales time."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import OpenStackCloud
from infra.settings import agent_settings, load_stack_file, stack_file
from lab.timings import (
    DEFAULT_FACTOR,
    FAST_FACTOR,
    MIN_DEAD_WINDOW,
    LabTimings,
    group_spec,
    install_hooks,
    node_settings,
)


@pytest.fixture(scope="module")
def stack():
    return load_stack_file(stack_file("dev"))


def test_periods_are_the_stacks_times_the_factor(stack):
    lab = LabTimings.scaled(stack, DEFAULT_FACTOR)
    assert lab.lockattemptperiod == pytest.approx(stack.lockattemptperiod * DEFAULT_FACTOR)
    assert lab.scaledownperiod == pytest.approx(stack.scaledownperiod * DEFAULT_FACTOR)
    assert lab.scaleupcooldown == pytest.approx(stack.scaleupcooldown * DEFAULT_FACTOR)
    assert lab.alarmperiod == pytest.approx(stack.alarmperiod * DEFAULT_FACTOR)
    assert lab.downmetric_window == round(stack.downmetric_window * DEFAULT_FACTOR)
    # counts are not times
    assert (lab.failtolerance, lab.dead_member_periods) == (
        stack.failtolerance,
        stack.dead_member_periods,
    )
    fast = LabTimings.scaled(stack, FAST_FACTOR)
    # ... but the dead-member window is at least MIN_DEAD_WINDOW of real time: a rebooted
    # node's agent and etcd start at their own pace
    assert fast.dead_member_periods * fast.lockattemptperiod >= MIN_DEAD_WINDOW
    assert fast.dead_member_periods > stack.dead_member_periods
    assert fast.scaledownperiod < lab.scaledownperiod
    # joins may retry for longer than etcd's fixed 5 s health interval
    assert fast.retries * fast.lockattemptperiod >= 15
    rows = {key: (theirs, ours) for key, theirs, ours in lab.rows(stack)}
    assert rows["scaledownperiod"] == (f"{stack.scaledownperiod} s", f"{lab.scaledownperiod:g} s")
    with pytest.raises(ValueError, match="factor"):
        LabTimings.scaled(stack, 0)


def test_the_group_comes_from_the_infra_template(stack):
    spec = group_spec(stack)
    assert (spec.min_size, spec.max_size) == (stack.min_cluster, stack.max_cluster)
    assert spec.policies["scale_up"] == (1, float(stack.scaleupcooldown))
    # no scale-down cooldown: Heat's one group cooldown would hold back replacements
    assert spec.policies["scale_down"] == (-1, 0.0)
    assert spec.alarm and spec.repeat_actions
    assert spec.alarm_threshold == stack.upthreshold


def test_node_settings_are_the_infras_but_for_paths_and_periods(stack, tmp_path: Path):
    timings = LabTimings.scaled(stack, FAST_FACTOR)
    cloud = OpenStackCloud(
        auth_url="http://127.0.0.1:9/identity/v3",
        application_credential_id="c",
        application_credential_secret="s",
        stack_id="lab/1",
    )
    ours = node_settings(
        stack,
        timings,
        cluster_name="lab-dev",
        cloud=cloud,
        node_dir=tmp_path,
        netdata_url="http://127.1.2.10:19999",
        etcd_binary="/usr/bin/etcd",
    ).model_dump(mode="json")
    infra = agent_settings(stack, cluster_name="lab-dev", cloud=cloud).model_dump(mode="json")
    changed = {
        ("etcd", "service"): "subprocess",
        ("etcd", "binary"): "/usr/bin/etcd",
        ("etcd", "data_dir"): str(tmp_path / "etcd-data"),
        ("etcd", "heartbeat_ms"): timings.heartbeat_ms,
        ("etcd", "election_ms"): timings.election_ms,
        ("metric", "netdata_url"): "http://127.1.2.10:19999",
        ("metric", "window"): timings.downmetric_window,
        ("metric", "timeout"): timings.metric_timeout,
        ("scaling", "lockattemptperiod"): timings.lockattemptperiod,
        ("scaling", "scaledownperiod"): timings.scaledownperiod,
        ("scaling", "scaleupcooldown"): timings.scaleupcooldown,
        ("scaling", "retries"): timings.retries,
        ("scaling", "join_timeout"): timings.join_timeout,
        ("scaling", "dead_member_periods"): timings.dead_member_periods,
        ("hooks", "configscript"): str(tmp_path / "hooks" / "configscript"),
        ("hooks", "cleanupscript"): str(tmp_path / "hooks" / "cleanupscript"),
        ("hooks", "timeout"): timings.hook_timeout,
        ("backup", "period"): stack.backup_period * timings.factor,
    }
    for (part, key), value in changed.items():
        assert ours[part][key] == value, (part, key)
        ours[part][key] = infra[part][key]
    assert ours.pop("state_dir") == str(tmp_path / "state")
    infra.pop("state_dir")
    assert ours == infra


def test_hooks_are_copied_executable(stack, tmp_path: Path):
    from infra.settings import PROJECT_DIR

    install_hooks(stack, tmp_path / "hooks", PROJECT_DIR)
    for name in ("configscript", "cleanupscript"):
        path = tmp_path / "hooks" / name
        assert path.stat().st_mode & 0o111
        assert path.read_text() == (PROJECT_DIR / getattr(stack, name)).read_text()
