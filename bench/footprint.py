"""What a process costs, read from /proc: CPU time (utime + stime) and resident memory.

proc(5): /proc/<pid>/stat fields 14 and 15 are utime and stime in clock ticks
(sysconf(_SC_CLK_TCK)); /proc/<pid>/status VmRSS is the resident set and VmHWM its peak,
in kB. A process's own time only: children it has waited for (hook scripts) are not in it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` in seconds; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of `pid` in MiB; None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    if "VmRSS" not in values:
        return None
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


@dataclass(frozen=True)
class Usage:
    """One process over a measured window."""

    pid: int
    role: str
    """agent or etcd."""
    cpu_seconds: float
    wall_seconds: float
    rss_mb: float
    peak_mb: float
    cycles: int | None = None
    """Agent cycles logged in the window (None for etcd)."""

    @property
    def share(self) -> float:
        """CPU share of one core over the window (0.01 = 1 %)."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    @property
    def per_cycle(self) -> float:
        """CPU seconds per agent cycle."""
        if not self.cycles:
            return float("nan")
        return self.cpu_seconds / self.cycles


def count_cycles(log: Path) -> int:
    """Cycles an agent logged: one "saw ... | did ..." sentence each (agent.loop.Agent.cycle)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if " saw " in line and " | did " in line)


@dataclass(frozen=True)
class Watched:
    pid: int
    role: str
    log: Path | None = None


def measure(
    processes: list[Watched], seconds: float, wait: Callable[[float], None] = time.sleep
) -> list[Usage]:
    """CPU and memory of each process over `seconds` of wall time (gone ones left out)."""
    start = {p.pid: cpu_seconds(p.pid) for p in processes}
    cycles = {p.pid: count_cycles(p.log) for p in processes if p.log is not None}
    t0 = time.monotonic()
    wait(seconds)
    wall = time.monotonic() - t0
    usages = []
    for p in processes:
        before, after, memory = start[p.pid], cpu_seconds(p.pid), memory_mb(p.pid)
        if before is None or after is None or memory is None:
            continue
        usages.append(
            Usage(
                pid=p.pid,
                role=p.role,
                cpu_seconds=after - before,
                wall_seconds=wall,
                rss_mb=memory[0],
                peak_mb=memory[1],
                cycles=count_cycles(p.log) - cycles[p.pid] if p.log is not None else None,
            )
        )
    return usages
