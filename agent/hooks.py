"""The user's scripts: configscript once after joining, cleanupscript before leaving."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("agent.hooks")


@dataclass(frozen=True)
class HookResult:
    ok: bool
    detail: str


def hook_environment(
    *,
    cluster: str,
    endpoints: list[str],
    node_name: str,
    node_ip: str,
    is_leader: bool,
    reason: str | None = None,
) -> dict[str, str]:
    """What every hook is told (documented in hooks/configscript.sh)."""
    env = {
        "AUTOSCALE_CLUSTER": cluster,
        "AUTOSCALE_ENDPOINTS": ",".join(endpoints),
        "AUTOSCALE_NODE_NAME": node_name,
        "AUTOSCALE_NODE_IP": node_ip,
        "AUTOSCALE_IS_LEADER": "true" if is_leader else "false",
    }
    if reason is not None:
        env["AUTOSCALE_REASON"] = reason
    return env


HOOK_UNIT = "autoscale-hook@{name}.service"
HOOK_ENV_DIR = Path("/run/autoscale-etcd")

Runner = Callable[[Sequence[str], float], subprocess.CompletedProcess[str]]


def _systemctl(command: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False
    )


def run_hook_unit(
    path: str | None,
    env: Mapping[str, str],
    timeout: float,
    *,
    env_dir: Path = HOOK_ENV_DIR,
    runner: Runner = _systemctl,
) -> HookResult:
    """On a node: run the hook as `autoscale-hook@NAME.service`, outside the agent's sandbox.

    The AUTOSCALE_* variables go to `<env_dir>/hook-NAME.env` (the unit's
    EnvironmentFile); `systemctl start` of a oneshot unit returns when the hook has run.
    """
    if path is None:
        return HookResult(True, "no hook configured")
    name = os.path.basename(path)
    env_dir.mkdir(parents=True, exist_ok=True)
    env_file = env_dir / f"hook-{name}.env"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for key, value in sorted(env.items()):
            handle.write(f"{key}={shlex.quote(value)}\n")
    unit = HOOK_UNIT.format(name=name)
    try:
        done = runner(["systemctl", "start", unit], timeout + 30)
    except subprocess.TimeoutExpired:
        return HookResult(False, f"{unit} ran past {timeout:.0f}s")
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return HookResult(False, f"{unit} failed ({done.returncode}): {detail[0]}")
    return HookResult(True, f"{unit} succeeded")


def run_hook(path: str | None, env: Mapping[str, str], timeout: float) -> HookResult:
    """Run one hook script as a child (tests, lab); its output goes to the log. Never raises."""
    if path is None:
        return HookResult(True, "no hook configured")
    if not os.access(path, os.X_OK):
        return HookResult(False, f"{path} is missing or not executable")
    try:
        done = subprocess.run(
            [path],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return HookResult(False, f"{path} ran past {timeout:.0f}s and was stopped")
    except OSError as error:
        return HookResult(False, f"{path} could not run: {error}")
    output = (done.stdout + done.stderr).strip()
    for line in output.splitlines()[-20:]:
        log.info("%s: %s", os.path.basename(path), line)
    if done.returncode != 0:
        return HookResult(False, f"{path} exited {done.returncode}")
    return HookResult(True, f"{path} succeeded")
