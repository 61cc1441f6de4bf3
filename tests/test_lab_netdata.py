"""The lab's netdata stub: read by the agent's own reader, and shaped like a real netdata 1.37.

The stub runs on a random 127.X.Y.1 and a free port. Its clock is the test's, so the
window averages are exact. Where Debian's netdata is installed, one real daemon is
started (tests/netdata_server.py) and the stub's answers are compared with its answers
to the same queries: the same lines, keys, labels, status codes and error texts.
"""

from __future__ import annotations

import json
import random
import re
import time

import pytest
import requests

from agent.metrics import read_metric
from agent.settings import MetricSettings
from lab.netdata_stub import NetdataStub, NodeMetrics
from tests.tools import need


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def start_stub(metrics: NodeMetrics) -> NetdataStub:
    for _ in range(20):
        try:
            host = f"127.{random.randint(100, 254)}.{random.randint(0, 255)}.1"
            return NetdataStub(metrics, host=host, port=0, hostname="lab-test").start()
        except OSError:
            continue
    raise RuntimeError("no free address")


@pytest.fixture
def stub():
    clock = Clock()
    metrics = NodeMetrics(30.0, clock=clock)
    clock.now += 100
    server = start_stub(metrics)
    yield server, metrics, clock
    server.stop()


def reading(url: str, window: int, timeout: float = 2.0):
    return read_metric(MetricSettings(netdata_url=url, window=window, timeout=timeout))


def test_the_agent_reads_cpu_idle_as_100_minus_the_load(stub):
    server, metrics, _ = stub
    assert reading(server.url, 0).value == 70
    metrics.set_load(87.4)
    # the shell format rounds to an integer, as netdata does
    assert reading(server.url, 0).value == 13
    other = read_metric(
        MetricSettings(name="NETDATA_SYSTEM_CPU_USER", netdata_url=server.url, window=0)
    )
    assert other.value == round(87.4 * 0.7)


def test_the_window_average_is_the_mean_of_whole_second_samples(stub):
    server, metrics, clock = stub
    metrics.set_load(90.0)  # idle 10 from now on
    clock.now += 4
    # the last 10 s hold one sample a second: 5 at idle 70, then 5 at idle 10
    assert reading(server.url, 10).value == pytest.approx((5 * 70 + 5 * 10) / 10)
    assert reading(server.url, 4).value == pytest.approx(10)


def test_a_window_before_the_node_existed_has_no_value(stub):
    _, _, clock = stub
    young = NodeMetrics(50.0, clock=clock)
    fresh = start_stub(young)
    try:
        answer = requests.get(
            fresh.url + "/api/v1/data",
            params={"chart": "system.cpu", "dimension": "idle", "after": "-5", "points": "1"},
            timeout=2,
        ).json()
        assert answer["data"] == [[int(clock.now), None]]
        assert reading(fresh.url, 5).value is None
        assert "no data" in reading(fresh.url, 5).error
    finally:
        fresh.stop()


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("garbage", "not a number|not JSON"),
        ("error", "HTTP 500"),
        ("missing", "not in allmetrics|no chart dimension"),
        ("hang", "timed out"),
    ],
)
def test_bad_answers_give_no_value_and_the_reason(stub, mode, why):
    server, metrics, _ = stub
    metrics.mode = mode
    metrics.hang_seconds = 5
    for window in (0, 5):
        started = time.monotonic()
        got = reading(server.url, window, timeout=0.5)
        assert got.value is None and re.search(why, got.error or ""), got
        assert time.monotonic() - started < 2


def test_a_node_at_load_is_busy_and_an_idle_one_crosses_the_scale_down_threshold(stub):
    server, metrics, _ = stub
    metrics.set_load(3)
    settings = MetricSettings(netdata_url=server.url, window=0)
    got = read_metric(settings)
    assert got.value == 97 and got.value > settings.threshold
    metrics.set_load(95)
    assert read_metric(settings).value < settings.threshold


# --- against a real netdata 1.37 -------------------------------------------------------------


@pytest.fixture(scope="module")
def real_netdata(tmp_path_factory):
    from tests.netdata_server import NetdataServer

    binary = need("netdata")
    server = NetdataServer(tmp_path_factory.mktemp("netdata"), binary=binary)
    server.start()
    server.wait_for_points("system.cpu", "idle", 3)
    yield server
    server.stop()


def get(url: str, path: str, **params: str) -> requests.Response:
    return requests.get(url + path, params=params, timeout=5)


def cpu_block(text: str) -> list[str]:
    """The system.cpu block of allmetrics?format=shell, values replaced by N."""
    lines = text.splitlines()
    start = lines.index("# chart: system.cpu (name: system.cpu)")
    block = []
    for line in lines[start:]:
        if not line:
            break
        block.append(re.sub(r'="-?\d+"', '="N"', line))
    return block


@pytest.mark.netdata
def test_shell_format_matches_real_netdata(real_netdata, stub):
    server, _, _ = stub
    real = get(real_netdata.url, "/api/v1/allmetrics", format="shell")
    ours = get(server.url, "/api/v1/allmetrics", format="shell")
    assert real.status_code == ours.status_code == 200
    assert real.headers["Content-Type"] == ours.headers["Content-Type"]
    assert cpu_block(ours.text) == cpu_block(real.text)
    assert real.text.startswith("\n# chart: ") and ours.text.startswith("\n# chart: ")


@pytest.mark.netdata
def test_json_formats_match_real_netdata(real_netdata, stub):
    server, _, _ = stub
    real = get(real_netdata.url, "/api/v1/allmetrics", format="json").json()["system.cpu"]
    ours = get(server.url, "/api/v1/allmetrics", format="json").json()["system.cpu"]
    assert set(ours) == set(real)
    assert list(ours["dimensions"]) == list(real["dimensions"])
    assert set(ours["dimensions"]["idle"]) == set(real["dimensions"]["idle"])
    query = {"chart": "system.cpu", "dimension": "idle", "after": "-3", "points": "1"}
    query |= {"group": "average", "format": "json", "options": "unaligned"}
    real_data = get(real_netdata.url, "/api/v1/data", **query).json()
    our_data = get(server.url, "/api/v1/data", **query).json()
    assert set(our_data) == set(real_data) == {"labels", "data"}
    assert our_data["labels"] == real_data["labels"] == ["time", "idle"]
    assert len(our_data["data"]) == len(real_data["data"]) == 1
    wrapped = {**query, "options": "jsonwrap"}
    real_wrap = get(real_netdata.url, "/api/v1/data", **wrapped).json()
    our_wrap = get(server.url, "/api/v1/data", **wrapped).json()
    assert set(our_wrap["result"]) == set(real_wrap["result"])
    for key in ("api", "dimension_names", "points", "group", "result", "latest_values"):
        assert key in our_wrap and key in real_wrap
    real_charts = get(real_netdata.url, "/api/v1/charts").json()
    our_charts = get(server.url, "/api/v1/charts").json()
    assert set(our_charts) == set(real_charts)
    # netdata leaves the hidden idle dimension out of /api/v1/charts
    assert "idle" not in real_charts["charts"]["system.cpu"]["dimensions"]
    assert "idle" not in our_charts["charts"]["system.cpu"]["dimensions"]


@pytest.mark.netdata
def test_errors_match_real_netdata(real_netdata, stub):
    server, _, _ = stub
    for path, params in (
        ("/api/v1/data", {"chart": "no.such", "format": "json"}),
        ("/api/v1/data", {"chart": "system.cpu", "dimension": "nosuch"}),
        ("/api/v1/allmetrics", {"format": "bogus"}),
        ("/api/v1/chart", {"chart": "nosuch"}),
    ):
        real = get(real_netdata.url, path, **params)
        ours = get(server.url, path, **params)
        assert (ours.status_code, ours.text) == (real.status_code, real.text), (path, params)


def test_allmetrics_json_is_valid_json_with_every_chart(stub):
    server, _, _ = stub
    charts = json.loads(get(server.url, "/api/v1/allmetrics", format="json").text)
    assert {"system.cpu", "system.load", "system.ram"} <= set(charts)
    idle = charts["system.cpu"]["dimensions"]["idle"]["value"]
    assert idle == pytest.approx(70.0)
