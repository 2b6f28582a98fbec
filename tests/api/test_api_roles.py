"""Roles: every route declares the role each method needs, and the API holds to it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from fleetwave.api.access import (
    Access,
    DeclaredMount,
    DeclaredRoute,
    undeclared_routes,
    viewer,
)
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.api.server import serve_api
from fleetwave.api.token_use import TokenUse
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Role
from tests.api.conftest import add_nodes

ABSENT_ID = "999999"
"""Every path parameter of the matrix: nothing has it, so an allowed write changes nothing."""

_VERBS = ("pause", "resume", "cancel", "retry", "rollback")

# The role of the routes the issue names; every route (these and any added later) must also
# declare one, and the matrix below checks whatever is declared.
POLICY: dict[tuple[str, str], Role | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/api/v1/releases"): Role.VIEWER,
    ("POST", "/api/v1/releases"): Role.OPERATOR,
    ("GET", "/api/v1/releases/detail"): Role.VIEWER,
    ("GET", "/api/v1/releases/{id}"): Role.VIEWER,
    ("GET", "/api/v1/releases/{id}/events"): Role.VIEWER,
    ("GET", "/api/v1/nodes"): Role.VIEWER,
    ("POST", "/api/v1/nodes"): Role.ADMIN,
    ("PATCH", "/api/v1/nodes/{id}"): Role.ADMIN,
    ("GET", "/api/v1/nodes/{id}"): Role.VIEWER,
    ("GET", "/api/v1/fleet"): Role.VIEWER,
    ("GET", "/api/v1/scopes"): Role.VIEWER,
    ("GET", "/api/v1/scopes/{scope}/strategy"): Role.VIEWER,
    ("PUT", "/api/v1/scopes/{scope}/strategy"): Role.OPERATOR,
    ("DELETE", "/api/v1/scopes/{scope}/strategy"): Role.OPERATOR,
    **{("POST", f"/api/v1/releases/{{id}}/{verb}"): Role.OPERATOR for verb in _VERBS},
    ("GET", "/api/v1/tokens"): Role.ADMIN,
    ("DELETE", "/api/v1/tokens/{id}"): Role.ADMIN,
    # The dashboard: its pages hold no data; a session is made from a token.
    ("GET", "/"): None,
    ("GET", "/static/{path}"): None,
    ("GET", "/api/v1/session"): Role.VIEWER,
    ("POST", "/api/v1/session"): None,
    ("DELETE", "/api/v1/session"): None,
}


def declared(app: Starlette) -> Iterator[tuple[str, str, Role | None]]:
    for route in app.routes:
        if isinstance(route, DeclaredMount):
            for method in ("GET", "HEAD"):
                yield method, f"{route.path}/{{path}}", route.needs
            continue
        assert isinstance(route, DeclaredRoute), route
        for method, needs in sorted(route.needs.items()):
            yield method, route.path, needs


def test_every_route_of_the_api_declares_a_role_for_every_method() -> None:
    app = create_app(MemoryStore())

    assert undeclared_routes(app.routes) == []
    table = {(method, path): needs for method, path, needs in declared(app)}
    assert {key: table.get(key, "undeclared") for key in POLICY} == POLICY
    heads = {path: needs for (method, path), needs in table.items() if method == "HEAD"}
    assert heads == {path: needs for (method, path), needs in table.items() if method == "GET"}


def test_a_route_without_a_declared_role_is_found_by_the_walk() -> None:
    async def handler(request: Request) -> Response:
        return Response("")

    access = Access(MemoryStore(), TokenUse(MemoryStore()))
    routes = [
        access.route("/declared", GET=viewer(handler)),
        Route("/plain", handler, methods=["POST"]),
        access.mount("/static", StaticFiles(directory="."), Role.VIEWER),
    ]
    # A declared route with a method added behind its back is caught too.
    sneaky = access.route("/sneaky", GET=viewer(handler))
    assert sneaky.methods is not None
    sneaky.methods.add("DELETE")

    assert undeclared_routes([*routes, sneaky]) == ["Route /plain", "DELETE /sneaky"]


def _path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", ABSENT_ID, template)


async def test_role_matrix_every_route_and_method_for_viewer_operator_and_admin() -> None:
    """Each role against each declared method of each route, over a real socket (so an event
    stream answers its status without being read to the end): below the declared role it is
    403 / 1004 naming the role needed; at or above it, never 401 or 403."""
    store = MemoryStore()
    app = create_app(store)
    tokens = {role: await create_token(store, f"matrix-{role}", role=role) for role in Role}
    failures: list[str] = []
    checked = 0
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_api, app, "127.0.0.1:0")
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as client:
            for method, template, needs in declared(app):
                path = _path(template)
                body = None if method in ("GET", "HEAD", "DELETE") else {}
                for role in [None, *Role]:
                    headers = {} if role is None else {"Authorization": f"Bearer {tokens[role]}"}
                    async with client.stream(method, path, json=body, headers=headers) as answer:
                        status = answer.status_code
                        document = None
                        if status in (401, 403) and method != "HEAD":
                            document = (await answer.aread()).decode()
                    checked += 1
                    who = f"{method} {template} as {role or 'no token'} (needs {needs})"
                    if needs is None or (role is not None and role.allows(needs)):
                        if status in (401, 403):
                            failures.append(f"{who}: refused {status} {document}")
                    elif role is None:
                        if status != 401:
                            failures.append(f"{who}: {status}, expected 401")
                    elif status != 403:
                        failures.append(f"{who}: {status}, expected 403")
                    elif document is not None and (
                        '"code":1004' not in document or f"needs the {needs} role" not in document
                    ):
                        failures.append(f"{who}: 403 without code 1004 and the role: {document}")
        nursery.cancel_scope.cancel()

    assert failures == []
    assert checked == 4 * len(list(declared(app)))


async def test_a_viewer_cannot_create_a_release_and_nothing_is_written(
    anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    token = await create_token(store, "dashboard", role=Role.VIEWER)

    response = await anonymous.post(
        "/api/v1/releases",
        json={"target": "cdn", "reason": "r"},
        headers={"Authorization": f"Bearer {token}"},
    )

    assert response.status_code == 403
    assert response.json() == {
        "code": 1004,
        "message": "forbidden: POST /api/v1/releases needs the operator role; "
        "token 'dashboard' is viewer",
        "data": None,
    }
    assert await store.list_releases() == ([], 0)


async def test_an_operator_creates_releases_but_cannot_register_nodes(
    anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 1)
    token = await create_token(store, "deployer", role=Role.OPERATOR)
    headers = {"Authorization": f"Bearer {token}"}

    created = await anonymous.post(
        "/api/v1/releases", json={"target": "cdn", "reason": "r"}, headers=headers
    )
    refused = await anonymous.post(
        "/api/v1/nodes", json={"name": "edge-9", "mainIp": "127.0.0.9"}, headers=headers
    )

    assert created.status_code == 200
    assert refused.status_code == 403 and "needs the admin role" in refused.json()["message"]
    assert [node.name for node in await store.list_nodes()] == ["edge-001"]


@pytest.mark.parametrize("role", list(Role))
def test_roles_are_ordered_viewer_operator_admin(role: Role) -> None:
    order = [Role.VIEWER, Role.OPERATOR, Role.ADMIN]
    assert [role.allows(needed) for needed in order] == [
        order.index(role) >= order.index(needed) for needed in order
    ]
