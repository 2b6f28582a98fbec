"""The JSON Schema of a release's strategy fields, for the API's document.

A strategy is validated by store/strategy.py alone (``validate_strategy``: the one validator of
the API, the CLI and the stored column, whose messages name the step at fault). These types only
describe what it accepts, bounds included, so that the document's schema of ``plan``,
``maxFailures``, ``maxFailurePercent``, ``onFailure``, ``healthChecks`` (HTTP and Prometheus
checks), ``batchBy`` and ``maxInFlightPer`` says what a request may hold.
tests/api/test_openapi.py holds the two to each other: the document's examples go through the
real validator, and the strategies it stores through these schemas.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetwave.store.plan import MAX_PLAN_STEPS, MAX_STEP
from fleetwave.store.promql import MAX_QUERY, QUERY_FIELDS
from fleetwave.store.selection import LABEL_KEY_MAX, LABEL_KEY_PATTERN
from fleetwave.store.strategy import MAX_CHECKS, MAX_PAUSE_SEC, OnFailure
from fleetwave.store.topology import MAX_CAPS

PERCENT_PATTERN = r"^\s*\d+(\.\d+)?\s*%\s*$"

Count = Annotated[int, Field(ge=1, le=MAX_STEP, description="a number of nodes")]
Percent = Annotated[
    str,
    Field(
        pattern=PERCENT_PATTERN,
        max_length=32,
        description='a share of all nodes, above 0% and at most 100% ("25%"); at least one node',
    ),
]
Size = Count | Percent
Failures = Annotated[int, Field(ge=0, le=MAX_STEP)]
FailurePercent = Annotated[float, Field(ge=0, le=100)]


class _Described(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PauseStep(_Described):
    """A bake (hold this many seconds) or, with null, a gate (hold until promoted)."""

    pause: Annotated[float, Field(gt=0, le=MAX_PAUSE_SEC)] | None


class BudgetedBatch(_Described):
    """A batch with its own failure budget."""

    batch: Size
    maxFailures: Failures | None = None
    maxFailurePercent: FailurePercent | None = None


PlanStep = Size | PauseStep | BudgetedBatch
Plan = Annotated[
    list[PlanStep],
    Field(
        min_length=1,
        max_length=MAX_PLAN_STEPS,
        description="Batch sizes and pauses; the last batch size repeats until every node has "
        "a batch. Starts with a batch; a gate is never the last step.",
    ),
]


class HttpProbe(_Described):
    url: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2000,
            description="http or https URL; may name {release}, {version}, {batch}, {scope}",
        ),
    ]


class PrometheusProbe(_Described):
    """A PromQL query asked of a Prometheus server (store/promql.py); healthy while its
    value stays within ``max`` and ``min``."""

    url: Annotated[str, Field(min_length=1, max_length=2000, description="the server's base URL")]
    query: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_QUERY,
            description="may name " + ", ".join(f"{{{name}}}" for name in QUERY_FIELDS),
        ),
    ]
    max: float | None = None
    min: float | None = None


class _Check(_Described):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    interval: Annotated[float, Field(gt=0, le=3600)] = 10.0
    failureLimit: Annotated[int, Field(ge=1, le=1000)] = 3
    timeout: Annotated[float, Field(gt=0, le=300)] = 5.0


class HttpCheck(_Check):
    """GET ``http.url``: healthy when it answers 2xx with a JSON object saying "healthy":
    true; past ``failureLimit`` consecutive failures the release fails."""

    http: HttpProbe


class PrometheusCheck(_Check):
    """Ask ``prometheus.query``; past ``failureLimit`` consecutive failures (a value out of
    bounds, no answer) the release fails."""

    prometheus: PrometheusProbe


HealthCheck = HttpCheck | PrometheusCheck
HealthChecks = Annotated[list[HealthCheck], Field(max_length=MAX_CHECKS)]
OnFailureChoice = Literal["stop", "pause", "rollback"]
assert set(OnFailureChoice.__args__) == {choice.value for choice in OnFailure}  # type: ignore[attr-defined]


LabelKey = Annotated[
    str,
    Field(
        min_length=1, max_length=LABEL_KEY_MAX, pattern=LABEL_KEY_PATTERN, description="a label key"
    ),
]
BatchBy = Annotated[
    LabelKey,
    Field(
        description="After the canary, one value of this node label per batch (values in "
        "ascending order, nodes without the label last); a key no selected node has is refused."
    ),
]
MaxInFlightPer = Annotated[
    dict[LabelKey, Annotated[int, Field(ge=1, le=MAX_STEP)]],
    Field(
        max_length=MAX_CAPS,
        description="Label key -> N: inside a batch, at most N nodes of one value of the label "
        "applying at once (nodes without it share one cap); a key no selected node has is "
        "refused.",
    ),
]


class StoredStrategy(_Described):
    """A release's strategy as stored and shown: every field filled in (the topology fields
    when set)."""

    plan: Plan
    maxFailures: Failures | None
    maxFailurePercent: FailurePercent | None
    onFailure: OnFailureChoice
    healthChecks: HealthChecks
    batchBy: BatchBy | None = None
    maxInFlightPer: MaxInFlightPer | None = None


STRATEGY_SCHEMAS: dict[str, Any] = {
    "plan": Plan,
    "maxFailures": Failures,
    "maxFailurePercent": FailurePercent,
    "onFailure": OnFailureChoice,
    "healthChecks": HealthChecks,
    "batchBy": BatchBy,
    "maxInFlightPer": MaxInFlightPer,
}
"""The type each strategy field of a release body is described by."""
