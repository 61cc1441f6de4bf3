"""The roll's figures (issue 13): a new image rolled through a three-member cluster while a
writer writes, by the lab's Heat as Heat's `_replace` does (lab/scenarios.py
`rolling_update`): the whole roll, the longest time from a batch to its replacement
being a voter, the longest write stall over the roll, and the polls that saw no healthy
quorum (an invariant: none). The full run only: the roll waits `pause_time` between
members, minutes even scaled."""

from __future__ import annotations

from pathlib import Path

from bench.rows import Row, check, figure
from infra.settings import StackSettings
from lab.scenarios import run_scenario
from lab.timings import LabTimings

SECTION = "rolling update (a new image, 3 members)"


def bench_roll(stack: StackSettings, factor: float, root: Path) -> list[Row]:
    outcome = run_scenario("rolling-update", stack, LabTimings.scaled(stack, factor), root)
    got = outcome.report.get("figures") or {}
    nan = float("nan")
    note = "" if outcome.ok else "the scenario failed an invariant: see its report"
    return [
        figure(SECTION, "the whole roll (lab time)", got.get("roll_seconds", nan), "s", note),
        figure(SECTION, "pause_time between members (lab time)", got.get("pause_time", nan), "s"),
        figure(
            SECTION,
            "a batch to its new member a voter, longest",
            got.get("member_to_voter_longest", nan),
            "s",
        ),
        figure(
            SECTION, "longest write stall over the roll", got.get("longest_write_stall", nan), "s"
        ),
        check(
            SECTION,
            f"polls without a healthy quorum during the roll, of {got.get('polls', 0):.0f}",
            got.get("polls_without_quorum", nan),
            "polls",
            "==",
            0,
        ),
    ]
