"""A detached child process that another process can find again by its pid file.

etcd (`SubprocessEtcd`) and the gRPC proxy (`SubprocessProxy`) run this way in tests and
the lab: the output goes to a log file, the pid to a pid file beside it, and the process
gets its own session, so that a restarted agent or the lab can signal and stop it by pid.
A pid read from the file counts only while /proc shows that pid alive (not a zombie) and
running what the owner expects (`identity`, on its command line): a reused pid is not ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

Identity = Callable[[list[bytes]], bool]
"""Whether a command line (/proc/<pid>/cmdline split at NULs) is the owner's process."""


class ChildProcess:
    """The process behind `pid_path`, logging to `log_path`."""

    def __init__(
        self, pid_path: Path, log_path: Path, *, identity: Identity, stop_timeout: float
    ) -> None:
        self.pid_path = Path(pid_path)
        self.log_path = Path(log_path)
        self.identity = identity
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def spawn(self, command: Sequence[str], *, cwd: Path | None = None) -> None:
        """Start `command` in its own session, appending to the log; write the pid file."""
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        self.pid_path.write_text(f"{self._process.pid}\n", encoding="utf-8")

    @property
    def pid(self) -> int | None:
        if self._process is not None:
            return self._process.pid
        try:
            return int(self.pid_path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        pid = self.pid
        return pid is not None and self._is_ours(pid)

    def _is_ours(self, pid: int) -> bool:
        """The pid is alive (not a zombie) and its command line is ours (no pid reuse)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return False
        return self.identity(cmdline)

    def signal(self, signum: int) -> None:
        pid = self.pid
        if pid is None or not self.is_running():
            raise ProcessLookupError(f"{self.pid_path} names no running process")
        os.kill(pid, signum)

    def stop(self) -> None:
        """SIGTERM (and SIGCONT, should it be stopped), then SIGKILL after `stop_timeout`;
        waits until the process is gone and removes the pid file."""
        pid = self.pid
        if pid is not None and self.is_running():
            for signum in (signal.SIGTERM, signal.SIGCONT):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    break
            if not self.wait_gone(self.stop_timeout):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.wait_gone(self.stop_timeout)
        if self._process is not None:
            self._process.poll()
        self.pid_path.unlink(missing_ok=True)
        self._process = None

    def kill(self) -> None:
        """SIGKILL at once (a crash), and reap it. The pid file stays, as after a crash."""
        pid = self.pid
        if pid is not None and self.is_running():
            os.kill(pid, signal.SIGKILL)
            self.wait_gone(self.stop_timeout)
        if self._process is not None:
            self._process.poll()

    def wait(self, timeout: float) -> int | None:
        """Wait for the process to exit by itself; its exit code (None if still running;
        0 for one this object did not start, whose code it cannot know)."""
        if self._process is not None:
            try:
                return self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        return 0 if self.wait_gone(timeout) else None

    def wait_gone(self, timeout: float) -> bool:
        """Whether the process is gone within `timeout` seconds (polled every 50 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None:
                try:
                    self._process.wait(max(0.0, min(0.05, deadline - time.monotonic())))
                    return True
                except subprocess.TimeoutExpired:
                    pass
            elif not self.is_running():
                return True
            else:
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                return not self.is_running()

    def read_log(self, *, since_start: bool = True) -> str:
        """The log since this object last started the process (or all of it); "" if none."""
        try:
            with open(self.log_path, "rb") as log:
                if since_start:
                    log.seek(self._log_offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
