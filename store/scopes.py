"""Default strategies of scopes: what a release that gives no strategy of its own runs.

For its default, a release's scope is the scope it names, else its target (``cdn``: the whole
fleet). A release made from an operator's request (``ReleaseSpec.strategy_fields`` not None)
takes every strategy field it does not give from the default of its scope, or, when that scope
has none, from the default of its target; with neither it runs as the original does (a canary,
then the rest, stopping at the first failure). Both stores look the default up in the
transaction that creates the release and copy the result into the release's strategy, so
changing a default later changes no release already made.

Fields are taken whole, one by one, with the release budget as one field: a request's ``plan``
replaces the default's plan (steps are never merged), its ``healthChecks`` replace the
default's checks (``[]`` drops them), and either of ``maxFailures`` and ``maxFailurePercent``
replaces the default's budget, both of its fields.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final

import attrs

from fleetwave.store.errors import Conflict, InvalidInput
from fleetwave.store.inputs import check_text
from fleetwave.store.models import Actor, ReleaseSpec, Role
from fleetwave.store.preview import spec_strategy
from fleetwave.store.strategy import FIELDS, Strategy, strategy_from_json

SCOPE_MAX: Final = 255
"""The longest scope name (the API's limit on a release's scope too)."""
BUDGET_FIELDS: Final = ("maxFailures", "maxFailurePercent")
"""The release budget: a request giving either replaces both of the default's."""


def check_scope(scope: str) -> str:
    """The name of a scope with a default: one line of text, not blank, without "/" and not
    "." or ".." (it is a segment of the API's path), at most SCOPE_MAX characters;
    InvalidInput naming ``scope`` otherwise (both stores, the API and the CLI call this)."""
    check_text("scope", scope)
    if not scope.strip():
        raise InvalidInput("scope: must not be empty")
    if "/" in scope:
        raise InvalidInput('scope: must not hold "/" (a scope with a default is a path segment)')
    if scope in (".", ".."):
        # URL clients and proxies resolve these segments: the request would name another path.
        raise InvalidInput(
            f'scope: must not be "{scope}" (a scope with a default is a path segment)'
        )
    if len(scope) > SCOPE_MAX:
        raise InvalidInput(f"scope: must be at most {SCOPE_MAX} characters, got {len(scope)}")
    return scope


@attrs.frozen
class ScopeStrategy:
    """One row of scope_strategies: a scope's default strategy, who set it and when."""

    scope: str
    strategy: Mapping[str, Any]
    """As stored: Strategy.to_json() of what was validated (another program's row may hold
    anything; ``parsed`` says whether it is a strategy)."""
    set_by: Actor | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ScopeStrategy:
        value = record["strategy"]
        if isinstance(value, str | bytes):
            import json

            try:
                value = json.loads(value)
            except ValueError:
                value = {"unreadable": str(value)[:40]}
            except RecursionError:
                value = {"unreadable": "JSON nested too deeply"}
        actor = None
        if record.get("set_by") is not None and record.get("set_by_role") in set(Role):
            actor = Actor(record["set_by"], Role(record["set_by_role"]))
        return cls(
            scope=record["scope"],
            strategy=value if isinstance(value, Mapping) else {"notAnObject": value},
            set_by=actor,
            created_at=record["created_at"],
            updated_at=record["updated_at"],
        )

    def parsed(self) -> Strategy:
        """The default as a Strategy; InvalidInput when the row does not hold one."""
        return strategy_from_json(dict(self.strategy))

    @property
    def problem(self) -> str | None:
        """Why the row is not a strategy (a row written by another program), or None."""
        try:
            self.parsed()
        except InvalidInput as error:
            return str(error)
        return None


def stored_default(strategy: Mapping[str, object]) -> dict[str, object]:
    """A default to store: the strategy fields validated (InvalidInput naming the field at
    fault), in their stored form."""
    return strategy_from_json(strategy).to_json()


def default_scopes(spec: ReleaseSpec) -> tuple[str, ...]:
    """Whose default a release of ``spec`` takes, first found first: its scope, its target."""
    if spec.strategy_fields is None:
        return ()
    keys = [spec.scope, spec.target]
    return tuple(dict.fromkeys(key for key in keys if key is not None))


def _taken(given: Collection[str]) -> set[str]:
    """The fields a request replaces when it gives ``given``: those, and the whole budget."""
    taken = set(given)
    if taken & set(BUDGET_FIELDS):
        taken |= set(BUDGET_FIELDS)
    return taken


def merged(default: Strategy, explicit: Strategy, given: Collection[str]) -> Strategy:
    """``default`` with the fields of ``explicit`` named in ``given`` (whole fields, the budget
    as one), validated again as one strategy."""
    taken = _taken(given)
    mine, base = explicit.to_json(), default.to_json()
    return strategy_from_json(
        {field: (mine if field in taken else base).get(field) for field in FIELDS}
    )


@attrs.frozen
class DefaultUsed:
    """That a release took fields of its strategy from the default of ``scope``."""

    scope: str
    given: tuple[str, ...]
    """The strategy fields the request gave itself."""

    @property
    def note(self) -> str:
        """What the release's "created" event says about it."""
        note = f"strategy: the default of scope {self.scope}"
        return f"{note}, with {', '.join(self.given)} from the request" if self.given else note


def with_default(
    spec: ReleaseSpec, found: ScopeStrategy | None
) -> tuple[ReleaseSpec, DefaultUsed | None]:
    """``spec`` completed from ``found`` (the default default_scopes found, or None), and the
    default it used (None: none applied; the request gave every field, or there is none).

    Conflict when the default's row is not a strategy: the release is not created on a guess."""
    if spec.strategy_fields is None:
        return spec, None
    given = tuple(field for field in FIELDS if field in spec.strategy_fields)
    if found is None or _taken(given) >= set(FIELDS):
        return attrs.evolve(spec, strategy_fields=None), None
    try:
        default = found.parsed()
    except InvalidInput as error:
        raise Conflict(
            f"the default strategy of scope {found.scope} is not valid ({error}); set it "
            "again or clear it"
        ) from None
    strategy = merged(default, spec_strategy(spec, spec.plan), given)
    completed = attrs.evolve(
        spec,
        plan=strategy.plan,
        max_failures=strategy.max_failures or 0,
        strategy=strategy.to_json(),
        strategy_fields=None,
    )
    return completed, DefaultUsed(found.scope, given)


@contextmanager
def blamed_on_default(used: DefaultUsed | None) -> Iterator[None]:
    """Refusals of the block (placing a release's nodes: a label none of them carries) that
    name a field the release took from a default say so, and whose: the request did not give
    that field, and the operator is to look at the default."""
    try:
        yield
    except InvalidInput as error:
        if used is None:
            raise
        field = str(error).partition(":")[0].partition(".")[0].partition("[")[0]
        if field not in FIELDS or field in used.given:
            raise
        raise InvalidInput(
            f"{error} ({field} from the default strategy of scope {used.scope})"
        ) from None


def first_default(
    keys: Collection[str], found: Mapping[str, ScopeStrategy]
) -> ScopeStrategy | None:
    """The default of the first of ``keys`` (default_scopes) that has one in ``found``."""
    return next((found[key] for key in keys if key in found), None)


def created_note(message: str, used: DefaultUsed | None) -> str:
    """A release's "created" event message, with the default its strategy took, if any."""
    return message if used is None else f"{message}; {used.note}"
