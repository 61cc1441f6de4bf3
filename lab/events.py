"""What happened in the lab, in order: (t, kind, node, detail), t in seconds since the start."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Event:
    t: float
    kind: str
    node: str
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["t"] = round(self.t, 2)
        return data


# The kinds that change the group or the cluster (marked on the timeline picture).
SCALE_KINDS = ("scale-up", "scale-down", "replace", "delete", "joined", "removed", "kill")


class EventLog:
    """Thread-safe, append-only; listeners (the live table) see each event as it comes."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.t0 = clock()
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self.listeners: list[Callable[[Event], None]] = []

    def now(self) -> float:
        return self.clock() - self.t0

    def add(self, kind: str, node: str = "", detail: str = "") -> Event:
        event = Event(self.now(), kind, node, detail)
        with self._lock:
            self._events.append(event)
        for listener in list(self.listeners):
            listener(event)
        return event

    def all(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def of(self, *kinds: str) -> list[Event]:
        return [e for e in self.all() if e.kind in kinds]
