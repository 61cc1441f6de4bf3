"""`python -m lab metrics`: a real netdata parent and child with the stack's rendered configs.

The command runs as a user runs it (a subprocess); the refusal of a wrong API key and the
missing-netdata message are checked in-process, through the same `main`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import pytest

import lab.metrics_pair as metrics_pair
from infra.settings import PROJECT_DIR, load_stack_file, stack_file
from lab.__main__ import main
from lab.nodes import pid_alive
from tests.tools import need

pytestmark = pytest.mark.netdata


@pytest.fixture
def needs_netdata() -> None:
    need("netdata")


@pytest.mark.usefixtures("needs_netdata")
def test_the_parent_mirrors_the_child_and_serves_its_cpu_idle(tmp_path):
    run = subprocess.run(
        # a deadline for a failure, not a duration: it ends once two values came through
        [
            *(sys.executable, "-m", "lab", "metrics", "--seconds", "60", "--readings", "2"),
            *("--root", str(tmp_path)),
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    key = re.search(r"stream API key of stack dev \(made for this run\): (\S+)", out)
    assert key, out
    parent = re.search(
        r"parent (lab-dev-metrics): http://(127\.\d+\.\d+\.2):\d+ \(pid (\d+)\)", out
    )
    child = re.search(
        r"child  (lab-dev-member-1): http://(127\.\d+\.\d+\.10):\d+ \(pid (\d+)\)", out
    )
    assert parent and child, out
    assert parent.group(2).rsplit(".", 1)[0] == child.group(2).rsplit(".", 1)[0]  # one 127.X.Y
    assert "metrics_server is off; rendered as if it were on" in out  # the dev stack's 0
    assert "the parent mirrors lab-dev-metrics, lab-dev-member-1" in out
    values = [float(v) for v in re.findall(r"^  NETDATA_SYSTEM_CPU_IDLE=(\S+)$", out, re.M)]
    assert values and all(0.0 <= v <= 100.0 for v in values), out
    assert "/host/lab-dev-member-1/api/v1/allmetrics" in out
    for match in (child, parent):
        pid = int(match.group(3))
        assert f"stopped {match.group(1)} (pid {pid})" in out
        assert not pid_alive(pid, "netdata")
    assert not any(tmp_path.iterdir())  # the daemons' files are removed after a good run


@pytest.mark.usefixtures("needs_netdata")
def test_a_child_with_another_key_is_not_mirrored(tmp_path, monkeypatch, capsys):
    rendered_child = metrics_pair.child_conf

    def wrong_key(text: str, host: str, port: int, api_key: str) -> str:
        return rendered_child(text, host, port, str(uuid.uuid4()))  # not the stack's

    monkeypatch.setattr(metrics_pair, "child_conf", wrong_key)
    code = main(["metrics", "--stack", "dev", "--seconds", "3", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "the parent did not mirror lab-dev-member-1 in 3 s" in out
    assert "is not allowed" in out  # the parent's log: the key was refused
    assert "NETDATA_SYSTEM_CPU_IDLE=" not in out
    assert re.search(r"stopped lab-dev-metrics \(pid \d+\)", out)


def test_without_netdata_it_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(metrics_pair, "find_netdata", lambda: None)
    assert main(["metrics", "--seconds", "1", "--root", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "netdata is not installed (setup/system-packages.sh installs it)" in captured.err
    assert "parent" not in captured.out


def test_the_rendered_configs_carry_one_key_per_stack():
    stack = load_stack_file(stack_file("dev"))
    assert not stack.metrics_server
    rendered = metrics_pair.rendered_stream_confs(stack, cluster_name="c")
    parent = metrics_pair.parent_conf(rendered["metrics"], "k1")
    child = metrics_pair.child_conf(rendered["member"], "127.1.2.2", 4242, "k1")
    assert "[k1]" in parent and "api key = k1" in child
    assert "destination = 127.1.2.2:4242" in child
    assert "@@" not in parent + child
    with pytest.raises(ValueError):
        metrics_pair.stream_conf("write_files: []\n")
