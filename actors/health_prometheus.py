"""The probe of a Prometheus health check: one instant query against a Prometheus server's
HTTP API (``GET URL/api/v1/query?query=...``), judged against the check's bounds.

The server is a hostile boundary: an answer that is not JSON, not Prometheus's envelope,
larger than ANSWER_MAX, of a type a check cannot judge, or that holds no sample at all is a
failure with a reason, never an exception. Healthy: every sample of the answer (a vector's,
or the one of a scalar) is within the bounds; NaN is within none. An empty vector is
unhealthy: no series is no evidence of health (a query meant to be zero when quiet says so
with ``or vector(0)``).

``rejection`` asks once before a release dispatches anything: a query the server refuses to
evaluate (400 ``bad_data``) or one returning a range vector or a string can never pass, and
the release fails at once naming it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

import attrs
import httpx
import trio

from fleetwave.config.quoting import clipped
from fleetwave.store.promql import PrometheusQuery
from fleetwave.store.strategy import HealthCheck

ANSWER_MAX = 4 << 20
"""Bytes of an answer read at most (a query returning a whole fleet's series stays far
below; more is a mistake or an attack, and a failure)."""
GET_MAX = 4096
"""URL-encoded query length above which it is sent as a form (POST), as Prometheus allows,
so a long ``{nodes}`` does not run into a proxy's URL limit."""
SHOWN_SERIES = 3
LABEL_MAX = 60
REASON_MAX = 200
_NUMBER = re.compile(r"[+-]?(?:(?:\d++\.?+\d*+|\.\d++)(?:[eE][+-]?+\d++)?+|Inf|NaN)")
"""A sample's value as Prometheus writes it. Possessive: a long run of digits that is not a
number fails in one pass (backtracking made it quadratic in the answer's size)."""


class PrometheusError(Exception):
    """The server could not be asked or its answer cannot be judged. ``rejected``: it
    refused the query itself, which no retry changes."""

    def __init__(self, reason: str, *, rejected: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rejected = rejected


@attrs.frozen
class Sample:
    labels: Mapping[str, str]
    value: float

    def series(self) -> str:
        """As Prometheus shows it: ``name{label="value", ...}`` (``scalar`` without labels),
        each value clipped."""
        name = self.labels.get("__name__", "")
        pairs = ", ".join(
            f"{key}={json.dumps(clipped(value, LABEL_MAX), ensure_ascii=False)}"
            for key, value in sorted(self.labels.items())
            if key != "__name__"
        )
        if not name and not pairs:
            return "scalar"
        return f"{clipped(name, LABEL_MAX)}{{{pairs}}}"


def query_url(url: str) -> str:
    return url.rstrip("/") + "/api/v1/query"


async def samples(
    http: httpx.AsyncClient, url: str, query: str, *, wait: float
) -> tuple[Sample, ...]:
    """The samples of ``query`` at the server's now, waiting ``wait`` seconds at most;
    PrometheusError with a reason."""
    answer: tuple[int, bytes] | None = None
    with trio.move_on_after(wait):
        answer = await _ask(http, query_url(url), query, wait)
    if answer is None:
        raise PrometheusError(f"no answer within {wait:g}s")
    status, body = answer
    document = _document(body)
    if not isinstance(document, dict):
        shown = f"HTTP {status}: " if status != 200 else ""
        raise PrometheusError(f"{shown}the answer is not Prometheus's JSON")
    if document.get("status") != "success":
        kind, said = document.get("errorType"), document.get("error")
        words = clipped(said, REASON_MAX) if isinstance(said, str) and said.strip() else ""
        kind_shown = clipped(kind, 40) if isinstance(kind, str) else "unknown"
        if status == 400 and kind == "bad_data":
            raise PrometheusError(words or "bad_data", rejected=True)
        raise PrometheusError(f"HTTP {status}: {kind_shown}" + (f": {words}" if words else ""))
    if status != 200:
        raise PrometheusError(f"HTTP {status} with a success envelope")
    return _samples(document.get("data"))


async def _ask(http: httpx.AsyncClient, url: str, query: str, wait: float) -> tuple[int, bytes]:
    encoded = httpx.QueryParams({"query": query})
    if len(str(encoded)) <= GET_MAX:
        request = http.build_request("GET", url, params=encoded, timeout=wait)
    else:
        request = http.build_request("POST", url, data={"query": query}, timeout=wait)
    try:
        response = await http.send(request, stream=True)
    except httpx.HTTPError as error:
        raise PrometheusError(clipped(f"request failed: {type(error).__name__}: {error}")) from None
    try:
        content = bytearray()
        async for chunk in response.aiter_bytes():
            content += chunk
            if len(content) > ANSWER_MAX:
                raise PrometheusError(f"the answer is larger than {ANSWER_MAX} bytes")
    except httpx.HTTPError as error:
        raise PrometheusError(
            clipped(f"answer cut short: {type(error).__name__}: {error}")
        ) from None
    finally:
        await response.aclose()
    return response.status_code, bytes(content)


def _document(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _value(pair: object) -> float:
    """A sample's ``[timestamp, "value"]``."""
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        raise PrometheusError('a sample is not [time, "value"]')
    text = pair[1]
    if not _NUMBER.fullmatch(text):
        raise PrometheusError(f"a sample's value is not a number: {clipped(text, 40)!r}")
    return float(text)


def _samples(data: object) -> tuple[Sample, ...]:
    if not isinstance(data, dict):
        raise PrometheusError("the answer has no data object")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return (Sample({}, _value(result)),)
    if kind in ("matrix", "string"):
        what = "a range vector (matrix)" if kind == "matrix" else "a string"
        raise PrometheusError(
            f"the query returns {what}; a check needs an instant vector or a scalar",
            rejected=True,
        )
    if kind != "vector" or not isinstance(result, list):
        shown = clipped(kind, 40) if isinstance(kind, str) else type(kind).__name__
        raise PrometheusError(f"the answer's resultType is {shown!r}, not vector or scalar")
    found: list[Sample] = []
    for item in result:
        metric = item.get("metric") if isinstance(item, dict) else None
        if not isinstance(metric, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in metric.items()
        ):
            raise PrometheusError("a series of the answer has no labels object")
        found.append(Sample(metric, _value(item.get("value"))))
    return tuple(found)


def verdict(check: PrometheusQuery, found: tuple[Sample, ...]) -> str | None:
    """None when every sample is within the check's bounds, else why not, naming the
    offending series (the first few, by their labels)."""
    if not found:
        return "the query returned no series (an empty result is unhealthy)"
    offending = sorted(
        (
            (sample.series(), sample.value, why)
            for sample in found
            if (why := check.breach(sample.value)) is not None
        ),
        key=lambda entry: entry[0],
    )
    if not offending:
        return None
    shown = "; ".join(
        f"{series} = {_shown(value)} ({why})" for series, value, why in offending[:SHOWN_SERIES]
    )
    more = len(offending) - SHOWN_SERIES
    tail = f" and {more} more series" if more > 0 else ""
    return clipped(shown, REASON_MAX - len(tail)) + tail


def _shown(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.6g}"


def _printable(text: str) -> str:
    """Outside words made one printable line: what is not printable is escaped."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


async def probe(check: HealthCheck, http: httpx.AsyncClient, url: str, query: str) -> str | None:
    """None when healthy, else why not (``url`` and ``query``: the check's, filled in)."""
    assert check.prometheus is not None
    try:
        found = await samples(http, url, query, wait=check.timeout)
    except PrometheusError as error:
        reason = f"query rejected: {error.reason}" if error.rejected else error.reason
        return _printable(reason)
    why = verdict(check.prometheus, found)
    return None if why is None else _printable(why)


async def rejection(
    check: HealthCheck, http: httpx.AsyncClient, url: str, query: str
) -> tuple[str | None, str | None]:
    """(why the server rejects the query, None) or (None, what else went wrong, if anything:
    the watch judges that later, with the check's failure limit)."""
    try:
        await samples(http, url, query, wait=check.timeout)
    except PrometheusError as error:
        reason = _printable(error.reason)
        return (reason, None) if error.rejected else (None, reason)
    return None, None
