"""The preview workflow validates against GitHub's workflow schema, offline (vendored)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from infra.settings import PROJECT_DIR
from tests.tools import need

WORKFLOW = PROJECT_DIR / ".github" / "workflows" / "preview.yml"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    binary = need("check-jsonschema")
    return subprocess.run(
        [binary, "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_preview_workflow_is_valid():
    result = check(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_workflow_is_refused(tmp_path):
    broken = tmp_path / "preview.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs_on:"))
    assert check(broken).returncode != 0


def test_workflow_previews_every_stack_with_the_official_action_and_comments():
    document = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in document[True]  # YAML 1.1 reads `on` as true
    steps = document["jobs"]["preview"]["steps"]
    (pulumi,) = [s for s in steps if str(s.get("uses", "")).startswith("pulumi/actions@")]
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["comment-on-pr"] is True
    assert pulumi["with"]["stack-name"] == "${{ matrix.stack }}"
    assert document["permissions"]["pull-requests"] == "write"
