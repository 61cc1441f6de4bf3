"""`python -m bench --quick`: it runs in the lab and produces every row, each a number.

Timings are figures, not asserted here (the machine is shared); what is asserted is that
every benchmark ran and measured something, and the invariants it checks: one cluster id
per bootstrap, no poll without quorum while 4 servers join, no process left behind.
The helpers (targets, /proc readings, user-data sizes) are tested on their own.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.footprint import Watched, count_cycles, cpu_seconds, measure, memory_mb
from bench.rows import check, figure, table
from bench.userdata import NOVA_LIMIT, bench_userdata, documents, example_values, substituted
from infra.settings import PROJECT_DIR
from infra.userdata import BUDGET, Token
from lab.chaos import stop_strays

# --- targets and the table -------------------------------------------------------------------


def test_a_target_is_met_or_its_gap_named():
    assert check("s", "fast", 3.0, "s", "<", 5.0).met is True
    late = check("s", "late", 6.5, "s", "<", 5.0)
    assert late.met is False and late.gap == "+1.50 s" and late.verdict == "GAP +1.50 s"
    assert check("s", "spacing", 7.9, "s", ">=", 8.0).gap == "-0.10 s"
    assert check("s", "ids", 1, "ids", "==", 1).met is True
    assert check("s", "ids", 2, "ids", "==", 1).met is False
    unmeasured = check("s", "never", math.nan, "s", "<", 5.0)
    assert unmeasured.met is False and unmeasured.gap == "not measured"
    assert unmeasured.to_json()["value"] is None
    assert figure("s", "context", 1.0, "s").met is None


def test_the_table_has_one_line_per_figure_under_its_section():
    rows = [
        check("recovery", "removed", 3.5, "periods", "<=", 3.0),
        figure("recovery", "kill to healthy", 4.2, "s", note="median"),
        check("bytes", "member user-data", 18000, "B", "<", BUDGET),
    ]
    lines = table(rows).splitlines()
    assert lines[0] == "| benchmark | measured | target | verdict |"
    assert lines[2] == "| **recovery** | | | |"
    assert lines[3] == "| removed | 3.50 periods | <= 3.00 periods | GAP +0.50 periods |"
    assert lines[4] == "| kill to healthy (median) | 4.20 s | - | - |"
    assert lines[5] == "| **bytes** | | | |"
    assert lines[6] == "| member user-data | 18000 B | < 32768 B | met |"


def test_a_role_measured_at_the_stacks_own_period_is_checked_there():
    """The issue sets its recovery targets at the stack's default periods: the lab's scaled
    leader figure (etcd's 1 s election is a whole scaled period) is shown without a
    verdict once the leader was also measured at the stack's own period."""
    from bench.cluster import Recovery, recovery_rows
    from infra.settings import load_stack_file, stack_file
    from lab.timings import LabTimings

    stack = load_stack_file(stack_file("dev"))
    timings = LabTimings.scaled(stack, 0.1)
    scaled = [
        Recovery("follower", "a", 2.5, "b", 0.5, 3.0),
        Recovery("leader", "c", 7.0, "d", 0.5, 7.5),
    ]
    own = Recovery("leader", "e", 61.0, "f", 0.6, 66.0)
    rows = {r.name: r for r in recovery_rows(scaled, timings, stack, [own])}
    assert rows["follower's member removed, in lockattemptperiods"].met is True
    leader = rows["leader's member removed, in lockattemptperiods"]
    assert leader.met is None and "checked at the stack's own period" in leader.note
    period = stack.lockattemptperiod
    at_own = rows[
        f"leader's member removed at the stack's own period ({period:g} s), in lockattemptperiods"
    ]
    # the target is the stack's dead-member window: removed at its last failed check
    assert at_own.value == 61.0 / period
    assert at_own.met is (61.0 / period <= stack.dead_member_periods) is False
    # without a run at the stack's own period the scaled figure is the check
    alone = {r.name: r for r in recovery_rows(scaled, timings, stack)}
    assert alone["leader's member removed, in lockattemptperiods"].met is False


# --- /proc -----------------------------------------------------------------------------------


def test_proc_readings_of_a_busy_and_an_idle_process(tmp_path):
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"]
    )
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    log = tmp_path / "agent.log"
    log.write_text("x agent.loop INFO saw 3 members | did wait: ok\n")
    try:
        time.sleep(0.3)

        def wait(seconds: float) -> None:
            time.sleep(seconds)
            with log.open("a") as f:
                f.write("y agent.loop INFO saw 3 members | did wait: ok\n" * 4)
                f.write("z agent.bootstrap INFO member etcd-01 (joined)\n")

        usages = measure(
            [Watched(busy.pid, "agent", log), Watched(idle.pid, "etcd")], 1.0, wait=wait
        )
        by_pid = {u.pid: u for u in usages}
        # a core spinning against a sleeper, both measured in the same second: the ratio,
        # not a fixed share (a busy CI machine gives the spinner less than a core)
        assert by_pid[busy.pid].share > 0.1
        assert by_pid[busy.pid].share > 20 * max(by_pid[idle.pid].share, 0.001)
        assert by_pid[busy.pid].cycles == 4 and by_pid[idle.pid].cycles is None
        assert math.isclose(by_pid[busy.pid].per_cycle, by_pid[busy.pid].cpu_seconds / 4)
        assert 1 < by_pid[idle.pid].rss_mb <= by_pid[idle.pid].peak_mb < 200
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()
    assert cpu_seconds(busy.pid) is None and memory_mb(busy.pid) is None  # gone
    assert count_cycles(tmp_path / "missing.log") == 0


# --- user-data -----------------------------------------------------------------------------------


def test_tokens_are_filled_with_values_of_real_size():
    values = example_values()
    assert set(values) == {v for k, v in vars(Token).items() if not k.startswith("_")}
    cert = base64.b64decode(values[Token.TLS_CA_CERT])
    assert cert.startswith(b"-----BEGIN CERTIFICATE-----")
    assert len(values[Token.CREDENTIAL_SECRET]) == 86
    for stack, role, text in documents():
        filled = substituted(text, values)
        assert "@@" not in filled, (stack, role)
        assert len(filled) >= len(text) - 200


def test_user_data_rows_measure_every_role():
    rows = bench_userdata(render_runs=1)
    names = [r.name for r in rows]
    for role in ("member", "proxy", "metrics"):
        assert any(n.startswith(f"{role} user-data, largest") for n in names)
        assert any(n.startswith(f"{role} user-data base64") for n in names)
    for row in rows:
        assert row.value > 0 and not math.isnan(row.value)
        if "base64" in row.name:
            assert row.target == f"<= {NOVA_LIMIT} B"
    render = rows[-1]
    assert render.name.startswith("python -m infra render") and render.unit == "s"


# --- the quick run, as a user runs it -----------------------------------------------------------

EXPECTED = [
    "follower's member removed, in lockattemptperiods",
    "follower's replacement a healthy voter, from its process start",
    "follower: kill to a healthy replacement",
    "load drop to the first member out",
    "spacing of removals, by the fenced-removal records",
    "spacing of removals, members seen gone",
    # the quick run bootstraps 3 at once (the full run 3, 5 and 7) and 5 spread over 7 s
    "3 nodes to one healthy cluster",
    "3 nodes: cluster ids seen",
    "3 nodes: members removed and rejoined or replaced on the way",
    "5 nodes, agents starting over 7 s: members removed and re-added on the way",
    "until all 5 are healthy voters",  # the quick run adds 2 (the full run 4)
    "agent RSS, largest of 3",
    "etcd RSS, largest",
    "agent CPU at the default period (10 s), busiest agent",
    "agent CPU per cycle, busiest agent",
    "processes left running once a lab stopped",
    # backups (bench/backup.py): the quick run's database is 10 MB (the full run also 200 MB)
    "10 MB: snapshot of a follower, hash checked",
    "10 MB: upload to Swift, verified",
    "10 MB: restore (download, check, etcdutl, etcd serving)",
    "10 MB: keys in the restored member, of those written",
    "10 MB: longest write, quiet baseline",
    "10 MB: longest write during the snapshot",
    "10 MB: longest write while follower 1 is defragmented",
    "10 MB: longest write while follower 2 is defragmented",
    "10 MB: longest write while the leader is defragmented",
]


@pytest.mark.etcd
@pytest.mark.slow
def test_quick_bench_produces_every_row_with_a_number(etcd_bin, tmp_path):
    out = tmp_path / "bench.json"
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out), "--keep", str(tmp_path)],
        cwd=PROJECT_DIR,
        env={**os.environ, "ETCD_BIN": etcd_bin},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=270)
    except subprocess.TimeoutExpired:
        bench.send_signal(signal.SIGINT)  # its labs stop every process they started
        stdout, stderr = bench.communicate(timeout=60)
        pytest.fail(f"the quick bench took over 270 s:\n{stdout[-3000:]}")
    finally:
        left = stop_strays(tmp_path)
    assert bench.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert left == []
    report = json.loads(out.read_text())
    assert report["mode"] == "quick" and report["invariants_ok"] is True
    assert report["machine"]["nproc"] == os.cpu_count()
    rows = {r["name"]: r for r in report["rows"]}
    for name in EXPECTED:
        assert name in rows, f"{name} missing from {sorted(rows)}"
    unmeasured = [r["name"] for r in report["rows"] if not isinstance(r["value"], (int, float))]
    assert not unmeasured, f"not measured: {unmeasured}\n{stdout[-6000:]}"
    for row in report["rows"]:
        if row["target"]:
            assert row["met"] is not None and (row["met"] or row["gap"]), row
    assert rows["3 nodes: cluster ids seen"]["value"] == 1
    # agents starting over minutes (scaled): no late starter taken for dead
    assert (
        rows["5 nodes, agents starting over 7 s: members removed and re-added on the way"]["value"]
        == 0
    )
    quorum = next(r for r in report["rows"] if r["name"].startswith("polls without a healthy"))
    assert quorum["value"] == 0
    assert rows["processes left running once a lab stopped"]["value"] == 0
    assert rows["spacing of removals, by the fenced-removal records"]["value"] > 0
    assert 5 < rows["agent RSS, largest of 3"]["value"] < 1000
    assert rows["10 MB: keys in the restored member, of those written"]["met"] is True
    # the table printed is the JSON's rows, each with its verdict
    for name in EXPECTED:
        assert f"| {name}" in stdout
    assert "quick run, time factor 0.04" in stdout
