"""`python -m infra plan`: what a `pulumi up` will do to the running cluster, offline.

It compares two renders of a stack (`python -m infra render`: the Heat template, the
StackV1 inputs): the one deployed (a render directory, or a git ref rendered in a scratch
copy of the repository) and this checkout's. It reads them as Heat and the agents will:

- the settings document (`agent_settings`): each changed key with what a running agent
  does with it (agent/settings.py `settings_changes`): applied live, kept for etcd's
  next start, or refused (ports, schemes, the cluster name: a running cluster cannot
  change them; the plan fails);
- the agent bundle: every running agent takes a new one, one node at a time;
- the member definition (the group's `resource`, the stack parameters it reads, found by
  their `get_param`s, and the agents' credential, named by its content): every member
  replaced, one at a time with `pause_time` between (Heat's rolling update, batches of
  one); the proxies' the same way;
- proxies added or removed, the group's sizes and cooldown, the policies and the alarm:
  updated in place.

Secret parameters are masked in a render: a new credential is seen by its name, another
changed secret is not; `pulumi preview` shows that the parameter changes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.settings import settings_changes
from infra import heat
from infra.settings import PROJECT_DIR

STACK_V1 = "openstack:orchestration/stackV1:StackV1"
CREDENTIAL = "openstack:identity/applicationCredential:ApplicationCredential"


@dataclass
class Render:
    template: dict[str, Any]
    parameters: dict[str, str]
    credential: str | None = None
    """The agents' application credential's name (it changes with its content: a new
    credential, a new id and secret in every server's user-data)."""

    @classmethod
    def read(cls, directory: Path) -> Render:
        template = yaml.safe_load((directory / "heat-template.yaml").read_text())
        resources = json.loads((directory / "resources.json").read_text())["resources"]
        (stack,) = [r for r in resources if r["type"] == STACK_V1]
        names = [r["inputs"].get("name") for r in resources if r["type"] == CREDENTIAL]
        return cls(
            template, dict(stack["inputs"].get("parameters") or {}), names[0] if names else None
        )

    def resource(self, name: str) -> dict[str, Any] | None:
        return (self.template.get("resources") or {}).get(name)


def parameters_read(node: Any) -> set[str]:
    """The stack parameters a piece of the template reads (`get_param`, anywhere in it)."""
    if isinstance(node, dict):
        found = set()
        for key, value in node.items():
            if key == "get_param":
                found.add(value if isinstance(value, str) else str(value[0]))
            else:
                found |= parameters_read(value)
        return found
    if isinstance(node, list):
        return set().union(*(parameters_read(item) for item in node))
    return set()


def _properties(render: Render, group: str = heat.GROUP) -> dict[str, Any]:
    return (render.resource(group) or {}).get("properties") or {}


def _servers(render: Render, group: str, key: str) -> Any:
    """A group's server definition (the member group's `resource`, the proxies'
    `resource_def`)."""
    return _properties(render, group).get(key)


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    replaces_members: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.lines)

    def text(self) -> str:
        if not self.lines:
            return "no change: Heat and the agents have nothing to do\n"
        return "".join(f"{line}\n" for line in self.lines)


def _replaced(old: Render, new: Render, group: str, key: str) -> tuple[list[str], set[str]]:
    """Why every server of `group` is replaced (its definition, a parameter it reads, the
    agents' credential its user-data holds), if it is; and the parameters its definitions
    read (a change of any other is the group's own)."""
    before, after = _servers(old, group, key), _servers(new, group, key)
    reasons = []
    if before != after:
        old_props = (before or {}).get("properties") or {}
        new_props = (after or {}).get("properties") or {}
        keys = sorted(
            k for k in set(old_props) | set(new_props) if old_props.get(k) != new_props.get(k)
        )
        reasons.append("the server definition (" + ", ".join(keys) + ")")
    read = parameters_read(before) | parameters_read(after)
    params = sorted(k for k in read if old.parameters.get(k) != new.parameters.get(k))
    if params:
        reasons.append("the parameters " + ", ".join(params))
    if old.credential != new.credential and None not in (old.credential, new.credential):
        reasons.append(f"a new agents' credential ({old.credential} -> {new.credential})")
    return reasons, read


def etcd_change(was: object, now: object) -> tuple[str, bool] | None:
    """What a change of `etcd_version` does, and whether it is refused: etcd upgrades a
    running cluster one minor version at a time and has no downgrade of it (3.4 and 3.5:
    the cluster version only rises, and a member of an older minor cannot join a cluster at
    a newer one), so a 3.4 cluster reaches 3.5 by new servers, one at a time (the members'
    roll), and a skip or a step down is refused. None: no change (or a render that does
    not say)."""
    if not isinstance(was, str) or not isinstance(now, str) or was == now:
        return None
    old_minor, new_minor = (tuple(int(p) for p in v.split(".")[:2]) for v in (was, now))
    if was.count(".") < 2 and old_minor == new_minor:
        return None  # only the minor version known before: no change to tell
    line = f"etcd {was} -> {now}"
    if new_minor < old_minor:
        return f"{line}: REFUSED: etcd has no downgrade of a running cluster", True
    if new_minor[0] != old_minor[0] or new_minor[1] - old_minor[1] > 1:
        return f"{line}: REFUSED: etcd upgrades one minor version at a time", True
    if new_minor == old_minor:
        return f"{line}: a patch release: every member's server replaced (the roll below)", False
    return (
        f"{line}: one minor version up (etcd's rolling upgrade): every member's server"
        " replaced by one running the new version (the roll below); the cluster version"
        " rises once every member runs it",
        False,
    )


def plan(old: Render, new: Render) -> Plan:
    """What Heat and the agents do when the stack goes from `old` to `new`."""
    out = Plan()
    old_doc = (old.resource(heat.SETTINGS) or {}).get("metadata") or {}
    new_doc = (new.resource(heat.SETTINGS) or {}).get("metadata") or {}
    old_roles, new_roles = old_doc.get("roles") or {}, new_doc.get("roles") or {}
    for role in sorted(old_roles.keys() ^ new_roles.keys()):
        if old_doc:  # proxies added or removed: their servers come and go with them
            state = "added" if role in new_roles else "removed"
            out.lines.append(f"settings {role}: {state} with its servers")
    for role in sorted(old_roles.keys() & new_roles.keys()):
        for key, was, now, kind in settings_changes(old_roles[role], new_roles[role]):
            if kind == "node-local":
                continue
            what = {
                "live": "applied live by every agent within a minute",
                "at etcd start": "kept by every agent, in force at etcd's next start",
                "refused": "REFUSED: a running cluster cannot change it; the agents keep"
                f" {was!r} (a new cluster is a new stack)",
            }[kind]
            line = f"setting {role} {key}: {was!r} -> {now!r}: {what}"
            out.lines.append(line)
            if kind == "refused":
                out.refused.append(line)
    # a document made before it named the version: 3.5, the only one its settings allowed
    was = old_doc.get("etcd_version") or ("3.5" if old_doc else None)
    etcd = etcd_change(was, new_doc.get("etcd_version"))
    if etcd is not None:
        line, refused = etcd
        out.lines.append(line)
        if refused:
            out.refused.append(line)
    if old_doc.get("bundle_sha256") != new_doc.get("bundle_sha256"):
        out.lines.append(
            f"agent bundle {str(old_doc.get('bundle_sha256'))[:12]} ->"
            f" {str(new_doc.get('bundle_sha256'))[:12]}: every running agent takes it, one"
            " node at a time, while the cluster is whole (no server replaced)"
        )
    if not old_doc and new_doc:
        out.lines.append(
            "settings: the stack holds the agents' settings from now on (the deployed render"
            " has no settings document)"
        )
    old_group, new_group = _properties(old), _properties(new)
    reasons, member_params = _replaced(old, new, heat.GROUP, "resource")
    if reasons:
        pause = int((new_group.get("rolling_updates") or {}).get("pause_time", 0))
        size = f"{new_group.get('min_size')}..{new_group.get('max_size')}"
        out.replaces_members = True
        out.lines.append(
            f"members: every member's server replaced, one at a time (Heat's rolling update:"
            " each member's new server joins and votes beside its old one, which Heat then"
            f" deletes; {pause} s between members; {size} members: about"
            f" {int(new_group.get('max_size', 1)) * pause // 60} minutes at most besides the"
            f" joins), for {' and '.join(reasons)}"
        )
    for key in ("min_size", "max_size", "cooldown"):
        if old_group.get(key) != new_group.get(key):
            out.lines.append(
                f"group {key}: {old_group.get(key)} -> {new_group.get(key)}: in place (the"
                " group keeps its size within the new bounds)"
            )
    proxy_params: set[str] = set()
    if old.resource(heat.PROXY_GROUP) and new.resource(heat.PROXY_GROUP):
        why, proxy_params = _replaced(old, new, heat.PROXY_GROUP, "resource_def")
        if why:
            out.lines.append(f"proxies: every proxy replaced, for {' and '.join(why)}")
    for name in (heat.SCALE_UP, heat.SCALE_DOWN, heat.ALARM, heat.PROXY_GROUP):
        before, after = old.resource(name), new.resource(name)
        if name == heat.PROXY_GROUP and before and after:
            before, after = dict(before), dict(after)  # the servers: said above
            for group in (before, after):
                group["properties"] = {
                    k: v for k, v in (group.get("properties") or {}).items() if k != "resource_def"
                }
        if before != after:
            state = "added" if before is None else "removed" if after is None else "updated"
            out.lines.append(f"{name}: {state} in place")
    other = sorted(
        k
        for k in set(old.parameters) | set(new.parameters)
        if k not in member_params | proxy_params and old.parameters.get(k) != new.parameters.get(k)
    )
    for key in other:
        out.lines.append(
            f"parameter {key}: {old.parameters.get(key)!r} -> {new.parameters.get(key)!r}: in place"
        )
    return out


def render_at(ref: str, stack: str, out: Path) -> Path:
    """Render `stack` as the repository at git `ref` would (a scratch copy of that tree,
    run with this checkout's Python)."""
    with tempfile.TemporaryDirectory(prefix="plan-") as scratch:
        tree = Path(scratch) / "tree"
        tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(PROJECT_DIR), "archive", ref],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise ValueError(f"git archive {ref}: {archive.stderr.decode(errors='replace')}")
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        stack_file = f"Pulumi.{stack}.yaml"
        if not (tree / stack_file).exists() and (PROJECT_DIR / stack_file).exists():
            shutil.copy(PROJECT_DIR / stack_file, tree / stack_file)
        result = subprocess.run(
            [sys.executable, "-m", "infra", "render", "--stack", stack, "--out", str(out)],
            cwd=tree,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ValueError(f"render at {ref}: {result.stderr[-2000:]}")
    return out


def plan_command(stack: str, source: str, to: Path | None) -> int:
    """Print the plan; exit 0 (nothing refused), 1 (a refused change), 2 (bad input)."""
    with tempfile.TemporaryDirectory(prefix="plan-") as scratch:
        try:
            if Path(source).is_dir():
                old_dir = Path(source)
            else:
                old_dir = render_at(source, stack, Path(scratch) / "old")
            if to is None:
                from infra.render import run_program, write_render

                to = Path(scratch) / "new"
                write_render(run_program(stack), to)
            old, new = Render.read(old_dir), Render.read(to)
        except (ValueError, OSError, KeyError) as error:
            print(f"plan: {error}", file=sys.stderr)
            return 2
        result = plan(old, new)
    sys.stdout.write(result.text())
    return 1 if result.refused else 0
