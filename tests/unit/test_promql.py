"""A Prometheus check's query: filled in for a release and a batch, its bounds judged
(store/promql.py), and its stored form read back (store/strategy.py)."""

from __future__ import annotations

import math
import re

import pytest

from fleetwave.store.promql import PrometheusQuery, nodes_pattern, regex_literal
from fleetwave.store.strategy import strategy_from_json, validate_strategy

VALUES: dict[str, object] = {
    "release": 7,
    "version": 42,
    "batch": 1,
    "scope": 'eu "west"\\1',
    "nodes": ["edge-001", "edge.002"],
}


def test_only_the_placeholders_are_filled_in_and_promql_braces_stay() -> None:
    query = PrometheusQuery(
        'sum(rate(http_requests_total{code=~"5..", node=~"{nodes}", scope="{scope}"}[1m]))'
        " / {release} + {version} * {batch} + {other}",
        max=0.01,
    )
    assert query.query_for(VALUES) == (
        'sum(rate(http_requests_total{code=~"5..", node=~"edge-001|edge\\\\.002",'
        ' scope="eu \\"west\\"\\\\1"}[1m])) / 7 + 42 * 1 + {other}'
    )


def test_a_value_holding_a_placeholder_is_not_filled_in_again() -> None:
    query = PrometheusQuery('x{scope="{scope}", node=~"{nodes}"}', max=1)
    filled = query.query_for({**VALUES, "scope": "{nodes}", "nodes": ["a"]})
    assert filled == 'x{scope="{nodes}", node=~"a"}'


@pytest.mark.parametrize(
    "name",
    ["edge-001", "edge.001", "a+b", "(fra1)", "x|y", "[pop]", "^$", "a*b?", "c{2}", "back\\slash"],
)
def test_a_node_name_becomes_a_regex_matching_only_itself(name: str) -> None:
    # Python's re agrees with RE2 on every escape used here.
    pattern = re.compile(nodes_pattern([name, "other"]))
    assert pattern.fullmatch(name)
    assert pattern.fullmatch("other")
    assert not pattern.fullmatch(name + "x")
    assert regex_literal("edge.001") == "edge\\.001"


@pytest.mark.parametrize(
    ("bounds", "value", "breach"),
    [
        ({"max": 0.01}, 0.01, None),
        ({"max": 0.01}, 0.02, "above max 0.01"),
        ({"max": 0.01}, -5.0, None),
        ({"max": 0.01}, math.nan, "not a number"),
        ({"max": 0.01}, math.inf, "above max 0.01"),
        ({"min": 100}, 100.0, None),
        ({"min": 100}, 3.0, "below min 100"),
        ({"min": 100}, -math.inf, "below min 100"),
        ({"min": 100}, math.nan, "not a number"),
        ({"min": 0, "max": 1}, 0.5, None),
        ({"min": 0, "max": 1}, 1.5, "above max 1"),
    ],
)
def test_a_sample_breaks_a_bound_or_not(
    bounds: dict[str, float], value: float, breach: str | None
) -> None:
    assert PrometheusQuery("q", **bounds).breach(value) == breach


def test_a_prometheus_check_round_trips_through_its_stored_form() -> None:
    check = {
        "name": "5xx",
        "prometheus": {"url": "http://prom:9090/", "query": 'x{node=~"{nodes}"}', "max": 0.01},
        "interval": 15,
        "failureLimit": 2,
        "timeout": 5,
    }
    strategy = validate_strategy(health_checks=[check])
    [parsed] = strategy.health_checks
    assert parsed.prometheus == PrometheusQuery('x{node=~"{nodes}"}', max=0.01)
    assert (parsed.url, parsed.interval, parsed.failure_limit) == ("http://prom:9090/", 15, 2)
    assert strategy.to_json()["healthChecks"] == [
        {**check, "interval": 15.0, "timeout": 5.0, "failureLimit": 2}
    ]
    assert strategy_from_json(strategy.to_json()) == strategy
