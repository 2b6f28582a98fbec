"""Browser sessions for the dashboard: the same API tokens, carried in a cookie.

A browser cannot put an Authorization header on an EventSource, so the dashboard signs in by
POSTing a token to ``/api/v1/session``. The answer sets two cookies:

``fw_session``  the token itself: HttpOnly (no script reads it), SameSite=Strict (no other
                site's page sends it), Secure when the API is served over HTTPS, never in a
                URL. Every request it comes with is checked exactly like a Bearer token, so a
                revoked or expired token ends its sessions at once, and the role still decides.
``fw_csrf``     a random value a script of the page reads and sends back in ``X-CSRF-Token``
                with every request that may change state (double submit): a request with the
                session cookie and any method but GET/HEAD/OPTIONS is refused without it.

A request with an Authorization header is judged by that header alone; cookies do not count.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from fleetwave.api.envelope import ApiError, Code

SESSION_COOKIE = "fw_session"
CSRF_COOKIE = "fw_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_BYTES = 32
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_token(request: Request) -> str | None:
    """The token of the request's session cookie, once its CSRF check passed; None without a
    session cookie. ApiError 403/1004 for a state-changing request whose X-CSRF-Token header
    does not match the fw_csrf cookie."""
    token = request.cookies.get(SESSION_COOKIE, "").strip()
    if not token:
        return None
    if request.method not in _SAFE_METHODS:
        expected = request.cookies.get(CSRF_COOKIE, "")
        sent = request.headers.get(CSRF_HEADER, "")
        if not expected or not hmac.compare_digest(expected.encode(), sent.encode()):
            raise ApiError(
                403,
                Code.FORBIDDEN,
                "csrf: a request signed in by cookie must send the fw_csrf cookie's value "
                "in the X-CSRF-Token header",
            )
    return token


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def start_session(response: Response, request: Request, token: str) -> None:
    """Set the session and CSRF cookies on ``response`` (cookies of the browser's session:
    gone when it closes)."""
    secure = _secure(request)
    response.set_cookie(
        SESSION_COOKIE, token, path="/", httponly=True, samesite="strict", secure=secure
    )
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(CSRF_BYTES),
        path="/",
        httponly=False,
        samesite="strict",
        secure=secure,
    )


def end_session(response: Response, request: Request) -> None:
    secure = _secure(request)
    for name, httponly in ((SESSION_COOKIE, True), (CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", httponly=httponly, samesite="strict", secure=secure)
