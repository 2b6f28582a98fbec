"""What each route of the API takes and answers, for its OpenAPI document (api/openapi.py).

Keyed by method and path template as create_app declares them; the role comes from the route
itself (api/access.py). Request and answer types are the ones the handlers validate with and
build (api/schemas.py, api/shapes.py), so the document cannot describe other shapes than the
real ones. Examples are requests against a small fleet over the in-memory store, whose ids are
shared by its tables (tests/api/test_openapi.py builds it and sends every one): nodes 1-4
(edge-001..edge-004, in regions eu and us), releases 5 (succeeded, config 1, every node), 10
(failed, nodes 1 and 2), 13 (paused, nodes 3 and 4) and 16 (pending); webhook 21; tokens 1
(admin) and 2 (viewer); scope eu has a default strategy (SCOPE_DEFAULT), no other scope has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
from pydantic import BaseModel

from fleetwave.api import shapes
from fleetwave.api.preview import CreateQuery
from fleetwave.api.schemas import (
    VERB_BODIES,
    DetailQuery,
    EventsQuery,
    FollowQuery,
    NodeBody,
    NodePatchBody,
    RegisterQuery,
    ReleaseBody,
    ReleaseQuery,
    SignInBody,
)
from fleetwave.api.scopes import SCOPE_PATH, ScopeStrategyBody
from fleetwave.api.webhooks import WebhookBody
from fleetwave.store.verbs import Verb


@attrs.frozen
class Example:
    """One request: path parameters, query, body (None: no body) and the status it gets."""

    name: str
    summary: str
    path: Mapping[str, object] = attrs.field(factory=dict)
    query: Mapping[str, object] = attrs.field(factory=dict)
    """Values as the parameters' schemas type them (sent as text: true, 5)."""
    body: object = None
    status: int = 200


@attrs.frozen
class Raw:
    """An answer that is not the JSON envelope: its media type and what it holds."""

    media: tuple[str, ...]
    description: str
    schema: Mapping[str, Any] = attrs.field(factory=lambda: {"type": "string"})


@attrs.frozen
class Operation:
    summary: str
    answer: Any
    """The type of the envelope's ``data``, or a Raw answer."""
    description: str = ""
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: tuple[type[BaseModel], ...] = ()
    headers: tuple[str, ...] = ()
    """Request headers it reads: ``Last-Event-ID``."""
    stream: bool = False
    """``follow=true`` answers server-sent events of EventItem."""
    errors: tuple[int, ...] = ()
    """Statuses beyond those every route of its kind may answer (400, 401, 403, 404, 413)."""
    examples: tuple[Example, ...] = ()
    tags: tuple[str, ...] = ()


SUCCEEDED, FAILED, PAUSED, PENDING = 5, 10, 13, 16
"""The example fleet's releases."""
WEBHOOK: Final = 21
RELEASE_EXAMPLE: Final = {
    "target": "cdn",
    "reason": "config 42: new cache rules",
    "plan": [1, {"pause": 300}, "25%", "100%"],
    "maxFailurePercent": 5,
    "onFailure": "pause",
}
SCOPE_DEFAULT: Final = {"plan": [1, {"pause": 300}, "100%"], "onFailure": "pause"}
"""The example fleet's default strategy of scope eu."""
STREAM_NOTE: Final = (
    "With follow=true: server-sent events, one EventItem per message (`id:` is the resume "
    "point; send it back as Last-Event-ID), comment lines as keep-alives, and an `end` event "
    "when the release ends or the server stops."
)


def _missing(what: str) -> Example:
    return Example("missing", f"a {what} that does not exist", {"id": 99}, status=404)


def _verb_examples(verb: Verb) -> tuple[Example, ...]:
    target = {
        Verb.PAUSE: PENDING,
        Verb.RESUME: PAUSED,
        Verb.CANCEL: PENDING,
        Verb.RETRY: FAILED,
        Verb.ROLLBACK: FAILED,
        Verb.PROMOTE: PENDING,
    }[verb]
    body: dict[str, object] = {"reason": f"{verb} from the runbook"}
    if verb is Verb.PROMOTE:
        body["full"] = True
    if verb is Verb.ROLLBACK:
        body["toVersion"] = 1
    refused = {"reason": 5} if verb is not Verb.ROLLBACK else {"toVersion": 0}
    return (
        Example(verb.value, f"{verb} release {target}", {"id": target}, body=body),
        Example("empty", f"{verb} release {target}, no reason", {"id": target}, body={})
        if verb is not Verb.PROMOTE
        else Example("no-pause", f"release {target} is at no pause", {"id": target}, status=409),
        Example(
            "wrong-field", "a value of the wrong type", {"id": target}, body=refused, status=400
        ),
        Example("missing", "a release that does not exist", {"id": 99}, body={}, status=404),
    )


_VERB_SUMMARIES: Final = {
    Verb.PAUSE: "Pause a release: no new node starts; running nodes finish",
    Verb.RESUME: "Resume a paused release",
    Verb.CANCEL: "Cancel a release: no new node starts; the rest is cancelled",
    Verb.RETRY: "Retry the failed and skipped nodes of a failed or cancelled release",
    Verb.ROLLBACK: "Roll back: a new release of an earlier config version over the same nodes",
    Verb.PROMOTE: "Pass the pause a release waits at (full: every remaining pause)",
}

OPERATIONS: Final[dict[tuple[str, str], Operation]] = {
    ("GET", "/healthz"): Operation(
        "The process is alive",
        shapes.Alive,
        examples=(Example("alive", "liveness probe"),),
        tags=("health",),
    ),
    ("GET", "/readyz"): Operation(
        "The database answers and its migrations are current",
        shapes.Ready,
        errors=(503,),
        examples=(Example("ready", "readiness probe"),),
        tags=("health",),
    ),
    ("GET", "/api/v1/openapi.json"): Operation(
        "This document",
        Raw(("application/json",), "the OpenAPI 3.1 document", {"type": "object"}),
        examples=(Example("document", "the API's description"),),
        tags=("health",),
    ),
    ("GET", "/api/v1/releases"): Operation(
        "List releases, newest first",
        shapes.ReleaseList,
        query=(ReleaseQuery,),
        examples=(
            Example("first-page", "the newest releases"),
            Example(
                "failed", "failed releases, 5 a page", query={"status": "failed", "pageSize": 5}
            ),
            Example(
                "clamped", "out-of-range paging is clamped", query={"page": 0, "pageSize": 500}
            ),
            Example("bad-status", "an unknown status", query={"status": "done"}, status=400),
        ),
        tags=("releases",),
    ),
    ("POST", "/api/v1/releases"): Operation(
        "Create a release (or, with dryRun=true, preview it)",
        shapes.ReleaseCreated | shapes.ReleasePreview,
        description="The answer is ReleaseCreated, or with dryRun=true a ReleasePreview; "
        "nothing is created then.",
        body=ReleaseBody,
        query=(CreateQuery,),
        errors=(409,),
        examples=(
            Example(
                "original", "the original's clients send the target alone", body={"target": "cdn"}
            ),
            Example("canary", "a canary, a bake, then a quarter at a time", body=RELEASE_EXAMPLE),
            Example(
                "by-selector",
                "the nodes carrying a label",
                body={"target": "cdn", "reason": "eu only", "selector": {"region": "eu"}},
            ),
            Example(
                "preview",
                "the batches and predicted time, nothing created",
                query={"dryRun": True},
                body=RELEASE_EXAMPLE,
            ),
            Example("no-target", "target is required", body={"reason": "r"}, status=400),
            Example(
                "unknown-field",
                "an unknown field is 2003",
                body={"target": "cdn", "batchSize": 5},
                status=400,
            ),
            Example(
                "bad-plan",
                "a plan step at fault is named",
                body={"target": "cdn", "plan": [1, "150%"]},
                status=400,
            ),
        ),
        tags=("releases",),
    ),
    ("GET", "/api/v1/releases/detail"): Operation(
        "A release and its nodes by batch (the original's ?id= form)",
        shapes.ReleaseDetail,
        query=(DetailQuery,),
        examples=(
            Example("detail", f"release {FAILED}", query={"id": FAILED}),
            Example("no-id", "id is required", status=400),
            Example("missing", "a release that does not exist", query={"id": 99}, status=404),
        ),
        tags=("releases",),
    ),
    ("GET", "/api/v1/releases/{id}"): Operation(
        "A release and its nodes by batch, its liveness and the verbs it takes",
        shapes.ReleaseDetail,
        examples=(
            Example("failed", f"release {FAILED}, failed", {"id": FAILED}),
            Example("bad-id", "not an id", {"id": "two"}, status=400),
            _missing("release"),
        ),
        tags=("releases",),
    ),
    ("GET", "/api/v1/releases/{id}/events"): Operation(
        "A release's events, oldest first (follow=true: live)",
        shapes.EventPage,
        description=STREAM_NOTE,
        query=(EventsQuery, FollowQuery),
        headers=("Last-Event-ID",),
        stream=True,
        errors=(503,),
        examples=(
            Example("page", f"release {SUCCEEDED}'s events", {"id": SUCCEEDED}),
            Example(
                "after",
                "after event 1, two at a time",
                {"id": SUCCEEDED},
                query={"afterId": 1, "limit": 2},
            ),
            Example(
                "follow",
                "live, from the start",
                {"id": SUCCEEDED},
                query={"follow": True, "afterId": 0},
            ),
            Example(
                "bad-limit",
                "limit above 1000",
                {"id": SUCCEEDED},
                query={"limit": 5000},
                status=400,
            ),
        ),
        tags=("events",),
    ),
    ("GET", "/api/v1/events"): Operation(
        "Every release's events, oldest first (follow=true: live)",
        shapes.EventPage,
        description=STREAM_NOTE,
        query=(EventsQuery, FollowQuery),
        headers=("Last-Event-ID",),
        stream=True,
        errors=(503,),
        examples=(
            Example("page", "the first events"),
            Example("follow", "live, from the start", query={"follow": True, "afterId": 0}),
            Example("bad-follow", "follow is true or false", query={"follow": "yes"}, status=400),
        ),
        tags=("events",),
    ),
    **{
        ("POST", f"/api/v1/releases/{{id}}/{verb}"): Operation(
            _VERB_SUMMARIES[verb],
            shapes.VerbDone,
            description="The verb is recorded at once; the answer comes when the daemon "
            "holding the release has acknowledged it, or its lease expired (inEffect, "
            "waitedForLeaseExpiry). 409: not allowed in the release's state (the message "
            "names the state and the verbs it allows).",
            body=VERB_BODIES[verb],
            body_required=False,
            errors=(409,),
            examples=_verb_examples(verb),
            tags=("verbs",),
        )
        for verb in Verb
    },
    ("GET", "/api/v1/fleet"): Operation(
        "Which config version each node runs, per label and per scope, and which nodes drift",
        shapes.FleetSummary,
        description=(
            "A node's expected config is that of the newest release, by its end, that "
            "succeeded and included it (a rollback: the config it restored); it drifts when "
            "its appliedVersion differs. A node no successful release included expects "
            "nothing and does not drift. byScope groups releases by scope (scope null: the "
            "releases that name none)."
        ),
        examples=(Example("fleet", "the fleet's versions"),),
        tags=("nodes",),
    ),
    ("GET", "/api/v1/nodes"): Operation(
        "All nodes, in id order",
        shapes.NodeList,
        examples=(Example("nodes", "every node"),),
        tags=("nodes",),
    ),
    ("POST", "/api/v1/nodes"): Operation(
        "Register a node (or update it, by name)",
        shapes.NodeItem,
        body=NodeBody,
        query=(RegisterQuery,),
        errors=(409,),
        examples=(
            Example("register", "a new node", body={"name": "edge-005", "mainIp": "10.0.0.5"}),
            Example(
                "refuse-existing",
                "ifExists=refuse: 409 for a name that exists",
                query={"ifExists": "refuse"},
                body={"name": "edge-001", "mainIp": "10.0.0.1"},
                status=409,
            ),
            Example(
                "bad-address",
                "a host name",
                body={"name": "edge-006", "mainIp": "edge.example"},
                status=400,
            ),
        ),
        tags=("nodes",),
    ),
    ("GET", "/api/v1/nodes/{id}"): Operation(
        "A node and its part in its latest releases",
        shapes.NodeDetail,
        examples=(
            Example("node", "node 1", {"id": 1}),
            _missing("node"),
        ),
        tags=("nodes",),
    ),
    ("PATCH", "/api/v1/nodes/{id}"): Operation(
        "Change a node's status, enabled and/or labels",
        shapes.NodeItem,
        body=NodePatchBody,
        examples=(
            Example(
                "maintenance",
                "take node 2 out",
                {"id": 2},
                body={"status": "maintenance", "enabled": False},
            ),
            Example(
                "labels",
                "set one label, remove another",
                {"id": 1},
                body={"labels": {"pop": "fra2", "region": None}},
            ),
            Example("nothing", "nothing to change is 2001", {"id": 1}, body={}, status=400),
        ),
        tags=("nodes",),
    ),
    ("GET", "/api/v1/tokens"): Operation(
        "Every token, in id order (never the token or its hash)",
        shapes.TokenList,
        examples=(Example("tokens", "every token"),),
        tags=("tokens",),
    ),
    ("DELETE", "/api/v1/tokens/{id}"): Operation(
        "Revoke a token",
        shapes.TokenItem,
        examples=(
            Example("revoke", "revoke token 2", {"id": 2}),
            _missing("token"),
        ),
        tags=("tokens",),
    ),
    ("GET", "/api/v1/webhooks"): Operation(
        "The webhooks (never their secrets)",
        shapes.WebhookList,
        examples=(Example("hooks", "every hook"),),
        tags=("webhooks",),
    ),
    ("POST", "/api/v1/webhooks"): Operation(
        "Register a webhook; its signing secret is shown in this answer only",
        shapes.WebhookCreated,
        body=WebhookBody,
        examples=(
            Example(
                "chat",
                "failures to a chat relay",
                body={
                    "url": "https://hooks.example.net/fleetwave",
                    "events": ["release.failed", "node.failed"],
                    "description": "ops chat",
                },
            ),
            Example(
                "unknown-kind",
                "an event kind that does not exist",
                body={"url": "https://hooks.example.net/x", "events": ["release.exploded"]},
                status=400,
            ),
        ),
        tags=("webhooks",),
    ),
    ("GET", "/api/v1/webhooks/{id}"): Operation(
        "A webhook, its latest deliveries and those that failed",
        shapes.WebhookDetail,
        examples=(
            Example("hook", f"webhook {WEBHOOK}", {"id": WEBHOOK}),
            _missing("hook"),
        ),
        tags=("webhooks",),
    ),
    ("DELETE", "/api/v1/webhooks/{id}"): Operation(
        "Remove a webhook and its queued deliveries",
        shapes.WebhookDeleted,
        examples=(
            Example("remove", f"remove webhook {WEBHOOK}", {"id": WEBHOOK}),
            _missing("hook"),
        ),
        tags=("webhooks",),
    ),
    ("GET", "/api/v1/scopes"): Operation(
        "Every scope's default strategy, by scope name",
        shapes.ScopeList,
        examples=(Example("defaults", "every default"),),
        tags=("scopes",),
    ),
    ("GET", SCOPE_PATH): Operation(
        "A scope's default strategy: what its releases without strategy fields run",
        shapes.ScopeItem,
        description="A release's scope, for its default, is the scope it names, else its "
        "target (cdn); a named scope without a default of its own takes its target's.",
        examples=(
            Example("eu", "the default of scope eu", {"scope": "eu"}),
            Example("none", "a scope without a default", {"scope": "us"}, status=404),
            Example("blank", "a blank scope name", {"scope": " "}, status=400),
        ),
        tags=("scopes",),
    ),
    ("PUT", SCOPE_PATH): Operation(
        "Set or replace a scope's default strategy (the strategy fields of a release)",
        shapes.ScopeItem,
        body=ScopeStrategyBody,
        examples=(
            Example(
                "fleet",
                "every release to cdn without a strategy bakes after its canary",
                {"scope": "cdn"},
                body={
                    "plan": [1, {"pause": 300}, "10%", {"pause": None}, "100%"],
                    "maxFailurePercent": 5,
                    "onFailure": "rollback",
                },
            ),
            Example(
                "gate-last",
                "a plan step at fault is named",
                {"scope": "cdn"},
                body={"plan": [1, {"pause": None}]},
                status=400,
            ),
            Example("empty", "no strategy field", {"scope": "cdn"}, body={}, status=400),
        ),
        tags=("scopes",),
    ),
    ("DELETE", SCOPE_PATH): Operation(
        "Clear a scope's default strategy (releases already created keep theirs)",
        shapes.ScopeCleared,
        examples=(
            Example("eu", "clear the default of scope eu", {"scope": "eu"}),
            Example("none", "a scope without a default", {"scope": "us"}, status=404),
        ),
        tags=("scopes",),
    ),
    ("GET", "/metrics"): Operation(
        "Prometheus exposition",
        Raw(("text/plain",), "metrics in the Prometheus text format"),
        examples=(Example("metrics", "scrape"),),
        tags=("health",),
    ),
    ("GET", "/"): Operation(
        "The dashboard's page",
        Raw(("text/html",), "the dashboard (its data comes from this API)"),
        examples=(Example("page", "the dashboard"),),
        tags=("dashboard",),
    ),
    ("GET", "/static/{path}"): Operation(
        "The dashboard's scripts, styles and images",
        Raw(
            ("text/css", "text/javascript", "image/svg+xml", "image/png"),
            "a file of the dashboard",
        ),
        examples=(
            Example("styles", "the dashboard's style sheet", {"path": "app.css"}),
            Example("missing", "a file that is not there", {"path": "nothing.js"}, status=404),
        ),
        tags=("dashboard",),
    ),
    ("POST", "/api/v1/session"): Operation(
        "Sign the dashboard in: sets the fw_session (HttpOnly) and fw_csrf cookies",
        shapes.SignedIn,
        description="State-changing requests signed in by the cookie must send the fw_csrf "
        "cookie's value in X-CSRF-Token.",
        body=SignInBody,
        examples=(Example("no-token", "token is required", body={}, status=400),),
        tags=("dashboard",),
    ),
    ("GET", "/api/v1/session"): Operation(
        "Who the session (or the Bearer token) is",
        shapes.WhoAmI,
        examples=(Example("whoami", "the signed-in token"),),
        tags=("dashboard",),
    ),
    ("DELETE", "/api/v1/session"): Operation(
        "Sign out: clears the session's cookies",
        shapes.SignedOut,
        examples=(Example("sign-out", "sign out"),),
        tags=("dashboard",),
    ),
}
