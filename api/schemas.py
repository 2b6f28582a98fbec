"""The API's request types and the answers it builds from store rows.

Input: a JSON body or a query string is validated by a pydantic model below (api/validation.py
maps its first problem to the envelope, naming the field); the checks the stores share
(store/inputs.py, store/address.py, store/selection.py, store/strategy.py) run inside the types.
Output: store rows become the original's camelCase objects (api/shapes.py) with ISO-8601 UTC
timestamps. The OpenAPI document (api/openapi.py) is generated from both.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, cast

import attrs
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    create_model,
    model_validator,
)

from fleetwave.api import shapes
from fleetwave.api.envelope import ApiError, Code
from fleetwave.api.failures import failure_kind
from fleetwave.api.strategy_schema import STRATEGY_SCHEMAS
from fleetwave.api.validation import (
    MAX_ID,
    NAME_MAX,
    TEXT_MAX,
    Between,
    Body,
    Query,
    QueryInteger,
    Text,
    absent,
    checked,
    got,
    invalid,
    kind,
    query_document,
    query_integer,
    refusal,
    shown,
    validated,
)
from fleetwave.api.verbs import VerbAnswer
from fleetwave.store.address import InvalidAddress, check_agent_host, check_agent_port
from fleetwave.store.errors import InvalidInput
from fleetwave.store.fleet import Expectation, drifts
from fleetwave.store.inputs import INT_MAX, check_integer, check_text
from fleetwave.store.models import (
    Event,
    Node,
    NodeHealth,
    NodeRun,
    Release,
    ReleaseNode,
    ReleaseSpec,
    ReleaseStatus,
    TokenInfo,
    Wait,
)
from fleetwave.store.selection import NodeSelection, check_label_changes
from fleetwave.store.strategy import FIELDS as STRATEGY_FIELDS
from fleetwave.store.strategy import Strategy, current_step, validate_strategy
from fleetwave.store.verbs import Verb

MAX_BODY_BYTES: Final = 1024 * 1024
PAGE_SIZE_DEFAULT: Final = 20
PAGE_SIZE_MAX: Final = 100
PAGE_MAX: Final = MAX_ID // PAGE_SIZE_MAX
"""The largest page keeps offsets inside a bigint."""
EVENTS_LIMIT_DEFAULT: Final = 1000
EVENTS_LIMIT_MAX: Final = 1000
DEFAULT_AGENT_PORT: Final = 8443
TARGETS: Final = ("cdn",)
"""What a release can apply to: the original knows only ``cdn``, and refuses anything else
(a typo must not release to the whole fleet)."""


# --- request bodies --------------------------------------------------------------------------


def parse_json(body: bytes) -> object:
    """The JSON document of a request body; an empty body is an empty object."""
    if not body.strip():
        return {}
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise invalid("body", "is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise invalid(
            "body", f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None
    except _NotANumber as error:
        raise invalid("body", str(error)) from None
    except ValueError:
        # int() refuses numbers of more digits than sys.get_int_max_str_digits().
        raise invalid(
            "body", f"a number of more than {sys.get_int_max_str_digits()} digits"
        ) from None
    except RecursionError:
        # The parser recurses per nesting level; a deep enough document exhausts the stack.
        raise invalid("body", "JSON nested too deeply") from None


class _NotANumber(ValueError):
    """NaN or Infinity in a body: Python's parser reads them, JSON has no such numbers."""


def _reject_constant(name: str) -> object:
    raise _NotANumber(f"{name} is not a JSON number")


def choice(choices: Sequence[str], convert: Any = str) -> BeforeValidator:
    """A value among ``choices`` (then ``convert``-ed: an enum), else a refusal listing them."""

    def check(value: object) -> object:
        if not isinstance(value, str) or value not in choices:
            raise refusal(f"must be one of {', '.join(choices)}, {got(value)}")
        return convert(value)

    return BeforeValidator(check)


Name = Annotated[str, Text(NAME_MAX)]
Reason = Annotated[str, Text(TEXT_MAX, blank=True, multiline=True)]
Health = Annotated[NodeHealth, choice([health.value for health in NodeHealth], NodeHealth)]
NodeId = Annotated[int, Between(1, MAX_ID)]


def _target(value: object) -> object:
    if value not in TARGETS:
        choices = ", ".join(f'"{target}"' for target in TARGETS)
        raise refusal(f"must be one of {choices}, {got(value)}")
    return value


def _listed(value: object) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise refusal(f"must be a non-empty list, got {shown(value)}")
    return value


def _node_ids(value: object) -> object:
    """The shared checks of a selection by ids (store/selection.py, store/inputs.py)."""
    try:
        ids = NodeSelection.by_ids(_listed(value)).node_ids or ()
        for node_id in ids:
            check_integer("nodeIds", node_id, 1)
    except InvalidInput as error:
        raise refusal(str(error).removeprefix("nodeIds: ")) from None
    return value


def _node_names(value: object) -> object:
    try:
        names = NodeSelection.by_names(_listed(value)).node_names or ()
        for name in names:
            check_text("nodeNames", name)
    except InvalidInput as error:
        raise refusal(str(error).removeprefix("nodeNames: ")) from None
    return value


def _selector(value: object) -> object:
    if not isinstance(value, dict) or not value:
        raise refusal(f"must be a non-empty object of labels, got {shown(value)}")
    try:
        NodeSelection.by_selector(value)
    except InvalidInput as error:
        raise refusal(str(error).removeprefix("selector: ")) from None
    return value


class _ReleaseFields(Body):
    """``POST /api/v1/releases``: what to release, why, to which nodes, in what steps. Every
    field but ``target`` is optional, as in the original (its clients send ``{"target":
    "cdn"}`` alone)."""

    target: Annotated[Literal["cdn"], BeforeValidator(_target)]
    reason: Reason | None = None
    maxParallel: Annotated[int, Between(1, INT_MAX)] | None = None
    scope: Name | None = None
    nodeIds: Annotated[list[NodeId], Field(min_length=1), BeforeValidator(_node_ids)] | None = None
    nodeNames: Annotated[list[Name], Field(min_length=1), BeforeValidator(_node_names)] | None = (
        None
    )
    selector: (
        Annotated[
            dict[str, str],
            Field(min_length=1, description="labels every chosen node carries"),
            BeforeValidator(_selector),
        ]
        | None
    ) = None

    @model_validator(mode="before")
    @classmethod
    def _has_target(cls, document: Any) -> Any:
        if isinstance(document, dict) and "target" not in document:
            choices = ", ".join(f'"{target}"' for target in TARGETS)
            raise refusal(f"is required (one of {choices})", field="target")
        return document

    @model_validator(mode="after")
    def _one_selection(self) -> _ReleaseFields:
        given = [
            name for name in ("nodeIds", "nodeNames", "selector") if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise refusal("give only one of nodeIds, nodeNames or selector", field=", ".join(given))
        return self

    @model_validator(mode="after")
    def _strategy(self) -> _ReleaseFields:
        try:
            validate_strategy(*(getattr(self, name) for name in STRATEGY_FIELDS))
        except InvalidInput as error:
            field, _, problem = str(error).partition(": ")
            raise refusal(problem, field=field) from None
        return self

    def strategy(self) -> Strategy | None:
        """The strategy fields (store/strategy.py); None when none is given."""
        values = [getattr(self, name) for name in STRATEGY_FIELDS]
        if all(value is None for value in values):
            return None
        return validate_strategy(*values)

    def selection(self) -> NodeSelection | None:
        """At most one of nodeIds, nodeNames and selector; none: every enabled, online node."""
        if self.nodeIds is not None:
            return NodeSelection.by_ids(self.nodeIds)
        if self.nodeNames is not None:
            return NodeSelection.by_names(self.nodeNames)
        if self.selector is not None:
            return NodeSelection.by_selector(self.selector)
        return None


_STRATEGY_BODY_FIELDS: dict[str, Any] = {
    # Validated together by store/strategy.py (see _strategy); described by their types.
    name: (Annotated[STRATEGY_SCHEMAS.get(name, Any) | None, SkipValidation], None)
    for name in STRATEGY_FIELDS
}
ReleaseBody = create_model(
    "ReleaseBody",
    __base__=_ReleaseFields,
    __doc__=_ReleaseFields.__doc__,
    **_STRATEGY_BODY_FIELDS,
)


def parse_release_spec(document: object) -> ReleaseSpec:
    body = validated(ReleaseBody, document)
    strategy = body.strategy()
    spec = ReleaseSpec(
        target=body.target,
        reason=body.reason or "",
        max_parallel=body.maxParallel,
        scope=body.scope,
        selection=body.selection(),
    )
    if strategy is not None:
        spec = attrs.evolve(spec, plan=strategy.plan, max_failures=strategy.max_failures or 0)
        if strategy != Strategy.of_plan(strategy.plan, strategy.max_failures or 0):
            spec = attrs.evolve(spec, strategy=strategy.to_json())
    return spec


class NodeBody(Body):
    """``POST /api/v1/nodes``: a node to register (or update, by name)."""

    name: Name
    mainIp: Annotated[
        str,
        checked(check_agent_host, InvalidAddress),
        Field(description="the agent's IPv4 or IPv6 address (no name, port or zone)"),
    ]
    agentPort: Annotated[
        int | None,
        checked(check_agent_port, InvalidAddress),
        Field(description="the daemon's agent_port setting when absent"),
    ] = None
    enabled: bool = True
    status: Health = NodeHealth.ONLINE


@attrs.frozen
class NodeRegistration:
    name: str
    main_ip: str
    agent_port: int
    enabled: bool
    status: NodeHealth


def parse_node_registration(
    document: object, default_port: int = DEFAULT_AGENT_PORT
) -> NodeRegistration:
    body = validated(NodeBody, document)
    return NodeRegistration(
        name=body.name,
        main_ip=body.mainIp,
        agent_port=default_port if body.agentPort is None else body.agentPort,
        enabled=body.enabled,
        status=body.status,
    )


def _label_changes(value: object) -> object:
    if not isinstance(value, dict):
        raise refusal(f"must be an object of labels, got {kind(value)}")
    try:
        return check_label_changes(value)
    except InvalidInput as error:
        raise refusal(str(error)) from None


class NodePatchBody(Body):
    """``PATCH /api/v1/nodes/{id}``: what to change (at least one); absent: left as it is."""

    status: Health = absent()
    enabled: bool = absent()
    labels: Annotated[
        dict[str, str | None],
        BeforeValidator(_label_changes),
        Field(description="merged into the node's labels: a value sets one, null removes it"),
    ] = absent()

    @model_validator(mode="after")
    def _changes_something(self) -> NodePatchBody:
        if self.status is None and self.enabled is None and self.labels is None:
            raise refusal(
                "nothing to change: give status, enabled and/or labels",
                code=Code.PARAM_MISSING,
                field="body",
            )
        return self


@attrs.frozen
class NodePatch:
    status: NodeHealth | None
    enabled: bool | None
    labels: dict[str, str | None] | None = None
    """Merged into the node's labels: a value sets a label, null removes it."""


def parse_node_patch(document: object) -> NodePatch:
    body = validated(NodePatchBody, document)
    return NodePatch(status=body.status, enabled=body.enabled, labels=body.labels)


class VerbBody(Body):
    """The body of a release verb: all optional; a reason is recorded with its event."""

    reason: Reason | None = None


class RollbackBody(VerbBody):
    toVersion: (
        Annotated[
            int,
            Between(1, MAX_ID),
            Field(description="the config version to go back to; default: the previous one"),
        ]
        | None
    ) = None


class PromoteBody(VerbBody):
    full: Annotated[bool, Field(description="skip every remaining pause, not only this one")] = (
        False
    )


VERB_BODIES: Final[Mapping[Verb, type[VerbBody]]] = {
    **dict.fromkeys(Verb, VerbBody),
    Verb.ROLLBACK: RollbackBody,
    Verb.PROMOTE: PromoteBody,
}


@attrs.frozen
class VerbRequest:
    reason: str = ""
    to_version: int | None = None
    full: bool = False


def parse_verb_body(document: object, verb: Verb) -> VerbRequest:
    """``{"reason"}`` for every verb, ``{"toVersion"}`` for a rollback and ``{"full"}`` for
    a promote; all optional."""
    body = validated(VERB_BODIES[verb], document)
    return VerbRequest(
        (body.reason or "").strip(),
        body.toVersion if isinstance(body, RollbackBody) else None,
        body.full if isinstance(body, PromoteBody) else False,
    )


def _token(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise refusal("is required (a string)", code=Code.PARAM_MISSING)
    return value.strip()


class SignInBody(Body):
    """``POST /api/v1/session``: the token a dashboard signs in with (other members are
    ignored)."""

    model_config = ConfigDict(extra="ignore")

    token: Annotated[str, BeforeValidator(_token), Field(description="an API token (fw_...)")]


# --- path and query ----------------------------------------------------------------------------


def _id_text(value: object) -> object:
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise refusal(f"must be a positive integer, got {shown(value)}")
    return query_integer(value)


PathId = Annotated[int, BeforeValidator(_id_text), Between(1, MAX_ID)]


class _IdPath(Query):
    id: PathId


def parse_id(text: str, field: str = "id") -> int:
    try:
        return validated(_IdPath, {"id": text}).id
    except ApiError as error:
        raise invalid(field, error.message.removeprefix("id: ")) from None


class ReleaseQuery(Query):
    """``GET /api/v1/releases``: newest first, a page at a time."""

    status: (
        Annotated[ReleaseStatus, choice([status.value for status in ReleaseStatus], ReleaseStatus)]
        | None
    ) = None
    page: Annotated[
        int,
        BeforeValidator(lambda value: min(max(value, 1), PAGE_MAX)),
        QueryInteger,
        Field(description=f"from 1 (0 or less is 1; above {PAGE_MAX} is {PAGE_MAX})"),
    ] = 1
    pageSize: Annotated[
        int,
        BeforeValidator(
            lambda value: PAGE_SIZE_DEFAULT if value <= 0 else min(value, PAGE_SIZE_MAX)
        ),
        QueryInteger,
        Field(
            description=f"0 or less is {PAGE_SIZE_DEFAULT}; above {PAGE_SIZE_MAX} is "
            f"{PAGE_SIZE_MAX}",
        ),
    ] = PAGE_SIZE_DEFAULT


@attrs.frozen
class Page:
    status: ReleaseStatus | None
    page: int
    page_size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


def parse_release_query(query: Mapping[str, str]) -> Page:
    found = validated(ReleaseQuery, query_document(query, ReleaseQuery))
    return Page(status=found.status, page=found.page, page_size=found.pageSize)


AfterId = Annotated[
    int,
    QueryInteger,
    Between(0, MAX_ID),
    Field(description="events after this id (0: from the first)"),
]


class EventsQuery(Query):
    """A page of events: those after ``afterId``, oldest first."""

    afterId: AfterId = 0
    limit: Annotated[int, QueryInteger, Between(1, EVENTS_LIMIT_MAX)] = EVENTS_LIMIT_DEFAULT

    @property
    def after_id(self) -> int:
        return self.afterId


def parse_events_query(query: Mapping[str, str]) -> EventsQuery:
    return validated(EventsQuery, query_document(query, EventsQuery))


def _flag(value: object) -> object:
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in ("true", "false", "1", "0"):
        raise refusal(f"must be true or false, got {shown(value)}")
    return text in ("true", "1")


class FollowQuery(Query):
    """``follow=true``: a stream of server-sent events instead of a page."""

    follow: Annotated[
        bool, BeforeValidator(_flag), Field(description="true or 1: server-sent events")
    ] = False
    afterId: AfterId | None = None


class _LastEventId(Query):
    lastEventId: AfterId


@attrs.frozen
class Follow:
    follow: bool
    after_id: int | None
    """Where a stream resumes: ``Last-Event-ID`` (what EventSource sends), else ``afterId``;
    None when neither is given."""


def parse_follow_query(query: Mapping[str, str], last_event_id: str | None) -> Follow:
    found = validated(FollowQuery, query_document(query, FollowQuery))
    after_id = found.afterId
    if last_event_id is not None and last_event_id.strip():
        try:
            after_id = validated(_LastEventId, {"lastEventId": last_event_id}).lastEventId
        except ApiError as error:
            raise invalid("Last-Event-ID", error.message.partition(": ")[2]) from None
    return Follow(follow=found.follow, after_id=after_id)


class RegisterQuery(Query):
    ifExists: Annotated[
        Literal["update", "refuse"],
        choice(["update", "refuse"]),
        Field(description="refuse: 409 when a node of that name exists"),
    ] = "update"


def parse_if_exists(query: Mapping[str, str]) -> bool:
    """``ifExists`` of a node registration: ``update`` (default) or ``refuse``; True when an
    existing node of that name may be replaced."""
    return validated(RegisterQuery, query_document(query, RegisterQuery)).ifExists == "update"


class DetailQuery(Query):
    """``GET /api/v1/releases/detail?id=N``, the original's later form of the detail."""

    id: PathId


def parse_detail_query(query: Mapping[str, str]) -> int:
    text = query.get("id")
    if not text:
        raise ApiError(400, Code.PARAM_MISSING, "id: is required (?id=N)")
    return parse_id(text)


# --- answers -----------------------------------------------------------------------------------


def timestamp(value: datetime | None) -> str | None:
    """ISO-8601 in UTC with a ``Z``; naive values are taken as UTC (the database's now())."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def release_item(release: Release, wait: Wait | None = None) -> shapes.ReleaseItem:
    """A release as the list and the detail show it; ``wait`` says what a pending one waits
    for (``waitingFor``, null otherwise)."""
    return {
        "id": release.id,
        "type": release.type,
        "target": release.target,
        "scope": release.scope,
        "version": release.version,
        "status": release.status.value,
        "totalNodes": release.total_nodes,
        "successNodes": release.success_nodes,
        "failedNodes": release.failed_nodes,
        "skippedNodes": release.skipped_nodes,
        "cancelledNodes": release.cancelled_nodes,
        "currentBatch": release.current_batch,
        "plan": list(release.plan),
        "maxParallel": release.max_parallel,
        "maxFailures": release.max_failures,
        "reason": release.reason,
        "error": release.error,
        "createdAt": timestamp(release.created_at),
        "updatedAt": timestamp(release.updated_at),
        "startedAt": timestamp(release.started_at),
        "finishedAt": timestamp(release.finished_at),
        "waitingFor": None if wait is None else wait_item(wait),
        "selection": selection_item(release),
        "configVersion": release.config_version,
        "rollbackOf": release.rollback_of,
        "heldFor": release.held_for,
        "cancelling": release.cancelling,
        "lastVerb": None
        if release.verb is None
        else {"verb": release.verb, "by": release.verb_by, "reason": release.verb_reason},
        "strategy": None if release.strategy is None else dict(release.strategy),
        "step": step_item(release),
    }


def step_item(release: Release) -> shapes.StepShape | None:
    """Where in its schedule a release with pauses is: the step, its kind and, for a bake,
    until when. Null for a release without pauses, and past the schedule's end."""
    if release.strategy is None or release.status.terminal:
        return None
    step = current_step(release)
    if step is None:
        return None
    return {
        "position": step.position,
        "kind": step.kind,
        "batch": step.batch,
        "planIndex": step.plan_index,
        "until": timestamp(release.step_ends_at) if step.kind == "bake" else None,
        "promoted": release.promoted_to > step.position,
    }


def selection_item(release: Release) -> shapes.Selection | None:
    """How the release's nodes were chosen; null: every enabled, online node at creation."""
    return (
        None if release.selection is None else cast(shapes.Selection, release.selection.to_json())
    )


def wait_item(wait: Wait) -> shapes.WaitShape:
    return {
        "releaseId": wait.ahead_id,
        "scope": wait.scope,
        "sharedNodes": wait.shared_count,
        "nodeNames": list(wait.shared),
        "reason": wait.describe(),
    }


def release_batches(nodes: Sequence[ReleaseNode]) -> list[shapes.BatchShape]:
    batches: dict[int, list[shapes.ReleaseNodeItem]] = {}
    for node in nodes:
        batches.setdefault(node.batch, []).append(
            {
                "nodeId": node.node_id,
                "nodeName": node.node_name,
                "status": node.status.value,
                # The original's clients expect "" (never null) when there is no error.
                "errorMsg": node.error_msg or "",
                "errorKind": failure_kind(node.error_msg),
                "agent": f"{node.main_ip}:{node.agent_port}",
                "attempt": node.attempt,
                "taskId": node.task_id,
                "startedAt": timestamp(node.started_at),
                "finishedAt": timestamp(node.finished_at),
            }
        )
    return [{"batch": batch, "nodes": members} for batch, members in sorted(batches.items())]


def node_item(node: Node) -> shapes.NodeItem:
    return {
        "id": node.id,
        "name": node.name,
        "mainIp": node.main_ip,
        "agentPort": node.agent_port,
        "enabled": node.enabled,
        "status": node.status.value,
        "lastSeenAt": timestamp(node.last_seen_at),
        "labels": dict(node.labels),
        "appliedVersion": node.applied_version,
        "appliedAt": timestamp(node.applied_at),
    }


def node_detail(
    node: Node, runs: Sequence[NodeRun], expected: Expectation | None
) -> shapes.NodeDetail:
    return {
        **node_item(node),
        "expected": None
        if expected is None
        else {
            "configVersion": expected.config_version,
            "releaseId": expected.release_id,
            "version": expected.version,
            "scope": expected.scope,
        },
        "drifting": drifts(node, expected),
        "releases": [
            {
                "releaseId": run.release_id,
                "version": run.version,
                "batch": run.batch,
                "status": run.status.value,
                "errorMsg": run.error_msg or "",
                "startedAt": timestamp(run.started_at),
                "finishedAt": timestamp(run.finished_at),
            }
            for run in runs
        ],
    }


def event_item(event: Event) -> shapes.EventItem:
    return {
        "id": event.id,
        "releaseId": event.release_id,
        "nodeId": event.node_id,
        "batch": event.batch,
        "fromStatus": event.from_status,
        "toStatus": event.to_status,
        "message": event.message,
        "daemonId": event.daemon_id,
        "actor": None
        if event.actor is None
        else {"tokenName": event.actor.token_name, "role": event.actor.role.value},
        "createdAt": timestamp(event.created_at),
    }


def token_item(token: TokenInfo) -> shapes.TokenItem:
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role.value,
        "createdAt": timestamp(token.created_at),
        "expiresAt": timestamp(token.expires_at),
        "lastUsedAt": timestamp(token.last_used_at),
    }


def verb_answer(answer: VerbAnswer) -> shapes.VerbDone:
    result = answer.result
    return {
        "verb": result.verb.value,
        "changed": result.changed,
        "inEffect": answer.effect.in_effect,
        "acknowledgedBy": answer.owner if answer.effect.acknowledged else None,
        "waitedForLeaseExpiry": answer.lease_expired,
        "waitedSec": round(answer.waited, 3),
        "message": answer.message,
        "release": release_item(result.release),
        "rollback": None if result.rollback is None else release_item(result.rollback),
        "held": [release_item(release) for release in result.held],
    }
