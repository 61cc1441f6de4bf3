"""The metrics server: a real netdata parent receives a real netdata child's stream.

Both are Debian's netdata 1.37 on random 127.0.0.x addresses (lab/netdata_real.py), and
both run the `stream.conf` the program renders, taken from the cloud-config documents of
infra/userdata.py: the metrics server's (the parent: an `[<API key>]` section) and a
member's and a proxy's (the child: `[stream]` with destination and API key). Only the
placeholders Heat or the program fill in are replaced, as they would be at deploy time
(lab/metrics_pair.py does both, shared with `python -m lab metrics`).

netdata's streaming reference: https://learn.netdata.cloud/docs/streaming/ and the
commented /usr/lib/netdata/conf.d/stream.conf of the package; the parent lists the hosts it
mirrors in `GET /api/v1/info` (`mirrored_hosts`) and serves each one's API under
`/host/<hostname>/api/v1/...`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests

from agent.metrics import read_metric
from agent.settings import MetricSettings
from infra.settings import parse_settings
from infra.userdata import Token
from lab.metrics_pair import child_conf, parent_conf, rendered_stream_confs
from lab.netdata_real import NetdataServer
from tests.etcd_cluster import wait_until
from tests.tools import need

CHILD = "member-1"
INTRUDER = "intruder"

pytestmark = pytest.mark.netdata


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    """The stream.conf of each role, as the program renders it for a metrics stack."""
    stack = parse_settings(
        {
            "image": "img",
            "instance_type": "m1.small",
            "net_name": "net",
            "metrics_server": True,
            "proxies": 1,
        },
        source="test",
    )
    return rendered_stream_confs(stack, cluster_name="c")


@pytest.fixture(scope="module")
def netdata_pair(
    rendered: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, object]]:
    """A parent with the stack's API key, a child streaming with it, one with another key."""
    need("netdata")
    base = tmp_path_factory.mktemp("metrics")
    api_key = str(uuid.uuid4())
    wrong_key = str(uuid.uuid4())
    assert Token.NETDATA_API_KEY in rendered["metrics"]
    parent = NetdataServer(
        base / "parent",
        hostname="metrics-server",
        # infra.metrics.MetricsServer puts the stack's key in place of the token
        config_files={"stream.conf": parent_conf(rendered["metrics"], api_key)},
    )
    servers = [parent]
    try:
        parent.start()
        child = NetdataServer(
            base / "child",
            hostname=CHILD,
            config_files={
                "stream.conf": child_conf(rendered["member"], parent.host, parent.port, api_key)
            },
        )
        servers.append(child)
        intruder = NetdataServer(
            base / "intruder",
            hostname=INTRUDER,
            config_files={
                "stream.conf": child_conf(rendered["proxy"], parent.host, parent.port, wrong_key)
            },
        )
        servers.append(intruder)
        child.start()
        intruder.start()
        yield {
            "parent": parent,
            "child": child,
            "intruder": intruder,
            "api_key": api_key,
            "wrong_key": wrong_key,
        }
    finally:
        for server in reversed(servers):
            server.stop()


def _mirrored(parent: NetdataServer) -> list[str]:
    info = requests.get(f"{parent.url}/api/v1/info", timeout=2).json()
    return list(info.get("mirrored_hosts", []))


def _log(server: NetdataServer) -> str:
    path = server.workdir / "log" / "error.log"
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def test_members_and_proxies_stream_the_same_config(rendered: dict[str, str]):
    assert rendered["member"] == rendered["proxy"]
    assert "[stream]" in rendered["member"]
    assert f"[{Token.NETDATA_API_KEY}]" in rendered["metrics"]


def test_parent_mirrors_the_child_and_serves_its_metric(netdata_pair):
    parent: NetdataServer = netdata_pair["parent"]
    wait_until(lambda: CHILD in _mirrored(parent), 30, 0.5, f"the parent to mirror {CHILD}")

    # the child's charts, served by the parent
    def child_charts() -> dict | None:
        charts = requests.get(f"{parent.url}/host/{CHILD}/api/v1/charts", timeout=2).json()
        return charts if "system.cpu" in charts.get("charts", {}) else None

    charts = wait_until(child_charts, 20, 0.5, "the child's system.cpu chart on the parent")
    assert charts["hostname"] == CHILD
    # the agent's own metric reader, pointed at the parent's copy of the child
    settings = MetricSettings(netdata_url=f"{parent.url}/host/{CHILD}", window=0, timeout=3)

    def reading() -> float | None:
        return read_metric(settings).value

    value = wait_until(lambda: reading() is not None, 20, 0.5, "the child's CPU idle")
    assert value is not None
    idle = read_metric(settings).value
    assert idle is not None and 0.0 <= idle <= 100.0
    windowed = settings.model_copy(update={"window": 3})
    averaged = wait_until(
        lambda: (r := read_metric(windowed)).ok and r, 20, 0.5, "a 3 s average on the parent"
    )
    assert 0.0 <= averaged.value <= 100.0
    # the API key section of the product's config is what the parent applied to the child
    # (its own database is `ram`; the key section asks `dbengine` for the children)
    assert f"Host '{CHILD}'" in _log(parent)
    child_line = next(line for line in _log(parent).splitlines() if f"Host '{CHILD}'" in line)
    assert "memory mode dbengine" in child_line


def test_a_wrong_api_key_is_refused(netdata_pair):
    parent: NetdataServer = netdata_pair["parent"]
    intruder: NetdataServer = netdata_pair["intruder"]
    wrong_key = netdata_pair["wrong_key"]
    wait_until(
        lambda: f"API key '{wrong_key}' is not allowed" in _log(parent),
        30,
        0.5,
        "the parent to refuse the wrong key",
    )
    wait_until(
        lambda: "remote server denied access" in _log(intruder),
        15,
        0.5,
        "the intruder to be told",
    )
    assert INTRUDER not in _mirrored(parent)
    answer = requests.get(f"{parent.url}/host/{INTRUDER}/api/v1/charts", timeout=2)
    assert answer.status_code != 200 or answer.json().get("hostname") != INTRUDER
    # the stack's own key was never refused
    assert f"API key '{netdata_pair['api_key']}' is not allowed" not in _log(parent)
