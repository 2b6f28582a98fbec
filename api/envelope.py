"""The original system's answer envelope ``{"code", "message", "data"}`` and its error codes.

Code 0 is success. Every answer of the API, errors included, has this shape, so the original
web UI and scripts keep working.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from starlette.responses import JSONResponse

OK_MESSAGE = "success"


class Code(enum.IntEnum):
    OK = 0
    UNAUTHORIZED = 1001
    INVALID_TOKEN = 1002
    FORBIDDEN = 1004
    PARAM_MISSING = 2001
    PARAM_INVALID = 2002
    PARAM_ILLEGAL = 2003
    NOT_FOUND = 3001
    ALREADY_EXISTS = 3002
    CONFLICT = 3003
    INTERNAL = 5001
    DATABASE = 5002
    EXTERNAL = 5003


class ApiError(Exception):
    """A request the API answers with an error envelope; ``message`` is shown to the caller."""

    def __init__(
        self,
        status: int,
        code: Code,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def envelope(code: int, message: str, data: object) -> dict[str, object]:
    return {"code": code, "message": message, "data": data}


def ok(data: object) -> JSONResponse:
    return JSONResponse(envelope(Code.OK, OK_MESSAGE, data))


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        envelope(error.code, error.message, None), status_code=error.status, headers=error.headers
    )
