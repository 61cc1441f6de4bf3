"""`python -m bench [--quick] [--json FILE]`: the figures of README "Benchmarks", measured here.

Runs in the lab (real etcd and the real agent per node, the local cloud with Heat's
rules) and prints one table: each figure with its target, met or the gap. --quick is
the test suite's run (the tests' time factor, one run of each); the full run (the lab's
default factor, recovery twice per role, the agent's CPU at the stack's own period) is
the one README's table comes from. The exit code is 1 only if an invariant row failed
(one cluster id per bootstrap, quorum kept during the joins); a timing gap is a figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench.backup import bench_backups
from bench.cluster import JOINERS, QUICK_JOINERS, Setup, bench_cluster
from bench.roll import bench_roll
from bench.rows import Row, table
from bench.userdata import bench_userdata
from infra.settings import load_stack_file, stack_file
from lab.etcd_binaries import find_etcd_binary
from lab.timings import DEFAULT_FACTOR, FAST_FACTOR

INVARIANT_UNITS = ("ids", "polls", "processes")
"""Rows that are invariants, not timings: one cluster id, no poll without quorum, no
process left behind."""


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    etcd = find_etcd_binary()
    version = ""
    if etcd:
        answer = subprocess.run([etcd, "--version"], capture_output=True, text=True)
        version = answer.stdout.splitlines()[0] if answer.stdout else ""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "etcd": f"{etcd} ({version})" if etcd else "none",
        "load_before": os.getloadavg()[0],
    }


SECTIONS = ("cluster", "userdata", "backups", "roll")
"""What `--only` may name; the quick run has no roll (minutes of pause_time)."""


def run(
    quick: bool, root: Path, factor: float | None = None, only: str | None = None
) -> tuple[list[Row], dict]:
    stack = load_stack_file(stack_file("dev"))
    setup = Setup(
        factor=factor or (FAST_FACTOR if quick else DEFAULT_FACTOR),
        root=root,
        recovery_runs=1 if quick else 2,
        footprint_seconds=3.0 if quick else 20.0,
        default_period_seconds=0.0 if quick else 6 * stack.lockattemptperiod,
        # the quick run's five start only in the spread row (the full run: both)
        bootstrap_sizes=(3,) if quick else (3, 5, 7),
        spread_sizes=(5,) if quick else (5, 7),
        joiners=QUICK_JOINERS if quick else JOINERS,
        client_stalls=not quick,
    )
    info = {"mode": "quick" if quick else "full", "factor": setup.factor}
    rows: list[Row] = []
    if only in (None, "cluster"):
        rows += bench_cluster(stack, setup, shout=lambda text: print(f"  .. {text}", flush=True))
    if only in (None, "userdata"):
        rows += bench_userdata(render_runs=1 if quick else 3)
    if only in (None, "backups"):
        binary = find_etcd_binary()
        if binary is None:
            raise RuntimeError("no etcd binary for the backup rows")
        sizes = (10 * 10**6,) if quick else (10 * 10**6, 200 * 10**6)
        print("  .. backups: snapshot, upload, restore, defragmentation", flush=True)
        rows += bench_backups(root / "backups", binary, sizes)
    if only == "roll" or (only is None and not quick):
        print("  .. a rolling update: a new image through three members", flush=True)
        rows += bench_roll(stack, setup.factor, root / "roll")
    return rows, info


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tests' fast, small run")
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    parser.add_argument("--factor", type=float, help="the lab's time factor (override)")
    parser.add_argument("--keep", type=Path, help="run the labs here and keep their logs")
    parser.add_argument("--only", choices=SECTIONS, help="one section's rows alone")
    args = parser.parse_args(argv)
    started = time.monotonic()
    host = machine()
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(
        f"bench {when}: {host['nproc']} x {host['cpu']}, {host['memory_gib']} GiB, {host['etcd']}"
    )
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-"))
    # SIGTERM is an interrupt, as Ctrl-C is: each lab's own cleanup stops its processes
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        rows, info = run(args.quick, root, args.factor, args.only)
    except KeyboardInterrupt:
        print("interrupted: the labs' processes were stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - started
    print()
    print(table(rows))
    failed = [r for r in rows if r.unit in INVARIANT_UNITS and not r.met]
    gaps = [r for r in rows if r.met is False and r.unit not in INVARIANT_UNITS]
    print(
        f"\n{info['mode']} run, time factor {info['factor']:g}, {elapsed:.0f} s;"
        f" {sum(r.met is True for r in rows)} targets met, {len(gaps)} gap(s),"
        f" {len(failed)} invariant(s) failed"
    )
    if args.json is not None:
        report = {
            "date": when,
            "machine": host,
            **info,
            "seconds": round(elapsed, 1),
            "rows": [r.to_json() for r in rows],
            "invariants_ok": not failed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
