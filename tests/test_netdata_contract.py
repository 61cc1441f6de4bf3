"""agent.metrics against the real netdata (Debian's package), started here on 127.0.0.x.

The two ways the agent reads its metric, on real answers: the shell format of
/api/v1/allmetrics (instantaneous) and the /api/v1/data average over a window, the
chart and dimension found through /api/v1/allmetrics?format=json.
"""

from __future__ import annotations

import os

import pytest
import requests

from agent.metrics import crosses, metric_command, read_metric
from agent.settings import MetricSettings
from tests.netdata_server import NetdataServer
from tests.tools import need

pytestmark = pytest.mark.netdata


@pytest.fixture(scope="module")
def netdata(tmp_path_factory):
    """One real netdata for this module, stopped by pid at the end."""
    binary = need("netdata")
    server = NetdataServer(tmp_path_factory.mktemp("netdata"), binary=binary)
    server.start()
    try:
        server.wait_for_points("system.cpu", "idle", count=3)
        yield server
    finally:
        server.stop()


def test_cpu_idle_both_ways_is_a_percentage(netdata):
    instant = read_metric(MetricSettings(netdata_url=netdata.url, window=0))
    average = read_metric(MetricSettings(netdata_url=netdata.url, window=3))
    assert instant.ok and average.ok, (instant, average)
    assert instant.value is not None and 0 <= instant.value <= 100
    assert instant.value == int(instant.value)  # the shell format rounds to integers
    assert average.value is not None and 0 <= average.value <= 100
    assert average.window == 3
    assert crosses(average, MetricSettings(threshold=-1, comparator=">")) is True
    assert crosses(average, MetricSettings(threshold=101, comparator="<")) is True


def test_window_average_is_the_mean_of_the_points_netdata_has(netdata):
    # The agent's 5 s average must lie within the per-second points netdata has around it
    # (read just after, over a slightly wider span, so a new point cannot fall outside).
    settings = MetricSettings(name="NETDATA_SYSTEM_LOAD_LOAD1", netdata_url=netdata.url, window=5)
    reading = read_metric(settings)
    rows = requests.get(
        netdata.url + "/api/v1/data",
        params={
            "chart": "system.load",
            "dimension": "load1",
            "after": "-8",
            "format": "json",
            "options": "unaligned",
        },
        timeout=5,
    ).json()["data"]
    values = [row[1] for row in rows if row[1] is not None]
    assert reading.ok and values, (reading, rows)
    assert min(values) <= reading.value <= max(values)


def test_a_name_netdata_does_not_have_gives_no_decision(netdata):
    for window in (0, 5):
        settings = MetricSettings(
            name="NETDATA_SYSTEM_CPU_IDLE_X", netdata_url=netdata.url, window=window
        )
        reading = read_metric(settings)
        assert reading.value is None and "NETDATA_SYSTEM_CPU_IDLE_X" in (reading.error or "")
        assert crosses(reading, settings) is None


def test_metric_command_on_real_netdata(netdata, capsys):
    assert metric_command("NETDATA_SYSTEM_CPU_IDLE", netdata.url, 0) == 0
    assert 0 <= float(capsys.readouterr().out) <= 100


def test_a_stopped_netdata_gives_no_decision(tmp_path):
    server = NetdataServer(tmp_path / "netdata")
    if server.binary is None:
        pytest.skip("netdata not found")
    server.start()
    pid, url = server.pid, server.url
    server.stop()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: gone
    reading = read_metric(MetricSettings(netdata_url=url, window=0, timeout=1))
    assert reading.value is None and "Connection refused" in (reading.error or "")
