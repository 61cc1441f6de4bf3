"""A client that keeps writing while a scenario runs; at the end every acknowledged write
must be readable (a linearizable read through any member).

Keys are `/lab/writes/<n>` (outside the agents' prefix), values `<n>`. A put counts as
acknowledged only when etcd answered it with a revision; a put that timed out may or
may not have been applied and is not counted either way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.etcd import EtcdClient, EtcdError
from agent.settings import TlsFiles

PREFIX = "/lab/writes/"


@dataclass
class WriteResult:
    acked: int
    failed: int
    lost: list[int] = field(default_factory=list)
    checked: bool = False
    error: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "acked": self.acked,
            "lost": len(self.lost),
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
    ) -> None:
        self.endpoints = endpoints
        self.tls = tls
        self.interval = interval
        self.timeout = timeout
        self.acked: list[int] = []
        self.failed = 0
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
            try:
                client.put(f"{PREFIX}{n:08d}", str(n))
            except (EtcdError, ValueError, KeyError):
                self.failed += 1
            else:
                self.acked.append(n)
            self._stop.wait(self.interval)
        if client is not None:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def verify(self, *, deadline: float = 30.0) -> WriteResult:
        """Read every key back (retrying while the cluster settles); list the lost ones."""
        result = WriteResult(acked=len(self.acked), failed=self.failed)
        end = time.monotonic() + deadline
        last = ""
        while time.monotonic() < end:
            urls = self.endpoints()
            if urls:
                try:
                    with EtcdClient(urls, timeout=max(2.0, self.timeout), tls=self.tls) as client:
                        stored = client.get_prefix(PREFIX)
                except EtcdError as error:
                    last = str(error)
                else:
                    result.lost = [
                        n for n in self.acked if stored.get(f"{PREFIX}{n:08d}") != str(n)
                    ]
                    result.checked = True
                    return result
            time.sleep(0.5)
        result.error = f"could not read the writes back: {last or 'no endpoint'}"
        return result
