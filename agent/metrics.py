"""The scale-down metric, read from the node's netdata, as a number or as a reason for none.

Two ways, chosen by `MetricSettings.window`:

- `window == 0`: the instantaneous value from `GET /api/v1/allmetrics?format=shell`, whose
  lines are `NETDATA_<CHART>_<DIMENSION>="<value>"      # <units>`; the line whose name
  is exactly `settings.name` (not a prefix of it) is used. netdata rounds these values to
  integers and writes `""` when the value is NaN.
- `window > 0`: the average over the last `window` seconds from `GET /api/v1/data`
  (`after=-window&points=1&group=average&options=unaligned`). The shell name is mapped to
  its chart and dimension through `GET /api/v1/allmetrics?format=json`: netdata builds the
  shell name from the chart's name (or id) and the dimension's name (or id), upper-cased,
  every byte that is not an ASCII letter or digit replaced by `_`, each part cut to 100
  bytes (web/api/exporters/shell/allmetrics_shell.c, `shell_name_copy`). `/api/v1/charts`
  would not do: it leaves hidden dimensions out, and `system.cpu`'s `idle` is hidden.
  Points netdata does not have yet (a node up for less than `window`) are left out of the
  average by netdata; a window with no point at all gives no value. Two limits: the
  `_VISIBLETOTAL` sums of the shell format are not chart dimensions and need `window` 0,
  and a dimension netdata draws negative (a negative multiplier, e.g. network `sent`)
  averages negative here while the shell format flips its sign.

Rule 5 of the design: anything that goes wrong (netdata down, a timeout, an HTTP error,
garbage, a missing or ambiguous metric, a value that is not a finite number) gives a
`MetricReading` with `value=None` and the reason, logged; `crosses()` then answers None,
"no decision", never a removal. Nothing here raises, and nothing is ever eval'd.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from agent.httpclient import Http, HttpError, HttpTimeout
from agent.settings import MetricSettings
from agent.snapshot import MetricReading

log = logging.getLogger(__name__)

COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
    "<=": operator.le,
    ">=": operator.ge,
}

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
SHELL_ELEMENT_MAX = 100
_SHELL_VALUE = re.compile(r'^"([^"]*)"(?:\s+#.*)?$')
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class MetricError(Exception):
    """Why there is no value; only used inside this module."""


def compare(value: float, comparator: str, threshold: float) -> bool:
    """`value <comparator> threshold`, through the operator module (never eval)."""
    try:
        op = COMPARATORS[comparator]
    except KeyError:
        allowed = ", ".join(COMPARATORS)
        raise ValueError(f"comparator {comparator!r} is not one of {allowed}") from None
    return op(value, threshold)


def crosses(reading: MetricReading, settings: MetricSettings) -> bool | None:
    """Whether the metric is past the scale-down threshold; None when there is no reading."""
    if not reading.ok or reading.value is None:
        return None
    return compare(reading.value, settings.comparator, settings.threshold)


def shell_name(text: str) -> str:
    """netdata's `shell_name_copy`: per byte, ASCII alnum upper-cased, anything else `_`."""
    raw = text.encode("utf-8")[:SHELL_ELEMENT_MAX]
    return "".join(chr(b).upper() if chr(b).isascii() and chr(b).isalnum() else "_" for b in raw)


def read_metric(settings: MetricSettings, *, session: Http | None = None) -> MetricReading:
    """The metric `settings` names, or `value=None` with the reason (logged). Never raises."""
    deadline = time.monotonic() + settings.timeout
    http = session or Http()
    try:
        if settings.window == 0:
            value = _instant(http, settings, deadline)
        else:
            value = _window_average(http, settings, deadline)
    except MetricError as exc:
        return _failed(settings, str(exc))
    except Exception as exc:  # Rule 5: whatever happens, no decision rather than a crash
        return _failed(settings, f"unexpected {type(exc).__name__}: {exc}")
    finally:
        if session is None:
            http.close()
    return MetricReading(name=settings.name, value=value, window=settings.window)


def _failed(settings: MetricSettings, reason: str) -> MetricReading:
    log.warning("metric %s: no value (%s): no decision", settings.name, reason)
    return MetricReading(name=settings.name, value=None, error=reason, window=settings.window)


def _instant(http: Http, settings: MetricSettings, deadline: float) -> float:
    text = _get(http, settings, "/api/v1/allmetrics", {"format": "shell"}, deadline)
    values = []
    for line in text.splitlines():
        name, sep, rest = line.partition("=")
        if sep and name == settings.name:
            values.append(rest)
    if not values:
        raise MetricError(f"{settings.name} is not in allmetrics")
    if len(values) > 1:
        raise MetricError(f"{settings.name} appears {len(values)} times in allmetrics")
    match = _SHELL_VALUE.match(values[0])
    if match is None:
        raise MetricError(f'line {settings.name}={values[0][:40]!r} is not NAME="number"')
    if match.group(1) == "":
        raise MetricError(f'{settings.name} has no value (netdata writes "" for NaN)')
    if not _NUMBER.fullmatch(match.group(1)):
        raise MetricError(f"{settings.name} value {match.group(1)[:40]!r} is not a number")
    return _finite(float(match.group(1)), settings.name)


def _window_average(http: Http, settings: MetricSettings, deadline: float) -> float:
    chart, dimension, labels = _locate(http, settings, deadline)
    params = {
        "chart": chart,
        "dimension": dimension,
        "after": str(-settings.window),
        "points": "1",
        "group": "average",
        "format": "json",
        "options": "unaligned",
    }
    body = _json(_get(http, settings, "/api/v1/data", params, deadline), "/api/v1/data")
    rows = body.get("data") if isinstance(body, dict) else None
    got = body.get("labels") if isinstance(body, dict) else None
    if not isinstance(got, list) or len(got) != 2 or got[1] not in labels:
        raise MetricError(f"/api/v1/data for {chart}/{dimension} answered labels {got!r}")
    if not isinstance(rows, list) or len(rows) != 1:
        raise MetricError(f"/api/v1/data for {chart}/{dimension} gave no single point")
    row = rows[0]
    if not isinstance(row, list) or len(row) != 2:
        raise MetricError(f"/api/v1/data for {chart}/{dimension} gave a malformed point")
    if row[1] is None:
        raise MetricError(f"no data for {chart}/{dimension} in the last {settings.window}s")
    return _finite(row[1], settings.name)


def _locate(
    http: Http, settings: MetricSettings, deadline: float
) -> tuple[str, str, tuple[str, str]]:
    """(chart id, dimension id, the dimension's possible labels) behind the shell name."""
    text = _get(http, settings, "/api/v1/allmetrics", {"format": "json"}, deadline)
    charts = _json(text, "allmetrics?format=json")
    if not isinstance(charts, dict):
        raise MetricError("allmetrics?format=json is not an object of charts")
    found = []
    for chart_id, chart in charts.items():
        if not isinstance(chart, dict) or not isinstance(chart.get("dimensions"), dict):
            continue
        prefix = "NETDATA_" + shell_name(str(chart.get("name") or chart_id)) + "_"
        for dim_id, dim in chart["dimensions"].items():
            dim_name = str(dim.get("name") or dim_id) if isinstance(dim, dict) else dim_id
            if prefix + shell_name(dim_name) == settings.name:
                found.append((chart_id, dim_id, (dim_name, dim_id)))
    if not found:
        raise MetricError(f"{settings.name} is no chart dimension in allmetrics?format=json")
    if len(found) > 1:
        where = ", ".join(f"{c}/{d}" for c, d, _ in found)
        raise MetricError(f"{settings.name} is ambiguous: {where}")
    return found[0]


def _get(
    http: Http,
    settings: MetricSettings,
    path: str,
    params: dict[str, str],
    deadline: float,
) -> str:
    """The body of one GET, within the overall deadline and a size limit."""
    url = settings.netdata_url.rstrip("/") + path
    left = deadline - time.monotonic()
    if left <= 0:
        raise MetricError(f"timed out ({settings.timeout}s) before GET {path}")
    try:
        with http.stream("GET", url, params=params, timeout=left) as response:
            if response.status != 200:
                excerpt = response.read1(200)
                raise MetricError(f"GET {path}: HTTP {response.status} {excerpt[:200]!r}")
            chunks, size = [], 0
            # read1 returns what has arrived: the deadline holds even for a trickle
            while chunk := response.read1(64 * 1024):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise MetricError(f"GET {path}: answer larger than {MAX_RESPONSE_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise MetricError(f"GET {path}: timed out ({settings.timeout}s)")
                chunks.append(chunk)
    except HttpTimeout:
        raise MetricError(f"GET {url}: timed out ({settings.timeout}s)") from None
    except HttpError as exc:
        raise MetricError(f"GET {url}: {str(exc)[:200]}") from None
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise MetricError(f"GET {path}: answer is not UTF-8 text") from None


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise MetricError(f"{what} is not JSON: {text[:60]!r}") from None


def _finite(raw: object, name: str) -> float:
    """A JSON number (not a bool, not a string) or a parsed float, if finite."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise MetricError(f"{name} value {str(raw)[:40]!r} is not a number")
    try:
        value = float(raw)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise MetricError(f"{name} value {str(raw)[:40]!r} is not a finite number")
    return value


def metric_command(name: str, netdata_url: str, window: int) -> int:
    """`python -m agent metric NAME --netdata URL [--window S]`: print it, or why not (exit 1)."""
    try:
        settings = MetricSettings(name=name, netdata_url=netdata_url, window=window)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"metric: {problems}", file=sys.stderr)
        return 1
    reading = read_metric(settings)
    if not reading.ok or reading.value is None:
        print(f"metric {name}: no value: {reading.error}", file=sys.stderr)
        return 1
    print(format(reading.value, ".15g"))
    return 0
