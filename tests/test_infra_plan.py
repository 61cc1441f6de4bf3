"""`python -m infra plan`: what a second `pulumi up` does to a running cluster, said before.

The renders compared here are the program's own templates (infra.cluster) for a stack and
a variant of it; the command runs on render directories as `python -m infra render`
writes them, and on a git ref.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import heat
from infra.cluster import cluster_template
from infra.plan import STACK_V1, Render, etcd_change, plan, render_at
from infra.render import find_stack_file, stack_config
from infra.settings import PROJECT_DIR, parse_settings, strip_namespace

PLAN = [sys.executable, "-m", "infra", "plan", "--stack", "dev"]
PARAMETERS = {heat.P.IMAGE: "Ubuntu 24.04", heat.P.FLAVOR: "m1.small", "alarm_threshold": "42"}


def stack(**changes: object):
    raw = strip_namespace(stack_config(find_stack_file("dev")))
    return parse_settings({**raw, **changes})


def render(parameters: dict[str, str] | None = None, **changes: object) -> Render:
    template = cluster_template(stack(**changes), "autoscale-etcd-dev").to_hot()
    return Render(template, dict(parameters or PARAMETERS))


def test_nothing_changed_is_nothing_to_do():
    result = plan(render(), render())
    assert not result.changed and not result.refused
    assert result.text() == "no change: Heat and the agents have nothing to do\n"


def test_a_threshold_and_a_capacity_apply_live_and_replace_no_server():
    result = plan(render(), render(threshold=50, capacity=5))
    text = result.text()
    assert "setting member metric.threshold: 90.0 -> 50.0: applied live" in text
    assert "setting member scaling.capacity: 3 -> 5: applied live" in text
    assert not result.replaces_members and not result.refused
    assert "members:" not in text


def test_a_port_change_is_refused_before_anything_changes():
    result = plan(render(), render(etcdclientport=2379))
    assert result.refused
    (line,) = result.refused
    assert "etcd.client_port: 12379 -> 2379: REFUSED" in line


def test_etcd_timings_wait_for_etcd_s_next_start():
    text = plan(render(), render(etcd_election_ms=3000)).text()
    assert "etcd.election_ms: 1000 -> 3000: kept by every agent, in force at etcd's next" in text


def test_a_new_image_replaces_every_member_one_at_a_time():
    new = {**PARAMETERS, heat.P.IMAGE: "Ubuntu 26.04"}
    result = plan(render(), render(new))
    assert result.replaces_members
    (line,) = [x for x in result.lines if x.startswith("members:")]
    pause = heat.rolling_pause(stack())
    assert "replaced, one at a time" in line and f"{pause} s between members" in line
    assert "the parameters image" in line
    # the alarm's threshold is the alarm's: in place
    other = plan(render(), render({**PARAMETERS, "alarm_threshold": "43"}))
    assert not other.replaces_members
    assert other.lines == ["parameter alarm_threshold: '42' -> '43': in place"]


def test_a_new_hook_changes_the_member_definition():
    result = plan(render(), render(cleanupscript=""))
    assert result.replaces_members
    assert any("the server definition (user_data)" in line for line in result.lines)


def test_proxies_added_are_servers_added_not_refused_settings():
    result = plan(render(), render(proxies=2))
    assert not result.refused and not result.replaces_members, result.lines
    assert "settings proxy: added with its servers" in result.lines
    assert f"{heat.PROXY_GROUP}: added in place" in result.lines
    back = plan(render(proxies=2), render())
    assert not back.refused and "settings proxy: removed with its servers" in back.lines


def test_a_render_of_before_the_settings_document_is_no_refusal():
    old = render()
    del old.template["resources"][heat.SETTINGS]
    result = plan(old, render())
    assert not result.refused, result.lines
    assert any(line.startswith("settings: the stack holds") for line in result.lines)


def test_a_new_credential_replaces_every_member_and_proxy():
    """Its id and secret are in every server's user-data: a render shows it by its name."""
    old, new = render(proxies=1), render(proxies=1)
    old.credential, new.credential = "dev-agents-0001", "dev-agents-0002"
    result = plan(old, new)
    assert result.replaces_members
    assert any("a new agents' credential" in line for line in result.lines if "members:" in line)
    assert any(line.startswith("proxies: every proxy replaced") for line in result.lines)


def test_a_proxy_flavor_replaces_the_proxies_not_the_members():
    small, large = {**PARAMETERS, "proxy_flavor": "m1.small"}, {**PARAMETERS, "proxy_flavor": "x"}
    result = plan(render(small, proxies=1), render(large, proxies=1))
    assert not result.replaces_members, result.lines
    assert result.lines == ["proxies: every proxy replaced, for the parameters proxy_flavor"]


def _write(out: Path, r: Render) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "heat-template.yaml").write_text(heat.to_yaml(r.template))
    resources = {"resources": [{"type": STACK_V1, "inputs": {"parameters": r.parameters}}]}
    (out / "resources.json").write_text(json.dumps(resources))
    return out


def test_the_command_reads_render_directories_and_fails_on_a_refused_change(tmp_path):
    old = _write(tmp_path / "old", render())
    same = _write(tmp_path / "same", render())
    bad = _write(tmp_path / "bad", render(etcdpeerscheme="https"))

    def run(source: Path, to: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PLAN, "--from", str(source), "--to", str(to)],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )

    quiet = run(old, same)
    assert quiet.returncode == 0 and quiet.stdout.startswith("no change"), quiet.stderr
    refused = run(old, bad)
    assert refused.returncode == 1
    assert "etcd.peer_scheme: 'http' -> 'https': REFUSED" in refused.stdout
    missing = run(tmp_path / "nowhere", same)
    assert missing.returncode == 2 and "plan:" in missing.stderr


def test_the_command_renders_a_git_ref(tmp_path):
    """`--from HEAD` renders the commit checked out: against a render of that same commit
    (made by `render_at`, whatever the working tree holds) the plan is "no change", and
    against that render with the group's max_size raised it names exactly that change (a
    `--from` that rendered something else, or nothing, would say more or other)."""
    head = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        pytest.skip("a copy of the tree without its git history: no commit to render")
    to = render_at("HEAD", "dev", tmp_path / "head")
    assert yaml.safe_load((to / "heat-template.yaml").read_text())["resources"]

    def plan_to_head() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PLAN, "--from", "HEAD", "--to", str(to)],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=180,
        )

    result = plan_to_head()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("no change"), result.stdout
    template = to / "heat-template.yaml"
    changed = yaml.safe_load(template.read_text())
    size = changed["resources"][heat.GROUP]["properties"]["max_size"]
    changed["resources"][heat.GROUP]["properties"]["max_size"] = size + 4
    template.write_text(yaml.safe_dump(changed))
    grown = plan_to_head()
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert grown.stdout.splitlines() == [
        f"group max_size: {size} -> {size + 4}: in place (the group keeps its size within the"
        " new bounds)"
    ], grown.stdout


@pytest.mark.parametrize(
    ("was", "now", "verdict"),
    [
        ("3.4.23", "3.5.17", "one minor version up"),
        ("3.5.15", "3.5.17", "a patch release"),
        ("3.5.17", "3.4.23", "REFUSED: etcd has no downgrade"),
        ("3.4.23", "3.6.0", "REFUSED: etcd upgrades one minor version at a time"),
    ],
)
def test_an_etcd_version_change_follows_etcd_s_upgrade_rule(was, now, verdict):
    found = etcd_change(was, now)
    assert found is not None
    line, refused = found
    assert verdict in line and f"etcd {was} -> {now}" in line
    assert refused == ("REFUSED" in verdict)
    assert etcd_change("3.5.17", "3.5.17") is None


def test_a_refused_etcd_version_change_refuses_the_plan():
    def rendered(version: str) -> Render:
        raw = {**strip_namespace(stack_config(find_stack_file("dev"))), "etcd_version": version}
        raw["prebuilt_image"] = True  # no 3.4 checksums: a prebuilt image
        settings = parse_settings(raw)
        return Render(cluster_template(settings, "autoscale-etcd-dev").to_hot(), dict(PARAMETERS))

    up = plan(rendered("3.4.23"), rendered("3.5.17"))
    assert not up.refused and up.replaces_members
    assert any(x.startswith("etcd 3.4.23 -> 3.5.17: one minor") for x in up.lines)
    down = plan(rendered("3.5.17"), rendered("3.4.23"))
    assert down.refused == [x for x in down.lines if x.startswith("etcd 3.5.17 -> 3.4.23")]


def test_a_stack_made_before_the_document_named_etcd_s_version_is_taken_as_3_5():
    """Such a stack's settings allowed 3.5.x only: a 3.4 now is a step down."""

    def rendered(version: str, named: bool = True) -> Render:
        raw = {**strip_namespace(stack_config(find_stack_file("dev"))), "etcd_version": version}
        raw["prebuilt_image"] = True
        template = cluster_template(parse_settings(raw), "autoscale-etcd-dev").to_hot()
        if not named:
            del template["resources"][heat.SETTINGS]["metadata"]["etcd_version"]
        return Render(template, dict(PARAMETERS))

    old = rendered("3.5.17", named=False)
    assert not [x for x in plan(old, rendered("3.5.17")).lines if x.startswith("etcd ")]
    down = plan(old, rendered("3.4.23"))
    assert down.refused and "no downgrade" in down.refused[0]
