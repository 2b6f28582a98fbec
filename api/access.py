"""Who may call what: every route declares, beside it, the role each of its methods needs.

    route("/api/v1/releases/{id}/pause", POST=operator(api.pause_release)),

``public`` needs no token; a token's role is one of ``viewer`` < ``operator`` < ``admin``, and
each role may do all that the roles before it may. ``create_app`` refuses a route table with a
route built any other way (``undeclared_routes``), so a route cannot be added without saying
who may call it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetwave.api.auth import authenticate
from fleetwave.api.envelope import ApiError, Code, error_response
from fleetwave.api.token_use import TokenUse
from fleetwave.store.base import Store
from fleetwave.store.models import Actor, Role

Handler = Callable[[Request], Awaitable[Response]]

ROUTE_KEY = "fleetwave.route"
"""The scope key where a matched route leaves its path template, for the request metrics."""


@attrs.frozen
class Endpoint:
    """A handler and the role it needs (None: no token at all)."""

    needs: Role | None
    handler: Handler


def public(handler: Handler) -> Endpoint:
    """No token: health checks, the API's OpenAPI document, the dashboard's page and sign-in."""
    return Endpoint(None, handler)


def viewer(handler: Handler) -> Endpoint:
    """Reads: releases, events, nodes, the event stream, the dashboard."""
    return Endpoint(Role.VIEWER, handler)


def operator(handler: Handler) -> Endpoint:
    """Creating releases and every release verb."""
    return Endpoint(Role.OPERATOR, handler)


def admin(handler: Handler) -> Endpoint:
    """Nodes, tokens, webhooks, settings."""
    return Endpoint(Role.ADMIN, handler)


class DeclaredRoute(Route):
    """A route whose every method (HEAD included) declares the role it needs."""

    def __init__(self, path: str, endpoints: Mapping[str, Endpoint], dispatch: Handler) -> None:
        super().__init__(path, dispatch, methods=list(endpoints))
        self.needs: dict[str, Role | None] = {
            method: endpoint.needs for method, endpoint in endpoints.items()
        }


class DeclaredMount(Mount):
    """A mounted ASGI app (static files) whose every request needs one role."""

    def __init__(self, path: str, app: ASGIApp, needs: Role | None) -> None:
        super().__init__(path, app=app)
        self.needs = needs


def undeclared_routes(routes: Sequence[BaseRoute]) -> list[str]:
    """Every route of ``routes`` that does not declare a role for each of its methods."""
    missing: list[str] = []
    for route in routes:
        if isinstance(route, DeclaredRoute):
            undeclared = sorted(set(route.methods or ()) - set(route.needs))
            missing += [f"{method} {route.path}" for method in undeclared]
        elif not isinstance(route, DeclaredMount):
            missing.append(f"{type(route).__name__} {getattr(route, 'path', route)!s}")
    return missing


@attrs.frozen
class Access:
    """Builds declared routes and checks, before each handler, the token against its role.

    The request's ``state`` then carries ``token_name``, ``token_role`` (for the request log)
    and ``actor`` (for the store, which records it with a release's events)."""

    store: Store
    token_use: TokenUse

    async def authorize(self, request: Request, needs: Role | None) -> None:
        """ApiError 401 (no, unknown or expired token) or 403/1004 (role too low)."""
        if needs is None:
            return
        token = await authenticate(self.store, request)
        request.state.token_name = token.name
        request.state.token_role = token.role.value
        request.state.actor = Actor(token.name, token.role)
        self.token_use.note(token.id)
        if not token.role.allows(needs):
            raise ApiError(
                403,
                Code.FORBIDDEN,
                f"forbidden: {request.method} {request.url.path} needs the {needs} role; "
                f"token {token.name!r} is {token.role}",
            )

    def route(self, path: str, **by_method: Endpoint) -> DeclaredRoute:
        """One route per path, so a wrong method gets a 405 listing every allowed one."""
        endpoints = dict(by_method)
        if "GET" in endpoints:
            endpoints["HEAD"] = endpoints["GET"]

        async def dispatch(request: Request) -> Response:
            request.scope[ROUTE_KEY] = path
            endpoint = endpoints[request.method]
            await self.authorize(request, endpoint.needs)
            return await endpoint.handler(request)

        return DeclaredRoute(path, endpoints, dispatch)

    def mount(self, path: str, app: ASGIApp, needs: Role | None) -> DeclaredMount:
        """Mount ``app`` (static files, say) at ``path``; every request to it needs ``needs``."""

        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                try:
                    await self.authorize(Request(scope, receive), needs)
                except ApiError as error:
                    await error_response(error)(scope, receive, send)
                    return
            await app(scope, receive, send)

        return DeclaredMount(path, guarded, needs)
