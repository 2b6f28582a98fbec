"""Checks on values a store is given from outside: text, and integers bound for bigint columns.

PostgreSQL refuses NUL in text, its driver cannot encode a lone surrogate, and a bigint holds
at most 2**63 - 1; a MemoryStore would keep any of them and fail later, when an answer holding
them is encoded. Both stores (and the API, field by field) run these checks before changing
anything, so bad input is refused the same way, in the same words, wherever it comes from.
"""

from __future__ import annotations

import re
from typing import Final

from fleetwave.store.errors import InvalidInput
from fleetwave.store.models import PlanStep, ReleaseSpec
from fleetwave.store.plan import validate_plan
from fleetwave.store.strategy import strategy_from_json

BIGINT_MAX: Final = 2**63 - 1
INT_MAX: Final = 2**31 - 1

# C0 controls, DEL, C1 controls and the surrogate range (in a str, a surrogate is always lone:
# a valid pair decodes to one code point). Free text may span lines and hold tabs. The ranges
# are also what the API's JSON Schema patterns refuse (api/schemas.py).
CONTROLS_IN_LINE: Final = "\x00-\x1f\x7f-\x9f"
CONTROLS_IN_TEXT: Final = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_SURROGATES: Final = "\ud800-\udfff"
_NOT_IN_LINE: Final = re.compile(f"[{CONTROLS_IN_LINE}{_SURROGATES}]")
_NOT_IN_TEXT: Final = re.compile(f"[{CONTROLS_IN_TEXT}{_SURROGATES}]")


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` cannot be stored as text, or None when it can.

    A single-line value (a name, an address) holds no control character at all; ``multiline``
    text (a reason) may hold tabs and line breaks. Neither may hold NUL or a lone surrogate."""
    found = (_NOT_IN_TEXT if multiline else _NOT_IN_LINE).search(value)
    if found is None:
        return None
    code = ord(found.group())
    if code == 0:
        kind = "NUL"
    elif 0xD800 <= code <= 0xDFFF:
        kind = "a lone surrogate"
    else:
        kind = "a control character"
    return f"contains {kind} (U+{code:04X}) at position {found.start()}"


def check_text(field: str, value: str, *, multiline: bool = False) -> str:
    """``value``, or InvalidInput naming ``field`` when it cannot be stored (see text_problem)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: must be text, got {type(value).__name__}")
    problem = text_problem(value, multiline=multiline)
    if problem is not None:
        raise InvalidInput(f"{field}: {problem}")
    return value


def check_optional_text(field: str, value: str | None, *, multiline: bool = False) -> str | None:
    return None if value is None else check_text(field, value, multiline=multiline)


def check_integer(field: str, value: int, minimum: int, maximum: int = BIGINT_MAX) -> int:
    """``value`` when it is an int within [minimum, maximum], else InvalidInput naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{field}: must be a whole number, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        # str() of an int beyond 4,300 digits raises; such values are shown by their side.
        if abs(value) < 10**30:
            shown = str(value)
        else:
            shown = "a larger number" if value > maximum else "a smaller number"
        raise InvalidInput(f"{field}: must be between {minimum} and {maximum}, got {shown}")
    return value


def check_release_spec(spec: ReleaseSpec) -> tuple[PlanStep, ...]:
    """Every field of ``spec`` checked; the plan in its stored form."""
    plan = validate_plan(spec.plan)
    if spec.strategy is not None and strategy_from_json(spec.strategy).plan != plan:
        raise InvalidInput("plan: differs from the strategy's batch sizes")
    check_text("type", spec.type)
    if not check_text("target", spec.target).strip():
        raise InvalidInput("target: must not be empty")
    if spec.scope is not None and not check_text("scope", spec.scope).strip():
        raise InvalidInput("scope: must not be empty when given")
    check_text("reason", spec.reason, multiline=True)
    check_integer("max_failures", spec.max_failures, 0, INT_MAX)
    if spec.max_parallel is not None:
        check_integer("max_parallel", spec.max_parallel, 1, INT_MAX)
    selection = spec.selection
    if selection is not None:
        for node_id in selection.node_ids or ():
            check_integer("nodeIds", node_id, 1)
        for name in selection.node_names or ():
            check_text("nodeNames", name)
    return plan


def check_node(name: str, main_ip: str, agent_port: int) -> None:
    """A node registration's name, address and port."""
    if not check_text("name", name).strip():
        raise InvalidInput("name: must not be empty")
    if not check_text("main_ip", main_ip).strip():
        raise InvalidInput("main_ip: must not be empty")
    check_integer("agent_port", agent_port, 1, 65535)


def check_token_key(key: int | str) -> None:
    """A token named by its id or by its name."""
    if isinstance(key, str):
        check_text("name", key)
    else:
        check_integer("id", key, 1)
