"""agent.metrics against a local HTTP server that answers like netdata, and worse.

The answers follow netdata's API: `/api/v1/allmetrics?format=shell` lines are
`NETDATA_<CHART>_<DIM>="<value>"      # <units>` (web/api/exporters/shell/README.md),
`format=json` is `{chart_id: {"name", ..., "dimensions": {dim_id: {"name", "value"}}}}`,
`/api/v1/data?...&format=json` is `{"labels": ["time", dim], "data": [[t, v]]}`
(web/api/queries/README.md). Every broken answer must give "no decision".
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import metrics
from agent.metrics import compare, crosses, metric_command, read_metric, shell_name
from agent.settings import MetricSettings
from agent.snapshot import MetricReading

NAME = "NETDATA_SYSTEM_CPU_IDLE"


@dataclass
class Answer:
    body: bytes | str = b""
    status: int = 200
    delay: float = 0.0
    trickle: float = 0.0
    """Seconds between single bytes of the body (a server that never quite finishes)."""


@dataclass
class FakeNetdata:
    url: str
    routes: dict[str, Answer] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def _handler(fake: FakeNetdata) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            fake.seen.append((parts.path, query))
            key = parts.path + (f"?format={query['format']}" if "allmetrics" in parts.path else "")
            answer = fake.routes.get(key, Answer(b"not found", 404))
            if answer.delay:
                fake.release.wait(answer.delay)
            body = answer.body.encode() if isinstance(answer.body, str) else answer.body
            try:
                self.send_response(answer.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if answer.trickle:
                    for i in range(len(body)):
                        if fake.release.wait(answer.trickle):
                            return
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                else:
                    self.wfile.write(body)
            except OSError:
                pass  # the client gave up, as it should

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def server():
    for _ in range(20):
        host = f"127.0.0.{random.randint(2, 250)}"
        fake = FakeNetdata(url="")
        try:
            httpd = ThreadingHTTPServer((host, 0), _handler(fake))
            break
        except OSError:
            continue
    else:
        pytest.fail("no free 127.0.0.x address")
    httpd.daemon_threads = True
    fake.url = f"http://{host}:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fake(server):
    server.routes.clear()
    server.seen.clear()
    return server


def settings_for(
    fake: FakeNetdata, window: int = 0, timeout: float = 2.0, **changes
) -> MetricSettings:
    """2 s: a local answer is never that slow, even with the suite's load on two cores (0.5 s
    once was); the tests of the timeout itself give 0.5 s."""
    return MetricSettings(netdata_url=fake.url, window=window, timeout=timeout, **changes)


def shell(*lines: str) -> str:
    return "\n# chart: system.cpu (name: system.cpu)\n" + "\n".join(lines) + "\n"


def assert_no_decision(reading: MetricReading, reason_part: str) -> None:
    assert reading.value is None
    assert not reading.ok
    assert reason_part in (reading.error or ""), reading.error
    assert crosses(reading, MetricSettings(threshold=0, comparator=">")) is None
    assert crosses(reading, MetricSettings(threshold=0, comparator="<")) is None


# ---- the instantaneous value: /api/v1/allmetrics?format=shell -------------------------


def test_reads_the_exact_name_as_a_number(fake):
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer(
        shell(
            'NETDATA_SYSTEM_CPU_IDLE_X="3"      # percentage',
            'NETDATA_SYSTEM_CPU_IDLEJITTER="7"      # percentage',
            'NETDATA_SYSTEM_CPU_IDLE="95"      # percentage',
            'NETDATA_SYSTEM_CPU_VISIBLETOTAL="5"      # percentage',
        )
    )
    reading = read_metric(settings_for(fake))
    assert reading == MetricReading(name=NAME, value=95.0, error=None, window=0)
    assert fake.seen == [("/api/v1/allmetrics", {"format": "shell"})]


def test_a_longer_name_first_is_not_taken_for_the_metric(fake):
    # The original matched by prefix and cut at '=': it would have read "3" here.
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer(
        shell('NETDATA_SYSTEM_CPU_IDLE_X="3"', 'NETDATA_SYSTEM_CPU_IDLE="97.5"')
    )
    assert read_metric(settings_for(fake)).value == 97.5


def test_negative_and_exponent_values_are_numbers(fake):
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer(
        shell('NETDATA_NET_ETH0_SENT="-1250"', 'NETDATA_SYSTEM_CPU_IDLE="1.5e1"')
    )
    assert read_metric(settings_for(fake)).value == 15.0
    assert read_metric(settings_for(fake, name="NETDATA_NET_ETH0_SENT")).value == -1250.0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param('NETDATA_SYSTEM_CPU_IDLE_X="95"\n', "not in allmetrics", id="prefix-only"),
        pytest.param('NETDATA_SYSTEM_CPU_IDLEX="95"\n', "not in allmetrics", id="longer-name"),
        pytest.param('XNETDATA_SYSTEM_CPU_IDLE="95"\n', "not in allmetrics", id="name-inside"),
        pytest.param("NETDATA_SYSTEM_CPU_IDLE=95\n", "is not NAME=", id="unquoted"),
        pytest.param("NETDATA_SYSTEM_CPU_IDLE='95'\n", "is not NAME=", id="single-quoted"),
        pytest.param('NETDATA_SYSTEM_CPU_IDLE="9', "is not NAME=", id="partial-line"),
        pytest.param('NETDATA_SYSTEM_CPU_IDLE="95" junk\n', "is not NAME=", id="trailing-junk"),
        pytest.param('NETDATA_SYSTEM_CPU_IDLE=""      # percentage\n', "no value", id="nan-empty"),
        pytest.param('NETDATA_SYSTEM_CPU_IDLE="nan"\n', "not a number", id="nan"),
        pytest.param('NETDATA_SYSTEM_CPU_IDLE="inf"\n', "not a number", id="inf"),
        pytest.param('NETDATA_SYSTEM_CPU_IDLE="1e999"\n', "not a finite number", id="overflow"),
        pytest.param('NETDATA_SYSTEM_CPU_IDLE="9_5"\n', "not a number", id="underscore"),
        pytest.param('NETDATA_SYSTEM_CPU_IDLE="95%"\n', "not a number", id="unit"),
        pytest.param('NETDATA_SYSTEM_CPU_IDLE=" "\n', "not a number", id="blank"),
        pytest.param(
            'NETDATA_SYSTEM_CPU_IDLE="95"\nNETDATA_SYSTEM_CPU_IDLE="5"\n', "2 times", id="twice"
        ),
        pytest.param("<html><body>proxy error</body></html>", "not in allmetrics", id="html"),
        pytest.param("", "not in allmetrics", id="empty"),
        pytest.param(b"\xff\xfe\x00garbage", "not UTF-8", id="binary"),
    ],
)
def test_bad_shell_answers_give_no_decision(fake, caplog, body, reason):
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer(body)
    with caplog.at_level(logging.WARNING, logger="agent.metrics"):
        reading = read_metric(settings_for(fake))
    assert_no_decision(reading, reason)
    assert reading.error in caplog.text and "no decision" in caplog.text


def test_http_error_gives_no_decision_with_status(fake):
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer("boom", status=500)
    assert_no_decision(read_metric(settings_for(fake)), "HTTP 500")


def test_a_hanging_netdata_times_out(fake):
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer('NETDATA_SYSTEM_CPU_IDLE="95"', delay=5)
    started = time.monotonic()
    assert_no_decision(read_metric(settings_for(fake, timeout=0.5)), "timed out")
    assert time.monotonic() - started < 2


def test_a_trickling_answer_is_cut_at_the_deadline(fake):
    # Each byte comes within the read timeout; the whole answer would take 3 s.
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer(
        'NETDATA_SYSTEM_CPU_IDLE="95"      # percentage\n', trickle=0.07
    )
    started = time.monotonic()
    assert_no_decision(read_metric(settings_for(fake, timeout=0.5)), "timed out")
    assert time.monotonic() - started < 1.5


def test_an_oversized_answer_is_refused(fake, monkeypatch):
    monkeypatch.setattr(metrics, "MAX_RESPONSE_BYTES", 1000)
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer(
        'NETDATA_SYSTEM_CPU_IDLE="95"\n' + "#" * 200_000
    )
    assert_no_decision(read_metric(settings_for(fake)), "larger than 1000 bytes")


def test_unreachable_netdata_gives_no_decision():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reading = read_metric(MetricSettings(netdata_url=f"http://127.0.0.1:{port}", window=0))
    assert_no_decision(reading, "ConnectionRefusedError: [Errno 111] Connection refused")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_answer_never_raises_and_only_a_well_formed_line_gives_a_value(fake, body):
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer(body)
    reading = read_metric(settings_for(fake))
    if reading.value is not None:
        lines = body.decode().splitlines()
        assert [ln for ln in lines if ln.startswith(f"{NAME}=")] == [
            ln for ln in lines if ln.startswith(f'{NAME}="')
        ]
    else:
        assert reading.error


# ---- the window average: /api/v1/allmetrics?format=json + /api/v1/data -----------------


def allmetrics_json(*charts: tuple[str, str, dict[str, str]]) -> str:
    return json.dumps(
        {
            chart_id: {
                "name": chart_name,
                "family": "x",
                "context": chart_id,
                "units": "percentage",
                "last_updated": 1,
                "dimensions": {d: {"name": n, "value": 1.0} for d, n in dims.items()},
            }
            for chart_id, chart_name, dims in charts
        }
    )


CPU = ("system.cpu", "system.cpu", {"user": "user", "idle": "idle", "system": "system"})


def data_answer(label: str, value: object) -> str:
    return json.dumps({"labels": ["time", label], "data": [[1795551433, value]]})


def test_window_average_queries_the_chart_dimension_behind_the_name(fake):
    fake.routes["/api/v1/allmetrics?format=json"] = Answer(allmetrics_json(CPU))
    fake.routes["/api/v1/data"] = Answer(data_answer("idle", 91.45729))
    reading = read_metric(settings_for(fake, window=60))
    assert reading == MetricReading(name=NAME, value=91.45729, error=None, window=60)
    assert fake.seen[1] == (
        "/api/v1/data",
        {
            "chart": "system.cpu",
            "dimension": "idle",
            "after": "-60",
            "points": "1",
            "group": "average",
            "format": "json",
            "options": "unaligned",
        },
    )


def test_window_maps_chart_and_dimension_names_to_their_ids(fake):
    # netdata names the shell variable after the chart's and dimension's *names*.
    fake.routes["/api/v1/allmetrics?format=json"] = Answer(
        allmetrics_json(
            CPU,
            ("cgroup_3f9a.mem", "cgroup_web-1.mem", {"d0": "used-ram", "d1": "cache"}),
        )
    )
    fake.routes["/api/v1/data"] = Answer(data_answer("used-ram", 12.5))
    reading = read_metric(settings_for(fake, window=30, name="NETDATA_CGROUP_WEB_1_MEM_USED_RAM"))
    assert reading.value == 12.5
    query = fake.seen[1][1]
    assert (query["chart"], query["dimension"], query["after"]) == ("cgroup_3f9a.mem", "d0", "-30")


def test_window_ambiguous_name_gives_no_decision_and_no_data_query(fake):
    fake.routes["/api/v1/allmetrics?format=json"] = Answer(
        allmetrics_json(("a.b", "a.b", {"c_d": "c_d"}), ("a.b_c", "a.b_c", {"d": "d"}))
    )
    reading = read_metric(settings_for(fake, window=60, name="NETDATA_A_B_C_D"))
    assert_no_decision(reading, "ambiguous: a.b/c_d, a.b_c/d")
    assert [path for path, _ in fake.seen] == ["/api/v1/allmetrics"]


@pytest.mark.parametrize(
    ("allmetrics", "data", "reason"),
    [
        pytest.param("{", None, "is not JSON", id="json-garbage"),
        pytest.param("[1, 2]", None, "not an object of charts", id="json-list"),
        pytest.param(
            allmetrics_json(("system.load", "system.load", {"load1": "load1"})),
            None,
            "no chart dimension",
            id="missing",
        ),
        pytest.param(allmetrics_json(CPU), Answer("nope", 404), "HTTP 404", id="data-404"),
        pytest.param(allmetrics_json(CPU), Answer("<html>"), "not JSON", id="data-garbage"),
        pytest.param(allmetrics_json(CPU), Answer(data_answer("idle", None)), "no data", id="null"),
        pytest.param(
            allmetrics_json(CPU), Answer(data_answer("idle", "95")), "not a number", id="string"
        ),
        pytest.param(
            allmetrics_json(CPU), Answer(data_answer("idle", True)), "not a number", id="bool"
        ),
        pytest.param(
            allmetrics_json(CPU), Answer(data_answer("user", 5.0)), "labels", id="other-dim"
        ),
        pytest.param(
            allmetrics_json(CPU),
            Answer(json.dumps({"labels": ["time", "idle"], "data": []})),
            "no single point",
            id="no-rows",
        ),
        pytest.param(
            allmetrics_json(CPU),
            Answer(json.dumps({"labels": ["time", "idle"], "data": [[1, 2], [3, 4]]})),
            "no single point",
            id="two-rows",
        ),
        pytest.param(
            allmetrics_json(CPU),
            Answer(json.dumps({"labels": ["time", "idle"], "data": [[1]]})),
            "malformed point",
            id="short-row",
        ),
        pytest.param(
            allmetrics_json(CPU),
            Answer('{"labels": ["time", "idle"], "data": [[1, NaN]]}'),
            "not a finite number",
            id="NaN",
        ),
        pytest.param(allmetrics_json(CPU), Answer("", delay=5), "timed out", id="data-hangs"),
    ],
)
def test_bad_window_answers_give_no_decision(fake, allmetrics, data, reason):
    fake.routes["/api/v1/allmetrics?format=json"] = Answer(allmetrics)
    if data is not None:
        fake.routes["/api/v1/data"] = data
    assert_no_decision(read_metric(settings_for(fake, window=60)), reason)


# ---- netdata's shell names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("system.cpu", "SYSTEM_CPU"),
        ("cgroup_web-1.mem", "CGROUP_WEB_1_MEM"),
        ("disk_util.sda", "DISK_UTIL_SDA"),
        ("é", "__"),  # per byte, as netdata's C loop does
        ("a" * 150, "A" * 100),
    ],
)
def test_shell_name_is_netdatas(text, expected):
    assert shell_name(text) == expected


# ---- comparing numbers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "comparator", "threshold", "expected"),
    [
        (95.0, ">", 90.0, True),
        (90.0, ">", 90.0, False),
        (100.0, ">", 90.0, True),  # as strings, "100" > "90" is False: the original's bug
        (10.0, "<", 9.0, False),  # as strings, "10" < "9" is True
        (5.0, "<", 10.0, True),
        (10.0, "<", 10.0, False),
        (10.0, "<=", 10.0, True),
        (10.5, "<=", 10.0, False),
        (10.0, ">=", 10.0, True),
        (9.5, ">=", 10.0, False),
        (3.0, "==", 3.0, True),
        (3.0, "==", 3.5, False),
        (-1.0, "<", 0.0, True),
    ],
)
def test_compare_table(value, comparator, threshold, expected):
    assert compare(value, comparator, threshold) is expected


@pytest.mark.parametrize("comparator", ["=", "!=", "<>", "lt", "__import__('os')", ""])
def test_unknown_comparator_is_refused(comparator):
    with pytest.raises(ValueError, match="is not one of <, >, ==, <=, >="):
        compare(1.0, comparator, 2.0)


def test_crosses_uses_the_settings_and_only_a_good_reading():
    idle = MetricSettings(threshold=90, comparator=">")
    assert crosses(MetricReading(NAME, 95.0), idle) is True
    assert crosses(MetricReading(NAME, 50.0), idle) is False
    assert crosses(MetricReading(NAME, None, "netdata down"), idle) is None
    assert crosses(MetricReading(NAME, 95.0, "stale"), idle) is None


# ---- the operator's command ------------------------------------------------------------


def test_metric_command_prints_the_number(fake, capsys):
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer(shell('NETDATA_SYSTEM_CPU_IDLE="97"'))
    assert metric_command(NAME, fake.url, 0) == 0
    assert capsys.readouterr().out == "97\n"
    fake.routes["/api/v1/allmetrics?format=json"] = Answer(allmetrics_json(CPU))
    fake.routes["/api/v1/data"] = Answer(data_answer("idle", 91.45729))
    assert metric_command(NAME, fake.url, 60) == 0
    assert capsys.readouterr().out == "91.45729\n"


def test_metric_command_says_why_there_is_no_number(fake, capsys):
    fake.routes["/api/v1/allmetrics?format=shell"] = Answer("garbage")
    assert metric_command(NAME, fake.url, 0) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert "NETDATA_SYSTEM_CPU_IDLE is not in allmetrics" in out.err


def test_metric_command_rejects_a_name_netdata_cannot_have(capsys):
    assert metric_command("system.cpu.idle", "http://127.0.0.1:1", 0) == 1
    assert "name" in capsys.readouterr().err
