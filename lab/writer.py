"""A client that keeps writing while a scenario runs; at the end every acknowledged write
must be readable (a linearizable read through any member).

Keys are `/lab/writes/<n>` (outside the agents' prefix), values `<n>`. A put counts as
acknowledged only when etcd answered it with a revision; a put that timed out may or
may not have been applied and is not counted either way.

Every put is also timed (`puts`: when it was sent on the `clock` the caller gives, its
latency, or None when it failed), which is what a client of the cluster feels: the stall
figures of lab/stalls.py are computed from it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.etcd import EtcdClient, EtcdError
from agent.settings import TlsFiles

PREFIX = "/lab/writes/"
FILL_PREFIX = "/lab/fill/"
FILL_VALUE = "x" * (256 * 1024)


@dataclass
class WriteResult:
    acked: int
    failed: int
    lost: list[int] = field(default_factory=list)
    given_up: int = 0
    """Acknowledged writes the scenario gives up (a disaster loses those after the last
    snapshot), left out of `lost`."""
    checked: bool = False
    error: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "acked": self.acked,
            "lost": len(self.lost),
            "given_up": self.given_up,
            "failed_puts": self.failed,
            "checked": self.checked,
            "error": self.error,
        }


class Writer:
    def __init__(
        self,
        endpoints: Callable[[], list[str]],
        *,
        interval: float = 0.05,
        timeout: float = 1.0,
        tls: TlsFiles | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = endpoints
        self.tls = tls
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.acked: list[int] = []
        self.revisions: dict[int, int] = {}
        """Write n -> the revision etcd answered it with."""
        self.failed = 0
        self.puts: list[tuple[float, float | None]] = []
        """(sent at, on `clock`; its latency in s, or None when it failed), one per put."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        client: EtcdClient | None = None
        known: list[str] = []
        while not self._stop.is_set():
            urls = self.endpoints()
            if urls and urls != known:
                if client is not None:
                    client.close()
                client, known = EtcdClient(urls, timeout=self.timeout, tls=self.tls), urls
            if client is None:
                self._stop.wait(self.interval)
                continue
            n += 1
            sent, started = self.clock(), time.monotonic()
            try:
                revision = client.put(f"{PREFIX}{n:08d}", str(n))
            except (EtcdError, ValueError, KeyError):
                self.failed += 1
                self.puts.append((sent, None))
            else:
                self.revisions[n] = revision
                self.acked.append(n)
                self.puts.append((sent, time.monotonic() - started))
            self._stop.wait(self.interval)
        if client is not None:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def verify(self, *, deadline: float = 30.0, timeout: float | None = None) -> WriteResult:
        """Read every write acknowledged so far back (retrying while the cluster settles for
        up to `deadline` s); list the lost ones.

        Safe while the writer goes on: the acknowledged writes are taken before the read, so
        a write acknowledged after it is not counted as lost. One range read of every key
        (tens of thousands in a long chaos run) needs more than the writer's own per-put
        timeout: `timeout` (default the larger of 2 s and the writer's).
        """
        acked = list(self.acked)
        result = WriteResult(acked=len(acked), failed=self.failed)
        read_timeout = timeout if timeout is not None else max(2.0, self.timeout)
        end = time.monotonic() + deadline
        last = ""
        while True:
            urls = self.endpoints()
            if urls:
                try:
                    with EtcdClient(urls, timeout=read_timeout, tls=self.tls) as client:
                        stored = client.get_prefix(PREFIX)
                except EtcdError as error:
                    last = str(error)
                else:
                    result.lost = [n for n in acked if stored.get(f"{PREFIX}{n:08d}") != str(n)]
                    result.checked = True
                    return result
            if time.monotonic() >= end:
                break
            time.sleep(0.5)
        result.error = f"could not read the writes back: {last or 'no etcd running'}"
        return result


def fill_until_no_space(
    client: EtcdClient,
    keys: int = 4,
    limit: int = 400,
    prefix: str = FILL_PREFIX,
    value: str = FILL_VALUE,
) -> EtcdError:
    """Overwrite `keys` keys with 256 KiB values (or `value`) until etcd refuses a put for
    space (the file grows with the history, the live data stays at `keys` values;
    `keys=limit`: every put a new key, the live data itself grows); that refusal."""
    for n in range(limit):
        try:
            client.put(f"{prefix}{n % keys}", value)
        except EtcdError as error:
            if error.no_space:
                return error
            raise
    raise AssertionError(f"{limit} puts of {len(value)} B and no NOSPACE")
