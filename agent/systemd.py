"""One systemd unit of the node, driven through `systemctl` and read through `journalctl`.

etcd (`SystemdEtcd`) and the gRPC proxy (`SystemdProxy`) run as units on a cloud node.
The commands go through a `Runner`, so that tests can record them instead.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run_command(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, check=False, timeout=60)


class SystemdUnit:
    def __init__(self, name: str, runner: Runner = run_command) -> None:
        self.name = name
        self.run = runner

    def check(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run `command`; RuntimeError with its stderr when it fails."""
        result = self.run(command)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def restart(self, *, block: bool = True) -> None:
        """Restart the unit. `block=False` queues the job and returns at once: a Type=notify
        unit (etcd) is "activating" until it says it is ready, which for a member catching
        up with its cluster takes as long as the catch-up."""
        # a unit that hit its start limit (e.g. a removed member) must be reset first
        self.run(["systemctl", "reset-failed", self.name])
        command = ["systemctl", "restart", self.name]
        if not block:
            command.insert(1, "--no-block")
        self.check(command)

    def stop(self, *, check: bool = True) -> None:
        command = ["systemctl", "stop", self.name]
        if check:
            self.check(command)
        else:
            self.run(command)

    def is_active(self) -> bool:
        return self.run(["systemctl", "is-active", "--quiet", self.name]).returncode == 0

    def active_state(self) -> str:
        """systemd's ActiveState: active, activating, deactivating, inactive, failed, ..."""
        result = self.run(["systemctl", "show", "--property=ActiveState", "--value", self.name])
        return result.stdout.strip() if result.returncode == 0 else "unknown"

    def main_pid(self) -> int | None:
        result = self.run(["systemctl", "show", "--property=MainPID", "--value", self.name])
        try:
            value = int(result.stdout.strip())
        except ValueError:
            return None
        return value or None

    def journal(self, *, since: float | None = None, lines: int = 200) -> str:
        """What the unit logged since `since` (a Unix time), else its last `lines` lines."""
        command = ["journalctl", "--unit", self.name, "--output=cat", "--no-pager"]
        if since is not None:
            command.append(f"--since=@{int(since)}")
        else:
            command.append(f"--lines={lines}")
        return self.run(command).stdout
