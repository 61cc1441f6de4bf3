"""A node's netdata, as far as the agent and the alarm see it: netdata 1.37's HTTP API.

One `NetdataStub` per lab node listens on the node's address (port 19999, netdata's
own, unless told otherwise) and answers what a real netdata 1.37.1 answers, with the
CPU values the scenario sets instead of measured ones (CPU idle = 100 - load):

- `GET /api/v1/allmetrics?format=shell`: blocks of `# chart: <id> (name: <name>)`, one
  `NETDATA_<CHART>_<DIM>="<value rounded to an integer>"      # <units>` line per
  dimension (hidden ones too: system.cpu's `idle`), then `_VISIBLETOTAL` (the visible
  dimensions' sum) and a blank line. Any other format: 400 "Which format? ...".
- `GET /api/v1/allmetrics?format=json`: `{chart id: {name, family, context, units,
  last_updated, dimensions: {id: {name, value}}}}`.
- `GET /api/v1/data?chart=&dimension=&after=-N&points=&group=average&format=&options=`:
  `{"labels": ["time", dims...], "data": [[t, v...], ...]}` newest row first, one value
  per second of history averaged into `points` rows; `format=array|ssv|csv` and
  `options=jsonwrap` as netdata shapes them; an unknown chart or dimension: 404
  "No metrics where matched to query."; no history in the window: `null` values.
- `GET /api/v1/charts`, `/api/v1/chart?chart=`, `/api/v1/info`: the chart list (hidden
  dimensions left out, as netdata does) and a short info document.

The shapes were taken from a real netdata 1.37.1 (Debian's package) on this machine;
tests/test_lab_netdata.py holds the stub against the agent's reader and, where netdata
is installed, against a real daemon.

For the bad-metrics scenario a stub can also answer garbage (200 with text that is
not what was asked), HTTP 500, leave the metric out, or hang until the client gives up.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qs, urlsplit

NETDATA_PORT = 19999
VERSION = "v1.37.1"
CORES = 2

Mode = Literal["ok", "garbage", "error", "missing", "hang"]
MODES: tuple[Mode, ...] = ("ok", "garbage", "error", "missing", "hang")


@dataclass(frozen=True)
class Dimension:
    id: str
    hidden: bool = False


@dataclass(frozen=True)
class Chart:
    id: str
    family: str
    units: str
    title: str
    dimensions: tuple[Dimension, ...]

    @property
    def name(self) -> str:
        return self.id


_CPU_VISIBLE = (
    "guest_nice",
    "guest",
    "steal",
    "softirq",
    "irq",
    "user",
    "system",
    "nice",
    "iowait",
)

CHARTS: tuple[Chart, ...] = (
    Chart(
        "system.cpu",
        "cpu",
        "percentage",
        "Total CPU utilization (system.cpu)",
        (
            *(Dimension(d) for d in _CPU_VISIBLE),
            Dimension("idle", hidden=True),
        ),
    ),
    Chart(
        "system.load",
        "load",
        "load",
        "System Load Average (system.load)",
        (Dimension("load1"), Dimension("load5"), Dimension("load15")),
    ),
    Chart(
        "system.ram",
        "ram",
        "MiB",
        "System RAM (system.ram)",
        (Dimension("free"), Dimension("used"), Dimension("cached"), Dimension("buffers")),
    ),
    Chart(
        "system.uptime",
        "uptime",
        "seconds",
        "System Uptime (system.uptime)",
        (Dimension("uptime"),),
    ),
)
_BY_ID = {chart.id: chart for chart in CHARTS}


class NodeMetrics:
    """The CPU load the scenario gives one node, over time, and how its netdata behaves.

    `load` is CPU use in percent (0..100); netdata's idle is `100 - load`. The history
    is piecewise constant; netdata keeps one value per second, so averages are taken
    over whole-second samples, as netdata's `/api/v1/data` does.
    """

    def __init__(self, load: float = 0.0, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started = clock()
        self._history: list[tuple[float, float]] = [(self.started, _percent(load))]
        self._lock = threading.Lock()
        self.mode: Mode = "ok"
        self.hang_seconds = 30.0

    def set_load(self, load: float) -> None:
        with self._lock:
            self._history.append((self.clock(), _percent(load)))

    @property
    def load(self) -> float:
        return self.load_at(self.clock())

    def load_at(self, when: float) -> float:
        with self._lock:
            value = self._history[0][1]
            for t, load in self._history:
                if t > when:
                    break
                value = load
            return value

    def samples(self, after: float, before: float) -> list[tuple[int, float]]:
        """(second, load) for every whole second in (after, before] this node existed."""
        first = max(math.floor(after), math.floor(self.started)) + 1
        return [(t, self.load_at(t)) for t in range(first, math.floor(before) + 1)]

    def average_load(self, seconds: float) -> float | None:
        """Mean CPU use over the last `seconds` (None: no sample yet)."""
        now = self.clock()
        points = self.samples(now - seconds, now)
        if not points:
            return None
        return sum(v for _, v in points) / len(points)

    def values(self, chart: Chart, load: float) -> dict[str, float]:
        """Every dimension of `chart` at CPU use `load`."""
        if chart.id == "system.cpu":
            out = {d.id: 0.0 for d in chart.dimensions}
            out.update(user=load * 0.7, system=load * 0.3, idle=100.0 - load)
            return out
        if chart.id == "system.load":
            one = load / 100 * CORES
            return {"load1": one, "load5": one, "load15": one}
        if chart.id == "system.ram":
            used = 1500 + 10 * load
            return {"free": 24000 - used - 500, "used": used, "cached": 480, "buffers": 20}
        return {"uptime": float(max(0, int(self.clock() - self.started)))}


def _percent(load: float) -> float:
    if not 0 <= load <= 100:
        raise ValueError(f"load must be a CPU use in percent (0..100), not {load}")
    return float(load)


# --- the answers -------------------------------------------------------------------------

Answer = tuple[int, str, str]
"""(HTTP status, content type, body)"""

TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"
NO_MATCH = "No metrics where matched to query."


def _shell_name(text: str) -> str:
    return "".join(c.upper() if c.isascii() and c.isalnum() else "_" for c in text)


def allmetrics_shell(metrics: NodeMetrics, charts: tuple[Chart, ...] = CHARTS) -> str:
    load = metrics.load
    lines = [""]
    for chart in charts:
        values = metrics.values(chart, load)
        lines.append(f"# chart: {chart.id} (name: {chart.name})")
        prefix = f"NETDATA_{_shell_name(chart.name)}"
        total = 0.0
        for dim in chart.dimensions:
            value = values[dim.id]
            if not dim.hidden:
                total += value
            lines.append(f'{prefix}_{_shell_name(dim.id)}="{value:.0f}"      # {chart.units}')
        lines.append(f'{prefix}_VISIBLETOTAL="{total:.0f}"      # {chart.units}')
        lines.append("")
    return "\n".join(lines) + "\n"


def allmetrics_json(metrics: NodeMetrics, charts: tuple[Chart, ...] = CHARTS) -> str:
    load = metrics.load
    now = int(metrics.clock())
    out = {}
    for chart in charts:
        values = metrics.values(chart, load)
        out[chart.id] = {
            "name": chart.name,
            "family": chart.family,
            "context": chart.id,
            "units": chart.units,
            "last_updated": now,
            "dimensions": {
                d.id: {"name": d.id, "value": round(values[d.id], 7)} for d in chart.dimensions
            },
        }
    return json.dumps(out, indent=1)


def _chart_info(chart: Chart, metrics: NodeMetrics) -> dict[str, object]:
    now = int(metrics.clock())
    return {
        "id": chart.id,
        "name": chart.name,
        "type": chart.id.split(".")[0],
        "family": chart.family,
        "context": chart.id,
        "title": chart.title,
        "priority": 100,
        "plugin": "proc.plugin",
        "module": "/proc/stat",
        "units": chart.units,
        "data_url": f"/api/v1/data?chart={chart.id}",
        "chart_type": "stacked" if chart.id == "system.cpu" else "line",
        "duration": max(1, now - int(metrics.started)),
        "first_entry": int(metrics.started),
        "last_entry": now,
        "update_every": 1,
        # netdata leaves hidden dimensions out of /api/v1/charts
        "dimensions": {d.id: {"name": d.id} for d in chart.dimensions if not d.hidden},
        "chart_variables": {},
        "green": None,
        "red": None,
        "alarms": {},
        "chart_labels": {"_collect_plugin": "proc.plugin", "_collect_module": "/proc/stat"},
        "functions": {},
    }


def charts_json(metrics: NodeMetrics, hostname: str) -> str:
    return json.dumps(
        {
            "hostname": hostname,
            "version": VERSION,
            "release_channel": "stable",
            "os": "linux",
            "timezone": "UTC",
            "update_every": 1,
            "history": 3600,
            "memory_mode": "ram",
            "custom_info": "",
            "charts": {c.id: _chart_info(c, metrics) for c in CHARTS},
            "charts_count": len(CHARTS),
            "dimensions_count": sum(len(c.dimensions) for c in CHARTS),
            "alarms_count": 0,
            "rrd_memory_bytes": 0,
            "hosts_count": 1,
            "hosts": [{"hostname": hostname}],
        },
        indent=1,
    )


def _selected(chart: Chart, wanted: str | None) -> list[Dimension] | None:
    if not wanted:
        return [d for d in chart.dimensions if not d.hidden]
    names = [n for n in wanted.replace(",", "|").split("|") if n]
    dims = [d for d in chart.dimensions if d.id in names]
    return dims or None


def data(metrics: NodeMetrics, query: dict[str, str]) -> Answer:
    """`/api/v1/data`: whole-second samples averaged into `points` rows, newest first."""
    chart = _BY_ID.get(query.get("chart", ""))
    if chart is None:
        return 404, TEXT, NO_MATCH
    dims = _selected(chart, query.get("dimension") or query.get("dimensions"))
    if dims is None:
        return 404, TEXT, NO_MATCH
    now = metrics.clock()
    try:
        after = float(query.get("after", "-600"))
        before = float(query.get("before", "0"))
        points = int(query.get("points", "0"))
    except ValueError:
        return 400, TEXT, "Invalid after, before or points"
    end = now + before if before <= 0 else before
    start = end + after if after <= 0 else after
    group = query.get("group", "average")
    samples = metrics.samples(start, end)
    span = max(1, math.floor(end) - math.floor(start))
    points = points if points > 0 else span
    rows: list[list[float | None]] = []
    step = span / points
    for i in range(points):
        hi = math.floor(end) - i * step
        lo = hi - step
        chunk = [load for t, load in samples if lo < t <= hi]
        row: list[float | None] = [float(int(hi))]
        for dim in dims:
            if not chunk:
                row.append(None)
                continue
            series = [metrics.values(chart, load)[dim.id] for load in chunk]
            row.append(round(_group(series, group), 7))
        rows.append(row)
    labels = ["time"] + [d.id for d in dims]
    fmt = query.get("format", "json")
    options = query.get("options", "").replace(",", "|").split("|")
    if fmt == "array":
        body = json.dumps([r[1] for r in rows])
        return 200, JSON, body
    if fmt == "ssv":
        return 200, TEXT, " ".join("" if r[1] is None else f"{r[1]:.7g}" for r in rows)
    if fmt == "csv":
        lines = [",".join(labels)]
        for row in rows:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row[0] or 0))
            lines.append(",".join([stamp] + ["" if v is None else f"{v:.7g}" for v in row[1:]]))
        return 200, TEXT, "\n".join(lines) + "\n"
    result = _json_rows(labels, rows)
    if "jsonwrap" not in options:
        return 200, JSON, result
    latest = metrics.values(chart, metrics.load)
    values = [r[1] for r in rows if r[1] is not None]
    wrap = {
        "api": 1,
        "id": chart.id,
        "name": chart.name,
        "view_update_every": max(1, int(step)),
        "update_every": 1,
        "first_entry": int(metrics.started),
        "last_entry": int(now),
        "before": int(end),
        "after": int(start) + 1,
        "group": group,
        "options": "|".join(o for o in options if o),
        "dimension_names": [d.id for d in dims],
        "dimension_ids": [d.id for d in dims],
        "latest_values": [round(latest[d.id]) for d in dims],
        "view_latest_values": [rows[0][1 + i] for i in range(len(dims))],
        "dimensions": len(dims),
        "points": points,
        "format": "json",
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }
    text = json.dumps(wrap, indent=3)
    return 200, JSON, text[:-1].rstrip() + ',\n   "result": ' + result + "\n}"


def _group(series: list[float], method: str) -> float:
    if method == "min":
        return min(series)
    if method == "max":
        return max(series)
    if method == "sum":
        return sum(series)
    return sum(series) / len(series)


def _json_rows(labels: list[str], rows: list[list[float | None]]) -> str:
    """netdata's layout: `[ <time>,<v>...]` per line; JSON all the same."""

    def cell(value: float | None) -> str:
        return "null" if value is None else format(value, ".10g")

    body = ",\n".join(
        " [ " + ",".join([str(int(r[0] or 0))] + [cell(v) for v in r[1:]]) + "]" for r in rows
    )
    return '{\n "labels": ' + json.dumps(labels) + ',\n    "data":\n [\n' + body + "\n]\n}"


GARBAGE = {
    "shell": 'NETDATA_SYSTEM_CPU_IDLE="n/a%"      # percentage\n<html>\n',
    "json": '{"system.cpu": {"dimensions": {"idle": {"name": "idle", "value": "NaN"',
    "data": "<html><body><h1>502 Bad Gateway</h1></body></html>\n",
}


class NetdataStub:
    """One node's fake netdata, an HTTP server in a thread of the lab's process."""

    def __init__(
        self,
        metrics: NodeMetrics,
        *,
        host: str,
        port: int = NETDATA_PORT,
        hostname: str = "lab-node",
    ) -> None:
        self.metrics = metrics
        self.hostname = hostname
        self._released = threading.Event()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.requests = 0

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> NetdataStub:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"netdata-{self.hostname}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def answer(self, path: str, query: dict[str, str]) -> Answer:
        """The reply to one GET (what the HTTP handler sends), by the node's mode."""
        self.requests += 1
        mode = self.metrics.mode
        if mode == "hang":
            self._released.wait(self.metrics.hang_seconds)
            return 504, TEXT, "timed out"
        if mode == "error":
            return 500, TEXT, "Internal Server Error"
        if mode == "garbage":
            if path.endswith("allmetrics"):
                fmt = "shell" if query.get("format") == "shell" else "json"
                return 200, TEXT, GARBAGE[fmt]
            return 200, JSON, GARBAGE["data"]
        charts = CHARTS if mode == "ok" else tuple(c for c in CHARTS if c.id != "system.cpu")
        if path == "/api/v1/allmetrics":
            fmt = query.get("format", "shell")
            if fmt == "shell":
                return 200, TEXT, allmetrics_shell(self.metrics, charts)
            if fmt == "json":
                return 200, JSON, allmetrics_json(self.metrics, charts)
            return (
                400,
                TEXT,
                "Which format? 'shell', 'prometheus', 'prometheus_all_hosts' and 'json'"
                " are currently supported.",
            )
        if path == "/api/v1/data":
            if mode == "missing" and query.get("chart") == "system.cpu":
                return 404, TEXT, NO_MATCH
            return data(self.metrics, query)
        if path == "/api/v1/charts":
            return 200, JSON, charts_json(self.metrics, self.hostname)
        if path == "/api/v1/chart":
            chart = _BY_ID.get(query.get("chart", ""))
            if chart is None:
                return 404, TEXT, f"Chart is not found: {query.get('chart', '')}"
            return 200, JSON, json.dumps(_chart_info(chart, self.metrics), indent=1)
        if path == "/api/v1/info":
            info = {"version": VERSION, "mirrored_hosts": [self.hostname], "cores_total": "2"}
            return 200, JSON, json.dumps(info, indent=1)
        return 404, TEXT, "File does not exist, or is not accessible."

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            server_version = f"Netdata Embedded HTTP Server {VERSION}"
            sys_version = ""

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                status, ctype, body = stub.answer(parts.path, query)
                raw = body.encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(raw)))
                    self.send_header("Cache-Control", "no-cache, no-store, must-revalidate")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass  # the client gave up (a hang it timed out on)

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler


def each_mode() -> Iterator[Mode]:
    """The bad modes, in the order the bad-metrics scenario cycles through them."""
    yield from ("garbage", "hang", "error", "missing")
