"""The API's shapes of scope default strategies (``/api/v1/scopes``): the scope named in a
path, the strategy a PUT sets, how a default is shown, and which strategy fields a release's
request gave itself (the others come from its scope's default, store/scopes.py)."""

from __future__ import annotations

from typing import Final

from starlette.convertors import Convertor, register_url_convertor

from fleetwave.api.envelope import Code
from fleetwave.api.schemas import _Fields, invalid, parse_strategy, timestamp
from fleetwave.store.errors import InvalidInput
from fleetwave.store.scopes import ScopeStrategy, check_scope
from fleetwave.store.strategy import FIELDS as STRATEGY_FIELDS
from fleetwave.store.strategy import Strategy

SCOPE_STRATEGY_FIELDS: Final = STRATEGY_FIELDS
"""A default holds what a release's strategy fields hold, nothing else."""


class AnyText(Convertor[str]):
    """A path parameter of any characters, "/" and line breaks included (``{scope:any}``):
    a scope name reaches parse_scope, which says what is wrong with it, instead of the path
    matching no route."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any", AnyText())


def parse_scope(text: str) -> str:
    """The ``{scope}`` of a path (percent-decoded): the checks every scope name passes."""
    try:
        return check_scope(text)
    except InvalidInput as error:
        raise invalid("scope", str(error).removeprefix("scope: ")) from None


def parse_scope_strategy(document: object) -> Strategy:
    """The body of ``PUT /api/v1/scopes/{scope}/strategy``: the strategy fields of a release
    (at least one), checked by the one validator."""
    fields = _Fields.of(document, SCOPE_STRATEGY_FIELDS)
    strategy = parse_strategy(fields)
    if strategy is None:
        raise invalid(
            "body",
            f"give at least one of {', '.join(SCOPE_STRATEGY_FIELDS)} (DELETE clears a default)",
            Code.PARAM_MISSING,
        )
    return strategy


def given_strategy_fields(document: object) -> tuple[str, ...]:
    """The strategy fields a release's request gives (a null is not given), in FIELDS order;
    the document was checked by parse_release_spec."""
    if not isinstance(document, dict):
        return ()
    return tuple(name for name in STRATEGY_FIELDS if document.get(name) is not None)


def scope_item(row: ScopeStrategy) -> dict[str, object]:
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
