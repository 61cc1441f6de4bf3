"""The nodes' systemd units are hardened and pass `systemd-analyze verify`.

verify runs against a throw-away root (`--root`): the units in /etc/systemd/system,
the host's own system units beside them, and stub executables at the absolute paths
the units name, so a wrong path or a misplaced directive is reported.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from infra.userdata import UNITS_BY_ROLE, UNITS_DIR
from tests.tools import need

UNITS = sorted(p.name for p in UNITS_DIR.glob("*.service"))
EXECUTABLES = [
    "/usr/local/bin/etcd",
    "/opt/autoscale-etcd/venv/bin/python3",
    "/etc/autoscale-etcd/hooks/configscript",
]
HOST_UNITS = Path("/usr/lib/systemd/system")


def make_root(tmp_path: Path, units: dict[str, str], executables=EXECUTABLES) -> Path:
    root = tmp_path / "root"
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for name, text in units.items():
        (unit_dir / name).write_text(text)
    for path in executables:
        stub = root / path.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


def verify(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    need("systemd-analyze")
    assert HOST_UNITS.is_dir(), f"systemd-analyze is here but {HOST_UNITS} is not"
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", *names],
        cwd=root / "etc/systemd/system",
        capture_output=True,
        text=True,
        timeout=60,
    )


def instance(name: str) -> str:
    return name.replace("@.service", "@configscript.service")


def real_units() -> dict[str, str]:
    return {name: (UNITS_DIR / name).read_text() for name in UNITS}


def test_every_unit_the_nodes_get_is_shipped():
    assert {u for units in UNITS_BY_ROLE.values() for u in units} == set(UNITS)


def test_units_pass_systemd_analyze_verify(tmp_path):
    root = make_root(tmp_path, real_units())
    result = verify(root, [instance(name) for name in UNITS])
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_catches_a_missing_binary(tmp_path):
    root = make_root(tmp_path, real_units(), executables=EXECUTABLES[1:])
    result = verify(root, ["etcd-autoscale.service"])
    assert result.returncode != 0
    assert "/usr/local/bin/etcd" in result.stderr


def test_verify_catches_a_misplaced_directive(tmp_path):
    units = real_units()
    units["autoscale-agent.service"] = units["autoscale-agent.service"].replace(
        "[Service]\n", "[Service]\nStartLimitIntervalSec=120\n"
    )
    result = verify(make_root(tmp_path, units), ["autoscale-agent.service"])
    assert "Unknown key 'StartLimitIntervalSec'" in result.stderr


@pytest.mark.parametrize(
    "name", ["etcd-autoscale.service", "autoscale-agent.service", "etcd-autoscale-proxy.service"]
)
def test_long_running_units_are_hardened(name):
    text = (UNITS_DIR / name).read_text()
    for line in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "After=network-online.target",
        "Wants=network-online.target",
    ):
        assert line in text.splitlines(), (name, line)
    assert any(line.startswith("ReadWritePaths=") for line in text.splitlines())


def test_etcd_runs_unprivileged_on_the_agent_s_config_file():
    from agent.etcd_server import SYSTEMD_CONFIG, SYSTEMD_UNIT
    from agent.settings import EtcdSettings

    text = (UNITS_DIR / SYSTEMD_UNIT).read_text()
    assert f"--config-file {SYSTEMD_CONFIG}" in text
    assert "User=etcd" in text
    assert f"ReadWritePaths={EtcdSettings().data_dir}" in text.splitlines()
