"""The live table: members, leader, load, kill-lock holder, failmarkers, recent events."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TextIO

from lab.cluster import Sample
from lab.events import Event

QUIET = {"leader", "load", "agent-exit", "no-action", "boot", "lab"}
"""Kinds not printed one per line in a log (they show in the table and the report)."""


def node_table(sample: Sample) -> list[str]:
    lines = [
        f"{'node':14} {'ip':16} {'server':7} {'etcd':8} {'health':7} {'load%':>6}"
        f" {'metric':>7} {'failmk':>6} {'phase':8} {'agent pid':>9} {'etcd pid':>8}"
    ]
    for n in sorted(sample.nodes, key=lambda v: v.name):
        member = n.member + ("*" if n.leader else "")
        health = "-" if n.healthy is None else ("ok" if n.healthy else "FAIL")
        if n.crashed:
            health = "killed"
        elif n.frozen:
            health = "frozen"
        metric = "-" if n.reading is None else f"{n.reading:.1f}"
        lines.append(
            f"{n.name:14} {n.ip:16} {n.status:7} {member:8} {health:7} {n.load:6.1f}"
            f" {metric:>7} {n.failmarker:6d} {n.phase:8} {n.agent_pid or '-':>9}"
            f" {n.etcd_pid or '-':>8}"
        )
    return lines


def headline(sample: Sample) -> str:
    members = "no answer" if sample.members is None else f"{len(sample.members)}"
    return (
        f"t={sample.t:6.1f}s  members {members} ({sample.healthy} healthy)"
        f"  leader {sample.leader or '-'}  kill lock {sample.lock_holder or 'free'}"
        f"  demand {sample.demand:g}%  mean load {sample.mean_load:.0f}%"
        f"  alarm {sample.alarm}  writes {sample.acked}"
    )


def event_line(event: Event) -> str:
    return f"{event.t:7.1f}s  {event.kind:15} {event.node:14} {event.detail}"


class Display:
    """On a terminal: the table redrawn once a second. Elsewhere: events as lines, and the
    table every `table_every` seconds."""

    def __init__(
        self,
        out: TextIO,
        *,
        tty: bool | None = None,
        every: float = 1.0,
        table_every: float = 15.0,
    ) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.every = every
        self.table_every = table_every
        self.recent: deque[Event] = deque(maxlen=8)
        self._last_draw = 0.0
        self._last_table = 0.0
        self._lock = threading.Lock()

    def event(self, event: Event) -> None:
        with self._lock:
            self.recent.append(event)
            if not self.tty and event.kind not in QUIET:
                print(event_line(event), file=self.out, flush=True)

    def sample(self, sample: Sample) -> None:
        now = time.monotonic()
        with self._lock:
            if self.tty and now - self._last_draw >= self.every:
                self._last_draw = now
                text = "\n".join(
                    [headline(sample), "", *node_table(sample), "", "recent events:"]
                    + [event_line(e) for e in self.recent]
                )
                self.out.write("\x1b[H\x1b[2J" + text + "\n")
                self.out.flush()
            elif not self.tty and now - self._last_table >= self.table_every:
                self._last_table = now
                self.print_table(sample)

    def print_table(self, sample: Sample) -> None:
        lines = [headline(sample), *node_table(sample)]
        print("\n".join("    " + line for line in lines), file=self.out, flush=True)
