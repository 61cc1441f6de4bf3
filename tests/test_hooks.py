"""The user's hooks: what they are told, and how they run (child process, or systemd unit)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from agent.hooks import hook_environment, run_hook, run_hook_unit

ENV = hook_environment(
    cluster="prod",
    endpoints=["http://10.0.0.1:12379", "http://10.0.0.2:12379"],
    node_name="etcd-abc",
    node_ip="10.0.0.2",
    is_leader=True,
    reason="idle",
)


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "configscript"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_shipped_hooks_run_and_see_every_variable(tmp_path: Path):
    root = Path(__file__).resolve().parent.parent / "hooks"
    for name in ("configscript.sh", "cleanupscript.sh"):
        assert run_hook(str(root / name), ENV, timeout=10).ok
    proxy = run_hook(
        str(root / "proxyconfig.sh"), {**ENV, "AUTOSCALE_PROXY_URL": "http://10.0.0.9:23790"}, 10
    )
    assert proxy.ok


def test_a_hook_gets_the_documented_environment(tmp_path: Path):
    out = tmp_path / "seen"
    hook = script(tmp_path, f'env | grep ^AUTOSCALE_ | sort > "{out}"\n')
    assert run_hook(hook, ENV, timeout=10).ok
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert seen == {
        "AUTOSCALE_CLUSTER": "prod",
        "AUTOSCALE_ENDPOINTS": "http://10.0.0.1:12379,http://10.0.0.2:12379",
        "AUTOSCALE_IS_LEADER": "true",
        "AUTOSCALE_NODE_IP": "10.0.0.2",
        "AUTOSCALE_NODE_NAME": "etcd-abc",
        "AUTOSCALE_REASON": "idle",
    }


def test_failures_are_reported_not_raised(tmp_path: Path):
    assert not run_hook(script(tmp_path, "exit 3\n"), ENV, timeout=10).ok
    slow = run_hook(script(tmp_path, "sleep 5\n"), ENV, timeout=0.3)
    assert not slow.ok and "ran past" in slow.detail
    missing = run_hook(str(tmp_path / "nope"), ENV, timeout=1)
    assert not missing.ok and "missing" in missing.detail
    assert run_hook(None, ENV, timeout=1).ok


def test_on_a_node_the_hook_runs_as_its_systemd_unit_with_an_env_file(tmp_path: Path):
    calls: list[list[str]] = []

    def runner(command: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        calls.append(list(command))
        return subprocess.CompletedProcess(command, 0, "", "")

    result = run_hook_unit(
        "/etc/autoscale-etcd/hooks/configscript", ENV, 600, env_dir=tmp_path, runner=runner
    )
    assert result.ok
    assert calls == [["systemctl", "start", "autoscale-hook@configscript.service"]]
    env_file = tmp_path / "hook-configscript.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    # systemd's EnvironmentFile syntax: the same variables, shell-quoted values
    done = subprocess.run(
        ["sh", "-c", f"set -a; . {env_file}; env | grep ^AUTOSCALE_ | sort"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "AUTOSCALE_ENDPOINTS=http://10.0.0.1:12379,http://10.0.0.2:12379" in done.stdout
    unit = Path(__file__).resolve().parent.parent / "infra/units/autoscale-hook@.service"
    assert "EnvironmentFile=/run/autoscale-etcd/hook-%i.env" in unit.read_text()


def test_a_failed_hook_unit_is_reported(tmp_path: Path):
    def runner(command: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "Job failed. See journalctl.")

    result = run_hook_unit("/x/cleanupscript", ENV, 60, env_dir=tmp_path, runner=runner)
    assert not result.ok and "Job failed" in result.detail
