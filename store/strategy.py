"""Release strategies: batch sizes with pauses between them, failure budgets, what a failure does.

One validator for the API, the CLI and the store: ``validate_strategy`` takes the operator's
fields and raises InvalidInput whose message starts with the field at fault (``plan[2].pause:
...``). The stored form (``Strategy.to_json``) goes through the same validator when read back,
so a row written by another program is refused the same way.

A plan is a list of steps. A batch step is a size (``5``, ``"25%"``) or an object giving the
batch its own failure budget (``{"batch": 1, "maxFailures": 0}``); a pause is ``{"pause": N}``
(a bake: hold N seconds) or ``{"pause": null}`` (a gate: hold until promoted). The last batch
step repeats until every node has a batch, and the pauses after it repeat with it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from fleetwave.store.errors import Conflict, InvalidInput
from fleetwave.store.models import DEFAULT_PLAN, PlanStep, Release, ReleaseSpec, ReleaseStatus
from fleetwave.store.plan import MAX_PLAN_STEPS, MAX_STEP, split, validate_plan
from fleetwave.store.promql import PrometheusQuery, validate_prometheus
from fleetwave.store.topology import validate_batch_by, validate_max_in_flight_per

MAX_PAUSE_SEC = 30 * 24 * 3600
"""A bake longer than 30 days is a typo, not a strategy."""
FIELDS = (
    "plan",
    "maxFailures",
    "maxFailurePercent",
    "onFailure",
    "healthChecks",
    "batchBy",
    "maxInFlightPer",
)
BATCH_FIELDS = ("batch", "maxFailures", "maxFailurePercent")


class OnFailure(enum.StrEnum):
    STOP = "stop"
    PAUSE = "pause"
    ROLLBACK = "rollback"


@attrs.frozen
class Budget:
    """How many failures are tolerated: a count, a percentage, both (each must hold) or none
    (``unlimited``: only for batches, whose budget is then the release's alone)."""

    max_failures: int | None = None
    max_failure_percent: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.max_failures is None and self.max_failure_percent is None

    def allows(self, failed: int, of: int, *, whole: bool) -> bool:
        """True when ``failed`` failures among ``of`` nodes are within the budget. ``whole``:
        some batch failed entirely, which no percentage lets through."""
        if self.max_failures is not None and failed > self.max_failures:
            return False
        if self.max_failure_percent is not None:
            if whole and failed:
                return False
            # Integer arithmetic on hundredths of a percent: 10% of 20 allows exactly 2.
            allowed = math.floor(round(self.max_failure_percent * 100) * of / 10000)
            if failed > allowed:
                return False
        return True

    def describe(self) -> str:
        parts = []
        if self.max_failures is not None:
            parts.append(f"maxFailures {self.max_failures}")
        if self.max_failure_percent is not None:
            parts.append(f"maxFailurePercent {self.max_failure_percent:g}")
        return ", ".join(parts) or "no budget of its own"


@attrs.frozen
class BatchStep:
    size: PlanStep
    budget: Budget = Budget()

    def to_json(self) -> object:
        if self.budget.unlimited:
            return self.size
        shown: dict[str, object] = {"batch": self.size}
        if self.budget.max_failures is not None:
            shown["maxFailures"] = self.budget.max_failures
        if self.budget.max_failure_percent is not None:
            shown["maxFailurePercent"] = self.budget.max_failure_percent
        return shown


@attrs.frozen
class Pause:
    seconds: float | None
    """None: a gate, held until promoted."""

    @property
    def gate(self) -> bool:
        return self.seconds is None

    def to_json(self) -> object:
        return {"pause": self.seconds}


Step = BatchStep | Pause


@attrs.frozen
class ScheduledStep:
    """One step of a release's schedule: its batches in order, each followed by its pauses."""

    position: int
    plan_index: int
    """The step of the plan it comes from (a repeated last size gives several)."""
    batch: int
    """The batch it runs, or the batch it follows (a pause)."""
    pause: Pause | None = None

    @property
    def kind(self) -> str:
        if self.pause is None:
            return "batch"
        return "gate" if self.pause.gate else "bake"


@attrs.frozen
class Strategy:
    steps: tuple[Step, ...] = tuple(BatchStep(size) for size in DEFAULT_PLAN)
    max_failures: int | None = 0
    """Failures tolerated over the whole release (the original's maxFailures); None: no
    count, only the percentage (given alone, maxFailurePercent is the release's budget)."""
    max_failure_percent: float | None = None
    on_failure: OnFailure = OnFailure.STOP
    health_checks: tuple[HealthCheck, ...] = ()
    batch_by: str | None = None
    """After the canary, one value of this node label per batch (store/topology.py)."""
    max_in_flight_per: tuple[tuple[str, int], ...] = ()
    """(label key, N), sorted by key: at most N nodes of one value of the label applying at
    once inside a batch (actors/topology.py)."""

    @property
    def topology_labels(self) -> tuple[str, ...]:
        """The label keys the strategy names: each must be carried by a node of the release."""
        keys = [] if self.batch_by is None else [self.batch_by]
        keys.extend(key for key, _ in self.max_in_flight_per if key not in keys)
        return tuple(keys)

    @property
    def plan(self) -> tuple[PlanStep, ...]:
        """The batch sizes alone: what the plan column holds."""
        return tuple(step.size for step in self.steps if isinstance(step, BatchStep))

    @property
    def budget(self) -> Budget:
        return Budget(self.max_failures, self.max_failure_percent)

    @property
    def has_pauses(self) -> bool:
        return any(isinstance(step, Pause) for step in self.steps)

    def to_json(self) -> dict[str, object]:
        shown: dict[str, object] = {
            "plan": [step.to_json() for step in self.steps],
            "maxFailures": self.max_failures,
            "maxFailurePercent": self.max_failure_percent,
            "onFailure": self.on_failure.value,
            "healthChecks": [check.to_json() for check in self.health_checks],
        }
        # Shown only when set: strategies without them keep the shape they had before.
        if self.batch_by is not None:
            shown["batchBy"] = self.batch_by
        if self.max_in_flight_per:
            shown["maxInFlightPer"] = dict(self.max_in_flight_per)
        return shown

    @classmethod
    def of_plan(cls, plan: Sequence[PlanStep], max_failures: int = 0) -> Strategy:
        """The strategy of a release with sizes only (the original's behaviour)."""
        return cls(tuple(BatchStep(size) for size in plan), max_failures)

    def batch_step(self, batch: int) -> tuple[int, BatchStep]:
        """(plan index, step) of batch number ``batch`` (from 1): the last one repeats."""
        batches = [(i, step) for i, step in enumerate(self.steps) if isinstance(step, BatchStep)]
        return batches[min(batch, len(batches)) - 1]

    def schedule(self, total_nodes: int) -> tuple[ScheduledStep, ...]:
        """Every step a release of ``total_nodes`` nodes goes through, in order. After the
        final batch only bakes remain (a gate there would let nothing through)."""
        return self.schedule_batches(len(split(self.plan, total_nodes)) if total_nodes > 0 else 0)

    def schedule_batches(self, count: int) -> tuple[ScheduledStep, ...]:
        """The schedule of a release of ``count`` batches (batchBy: as its rows hold them)."""
        result: list[ScheduledStep] = []
        for batch in range(1, count + 1):
            index, _ = self.batch_step(batch)
            result.append(ScheduledStep(len(result), index, batch))
            for after in range(index + 1, len(self.steps)):
                step = self.steps[after]
                if isinstance(step, BatchStep):
                    break
                if batch == count and step.gate:
                    continue
                result.append(ScheduledStep(len(result), after, batch, step))
        return tuple(result)

    def batch_budget(self, batch: int, batch_count: int) -> Budget:
        """The budget of batch ``batch``: its own; the first of several batches (the canary)
        without one of its own tolerates no failure."""
        _, step = self.batch_step(batch)
        if step.budget.unlimited and batch == 1 and batch_count > 1:
            return Budget(max_failures=0)
        return step.budget

    def over_budget(
        self,
        batch: int,
        batch_count: int,
        failed: Mapping[int, int],
        sizes: Mapping[int, int],
    ) -> str | None:
        """Why the release must stop, given failures per batch and batch sizes; None: within
        every budget. The release budget counts every batch; it never lets a failed canary
        through, only the canary's own budget does."""
        in_batch = failed.get(batch, 0)
        own = self.batch_budget(batch, batch_count)
        whole = any(count and count >= sizes.get(b, 0) for b, count in failed.items())
        if not own.allows(in_batch, sizes.get(batch, 0), whole=in_batch >= sizes.get(batch, 0)):
            name = "the canary" if batch == 1 and batch_count > 1 else f"batch {batch}"
            return (
                f"{in_batch} of {sizes.get(batch, 0)} node(s) of {name} failed, beyond its "
                f"budget ({own.describe()})"
            )
        total = sum(failed.values())
        if not self.budget.allows(total, sum(sizes.values()), whole=whole):
            return (
                f"{total} of {sum(sizes.values())} node(s) failed, beyond the release's budget "
                f"({self.budget.describe()})"
            )
        return None

    def release_over_budget(
        self, failed: Mapping[int, int], sizes: Mapping[int, int]
    ) -> str | None:
        """Why the failures of a release (per batch) stop it, the first batch first; None:
        within every budget."""
        count = len(sizes)
        for batch in sorted(failed):
            why = self.over_budget(batch, count, failed, sizes)
            if why is not None:
                return why
        return None


def _problem(field: str, text: str) -> InvalidInput:
    return InvalidInput(f"{field}: {text}")


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:
        return "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(value: float) -> bool:
    """Whether a JSON number is finite; an integer too large for a float is not."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _count(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _problem(field, f"must be a whole number, got {_shown(value)}")
    if not 0 <= value <= MAX_STEP:
        raise _problem(field, f"must be between 0 and {MAX_STEP}, got {_shown(value)}")
    return value


def _percent(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _problem(field, f"must be a number from 0 to 100, got {_shown(value)}")
    if not (_finite(value) and 0 <= value <= 100):
        raise _problem(field, f"must be from 0 to 100, got {_shown(value)}")
    return float(value)


def _size(field: str, value: object) -> PlanStep:
    try:
        [size] = validate_plan([value])
    except InvalidInput as error:
        raise _problem(field, str(error).removeprefix("plan[0] ")) from None
    return size


def _step(index: int, value: object) -> Step:
    field = f"plan[{index}]"
    if not isinstance(value, Mapping):
        return BatchStep(_size(field, value))
    keys = set(value)
    if keys == {"pause"}:
        seconds = value["pause"]
        if seconds is None:
            return Pause(None)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise _problem(
                f"{field}.pause", f"must be seconds or null (a gate), got {_shown(seconds)}"
            )
        if not (_finite(seconds) and 0 < seconds <= MAX_PAUSE_SEC):
            raise _problem(
                f"{field}.pause",
                f"must be above 0 and at most {MAX_PAUSE_SEC} seconds, got {_shown(seconds)}",
            )
        return Pause(float(seconds))
    if "batch" in keys and keys <= set(BATCH_FIELDS):
        budget = Budget(
            None
            if value.get("maxFailures") is None
            else _count(f"{field}.maxFailures", value["maxFailures"]),
            None
            if value.get("maxFailurePercent") is None
            else _percent(f"{field}.maxFailurePercent", value["maxFailurePercent"]),
        )
        return BatchStep(_size(f"{field}.batch", value["batch"]), budget)
    names = ", ".join(sorted(str(key) for key in keys)[:5]) or "no keys"
    raise _problem(
        field,
        f'unknown step kind ({names}): a step is a size, {{"pause": SECONDS}}, '
        f'{{"pause": null}} (a gate) or {{"batch": SIZE, "maxFailures": N, '
        f'"maxFailurePercent": P}}',
    )


def validate_strategy(
    plan: object = None,
    max_failures: object = None,
    max_failure_percent: object = None,
    on_failure: object = None,
    health_checks: object = None,
    batch_by: object = None,
    max_in_flight_per: object = None,
) -> Strategy:
    """A strategy from the operator's fields (None: not given); raises InvalidInput naming
    the field at fault."""
    steps: tuple[Step, ...] = Strategy().steps
    if plan is not None:
        if not isinstance(plan, list | tuple) or not plan:
            raise _problem("plan", "must be a non-empty list of steps (sizes and pauses)")
        if len(plan) > MAX_PLAN_STEPS:
            raise _problem("plan", f"has {len(plan)} steps; at most {MAX_PLAN_STEPS} are allowed")
        steps = tuple(_step(index, value) for index, value in enumerate(plan))
        if isinstance(steps[0], Pause):
            raise _problem("plan[0]", "a plan starts with a batch (a pause needs one before it)")
        last = steps[-1]
        if isinstance(last, Pause) and last.gate:
            raise _problem(
                f"plan[{len(steps) - 1}]",
                "a gate cannot be the last step: nothing would follow it",
            )
    failures: int | None = 0
    if max_failures is not None:
        failures = _count("maxFailures", max_failures)
    elif max_failure_percent is not None:
        failures = None
    percent = (
        None if max_failure_percent is None else _percent("maxFailurePercent", max_failure_percent)
    )
    action = OnFailure.STOP
    if on_failure is not None:
        choices = ", ".join(choice.value for choice in OnFailure)
        if not isinstance(on_failure, str) or on_failure not in set(OnFailure):
            raise _problem("onFailure", f"must be one of {choices}, got {_shown(on_failure)}")
        action = OnFailure(on_failure)
    return Strategy(
        steps,
        failures,
        percent,
        action,
        validate_health_checks(health_checks),
        validate_batch_by(batch_by),
        validate_max_in_flight_per(max_in_flight_per),
    )


def strategy_from_json(value: Any) -> Strategy:
    """The stored form back (the strategy column); InvalidInput when it is not one."""
    if isinstance(value, str):
        import json

        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise InvalidInput(f"strategy: must be an object, got {_shown(value)}")
    unknown = set(value) - set(FIELDS)
    if unknown:
        raise InvalidInput(f"strategy: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    return validate_strategy(
        value.get("plan"),
        value.get("maxFailures"),
        value.get("maxFailurePercent"),
        value.get("onFailure"),
        value.get("healthChecks"),
        value.get("batchBy"),
        value.get("maxInFlightPer"),
    )


def stored_strategy(spec: ReleaseSpec) -> Mapping[str, object] | None:
    """The strategy column of a new release: the spec's strategy checked again, or None."""
    if spec.strategy is None:
        return None
    return strategy_from_json(spec.strategy).to_json()


def strategy_of(release: Release) -> Strategy:
    """The strategy a release runs: its column, else its plan and max_failures. A column
    that is not a strategy (another program's row) falls back to the plan alone."""
    if release.strategy is not None:
        try:
            return strategy_from_json(release.strategy)
        except InvalidInput:
            pass
    return Strategy.of_plan(release.plan, release.max_failures)


def release_schedule(release: Release) -> tuple[ScheduledStep, ...]:
    """The schedule of a release: of the batches its rows hold when it batches by a label
    (their count is not the plan's), else of its plan over its nodes."""
    strategy = strategy_of(release)
    if strategy.batch_by is not None:
        return strategy.schedule_batches(release.batch_count)
    return strategy.schedule(release.total_nodes)


def current_step(release: Release) -> ScheduledStep | None:
    """The step of its schedule the release is at (None: beyond its end)."""
    schedule = release_schedule(release)
    return schedule[release.step] if release.step < len(schedule) else None


def promote_target(release: Release, full: bool) -> tuple[int, str]:
    """(new promoted_to, event detail) of a promote; Conflict when it cannot apply: a release
    not running (a full promote also applies to a pending one), or not at a pause."""
    if release.cancelling or release.status not in (
        ReleaseStatus.RUNNING,
        ReleaseStatus.PENDING,
    ):
        state = "cancelling" if release.cancelling else release.status.value
        raise Conflict(
            f"release {release.id} (version {release.version}) is {state}: promote applies "
            "to a running release (promote --full also to a pending one)"
        )
    schedule = release_schedule(release)
    if full:
        left = sum(1 for step in schedule[release.step :] if step.pause is not None)
        return len(schedule), f"full: {left} remaining pause(s) skipped"
    step = schedule[release.step] if release.step < len(schedule) else None
    if step is not None and step.pause is not None and release.promoted_to > step.position:
        return release.promoted_to, ""  # promoted already: the owner is passing it
    if release.status is not ReleaseStatus.RUNNING or step is None or step.pause is None:
        raise Conflict(
            f"release {release.id} (version {release.version}) is not at a pause: nothing to "
            "promote (promote --full skips every remaining step)"
        )
    return step.position + 1, f"{step.kind} after batch {step.batch} passed"


URL_FIELDS = frozenset({"release", "version", "batch", "scope"})
"""What a check's URL may name: ``{release}``, ``{version}``, ``{batch}``, ``{scope}``."""
MAX_CHECKS = 20
CHECK_FIELDS = ("name", "http", "prometheus", "interval", "failureLimit", "timeout")


@attrs.frozen
class HealthCheck:
    """An HTTP check: GET ``url`` (templated); healthy when it answers 2xx with a JSON object
    saying ``"healthy": true``. Or, with ``prometheus``, a Prometheus check: ``url`` is the
    server's, asked for the query (store/promql.py). Past ``failure_limit`` consecutive
    failures the release fails."""

    name: str
    url: str
    interval: float = 10.0
    failure_limit: int = 3
    timeout: float = 5.0
    prometheus: PrometheusQuery | None = None

    def to_json(self) -> dict[str, object]:
        kind: dict[str, object] = {"http": {"url": self.url}}
        if self.prometheus is not None:
            kind = {"prometheus": {"url": self.url, **self.prometheus.to_json()}}
        return {
            "name": self.name,
            **kind,
            "interval": self.interval,
            "failureLimit": self.failure_limit,
            "timeout": self.timeout,
        }

    def url_for(self, values: Mapping[str, object]) -> str:
        """The URL with its fields filled in, each quoted for a URL."""
        from urllib.parse import quote

        return self.url.format_map({key: quote(str(values[key]), safe="") for key in URL_FIELDS})


def _seconds(field: str, value: object, default: float, maximum: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _problem(field, f"must be seconds, got {_shown(value)}")
    if not (_finite(value) and 0 < value <= maximum):
        raise _problem(
            field, f"must be above 0 and at most {maximum:g} seconds, got {_shown(value)}"
        )
    return float(value)


def _check_url(field: str, value: object) -> str:
    import string
    from urllib.parse import urlsplit

    if not isinstance(value, str) or not value or len(value) > 2000:
        raise _problem(
            field, f"must be an http(s) URL of at most 2000 characters, got {_shown(value)}"
        )
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        parts = urlsplit(value)
    except ValueError as error:
        raise _problem(field, f"is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _problem(field, f"must be an http or https URL with a host, got {_shown(value)}")
    unknown = sorted(names - URL_FIELDS)
    if unknown:
        raise _problem(
            field,
            f"names {{{unknown[0]}}}; a URL may name {{release}}, {{version}}, {{batch}}, "
            "{scope}",
        )
    # A lone surrogate cannot be stored (PostgreSQL refuses it in jsonb) nor sent.
    if any(char.isspace() or ord(char) < 32 or 0xD800 <= ord(char) <= 0xDFFF for char in value):
        raise _problem(field, "must not contain spaces, control characters or lone surrogates")
    return value


def validate_health_checks(value: object) -> tuple[HealthCheck, ...]:
    """The ``healthChecks`` field: a list of HTTP and Prometheus checks, each named once."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise _problem("healthChecks", f"must be a list of checks, got {_shown(value)}")
    if len(value) > MAX_CHECKS:
        raise _problem("healthChecks", f"at most {MAX_CHECKS} checks, got {len(value)}")
    checks: list[HealthCheck] = []
    for index, item in enumerate(value):
        field = f"healthChecks[{index}]"
        if not isinstance(item, Mapping):
            raise _problem(field, f"must be an object, got {_shown(item)}")
        unknown = sorted(str(key) for key in set(item) - set(CHECK_FIELDS))
        if unknown:
            raise _problem(field, f"unknown field {unknown[0]} (known: {', '.join(CHECK_FIELDS)})")
        name = item.get("name")
        if (
            not isinstance(name, str)
            or not name.strip()
            or len(name) > 64
            or not name.isprintable()
        ):
            raise _problem(
                f"{field}.name",
                f"must be a printable name of 1 to 64 characters, got {_shown(name)}",
            )
        if any(check.name == name for check in checks):
            raise _problem(f"{field}.name", f"{name!r} is already the name of another check")
        if ("http" in item) == ("prometheus" in item):
            raise _problem(field, "give exactly one of http or prometheus")
        http = item.get("http")
        prometheus: PrometheusQuery | None = None
        if "prometheus" in item:
            prometheus = validate_prometheus(f"{field}.prometheus", item["prometheus"])
            url = _check_url(f"{field}.prometheus.url", item["prometheus"]["url"])
        elif not isinstance(http, Mapping) or set(http) != {"url"}:
            raise _problem(f"{field}.http", 'must be {"url": "http(s)://..."}')
        else:
            url = _check_url(f"{field}.http.url", http["url"])
        limit = item.get("failureLimit", 3)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise _problem(
                f"{field}.failureLimit",
                f"must be a whole number from 1 to 1000, got {_shown(limit)}",
            )
        checks.append(
            HealthCheck(
                name,
                url,
                _seconds(f"{field}.interval", item.get("interval"), 10.0, 3600),
                limit,
                _seconds(f"{field}.timeout", item.get("timeout"), 5.0, 300),
                prometheus,
            )
        )
    return tuple(checks)
