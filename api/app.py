"""The HTTP API: routes, thin handlers, and the envelope around every answer.

A handler parses and validates its input (api/schemas.py), makes its store call and wraps
the answer in the envelope. Store failures map to the original's codes; anything unexpected
becomes a 500 / 5001 envelope with no internals, logged with its traceback.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import attrs
import structlog
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetwave.api.access import (
    ROUTE_KEY,
    Access,
    admin,
    operator,
    public,
    undeclared_routes,
    viewer,
)
from fleetwave.api.dashboard import dashboard_routes
from fleetwave.api.envelope import ApiError, Code, error_response, ok
from fleetwave.api.events import EventHub, EventStream
from fleetwave.api.fleet import fleet_summary
from fleetwave.api.liveness import actor_item, available_verbs, creators, liveness_item
from fleetwave.api.metrics import metrics_response
from fleetwave.api.openapi import OPENAPI_PATH, openapi_endpoint
from fleetwave.api.preview import parse_dry_run, preview_item
from fleetwave.api.schemas import (
    DEFAULT_AGENT_PORT,
    MAX_BODY_BYTES,
    event_item,
    node_detail,
    node_item,
    parse_detail_query,
    parse_events_query,
    parse_follow_query,
    parse_id,
    parse_if_exists,
    parse_json,
    parse_node_patch,
    parse_node_registration,
    parse_release_query,
    parse_release_spec,
    parse_verb_body,
    release_batches,
    release_item,
    selection_item,
    token_item,
    verb_answer,
)
from fleetwave.api.scopes import (
    SCOPE_PATH,
    given_strategy_fields,
    parse_scope,
    parse_scope_strategy,
    scope_item,
)
from fleetwave.api.token_use import TokenUse
from fleetwave.api.verbs import promote, steer
from fleetwave.api.webhooks import (
    DELIVERIES_SHOWN,
    delivery_item,
    parse_webhook_spec,
    webhook_item,
)
from fleetwave.config import metrics
from fleetwave.config.quoting import loggable, quoted
from fleetwave.store.base import Store
from fleetwave.store.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from fleetwave.store.models import Release, ReleaseStatus, Wait
from fleetwave.store.verbs import Verb

log = structlog.get_logger("fleetwave.api")

READY_TIMEOUT = 5.0
"""A readiness probe answers within this, database or not."""
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Every other method may change state, so each such request gets an ``api.audit`` line."""
NODE_RUNS_SHOWN = 20
"""A node's detail shows its part in this many of its latest releases."""


def _from_store(error: StoreError) -> ApiError:
    match error:
        case NotFound():
            return ApiError(404, Code.NOT_FOUND, str(error))
        case AlreadyExists():
            return ApiError(409, Code.ALREADY_EXISTS, str(error))
        case Conflict():
            return ApiError(409, Code.CONFLICT, str(error))
        case InvalidInput():
            return ApiError(400, Code.PARAM_INVALID, str(error))
        case StoreUnavailable():
            return ApiError(503, Code.DATABASE, "database unavailable, retry later")
    return ApiError(500, Code.DATABASE, "database error")


async def read_json(request: Request) -> object:
    """The request's JSON body, at most MAX_BODY_BYTES long (413 beyond, without reading it)."""
    too_large = ApiError(413, Code.PARAM_INVALID, f"body: larger than {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def _not_found(release_id: int) -> ApiError:
    return ApiError(404, Code.NOT_FOUND, f"release {release_id} not found")


@attrs.frozen
class _Handlers:
    store: Store
    default_agent_port: int
    events: EventHub | None = None

    async def create_release(self, request: Request) -> Response:
        dry_run = parse_dry_run(request.query_params)
        document = await read_json(request)
        spec = parse_release_spec(document)
        # The fields not given come from the default of the release's scope (store/scopes.py).
        spec = attrs.evolve(spec, strategy_fields=given_strategy_fields(document))
        if dry_run:
            return ok(preview_item(await self.store.preview_release(spec)))
        created = await self.store.create_release(
            attrs.evolve(spec, requested_by=request.state.actor)
        )
        return ok(
            {
                "releaseId": created.release.id,
                "version": created.release.version,
                "totalNodes": created.release.total_nodes,
                "batches": [
                    {"batch": batch, "nodeIds": list(node_ids)}
                    for batch, node_ids in created.batches
                ],
                "selection": selection_item(created.release),
                "defaultScope": created.default_scope,
            }
        )

    async def list_releases(self, request: Request) -> Response:
        page = parse_release_query(request.query_params)
        releases, total = await self.store.list_releases(
            status=page.status, offset=page.offset, limit=page.page_size
        )
        waits = await self._waits(releases)
        by = await creators(self.store, releases)
        return ok(
            {
                "items": [
                    {
                        **release_item(release, waits.get(release.id)),
                        "createdBy": actor_item(by[release.id]),
                    }
                    for release in releases
                ],
                "total": total,
                "page": page.page,
                "pageSize": page.page_size,
            }
        )

    async def show_release(self, request: Request) -> Response:
        return await self._release_detail(parse_id(request.path_params["id"]))

    async def show_release_by_query(self, request: Request) -> Response:
        """``GET /api/v1/releases/detail?id=N``, the original's later form of the detail."""
        return await self._release_detail(parse_detail_query(request.query_params))

    async def _release_detail(self, release_id: int) -> Response:
        release = await self.store.get_release(release_id)
        if release is None:
            raise _not_found(release_id)
        nodes = await self.store.release_nodes(release_id)
        wait = (await self._waits([release])).get(release_id)
        by = (await creators(self.store, [release]))[release_id]
        item = {**release_item(release, wait), "createdBy": actor_item(by)}
        return ok(
            {
                "release": item,
                "batches": release_batches(nodes),
                "liveness": liveness_item(release, nodes, datetime.now(UTC)),
                "verbs": available_verbs(release),
            }
        )

    async def _waits(self, releases: Sequence[Release]) -> dict[int, Wait]:
        """What the pending ones among ``releases`` wait for (no query when none is)."""
        pending = [release.id for release in releases if release.status is ReleaseStatus.PENDING]
        return await self.store.waits(pending) if pending else {}

    async def release_events(self, request: Request) -> Response:
        release_id = parse_id(request.path_params["id"])
        follow = parse_follow_query(request.query_params, request.headers.get("last-event-id"))
        if follow.follow:
            if await self.store.get_release(release_id) is None:
                raise _not_found(release_id)
            return self._stream(release_id, follow.after_id)
        query = parse_events_query(request.query_params)
        events = await self.store.release_events(
            release_id, after_id=query.after_id, limit=query.limit
        )
        # Every release has its "created" event, so only an empty page needs this check.
        if not events and await self.store.get_release(release_id) is None:
            raise _not_found(release_id)
        return ok(
            {
                "items": [event_item(event) for event in events],
                "nextAfterId": events[-1].id if events else query.after_id,
            }
        )

    def verb(self, verb: Verb) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            release_id = parse_id(request.path_params["id"])
            body = parse_verb_body(await read_json(request), verb)
            by = request.state.actor
            if verb is Verb.PROMOTE:
                answer = await promote(
                    self.store, release_id, by=by, reason=body.reason, full=body.full
                )
            else:
                answer = await steer(
                    self.store,
                    release_id,
                    verb,
                    by=by,
                    reason=body.reason,
                    to_version=body.to_version,
                )
            log.info(
                "api.verb",
                verb=str(verb),
                release_id=release_id,
                changed=answer.result.changed,
                in_effect=answer.effect.in_effect,
                waited=round(answer.waited, 3),
            )
            return ok(verb_answer(answer))

        return handler

    async def all_events(self, request: Request) -> Response:
        follow = parse_follow_query(request.query_params, request.headers.get("last-event-id"))
        if follow.follow:
            return self._stream(None, follow.after_id)
        query = parse_events_query(request.query_params)
        events = await self.store.events_since(query.after_id, limit=query.limit)
        return ok(
            {
                "items": [event_item(event) for event in events],
                "nextAfterId": events[-1].id if events else query.after_id,
            }
        )

    def _stream(self, release_id: int | None, after_id: int | None) -> Response:
        if self.events is None:
            raise ApiError(503, Code.INTERNAL, "event streams are not served by this process")
        stream = EventStream(self.events, self.store, release_id, after_id)
        return StreamingResponse(
            stream.frames(),
            media_type="text/event-stream",
            # No proxy may buffer or cache a live stream.
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def list_nodes(self, request: Request) -> Response:
        nodes = await self.store.list_nodes()
        return ok({"items": [node_item(node) for node in nodes], "total": len(nodes)})

    async def fleet(self, request: Request) -> Response:
        return ok(fleet_summary(await self.store.fleet_state()))

    async def register_node(self, request: Request) -> Response:
        replace = parse_if_exists(request.query_params)
        node = parse_node_registration(await read_json(request), self.default_agent_port)
        registered = await self.store.upsert_node(
            node.name,
            node.main_ip,
            node.agent_port,
            enabled=node.enabled,
            status=node.status,
            replace=replace,
        )
        return ok(node_item(registered))

    async def show_node(self, request: Request) -> Response:
        node_id = parse_id(request.path_params["id"])
        node = await self.store.get_node(node_id)
        if node is None:
            raise ApiError(404, Code.NOT_FOUND, f"node {node_id} not found")
        runs = await self.store.node_runs(node_id, limit=NODE_RUNS_SHOWN)
        return ok(node_detail(node, runs, await self.store.node_expectation(node_id)))

    async def update_node(self, request: Request) -> Response:
        node_id = parse_id(request.path_params["id"])
        patch = parse_node_patch(await read_json(request))
        node = await self.store.update_node(
            node_id, status=patch.status, enabled=patch.enabled, labels=patch.labels
        )
        return ok(node_item(node))

    async def list_tokens(self, request: Request) -> Response:
        tokens = await self.store.list_tokens()
        return ok({"items": [token_item(token) for token in tokens], "total": len(tokens)})

    async def revoke_token(self, request: Request) -> Response:
        token = await self.store.revoke_token(parse_id(request.path_params["id"]))
        log.info(
            "api.token_revoked",
            token_id=token.id,
            revoked_token=token.name,
            token_name=request.state.token_name,
            token_role=request.state.token_role,
        )
        return ok(token_item(token))

    async def list_webhooks(self, request: Request) -> Response:
        hooks = await self.store.list_webhooks()
        return ok({"items": [webhook_item(hook) for hook in hooks], "total": len(hooks)})

    async def create_webhook(self, request: Request) -> Response:
        spec = parse_webhook_spec(await read_json(request))
        hook = await self.store.create_webhook(spec)
        # The secret is shown this once: receivers verify signatures with it.
        return ok({**webhook_item(hook), "secret": spec.secret})

    async def show_webhook(self, request: Request) -> Response:
        webhook_id = parse_id(request.path_params["id"])
        deliveries = await self.store.webhook_deliveries(webhook_id, limit=DELIVERIES_SHOWN)
        hook = next((h for h in await self.store.list_webhooks() if h.id == webhook_id), None)
        if hook is None:  # removed meanwhile
            raise ApiError(404, Code.NOT_FOUND, f"webhook {webhook_id} does not exist")
        failures = [d for d in deliveries if d.last_error is not None]
        return ok(
            {
                "webhook": webhook_item(hook),
                "deliveries": [delivery_item(d) for d in deliveries],
                "recentFailures": [delivery_item(d) for d in failures],
            }
        )

    async def delete_webhook(self, request: Request) -> Response:
        webhook_id = parse_id(request.path_params["id"])
        await self.store.delete_webhook(webhook_id)
        return ok({"id": webhook_id, "deleted": True})

    async def list_scopes(self, request: Request) -> Response:
        rows = await self.store.list_scope_strategies()
        return ok({"items": [scope_item(row) for row in rows], "total": len(rows)})

    async def show_scope_strategy(self, request: Request) -> Response:
        scope = parse_scope(request.path_params["scope"])
        row = await self.store.scope_strategy(scope)
        if row is None:
            raise ApiError(404, Code.NOT_FOUND, f"scope {scope} has no default strategy")
        return ok(scope_item(row))

    async def set_scope_strategy(self, request: Request) -> Response:
        scope = parse_scope(request.path_params["scope"])
        strategy = parse_scope_strategy(await read_json(request))
        row = await self.store.set_scope_strategy(scope, strategy.to_json(), by=request.state.actor)
        self._scope_audit("api.scope_strategy_set", request, scope)
        return ok(scope_item(row))

    async def clear_scope_strategy(self, request: Request) -> Response:
        scope = parse_scope(request.path_params["scope"])
        row = await self.store.clear_scope_strategy(scope)
        self._scope_audit("api.scope_strategy_cleared", request, scope)
        return ok({**scope_item(row), "cleared": True})

    def _scope_audit(self, event: str, request: Request, scope: str) -> None:
        log.info(
            event,
            scope=loggable(scope),
            token_name=request.state.token_name,
            token_role=request.state.token_role,
        )

    async def scrape_metrics(self, request: Request) -> Response:
        return await metrics_response(self.store)

    async def healthz(self, request: Request) -> Response:
        return ok({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        ready = False
        with trio.move_on_after(READY_TIMEOUT):
            try:
                ready = await self.store.ping()
            except StoreError as error:
                log.warning("api.not_ready", error=str(error))
        if not ready:
            raise ApiError(
                503,
                Code.DATABASE,
                "not ready: the database is unreachable or its migrations are not current",
            )
        return ok({"status": "ready"})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    error = _from_store(exc)
    if error.status >= 500:
        log.warning("api.store_error", error=quoted(str(exc)), kind=type(exc).__name__)
    return error_response(error)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    if exc.status_code == 404:
        error = ApiError(404, Code.NOT_FOUND, f"no such endpoint: {method} {path}")
    elif exc.status_code == 405:
        allowed = ", ".join(sorted((exc.headers or {}).get("Allow", "").split(", ")))
        error = ApiError(
            405,
            Code.PARAM_ILLEGAL,
            f"method {method} is not allowed on {path} (allowed: {allowed})",
            headers={"Allow": allowed},
        )
    else:
        code = Code.PARAM_INVALID if exc.status_code < 500 else Code.INTERNAL
        error = ApiError(exc.status_code, code, exc.detail, headers=exc.headers)
    return error_response(error)


@attrs.frozen
class RequestLog:
    """Outermost layer: one log line per request, and a 500 envelope for any escaped error."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except Exception:
            log.exception("api.unhandled_error", **_request_line(scope))
            if status == 0:
                status = 500
                await error_response(ApiError(500, Code.INTERNAL, "internal error"))(
                    scope, receive, send
                )
        finally:
            elapsed = time.perf_counter() - started
            # Unmatched paths share one label: a scanner must not grow a series per path.
            route = scope.get(ROUTE_KEY, "unmatched")
            metrics.API_REQUESTS.labels(route, str(status)).inc()
            metrics.API_LATENCY.labels(route).observe(elapsed)
            state = scope.get("state") or {}
            token = {"token_name": state.get("token_name"), "token_role": state.get("token_role")}
            log.info(
                "api.request",
                **_request_line(scope),
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                **token,
            )
            if scope["method"] not in _READ_METHODS:
                log.info("api.audit", **_request_line(scope), status=status, **token)


def _request_line(scope: Scope) -> dict[str, str]:
    """The caller's method and path for a log line: clipped, and quoted when odd."""
    return {"method": loggable(scope["method"], 20), "path": loggable(scope["path"])}


def create_app(
    store: Store,
    *,
    default_agent_port: int = DEFAULT_AGENT_PORT,
    token_use: TokenUse | None = None,
    serve_metrics: bool = True,
    events: EventHub | None = None,
) -> Starlette:
    """The API over ``store``: every route but the health checks needs a Bearer token whose
    role is at least the one declared beside the route (api/access.py).

    A node registered without ``agentPort`` gets ``default_agent_port`` (the daemon's
    ``agent_port`` setting). Token uses are noted in ``token_use``, which the daemon runs to
    write them. Without ``serve_metrics`` there is no ``/metrics`` (it is served on a bind of
    its own). Event streams (``?follow=true``) are fanned out by ``events``, the daemon's
    EventHub; without one they answer 503."""
    api = _Handlers(store, default_agent_port, events)
    access = Access(store, token_use or TokenUse(store))
    route = access.route
    routes = [
        route("/healthz", GET=public(api.healthz)),
        route("/readyz", GET=public(api.readyz)),
        route(
            "/api/v1/releases",
            GET=viewer(api.list_releases),
            POST=operator(api.create_release),
        ),
        # Before "/api/v1/releases/{id}", which would take "detail" for an id.
        route("/api/v1/releases/detail", GET=viewer(api.show_release_by_query)),
        route("/api/v1/releases/{id}", GET=viewer(api.show_release)),
        route("/api/v1/releases/{id}/events", GET=viewer(api.release_events)),
        route("/api/v1/events", GET=viewer(api.all_events)),
        route(
            "/api/v1/webhooks",
            GET=admin(api.list_webhooks),
            POST=admin(api.create_webhook),
        ),
        route(
            "/api/v1/webhooks/{id}",
            GET=admin(api.show_webhook),
            DELETE=admin(api.delete_webhook),
        ),
        route("/api/v1/nodes", GET=viewer(api.list_nodes), POST=admin(api.register_node)),
        route("/api/v1/nodes/{id}", GET=viewer(api.show_node), PATCH=admin(api.update_node)),
        route("/api/v1/tokens", GET=admin(api.list_tokens)),
        route("/api/v1/tokens/{id}", DELETE=admin(api.revoke_token)),
        *(route(f"/api/v1/releases/{{id}}/{verb}", POST=operator(api.verb(verb))) for verb in Verb),
        route("/api/v1/fleet", GET=viewer(api.fleet)),
        route("/api/v1/scopes", GET=viewer(api.list_scopes)),
        route(
            SCOPE_PATH,
            GET=viewer(api.show_scope_strategy),
            PUT=operator(api.set_scope_strategy),
            DELETE=operator(api.clear_scope_strategy),
        ),
        *dashboard_routes(access),
    ]
    if serve_metrics:
        routes.append(route("/metrics", GET=viewer(api.scrape_metrics)))
    # Public: it describes the API, not its data, and clients read it before they have a token.
    routes.append(route(OPENAPI_PATH, GET=public(openapi_endpoint(routes))))
    undeclared = undeclared_routes(routes)
    if undeclared:
        raise RuntimeError(f"routes without a declared role: {', '.join(undeclared)}")
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestLog)],
        exception_handlers={
            ApiError: _api_error,
            StoreError: _store_error,
            HTTPException: _http_error,
        },
    )
    # "/api/v1/releases/" is not a route: a 404 in the envelope, not a bare redirect that
    # scripts following the original API would not expect.
    app.router.redirect_slashes = False
    return app
