"""The edge agent's wire protocol, as values.

Two endpoints, HTTPS with mutual TLS on the node's agent port:

- ``POST /tasks/dispatch`` with ``{"taskId", "type", "version", "payload"}``, answered with
  ``data: {"taskId", "status"}``;
- ``GET /tasks/{taskId}``, answered with ``data: {"taskId", "type", "status", "lastError",
  "createdAt", "startedAt", "finishedAt"}``, or HTTP 404 when the agent does not know the task.

Every answer is the envelope ``{"code": 0, "message": "...", "data": {...}}``. Values built
from outside data go through named constructors (``from_json``) that raise ``PayloadError``
(a ``ValueError``) with the reason; nothing here does I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import sys
from collections.abc import Mapping
from typing import Any

import attrs

from fleetwave.config.quoting import quoted
from fleetwave.store.address import check_agent_host, check_agent_port
from fleetwave.store.models import APPLY_CONFIG

DISPATCH_PATH = "/tasks/dispatch"
TASKS_PATH = "/tasks/"

CODE_OK = 0
CODE_PARAMETER_MISSING = 2001
CODE_PARAMETER_INVALID = 2002
CODE_NOT_FOUND = 3001
CODE_INTERNAL = 5001
CODE_MIN = -(2**63)
CODE_MAX = 2**63 - 1
"""Envelope codes are small; one outside a bigint is not the protocol's."""


class PayloadError(ValueError):
    """Outside data does not follow the protocol. ``str()`` is the reason."""


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SUCCESS, TaskStatus.FAILED)

    @classmethod
    def parse(cls, value: object) -> TaskStatus:
        if not isinstance(value, str):
            raise PayloadError(f"status must be text, got {_show(value)}")
        try:
            return cls(value)
        except ValueError:
            raise PayloadError(f"unknown task status {_show(value)}") from None


@attrs.frozen
class AgentAddress:
    """Where one edge node's agent listens: an IP literal (canonical text) and a port.

    Built only through the shared check (store/address.py), so the URL made from it names
    exactly this address: no name to resolve, no port or path smuggled into the host.
    Raises ``InvalidAddress`` (a ``ValueError``) saying what is wrong.
    """

    host: str = attrs.field(converter=check_agent_host)
    port: int = attrs.field(converter=check_agent_port)

    @property
    def _netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if _is_ipv6(self.host) else f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"https://{self._netloc}"

    def __str__(self) -> str:
        return self._netloc


def agent_hosts(count: int, first_host: str = "127.0.0.2") -> list[str]:
    """``count`` consecutive addresses from ``first_host``: 127.0.0.2, 127.0.0.3, ..."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    first = ipaddress.ip_address(first_host)
    return [str(first + k) for k in range(count)]


def _is_ipv6(host: str) -> bool:
    # Only an IPv6 literal has a colon: host names and IPv4 addresses never do. Called on
    # every request, so no parsing.
    return ":" in host


@attrs.frozen
class DispatchRequest:
    """The body of ``POST /tasks/dispatch``."""

    task_id: str
    version: int
    type: str = APPLY_CONFIG
    payload: dict[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "taskId": self.task_id,
            "type": self.type,
            "version": self.version,
            "payload": self.payload,
        }

    @classmethod
    def from_json(cls, data: object) -> DispatchRequest:
        """Raises PayloadError saying what is wrong with ``data``."""
        body = _object(data, "the request body")
        payload = body.get("payload", {})
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise PayloadError(f"payload must be an object, got {_show(payload)}")
        version = _required(body, "version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise PayloadError(f"version must be a whole number >= 0, got {_show(version)}")
        return cls(
            task_id=_text(body, "taskId"),
            type=_text(body, "type"),
            version=version,
            payload=payload,
        )


@attrs.frozen
class DispatchAck:
    """``data`` of the answer to a dispatch: the agent holds the task, in this status."""

    task_id: str
    status: TaskStatus

    def to_json(self) -> dict[str, Any]:
        return {"taskId": self.task_id, "status": self.status.value}

    @classmethod
    def from_json(cls, data: object) -> DispatchAck:
        body = _object(data, "data")
        return cls(
            task_id=_text(body, "taskId"),
            status=TaskStatus.parse(_required(body, "status")),
        )


@attrs.frozen
class TaskState:
    """``data`` of the answer to ``GET /tasks/{taskId}``. Timestamps are ISO-8601 text."""

    task_id: str
    type: str
    status: TaskStatus
    last_error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "taskId": self.task_id,
            "type": self.type,
            "status": self.status.value,
            "lastError": self.last_error,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }

    @classmethod
    def from_json(cls, data: object) -> TaskState:
        """taskId, type and status are required; the others may be null or absent."""
        body = _object(data, "data")
        return cls(
            task_id=_text(body, "taskId"),
            type=_text(body, "type"),
            status=TaskStatus.parse(_required(body, "status")),
            last_error=_optional_text(body, "lastError"),
            created_at=_optional_text(body, "createdAt"),
            started_at=_optional_text(body, "startedAt"),
            finished_at=_optional_text(body, "finishedAt"),
        )


@attrs.frozen
class Envelope:
    """Every answer of the agent: ``code`` 0 is success, anything else is an error."""

    code: int
    message: str
    data: Any = None

    @property
    def ok(self) -> bool:
        return self.code == CODE_OK

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}

    @classmethod
    def from_json(cls, data: object) -> Envelope:
        body = _object(data, "the answer")
        code = _required(body, "code")
        if not isinstance(code, int) or isinstance(code, bool):
            raise PayloadError(f"code must be a whole number, got {_show(code)}")
        if not CODE_MIN <= code <= CODE_MAX:
            raise PayloadError(f"code must fit in 64 bits, got {_show(code)}")
        message = body.get("message", "")
        if message is None:
            message = ""
        if not isinstance(message, str):
            raise PayloadError(f"message must be text, got {_show(message)}")
        return cls(code=code, message=message, data=body.get("data"))

    @classmethod
    def decode(cls, content: bytes) -> Envelope:
        """Parse an answer body. Raises ``InvalidJSON`` or ``PayloadError``, whatever the bytes:
        nesting deeper than the parser's stack, integers past Python's digit limit, NaN and
        Infinity (not JSON numbers) included."""
        try:
            data = json.loads(content, parse_constant=_no_constant)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidJSON(f"not JSON: {error}") from None
        except RecursionError:
            raise InvalidJSON("not JSON this daemon reads: nested too deeply") from None
        except _NotANumber as error:
            raise PayloadError(str(error)) from None
        except ValueError:
            # int() refuses numbers of more digits than sys.get_int_max_str_digits().
            raise PayloadError(
                f"a number of more than {sys.get_int_max_str_digits()} digits"
            ) from None
        return cls.from_json(data)


class InvalidJSON(PayloadError):
    """The body is not JSON at all."""


def envelope(code: int, message: str, data: object = None) -> dict[str, Any]:
    return {"code": code, "message": message, "data": data}


# --- field readers: each raises PayloadError naming the field ---


class _NotANumber(ValueError):
    pass


def _no_constant(name: str) -> object:
    raise _NotANumber(f"{name} is not a JSON number")


_SHOWN = 60


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _show(value: object) -> str:
    """A value from outside, in a few words: containers by size (repr of a deep one would
    recurse as deep), text quoted and escaped, long numbers by their length."""
    match value:
        case dict():
            return f"an object of {len(value)} member(s)"
        case list():
            return f"a list of {len(value)} item(s)"
        case str():
            return quoted(value, _SHOWN)
        case bool() | None | float():
            return repr(value)
        case int() if abs(value) >= 10**_SHOWN:
            return f"a number of more than {_SHOWN} digits"
    return _clip(repr(value))


def _object(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise PayloadError(f"{what} must be a JSON object, got {_show(data)}")
    return data


def _required(body: Mapping[str, Any], name: str) -> object:
    if name not in body or body[name] is None:
        raise PayloadError(f"{name} is missing")
    return body[name]


def _text(body: Mapping[str, Any], name: str) -> str:
    value = _required(body, name)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{name} must be non-empty text, got {_show(value)}")
    return value


def _optional_text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{name} must be text or null, got {_show(value)}")
    return value or None
