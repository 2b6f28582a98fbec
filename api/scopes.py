"""The API's types of scope default strategies (``/api/v1/scopes``): the scope named in a
path, the strategy a PUT sets, how a default is shown, and which strategy fields a release's
request gave itself (the others come from its scope's default, store/scopes.py)."""

from __future__ import annotations

from typing import Final

from pydantic import create_model, model_validator

from fleetwave.api import shapes
from fleetwave.api.envelope import Code
from fleetwave.api.schemas import _STRATEGY_BODY_FIELDS, timestamp
from fleetwave.api.validation import Body, invalid, refusal, validated
from fleetwave.store.errors import InvalidInput
from fleetwave.store.scopes import ScopeStrategy, check_scope
from fleetwave.store.strategy import FIELDS as STRATEGY_FIELDS
from fleetwave.store.strategy import Strategy, validate_strategy

SCOPE_PATH: Final = "/api/v1/scopes/{scope}/strategy"


def parse_scope(text: str) -> str:
    """The ``{scope}`` of a path (percent-decoded): the checks every scope name passes."""
    try:
        return check_scope(text)
    except InvalidInput as error:
        raise invalid("scope", str(error).removeprefix("scope: ")) from None


class _ScopeStrategyFields(Body):
    """``PUT /api/v1/scopes/{scope}/strategy``: a scope's default strategy, the strategy fields
    of a release (at least one), validated together by store/strategy.py as a release's are."""

    @model_validator(mode="after")
    def _strategy(self) -> _ScopeStrategyFields:
        values = [getattr(self, name) for name in STRATEGY_FIELDS]
        if all(value is None for value in values):
            raise refusal(
                f"give at least one of {', '.join(STRATEGY_FIELDS)} (DELETE clears a default)",
                code=Code.PARAM_MISSING,
                field="body",
            )
        try:
            validate_strategy(*values)
        except InvalidInput as error:
            field, _, problem = str(error).partition(": ")
            raise refusal(problem, field=field) from None
        return self

    def strategy(self) -> Strategy:
        return validate_strategy(*(getattr(self, name) for name in STRATEGY_FIELDS))


ScopeStrategyBody = create_model(
    "ScopeStrategyBody",
    __base__=_ScopeStrategyFields,
    __doc__=_ScopeStrategyFields.__doc__,
    **_STRATEGY_BODY_FIELDS,
)


def parse_scope_strategy(document: object) -> Strategy:
    return validated(ScopeStrategyBody, document).strategy()


def given_strategy_fields(document: object) -> tuple[str, ...]:
    """The strategy fields a release's request gives (a null is not given), in FIELDS order;
    the document was checked by parse_release_spec."""
    if not isinstance(document, dict):
        return ()
    return tuple(name for name in STRATEGY_FIELDS if document.get(name) is not None)


def scope_item(row: ScopeStrategy) -> shapes.ScopeItem:
    return {
        "scope": row.scope,
        "strategy": dict(row.strategy),
        # A row another program wrote that is not a strategy: why (releases refuse it).
        "problem": row.problem,
        "setBy": None
        if row.set_by is None
        else {"tokenName": row.set_by.token_name, "role": row.set_by.role.value},
        "createdAt": timestamp(row.created_at),
        "updatedAt": timestamp(row.updated_at),
    }
