"""Mutation check of the lab's judges: break each one in turn (it returns ok whatever it
is given) and run the tests that judge it; every mutant must make them fail.

    python -m tests.mutate_judges        # exit 0: every mutant caught

Not part of `make test` (it runs the judges' tests ~15 times, a few minutes); run it when
a judge changes. Each file is restored after its mutant, also on an interrupt.
"""

from __future__ import annotations

import re
import subprocess
import sys

from infra.settings import PROJECT_DIR

JUDGES = {
    "lab/report.py": (
        "_members_in_bounds",
        "_removals_spaced",
        "_quorum_kept",
        "_writes_kept",
        "_dead_replaced",
        "_group_matches_cluster",
        "_one_cluster",
        "no_heat_writes",
    ),
    "lab/chaos.py": (
        "check_victim",
        "check_nothing_removed",
        "check_no_removal_while_bad",
        "check_left",
        "check_rebooted",
    ),
    "lab/outside.py": ("one_healthy_cluster", "same_members", "members_kept", "writes_readable"),
}
TESTS = ("tests/test_lab_report.py", "tests/test_chaos.py", "tests/test_lab_outside.py")
FAST = "not short_seeded and not replacement_heat and not etcdctl_sees and not cli"
"""The judges' own tests, without the live runs (those take minutes each)."""


def mutant(source: str, judge: str) -> str:
    """`source` with `judge` answering ok at once."""
    found = re.search(rf"^def {judge}\(.*?\) -> Invariant:\n", source, re.S | re.M)
    if found is None:
        raise ValueError(f"no judge {judge}")
    ok = '    return Invariant("mutant", True, "")\n'
    return source[: found.end()] + ok + source[found.end() :]


def main() -> int:
    survivors = []
    for relative, judges in JUDGES.items():
        path = PROJECT_DIR / relative
        source = path.read_text()
        for judge in judges:
            try:
                path.write_text(mutant(source, judge))
                run = subprocess.run(
                    [sys.executable, "-m", "pytest", "-q", "-n0", "-x", *TESTS, "-k", FAST],
                    cwd=PROJECT_DIR,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
            finally:
                path.write_text(source)
            caught = run.returncode != 0
            print(f"{relative}:{judge}: {'caught' if caught else 'NOT CAUGHT'}", flush=True)
            if not caught:
                survivors.append(judge)
    print(f"{len(survivors)} mutant(s) survived" + (f": {survivors}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
