"""`python -m infra plan`: what a `pulumi up` will do to the running cluster, offline.

It compares two renders of a stack (`python -m infra render`: the Heat template, the
StackV1 inputs): the one deployed (a render directory, or a git ref rendered in a scratch
copy of the repository) and this checkout's. It reads them as Heat and the agents will:

- the settings document (`agent_settings`): each changed key with what a running agent
  does with it (agent/settings.py `settings_changes`): applied live, kept for etcd's
  next start, or refused (ports, schemes, the cluster name: a running cluster cannot
  change them; the plan fails);
- the agent bundle: every running agent takes a new one, one node at a time;
- the member definition (the group's `resource`, and the stack parameters it reads:
  image, flavor, network, security groups, the credential, ...): every member replaced,
  one at a time with `pause_time` between (Heat's rolling update, batches of one);
- the group's sizes and cooldown, the policies and the alarm: updated in place.

Secret parameters are masked in a render, so a changed secret (a new credential) is not
seen here; `pulumi preview` shows that the parameter changes.
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
MEMBER_PARAMETERS = frozenset(
    {
        heat.P.IMAGE,
        heat.P.FLAVOR,
        heat.P.NETWORK,
        heat.P.SECURITY_GROUPS,
        heat.P.CREDENTIAL_ID,
        heat.P.CREDENTIAL_SECRET,
        heat.P.AUTH_URL,
        heat.P.REGION,
        heat.P.SERVER_GROUP,
        heat.P.METRICS_HOST,
        heat.P.NETDATA_API_KEY,
        heat.P.TLS_CA_CERT,
        heat.P.TLS_CA_KEY,
    }
)
"""The parameters a member's definition reads: a change replaces every member."""


@dataclass
class Render:
    template: dict[str, Any]
    parameters: dict[str, str]

    @classmethod
    def read(cls, directory: Path) -> Render:
        template = yaml.safe_load((directory / "heat-template.yaml").read_text())
        resources = json.loads((directory / "resources.json").read_text())["resources"]
        (stack,) = [r for r in resources if r["type"] == STACK_V1]
        return cls(template, dict(stack["inputs"].get("parameters") or {}))

    def resource(self, name: str) -> dict[str, Any] | None:
        return (self.template.get("resources") or {}).get(name)


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


def _group(render: Render) -> dict[str, Any]:
    return (render.resource(heat.GROUP) or {}).get("properties") or {}


def plan(old: Render, new: Render) -> Plan:
    """What Heat and the agents do when the stack goes from `old` to `new`."""
    out = Plan()
    old_doc = (old.resource(heat.SETTINGS) or {}).get("metadata") or {}
    new_doc = (new.resource(heat.SETTINGS) or {}).get("metadata") or {}
    for role in sorted(set(old_doc.get("roles") or {}) | set(new_doc.get("roles") or {})):
        before = (old_doc.get("roles") or {}).get(role) or {}
        after = (new_doc.get("roles") or {}).get(role) or {}
        for key, was, now, kind in settings_changes(before, after):
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
    if old_doc.get("bundle_sha256") != new_doc.get("bundle_sha256"):
        out.lines.append(
            f"agent bundle {str(old_doc.get('bundle_sha256'))[:12]} ->"
            f" {str(new_doc.get('bundle_sha256'))[:12]}: every running agent takes it, one"
            " node at a time, while the cluster is whole (no server replaced)"
        )
    old_group, new_group = _group(old), _group(new)
    reasons = []
    if old_group.get("resource") != new_group.get("resource"):
        old_props = (old_group.get("resource") or {}).get("properties") or {}
        new_props = (new_group.get("resource") or {}).get("properties") or {}
        keys = sorted(
            k for k in set(old_props) | set(new_props) if old_props.get(k) != new_props.get(k)
        )
        reasons.append("the member definition (" + ", ".join(keys) + ")")
    params = sorted(k for k in MEMBER_PARAMETERS if old.parameters.get(k) != new.parameters.get(k))
    if params:
        reasons.append("the parameters " + ", ".join(params))
    if reasons:
        pause = int((new_group.get("rolling_updates") or {}).get("pause_time", 0))
        size = f"{new_group.get('min_size')}..{new_group.get('max_size')}"
        out.replaces_members = True
        out.lines.append(
            f"members: every member replaced, one at a time, {pause} s apart (Heat's rolling"
            f" update; {size} members: about {int(new_group.get('max_size', 1)) * pause // 60}"
            f" minutes at most), for {' and '.join(reasons)}"
        )
    for key in ("min_size", "max_size", "cooldown"):
        if old_group.get(key) != new_group.get(key):
            out.lines.append(
                f"group {key}: {old_group.get(key)} -> {new_group.get(key)}: in place (the"
                " group keeps its size within the new bounds)"
            )
    for name in (heat.SCALE_UP, heat.SCALE_DOWN, heat.ALARM, heat.PROXY_GROUP):
        before, after = old.resource(name), new.resource(name)
        if before != after:
            state = "added" if before is None else "removed" if after is None else "updated"
            out.lines.append(f"{name}: {state} in place")
    other = sorted(
        k
        for k in set(old.parameters) | set(new.parameters)
        if k not in MEMBER_PARAMETERS and old.parameters.get(k) != new.parameters.get(k)
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
