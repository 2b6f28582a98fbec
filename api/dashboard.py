"""The dashboard: static pages at ``/`` and ``/static/``, and its sign-in endpoints.

The pages hold no data and need no token (they must load to show the sign-in form); all they
show comes from the API, where each route's role applies (a viewer's session gets no verb
buttons, and the verb routes refuse it anyway). Every page and file is sent with a Content
Security Policy that lets it load and connect to this origin only.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetwave.api.access import Access, Handler, public, viewer
from fleetwave.api.auth import check_token
from fleetwave.api.envelope import ApiError, Code, ok
from fleetwave.api.schemas import SignInBody, parse_json, timestamp
from fleetwave.api.session import end_session, start_session
from fleetwave.api.validation import validated

STATIC = Path(__file__).resolve().parent / "static"
SIGN_IN_MAX_BYTES = 4096
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _secured(app: ASGIApp) -> ASGIApp:
    """``app`` with SECURITY_HEADERS on each of its answers."""

    async def secured(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_headers)

    return secured


async def _index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)


def _sign_in(access: Access) -> Handler:
    async def sign_in(request: Request) -> Response:
        """POST /api/v1/session {"token": "fw_..."}: a session for that token's role."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ApiError(400, Code.PARAM_INVALID, "body: send the token as application/json")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > SIGN_IN_MAX_BYTES:
                raise ApiError(
                    413, Code.PARAM_INVALID, f"body: larger than {SIGN_IN_MAX_BYTES} bytes"
                )
        token = validated(SignInBody, parse_json(body)).token
        info = await check_token(access.store, token)
        access.token_use.note(info.id)
        request.state.token_name = info.name
        request.state.token_role = info.role.value
        response = ok(
            {"name": info.name, "role": info.role.value, "expiresAt": timestamp(info.expires_at)}
        )
        start_session(response, request, token)
        return response

    return sign_in


async def _whoami(request: Request) -> Response:
    return ok({"name": request.state.token_name, "role": request.state.token_role})


async def _sign_out(request: Request) -> Response:
    response = ok({"signedOut": True})
    end_session(response, request)
    return response


def dashboard_routes(access: Access) -> list[BaseRoute]:
    return [
        access.route("/", GET=public(_index)),
        access.route(
            "/api/v1/session",
            GET=viewer(_whoami),
            POST=public(_sign_in(access)),
            DELETE=public(_sign_out),
        ),
        access.mount("/static", _secured(StaticFiles(directory=STATIC)), None),
    ]
