"""The lab's writer and its read-back, against a real etcd: the check chaos and the
scenarios use to prove no acknowledged write was lost."""

from __future__ import annotations

import time
from collections.abc import Callable

from lab.writer import Writer
from tests.etcd_cluster import EtcdCluster, free_address


def _write_some(writer: Writer, count: int) -> None:
    writer.start()
    deadline = time.monotonic() + 20
    while len(writer.acked) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.stop()
    assert len(writer.acked) >= count, f"only {len(writer.acked)} writes acknowledged"


def test_every_acknowledged_write_is_read_back_and_a_missing_one_is_named(
    etcd_cluster: Callable[..., EtcdCluster],
) -> None:
    cluster = etcd_cluster(1)
    writer = Writer(lambda: cluster.endpoints, interval=0.01)
    _write_some(writer, 20)

    result = writer.verify(deadline=10)
    assert result.checked and result.error == ""
    assert result.lost == []
    assert result.acked == len(writer.acked)

    # A write the writer believes acknowledged but etcd does not hold is reported lost.
    missing = writer.acked[-1] + 1000
    writer.acked.append(missing)
    result = writer.verify(deadline=10)
    assert result.checked
    assert result.lost == [missing]


def test_a_write_acknowledged_after_the_read_started_is_not_counted_lost(
    etcd_cluster: Callable[..., EtcdCluster],
) -> None:
    """Chaos reads back while the writer goes on: what is acknowledged after the read-back
    began is not in the range read and must not be reported as lost."""
    cluster = etcd_cluster(1)
    writer = Writer(lambda: cluster.endpoints, interval=0.01)
    _write_some(writer, 5)
    acked_before = len(writer.acked)

    def endpoints_while_writing() -> list[str]:
        # the writer thread acknowledging one more (not yet stored) write mid read-back
        writer.acked.append(writer.acked[-1] + 1)
        return cluster.endpoints

    writer.endpoints = endpoints_while_writing
    result = writer.verify(deadline=10)
    assert result.checked
    assert result.acked == acked_before
    assert result.lost == []


def test_the_read_back_waits_for_an_etcd_to_come_back(
    etcd_cluster: Callable[..., EtcdCluster],
) -> None:
    """No etcd running for a while (a fault in progress) is retried, not a verdict."""
    cluster = etcd_cluster(1)
    writer = Writer(lambda: cluster.endpoints, interval=0.01)
    _write_some(writer, 5)
    calls = 0

    def none_at_first() -> list[str]:
        nonlocal calls
        calls += 1
        return [] if calls <= 3 else cluster.endpoints

    writer.endpoints = none_at_first
    result = writer.verify(deadline=10)
    assert calls > 3
    assert result.checked and result.lost == []


def test_a_read_back_that_never_succeeds_is_unverified_with_its_reason() -> None:
    ip, port, _ = free_address()
    writer = Writer(lambda: [f"http://{ip}:{port}"], timeout=0.2)
    writer.acked.extend([1, 2, 3])
    started = time.monotonic()
    result = writer.verify(deadline=1.0, timeout=0.2)
    assert time.monotonic() - started >= 1.0  # retried until the deadline
    assert not result.checked
    assert result.error.startswith("could not read the writes back: ")
    assert result.error != "could not read the writes back: no etcd running"
    assert result.acked == 3 and result.lost == []


def test_the_stall_of_a_window_is_the_longest_time_without_an_acknowledged_write():
    from lab.stalls import stall

    # a put every 0.1 s acked 10 ms later, then nothing acked from 1.0 to 2.5, then again
    puts = [(t / 10, 0.01) for t in range(10)] + [(1.0, None), (1.5, None)]
    puts += [(2.5 + t / 10, 0.01) for t in range(5)]
    during = stall(puts, 0.0, 3.0, timeout=1.0)
    assert abs(during.longest - (2.51 - 0.91)) < 1e-9  # the last ack before, the first after
    assert during.failed == 2 and during.puts == 17
    assert during.p99 == 1.0  # a failed put counts as the client's timeout
    quiet = stall(puts, 0.0, 0.95, timeout=1.0)
    assert abs(quiet.longest - 0.1) < 1e-9 and quiet.p99 == 0.01
    # a window with no acknowledged write stalls for its whole length
    assert abs(stall(puts, 1.2, 2.0, timeout=1.0).longest - 0.8) < 1e-9
