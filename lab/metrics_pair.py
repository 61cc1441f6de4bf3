"""The metrics server on this machine: a real netdata parent and a real child streaming to it.

`python -m lab metrics` runs this. Both daemons are Debian's netdata (lab/netdata_real.py)
and both run the `stream.conf` the program renders for a stack, taken from the cloud-config
documents of infra/userdata.py: the metrics server's (the parent: an `[<API key>]` section)
and a member's (the child: `[stream]` with destination and API key). Only the placeholders
Heat or the program fill in at deploy time are replaced: the API key (the program makes one
per stack, `random.RandomUuid` in infra/metrics.py; the lab makes one per run) and the
parent's address (`@@METRICS_HOST@@:19999`, here the parent's loopback address and port).

netdata's streaming reference: https://learn.netdata.cloud/docs/streaming/ ; a parent lists
the hosts it mirrors in `GET /api/v1/info` (`mirrored_hosts`) and serves each one's API
under `/host/<hostname>/api/v1/...`, which is where the agent's reader is pointed here.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

from agent.metrics import read_metric
from agent.settings import MetricSettings
from agent.snapshot import MetricReading
from infra.settings import StackSettings
from infra.userdata import (
    NETDATA_PORT,
    NETDATA_STREAM_STAGED,
    Token,
    member_user_data,
    metrics_user_data,
    proxy_user_data,
)
from lab.netdata_real import NetdataServer, find_netdata

METRIC = "NETDATA_SYSTEM_CPU_IDLE"


def stream_conf(user_data_text: str) -> str:
    """The stream.conf a cloud-config document stages for netdata (its `write_files`)."""
    document = yaml.safe_load(user_data_text)
    entries = [f for f in document.get("write_files", []) if f["path"] == NETDATA_STREAM_STAGED]
    if len(entries) != 1:
        raise ValueError(f"the document stages {len(entries)} {NETDATA_STREAM_STAGED}, not 1")
    return str(entries[0]["content"])


def rendered_stream_confs(stack: StackSettings, *, cluster_name: str) -> dict[str, str]:
    """The stream.conf of each role ("metrics", "member", "proxy") as the program renders it
    for `stack`, with `metrics_server` on (the nodes stream only then)."""
    stack = stack.model_copy(update={"metrics_server": True})
    return {
        "metrics": stream_conf(metrics_user_data(stack, cluster_name=cluster_name).text),
        "member": stream_conf(member_user_data(stack, cluster_name=cluster_name).text),
        "proxy": stream_conf(proxy_user_data(stack, cluster_name=cluster_name).text),
    }


def parent_conf(rendered_parent: str, api_key: str) -> str:
    """The program's replacement in the parent's config (infra.metrics.MetricsServer)."""
    if f"[{Token.NETDATA_API_KEY}]" not in rendered_parent:
        raise ValueError("the metrics server's stream.conf has no API key section")
    return rendered_parent.replace(Token.NETDATA_API_KEY, api_key)


def child_conf(rendered_child: str, parent_host: str, parent_port: int, api_key: str) -> str:
    """Heat's str_replace of a node's tokens, the parent's own port in place of 19999."""
    destination = f"{Token.METRICS_HOST}:{NETDATA_PORT}"
    if destination not in rendered_child or Token.NETDATA_API_KEY not in rendered_child:
        raise ValueError(f"a node's stream.conf lacks {destination} or the API key token")
    return rendered_child.replace(destination, f"{parent_host}:{parent_port}").replace(
        Token.NETDATA_API_KEY, api_key
    )


def lab_prefix() -> str:
    """A random 127.X.Y (X in 100..254, as the lab's own ranges) for the pair's addresses."""
    return f"127.{random.randint(100, 254)}.{random.randint(0, 255)}"


@dataclass
class PairOutcome:
    mirrored: bool = False
    hosts: list[str] = field(default_factory=list)
    reading: MetricReading | None = None

    @property
    def ok(self) -> bool:
        return self.mirrored


def run_pair(
    stack: StackSettings,
    root: Path,
    *,
    stack_name: str,
    seconds: float,
    out: TextIO,
    readings: int = 0,
) -> PairOutcome:
    """Start the parent and the child, wait up to `seconds` for the parent to mirror the
    child and serve its metric, show what it serves each second until `seconds` have
    passed (or `readings` values were shown), and stop both by pid. Raises
    FileNotFoundError when netdata is not installed."""
    binary = find_netdata()
    if binary is None:
        raise FileNotFoundError("netdata is not installed (setup/system-packages.sh installs it)")
    cluster_name = f"lab-{stack_name}"
    rendered = rendered_stream_confs(stack, cluster_name=cluster_name)
    api_key = str(uuid.uuid4())
    prefix = lab_prefix()
    parent_name, child_name = f"{cluster_name}-metrics", f"{cluster_name}-member-1"
    if not stack.metrics_server:
        print(f"stack {stack_name}: metrics_server is off; rendered as if it were on", file=out)
    print(f"stream API key of stack {stack_name} (made for this run): {api_key}", file=out)
    parent = NetdataServer(
        root / "parent",
        binary=binary,
        hostname=parent_name,
        host=f"{prefix}.2",
        config_files={"stream.conf": parent_conf(rendered["metrics"], api_key)},
    )
    servers = [parent]
    outcome = PairOutcome()
    try:
        parent.start()
        print(f"parent {parent_name}: {parent.url} (pid {parent.pid})", file=out)
        child = NetdataServer(
            root / "child",
            binary=binary,
            hostname=child_name,
            host=f"{prefix}.10",
            config_files={
                "stream.conf": child_conf(rendered["member"], parent.host, parent.port, api_key)
            },
        )
        servers.append(child)
        child.start()
        print(
            f"child  {child_name}: {child.url} (pid {child.pid}),"
            f" streams to {parent.host}:{parent.port}",
            file=out,
            flush=True,
        )
        outcome = _watch(parent, child_name, seconds, out, readings)
    finally:
        for server in reversed(servers):
            pid = server.pid
            if pid is not None:
                server.stop()
                print(f"stopped {server.hostname} (pid {pid})", file=out, flush=True)
    return outcome


def _watch(
    parent: NetdataServer, child_name: str, seconds: float, out: TextIO, readings: int = 0
) -> PairOutcome:
    """Poll the parent: its mirrored hosts, then the child's metric through it; until
    `seconds` have passed, or (readings > 0) as soon as that many values were read."""
    outcome = PairOutcome()
    settings = MetricSettings(
        name=METRIC, netdata_url=f"{parent.url}/host/{child_name}", window=0, timeout=2
    )
    start = time.monotonic()
    deadline = start + seconds
    reader_log = logging.getLogger("agent.metrics")
    level = reader_log.level
    reader_log.setLevel(logging.ERROR)  # the child's charts arrive a moment after it does
    seen = 0
    try:
        while time.monotonic() < deadline and not (readings and seen >= readings):
            hosts = parent.mirrored_hosts()
            if child_name in hosts and not outcome.mirrored:
                outcome.mirrored, outcome.hosts = True, hosts
                elapsed = time.monotonic() - start
                print(
                    f"the parent mirrors {', '.join(hosts)} (after {elapsed:.1f} s)",
                    file=out,
                    flush=True,
                )
            if outcome.mirrored:
                first = outcome.reading is None or not outcome.reading.ok
                outcome.reading = read_metric(settings)
                if outcome.reading.ok and first:
                    print(f"{METRIC} of {child_name} read through the parent:", file=out)
                    print(f"  {settings.netdata_url}/api/v1/allmetrics?format=shell", file=out)
                if outcome.reading.ok:
                    seen += 1
                    print(f"  {METRIC}={outcome.reading.value:g}", file=out, flush=True)
            time.sleep(1.0 if outcome.reading is not None and outcome.reading.ok else 0.25)
    finally:
        reader_log.setLevel(level)
    if not outcome.mirrored:
        print(
            f"the parent did not mirror {child_name} in {seconds:g} s;"
            f" it mirrors {', '.join(parent.mirrored_hosts()) or 'nothing'}",
            file=out,
        )
        lines = [line for line in _stream_log(parent) if "API key" in line or "STREAM" in line]
        print("the parent's last stream log lines:", *lines[-6:], sep="\n  ", file=out)
    elif outcome.reading is None or not outcome.reading.ok:
        reason = outcome.reading.error if outcome.reading else "not read"
        print(f"{METRIC} of {child_name} not served by the parent yet: {reason}", file=out)
    return outcome


def _stream_log(server: NetdataServer) -> list[str]:
    path = server.workdir / "log" / "error.log"
    return path.read_text("utf-8", errors="replace").splitlines() if path.exists() else []
