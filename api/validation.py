"""Typed request input with pydantic, refused in the original's envelope and codes.

A request body or query string is validated by a pydantic model (api/schemas.py); the first
problem becomes an ApiError 400 whose message names the field (``maxParallel: must be an
integer, got a number 2.5``): 2003 for an unknown field, 2001 for a missing one, 2002 for a
wrong value. The field types here carry the checks the stores share (store/inputs.py decides
what text may hold, store/address.py what an address is): a type calls them, and its JSON
Schema (the OpenAPI document's) states the same bounds.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import attrs
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

from fleetwave.api.envelope import ApiError, Code
from fleetwave.store.inputs import CONTROLS_IN_LINE, CONTROLS_IN_TEXT, text_problem

NAME_MAX: Final = 255
TEXT_MAX: Final = 1000
MAX_ID: Final = 2**63 - 1
"""Ids are PostgreSQL bigints; anything larger cannot name a row."""
_DIGITS_MAX: Final = 30
"""An integer spelled with more digits than this is beyond every bound (and int() refuses
strings of more than 4,300 digits)."""
_REFUSAL: Final = "fleetwave"


def shown(value: object) -> str:
    """A short, printable rendering of an input value for an error message."""
    try:
        text = json.dumps(value)
    except ValueError:  # an int beyond 4,300 digits
        return "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def kind(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "a list"
        case dict():
            return "an object"
    return type(value).__name__  # pragma: no cover


def got(value: object) -> str:
    """``got a number 2.5``; ``got null`` for null."""
    return "got null" if value is None else f"got {kind(value)} {shown(value)}"


def invalid(field: str, problem: str, code: Code = Code.PARAM_INVALID) -> ApiError:
    return ApiError(400, code, f"{field}: {problem}")


def refusal(
    problem: str, *, code: Code = Code.PARAM_INVALID, field: str | None = None
) -> PydanticCustomError:
    """A validator's refusal: ``problem`` in words, the code it answers with, and ``field``
    when it is not where the validator ran (a check across fields)."""
    return PydanticCustomError(
        _REFUSAL, "{problem}", {"problem": problem, "code": int(code), "field": field}
    )


# --- field types -----------------------------------------------------------------------------


def _pattern(controls: str, *, blank: bool) -> str:
    """The JSON Schema pattern of text without ``controls``; with a character that is not a
    space unless ``blank``. (No pattern names a lone surrogate: JSON text cannot validly
    carry one; the description says so.) A lookahead from the start rather than ``$``, which
    Python's re lets match before a final line break."""
    free = f"^(?![\\s\\S]*[{controls}])"
    return free if blank else free + "[\\s\\S]*?\\S"


class _Constraint(abc.ABC):
    """A constraint checked after the type's own validation, by ``check``."""

    @abc.abstractmethod
    def check(self, value: Any) -> Any:
        """``value`` when it holds (possibly normalised); raises the refusal otherwise."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))


@attrs.frozen
class Text(_Constraint):
    """A string constraint: at most ``max_length`` characters, not blank unless ``blank``,
    and storable (store/inputs.py): one line, or ``multiline`` free text with tabs and line
    breaks; never NUL, another control character or a lone surrogate.

        name: Annotated[str, Text(255)]
    """

    max_length: int = NAME_MAX
    blank: bool = False
    multiline: bool = False

    def check(self, value: str) -> str:
        if not self.blank and not value.strip():
            raise refusal("must not be empty")
        if len(value) > self.max_length:
            raise refusal(f"must be at most {self.max_length} characters, got {len(value)}")
        problem = text_problem(value, multiline=self.multiline)
        if problem is not None:
            raise refusal(problem)
        return value

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        controls = CONTROLS_IN_TEXT if self.multiline else CONTROLS_IN_LINE
        words = (
            "free text: tabs and line breaks allowed, no other control character"
            if self.multiline
            else "one line: no control character"
        )
        return {
            **handler(schema),
            "maxLength": self.max_length,
            **({} if self.blank else {"minLength": 1}),
            "pattern": _pattern(controls, blank=self.blank),
            "description": f"{words}, NUL or lone surrogate"
            + ("" if self.blank else "; not blank"),
        }


@attrs.frozen
class Between(_Constraint):
    """An integer constraint: within [minimum, maximum].

    maxParallel: Annotated[int, Between(1, 2**31 - 1)]
    """

    minimum: int
    maximum: int

    def check(self, value: int) -> int:
        if not self.minimum <= value <= self.maximum:
            if abs(value) < 10**_DIGITS_MAX:
                found = str(value)
            else:  # beyond 30 digits (or 4,300, which str() refuses): its side
                found = "a larger number" if value > self.maximum else "a smaller number"
            raise refusal(f"must be between {self.minimum} and {self.maximum}, got {found}")
        return value

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "minimum": self.minimum, "maximum": self.maximum}


@attrs.frozen
class OneOf:
    """A string described as one of ``values`` (an enum's, say), for answers the server
    builds from its own values.

        status: Annotated[str, OneOf(ReleaseStatus)]
    """

    values: Iterable[object]

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "enum": [str(value) for value in self.values]}


@attrs.frozen
class DescribedBy:
    """A value whose JSON Schema is that of ``model`` (a value built or checked elsewhere,
    such as a strategy, which store/strategy.py validates and serialises)."""

    model: type[BaseModel]

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(self.model.__pydantic_core_schema__)


def checked(check: Callable[[Any], Any], errors: type[Exception]) -> BeforeValidator:
    """A field checked first by a shared check (store/...), whose error text becomes the
    problem; the value it returns (normalised) is then validated as the field's type."""

    def run(value: object) -> object:
        try:
            return check(value)
        except errors as error:
            raise refusal(str(error)) from None

    return BeforeValidator(run)


# --- query strings ---------------------------------------------------------------------------


def integer_text(digits: str) -> int:
    """The value of ASCII ``digits``; past _DIGITS_MAX significant digits, 10**_DIGITS_MAX,
    which is above every bound as the real value is."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= _DIGITS_MAX else 10**_DIGITS_MAX


def query_integer(value: object) -> object:
    """An integer parameter of any length (beyond 30 digits it counts as 10**30, past every
    bound); a value that is not text (a default) passes as it is."""
    if not isinstance(value, str):
        return value
    stripped = value.strip()
    negative = stripped.startswith("-")
    digits = stripped[1:] if negative else stripped
    if not digits.isascii() or not digits.isdigit():
        raise refusal(f"must be an integer, got {shown(value)}")
    number = integer_text(digits)
    return -number if negative else number


QueryInteger = BeforeValidator(query_integer)
"""Query text to an integer (the model's type then checks its bounds)."""


class Body(BaseModel):
    """A JSON request body: no unknown member, no coercion (``"1"`` is not an integer). Fields
    are named as the API names them (camelCase)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Query(BaseModel):
    """A query string: parameters this model does not name are ignored; an empty one is
    absent."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def absent() -> Any:
    """The default of an optional field that may not be null: absent is None, and the
    document shows no default (null is not of the field's type)."""
    return Field(default=None, json_schema_extra=_no_default)


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], document: object, *, context: Mapping[str, Any] | None = None) -> M:
    """``document`` as a ``model``, or ApiError 400 naming the first field at fault (an
    unknown member of a body before any other)."""
    if issubclass(model, Body) and not isinstance(document, dict):
        raise invalid("body", f"must be a JSON object, got {kind(document)}")
    if isinstance(document, dict) and model.model_config.get("extra") == "forbid":
        # Before pydantic, which cannot take a name holding a lone surrogate.
        allowed = [field.alias or name for name, field in model.model_fields.items()]
        for name in document:
            if name not in allowed:
                named = name if name.isprintable() and len(name) <= NAME_MAX else shown(name)
                raise invalid(
                    named, f"unknown field (allowed: {', '.join(allowed)})", Code.PARAM_ILLEGAL
                )
    try:
        return model.model_validate(document, context=dict(context or {}))
    except ValidationError as error:
        raise _api_error(error.errors(include_url=False)[0]) from None


def query_document(query: Mapping[str, str], model: type[Query]) -> dict[str, str]:
    """The parameters of ``query`` that ``model`` names and that are not empty."""
    names = {field.alias or name for name, field in model.model_fields.items()}
    return {name: value for name, value in query.items() if name in names and value != ""}


def _field_name(location: tuple[int | str, ...]) -> str:
    """``plan[2].pause`` for ("plan", 2, "pause")."""
    name = ""
    for part in location:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else part
    return name or "body"


def _api_error(problem: ErrorDetails) -> ApiError:
    location = problem["loc"]
    value = problem.get("input")
    context = problem.get("ctx") or {}
    field = _field_name(location)
    match problem["type"]:
        case "fleetwave":
            return invalid(context.get("field") or field, context["problem"], context["code"])
        case "extra_forbidden":  # of a nested object (validated() names the body's own)
            return invalid(field, "unknown field", Code.PARAM_ILLEGAL)
        case "string_unicode":  # a lone surrogate, which pydantic cannot read
            words = text_problem(value) if isinstance(value, str) else None
            return invalid(field, words or "is not valid Unicode text")
        case "missing":
            return invalid(field, "is required", Code.PARAM_MISSING)
        case "string_type":
            return invalid(field, f"must be a string, {got(value)}")
        case "string_too_long":
            limit = context["max_length"]
            length = len(value) if isinstance(value, str) else "more"
            return invalid(field, f"must be at most {limit} characters, got {length}")
        case "int_type":
            return invalid(field, f"must be an integer, {got(value)}")
        case "bool_type":
            return invalid(field, f"must be true or false, {got(value)}")
        case "literal_error" | "enum":
            return invalid(field, f"must be one of {context['expected']}, {got(value)}")
        case "list_type":
            return invalid(field, f"must be a list, {got(value)}")
        case "dict_type" | "model_type":
            return invalid(field, f"must be an object, {got(value)}")
    return invalid(field, f"{problem['msg'][:1].lower()}{problem['msg'][1:]}, {got(value)}")
