"""What a client of the cluster feels during an event: the longest stall of its writes and
the tail of their latency, beside the same figures on the quiet cluster.

`puts` are the writer's (lab/writer.py): (sent at, latency or None when the put failed).
In a window, the stall is the longest time between two acknowledged writes (a put acked
at sent + latency), counted from the window's start and to its end, so that a window with
no acknowledged write at all stalls for its whole length; the p99 is over the latencies of
the puts sent in the window, a failed put counting as the writer's timeout (what a client
waits before it retries).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stall:
    start: float
    end: float
    longest: float
    """s: the longest time with no write acknowledged."""
    p99: float
    """s: the 99th percentile of the window's put latencies."""
    puts: int
    failed: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "longest_stall_s": round(self.longest, 4),
            "p99_s": round(self.p99, 4),
            "puts": self.puts,
            "failed": self.failed,
        }


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (0 < share <= 1); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def ack_times(puts: Sequence[tuple[float, float | None]]) -> list[float]:
    """When each acknowledged put was acknowledged (sent + latency), in order."""
    return sorted(sent + latency for sent, latency in puts if latency is not None)


def stall(
    puts: Sequence[tuple[float, float | None]], start: float, end: float, timeout: float
) -> Stall:
    inside = [(sent, latency) for sent, latency in puts if start <= sent <= end]
    acks = [a for a in ack_times(puts) if start <= a <= end]
    marks = [start, *acks, end]
    longest = max(b - a for a, b in itertools.pairwise(marks))
    latencies = [latency if latency is not None else timeout for _, latency in inside]
    return Stall(
        start=start,
        end=end,
        longest=longest,
        p99=percentile(latencies, 0.99),
        puts=len(inside),
        failed=sum(1 for _, latency in inside if latency is None),
    )
