"""The user's scripts: configscript once after joining, cleanupscript before leaving."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

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


def run_hook(path: str | None, env: Mapping[str, str], timeout: float) -> HookResult:
    """Run one hook script; its output goes to the agent's log. Never raises."""
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
