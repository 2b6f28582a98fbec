"""The query of a Prometheus health check: its fields, their validation, and how the query is
filled in for a release and a batch.

A check's ``prometheus`` object is ``{"url", "query", "max", "min"}`` (``max``, ``min`` or
both). The query is PromQL with placeholders: ``{release}``, ``{version}``, ``{batch}``,
``{scope}`` and ``{nodes}``, the names of the batch's nodes as a regular expression matching
exactly them (``edge-001|edge-002``). Only those exact tokens are replaced, so PromQL's own
braces (``rate(x{code=~"5.."}[1m])``) stay as written. Every value is meant to stand inside a
double-quoted PromQL string (``node=~"{nodes}"``): it is escaped for one (``\\`` and ``"``),
and each node name is escaped for RE2 first, so ``edge.1`` matches only itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import attrs

from fleetwave.store.errors import InvalidInput

MAX_QUERY = 4000
"""Characters of a query as written (a filled-in ``{nodes}`` may make it longer)."""
QUERY_FIELDS = ("release", "version", "batch", "scope", "nodes")
PROMETHEUS_FIELDS = ("url", "query", "max", "min")
_TOKEN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def regex_literal(text: str) -> str:
    """``text`` as an RE2 expression that matches exactly it."""
    return "".join("\\" + char if char in _RE2_SPECIAL else char for char in text)


def string_escaped(text: str) -> str:
    """``text`` made safe inside a double-quoted PromQL string."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")


def nodes_pattern(names: Sequence[str]) -> str:
    """The names as one alternation matching exactly them (PromQL anchors ``=~``)."""
    return "|".join(regex_literal(name) for name in names)


@attrs.frozen
class PrometheusQuery:
    """Healthy when every sample the query returns is at most ``max`` and at least ``min``
    (each bound optional, at least one given)."""

    query: str
    max: float | None = None
    min: float | None = None

    def to_json(self) -> dict[str, object]:
        shown: dict[str, object] = {"query": self.query}
        if self.max is not None:
            shown["max"] = self.max
        if self.min is not None:
            shown["min"] = self.min
        return shown

    def query_for(self, values: Mapping[str, object]) -> str:
        """The query with its placeholders filled in (``values["nodes"]``: the batch's node
        names)."""

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "nodes":
                nodes = values.get("nodes", ())
                assert isinstance(nodes, Sequence) and not isinstance(nodes, str)
                return string_escaped(nodes_pattern([str(node) for node in nodes]))
            return string_escaped(str(values[name]))

        return _TOKEN.sub(
            lambda match: value(match) if match.group(1) in QUERY_FIELDS else match.group(0),
            self.query,
        )

    def breach(self, value: float) -> str | None:
        """Which bound ``value`` breaks ("above max 0.01"), None when within. NaN breaks
        every bound: it says nothing about health (a ratio of no requests)."""
        if self.max is not None and not value <= self.max:
            return f"above max {self.max:g}" if not math.isnan(value) else "not a number"
        if self.min is not None and not value >= self.min:
            return f"below min {self.min:g}" if not math.isnan(value) else "not a number"
        return None


def _bound(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise InvalidInput(f"{field}: must be a finite number, got {shown}")
    return float(value)


def validate_prometheus(field: str, value: object) -> PrometheusQuery:
    """A check's ``prometheus`` object, but its ``url`` (the caller checks it as it checks
    an HTTP check's); raises InvalidInput naming the field at fault."""
    if not isinstance(value, Mapping):
        raise InvalidInput(f'{field}: must be {{"url": ..., "query": ..., "max": ...}}')
    unknown = sorted(str(key) for key in set(value) - set(PROMETHEUS_FIELDS))
    if unknown:
        raise InvalidInput(
            f"{field}: unknown field {unknown[0]} (known: {', '.join(PROMETHEUS_FIELDS)})"
        )
    url = value.get("url")
    if url is None:
        raise InvalidInput(f"{field}.url: is required (the Prometheus server, http(s)://...)")
    if isinstance(url, str) and ("?" in url or "#" in url):
        raise InvalidInput(
            f"{field}.url: the server's base URL (no ?query or #fragment): the check asks "
            "URL/api/v1/query"
        )
    query = value.get("query")
    if not isinstance(query, str) or not query.strip() or len(query) > MAX_QUERY:
        got = (
            "none"
            if query is None
            else f"{len(query)} characters"
            if isinstance(query, str)
            else type(query).__name__
        )
        raise InvalidInput(
            f"{field}.query: must be a non-empty PromQL query of at most {MAX_QUERY} "
            f"characters, got {got}"
        )
    if any((ord(char) < 32 and char not in "\n\t") or char == "\x7f" for char in query):
        raise InvalidInput(f"{field}.query: must not contain control characters")
    for match in _TOKEN.finditer(query):
        if match.group(1) not in QUERY_FIELDS:
            raise InvalidInput(
                f"{field}.query: names {match.group(0)}; a query may name "
                + ", ".join(f"{{{name}}}" for name in QUERY_FIELDS)
            )
    maximum = _bound(f"{field}.max", value.get("max"))
    minimum = _bound(f"{field}.min", value.get("min"))
    if maximum is None and minimum is None:
        raise InvalidInput(f"{field}: give max, min or both (the healthy range of every sample)")
    if maximum is not None and minimum is not None and minimum > maximum:
        raise InvalidInput(f"{field}.min: {minimum:g} is above max {maximum:g}")
    return PrometheusQuery(query, maximum, minimum)
