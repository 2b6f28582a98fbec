"""Strategy validation, schedules and failure budgets (store/strategy.py)."""

from __future__ import annotations

import pytest

from fleetwave.store.errors import InvalidInput
from fleetwave.store.strategy import (
    Budget,
    OnFailure,
    Pause,
    Strategy,
    strategy_from_json,
    validate_strategy,
)

CHECK = {
    "name": "edge",
    "http": {"url": "https://status.example/edge?r={release}&v={version}&b={batch}&s={scope}"},
}

PROM = {
    "name": "5xx",
    "prometheus": {"url": "http://prometheus:9090", "query": "up", "max": 0.01},
}


def prom(**fields: object) -> dict[str, object]:
    """PROM with its ``prometheus`` fields changed (None: left out)."""
    changed = {**PROM["prometheus"], **fields}  # type: ignore[dict-item]
    return {**PROM, "prometheus": {k: v for k, v in changed.items() if v is not None}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"plan": [1, {"wait": 3}]}, "plan[1]: unknown step kind (wait)"),
        ({"plan": [1, {"pause": 3, "x": 1}]}, "plan[1]: unknown step kind (pause, x)"),
        ({"plan": [1, {"pause": None}]}, "plan[1]: a gate cannot be the last step"),
        ({"plan": [{"pause": 60}, 1]}, "plan[0]: a plan starts with a batch"),
        ({"plan": [1, {"pause": 0}, 2]}, "plan[1].pause: must be above 0"),
        ({"plan": [1, {"pause": -5}, 2]}, "plan[1].pause: must be above 0"),
        ({"plan": [1, {"pause": 10**9}, 2]}, "plan[1].pause: must be above 0 and at most"),
        ({"plan": [1, {"pause": "5m"}, 2]}, "plan[1].pause: must be seconds or null"),
        ({"plan": [1, {"pause": True}, 2]}, "plan[1].pause: must be seconds or null"),
        ({"plan": [1, "101%"]}, "plan[1]: must be above 0% and at most 100%"),
        ({"plan": [1, "0%"]}, "plan[1]: must be above 0% and at most 100%"),
        ({"plan": [0]}, "plan[0]: must be at least 1"),
        ({"plan": []}, "plan: must be a non-empty list"),
        ({"plan": "1,2"}, "plan: must be a non-empty list"),
        ({"plan": [{"batch": "200%"}]}, "plan[0].batch: must be above 0% and at most 100%"),
        ({"plan": [{"batch": 1, "maxFailures": -1}]}, "plan[0].maxFailures: must be between"),
        (
            {"plan": [{"batch": 1, "maxFailurePercent": 100.5}]},
            "plan[0].maxFailurePercent: must be from 0 to 100",
        ),
        ({"plan": [{"maxFailures": 1}]}, "plan[0]: unknown step kind (maxFailures)"),
        ({"maxFailurePercent": -0.1}, "maxFailurePercent: must be from 0 to 100"),
        ({"maxFailurePercent": float("nan")}, "maxFailurePercent: must be from 0 to 100"),
        ({"maxFailurePercent": "5%"}, "maxFailurePercent: must be a number from 0 to 100"),
        ({"maxFailures": 1.5}, "maxFailures: must be a whole number"),
        ({"maxFailures": 2**31}, "maxFailures: must be between 0 and 2147483647"),
        ({"onFailure": "retry"}, "onFailure: must be one of stop, pause, rollback"),
        ({"healthChecks": {}}, "healthChecks: must be a list of checks"),
        ({"healthChecks": [CHECK | {"http": {"url": "ftp://x/"}}]}, "healthChecks[0].http.url"),
        ({"healthChecks": [CHECK | {"http": {"url": "http:///x"}}]}, "healthChecks[0].http.url"),
        (
            {"healthChecks": [CHECK | {"http": {"url": "http://h/{node}"}}]},
            "healthChecks[0].http.url: names {node}",
        ),
        ({"healthChecks": [CHECK | {"http": {"url": "http://h/{"}}]}, "healthChecks[0].http.url"),
        ({"healthChecks": [CHECK, CHECK]}, "healthChecks[1].name: 'edge' is already the name"),
        ({"healthChecks": [CHECK | {"name": ""}]}, "healthChecks[0].name: must be a printable"),
        ({"healthChecks": [CHECK | {"interval": 0}]}, "healthChecks[0].interval: must be above 0"),
        ({"healthChecks": [CHECK | {"timeout": -1}]}, "healthChecks[0].timeout: must be above 0"),
        (
            {"healthChecks": [CHECK | {"failureLimit": 0}]},
            "healthChecks[0].failureLimit: must be a whole number from 1 to 1000",
        ),
        (
            {"healthChecks": [PROM | {"http": {"url": "http://h/"}}]},
            "healthChecks[0]: give exactly one of http or prometheus",
        ),
        ({"healthChecks": [{"name": "p"}]}, "healthChecks[0]: give exactly one of http or"),
        ({"healthChecks": [PROM | {"prometheus": []}]}, "healthChecks[0].prometheus: must be"),
        (
            {"healthChecks": [prom(url="ftp://p:9090")]},
            "healthChecks[0].prometheus.url: must be an http or https URL",
        ),
        (
            {"healthChecks": [prom(url="http://p:9090/api/v1/query?query=up")]},
            "healthChecks[0].prometheus.url: the server's base URL",
        ),
        (
            {"healthChecks": [{"name": "p", "prometheus": {"query": "up", "max": 1}}]},
            "healthChecks[0].prometheus.url: is required",
        ),
        (
            {"healthChecks": [prom(step="1m")]},
            "healthChecks[0].prometheus: unknown field step (known: url, query, max, min)",
        ),
        ({"healthChecks": [prom(query="")]}, "healthChecks[0].prometheus.query: must be a non"),
        ({"healthChecks": [prom(query="  ")]}, "healthChecks[0].prometheus.query: must be a non"),
        ({"healthChecks": [prom(query=None)]}, "healthChecks[0].prometheus.query: must be a non"),
        ({"healthChecks": [prom(query=7)]}, "healthChecks[0].prometheus.query: must be a non"),
        (
            {"healthChecks": [prom(query="x" * 4001)]},
            "healthChecks[0].prometheus.query: must be a non-empty PromQL query of at most 4000"
            " characters, got 4001 characters",
        ),
        (
            {"healthChecks": [prom(query="up\x00")]},
            "healthChecks[0].prometheus.query: must not contain control characters",
        ),
        (
            {"healthChecks": [prom(query='up{node=~"{node}"}')]},
            "healthChecks[0].prometheus.query: names {node}; a query may name {release},",
        ),
        ({"healthChecks": [prom(max="0.01")]}, "healthChecks[0].prometheus.max: must be a finite"),
        ({"healthChecks": [prom(max=True)]}, "healthChecks[0].prometheus.max: must be a finite"),
        (
            {"healthChecks": [prom(max=float("inf"))]},
            "healthChecks[0].prometheus.max: must be a finite number, got inf",
        ),
        (
            {"healthChecks": [prom(max=float("nan"))]},
            "healthChecks[0].prometheus.max: must be a finite number, got nan",
        ),
        ({"healthChecks": [prom(max=None)]}, "healthChecks[0].prometheus: give max, min or both"),
        (
            {"healthChecks": [prom(max=1, min=2)]},
            "healthChecks[0].prometheus.min: 2 is above max 1",
        ),
    ],
)
def test_a_bad_strategy_field_is_named_with_its_problem(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_strategy(
            fields.get("plan"),
            fields.get("maxFailures"),
            fields.get("maxFailurePercent"),
            fields.get("onFailure"),
            fields.get("healthChecks"),
        )
    assert str(refused.value).startswith(message)


def test_a_health_check_url_is_filled_in_quoted() -> None:
    [check] = validate_strategy(health_checks=[CHECK]).health_checks
    url = check.url_for({"release": 7, "version": 9, "batch": 2, "scope": "eu west/1"})
    assert url == "https://status.example/edge?r=7&v=9&b=2&s=eu%20west%2F1"
    assert (check.interval, check.failure_limit, check.timeout) == (10.0, 3, 5.0)


def test_a_valid_strategy_keeps_its_steps_and_round_trips_through_its_stored_form() -> None:
    strategy = validate_strategy(
        [1, {"pause": 300}, {"batch": "10%", "maxFailures": 1}, {"pause": None}, "100%"],
        2,
        5,
        "rollback",
    )
    assert strategy.plan == (1, "10%", "100%")
    assert strategy.steps[1] == Pause(300.0) and strategy.steps[3] == Pause(None)
    assert strategy.on_failure is OnFailure.ROLLBACK
    assert strategy_from_json(strategy.to_json()) == strategy
    with pytest.raises(InvalidInput, match="strategy: unknown field"):
        strategy_from_json({**strategy.to_json(), "extra": 1})


def test_the_schedule_repeats_the_last_size_with_its_pauses_and_ends_on_no_gate() -> None:
    strategy = validate_strategy([1, {"pause": None}, 2, {"pause": 60}])
    kinds = [(step.kind, step.batch) for step in strategy.schedule(5)]
    # 5 nodes: batches 1, 2, 2; the bake after the repeating size follows each of them.
    assert kinds == [
        ("batch", 1),
        ("gate", 1),
        ("batch", 2),
        ("bake", 2),
        ("batch", 3),
        ("bake", 3),
    ]
    gated = validate_strategy([1, {"pause": None}, "100%"])
    # One node: a single batch, and no gate after the final batch.
    assert [step.kind for step in gated.schedule(1)] == ["batch"]


@pytest.mark.parametrize(
    ("budget", "failed", "of", "whole", "allowed"),
    [
        (Budget(max_failures=2), 2, 10, False, True),
        (Budget(max_failures=2), 3, 10, False, False),
        (Budget(max_failures=1), 1, 1, True, True),  # a count may let a whole batch through
        (Budget(max_failure_percent=10), 2, 20, False, True),
        (Budget(max_failure_percent=10), 3, 20, False, False),
        (Budget(max_failure_percent=10), 1, 9, False, False),  # 10% of 9 is 0 nodes
        (Budget(max_failure_percent=100), 1, 1, True, False),  # never a whole batch
        (Budget(max_failure_percent=33.3), 333, 1000, False, True),
        (Budget(max_failure_percent=33.3), 334, 1000, False, False),
        (Budget(max_failures=5, max_failure_percent=10), 3, 20, False, False),  # both hold
        (Budget(), 1000, 1000, True, True),
    ],
)
def test_budgets_at_their_edges(
    budget: Budget, failed: int, of: int, whole: bool, allowed: bool
) -> None:
    assert budget.allows(failed, of, whole=whole) is allowed


def test_the_canary_is_stopped_by_its_own_budget_not_the_release_budget() -> None:
    lenient = Strategy.of_plan((1, "100%"), max_failures=5)
    assert lenient.over_budget(1, 2, {1: 1}, {1: 1, 2: 19}) is not None
    assert lenient.over_budget(2, 2, {2: 5}, {1: 1, 2: 19}) is None
    own = validate_strategy([{"batch": 1, "maxFailures": 1}, "100%"], 5)
    assert own.over_budget(1, 2, {1: 1}, {1: 1, 2: 19}) is None
    # A single batch is no canary: the release's budget alone applies.
    assert lenient.over_budget(1, 1, {1: 5}, {1: 20}) is None
