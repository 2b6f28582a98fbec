"""Input validation and output shapes of the API.

Input: a JSON body or a query string becomes a typed value, or an ApiError whose message
names the field and the problem. Output: store rows become the original's camelCase objects
with ISO-8601 UTC timestamps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import attrs

from fleetwave.api.envelope import ApiError, Code
from fleetwave.api.failures import failure_kind
from fleetwave.api.verbs import VerbAnswer
from fleetwave.store.address import InvalidAddress, check_agent_host, check_agent_port
from fleetwave.store.errors import InvalidInput
from fleetwave.store.inputs import text_problem
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

MAX_BODY_BYTES = 1024 * 1024
MAX_ID = 2**63 - 1
"""Ids are PostgreSQL bigints; anything larger cannot name a row."""
PAGE_SIZE_DEFAULT = 20
PAGE_SIZE_MAX = 100
EVENTS_LIMIT_DEFAULT = 1000
EVENTS_LIMIT_MAX = 1000
NAME_MAX = 255
TEXT_MAX = 1000
DEFAULT_AGENT_PORT = 8443
MULTILINE_FIELDS = frozenset({"reason"})
"""Text fields that may hold tabs and line breaks; every other text is one line."""
_DIGITS_MAX = 30
"""An integer spelled with more digits than this is beyond every bound (and int() refuses
strings of more than 4,300 digits)."""


def _shown(value: object) -> str:
    """A short, printable rendering of an input value for an error message."""
    try:
        text = json.dumps(value)
    except ValueError:  # an int beyond 4,300 digits
        return "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: object) -> str:
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


def invalid(field: str, problem: str, code: Code = Code.PARAM_INVALID) -> ApiError:
    return ApiError(400, code, f"{field}: {problem}")


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
    except ValueError as error:
        raise invalid("body", str(error)) from None
    except RecursionError:
        # The parser recurses per nesting level; a deep enough document exhausts the stack.
        raise invalid("body", "JSON nested too deeply") from None


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


@attrs.frozen
class _Fields:
    """The members of a JSON object, checked against the allowed names."""

    values: Mapping[str, object]

    @classmethod
    def of(cls, document: object, allowed: Sequence[str]) -> _Fields:
        if not isinstance(document, dict):
            raise invalid("body", f"must be a JSON object, got {_kind(document)}")
        for name in document:
            if name not in allowed:
                raise invalid(
                    name if name.isprintable() and len(name) <= NAME_MAX else _shown(name),
                    f"unknown field (allowed: {', '.join(allowed)})",
                    Code.PARAM_ILLEGAL,
                )
        return cls(document)

    def has(self, name: str) -> bool:
        return name in self.values

    def required(self, name: str) -> object:
        if name not in self.values:
            raise invalid(name, "is required", Code.PARAM_MISSING)
        return self.values[name]

    def text(
        self, name: str, *, required: bool = False, empty: bool = True, max_length: int = TEXT_MAX
    ) -> str | None:
        value = self.required(name) if required else self.values.get(name)
        if value is None:
            if required:
                raise invalid(name, "must be a string, got null")
            return None
        if not isinstance(value, str):
            raise invalid(name, f"must be a string, got {_kind(value)} {_shown(value)}")
        if not empty and not value.strip():
            raise invalid(name, "must not be empty")
        if len(value) > max_length:
            raise invalid(name, f"must be at most {max_length} characters, got {len(value)}")
        problem = text_problem(value, multiline=name in MULTILINE_FIELDS)
        if problem is not None:
            raise invalid(name, problem)
        return value

    def integer(
        self, name: str, *, minimum: int, maximum: int = MAX_ID, nullable: bool = False
    ) -> int | None:
        value = self.values.get(name)
        if value is None:
            if name in self.values and not nullable:
                raise invalid(name, "must be an integer, got null")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(name, f"must be an integer, got {_kind(value)} {_shown(value)}")
        if not minimum <= value <= maximum:
            raise invalid(name, f"must be between {minimum} and {maximum}, got {_shown(value)}")
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.values.get(name)
        if value is None and name not in self.values:
            return None
        if not isinstance(value, bool):
            raise invalid(name, f"must be true or false, got {_kind(value)} {_shown(value)}")
        return value

    def health(self, name: str) -> NodeHealth | None:
        value = self.values.get(name)
        if value is None and name not in self.values:
            return None
        choices = ", ".join(health.value for health in NodeHealth)
        if not isinstance(value, str) or value not in {health.value for health in NodeHealth}:
            raise invalid(name, f"must be one of {choices}, got {_shown(value)}")
        return NodeHealth(value)


RELEASE_FIELDS = (
    "target",
    "reason",
    "plan",
    "maxParallel",
    "maxFailures",
    "scope",
    "nodeIds",
    "nodeNames",
    "selector",
    "maxFailurePercent",
    "onFailure",
    "healthChecks",
)
SELECTION_FIELDS = ("nodeIds", "nodeNames", "selector")
TARGETS = ("cdn",)
"""What a release can apply to: the original knows only ``cdn``, and refuses anything else
(a typo must not release to the whole fleet)."""


def parse_selection(fields: _Fields) -> NodeSelection | None:
    """At most one of nodeIds, nodeNames and selector; none: every enabled, online node."""
    given = [name for name in SELECTION_FIELDS if fields.values.get(name) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise invalid(", ".join(given), "give only one of nodeIds, nodeNames or selector")
    [name] = given
    value = fields.values[name]
    try:
        if name == "selector":
            if not isinstance(value, dict) or not value:
                raise invalid(name, f"must be a non-empty object of labels, got {_shown(value)}")
            return NodeSelection.by_selector(value)
        if not isinstance(value, list) or not value:
            raise invalid(name, f"must be a non-empty list, got {_shown(value)}")
        if name == "nodeIds":
            return NodeSelection.by_ids(value)
        return NodeSelection.by_names(value)
    except InvalidInput as error:
        message = str(error)
        raise invalid(name, message.removeprefix(f"{name}: ")) from None


def parse_release_spec(document: object) -> ReleaseSpec:
    fields = _Fields.of(document, RELEASE_FIELDS)
    target = _target(fields)
    # Optional, as in the original (its clients send {"target": "cdn"} alone).
    reason = fields.text("reason") or ""
    strategy = parse_strategy(fields)
    max_parallel = fields.integer("maxParallel", minimum=1, maximum=2**31 - 1, nullable=True)
    scope = fields.text("scope", empty=False, max_length=NAME_MAX)
    selection = parse_selection(fields)
    spec = ReleaseSpec(
        target=target, reason=reason, max_parallel=max_parallel, scope=scope, selection=selection
    )
    if strategy is not None:
        spec = attrs.evolve(spec, plan=strategy.plan, max_failures=strategy.max_failures or 0)
        if strategy != Strategy.of_plan(strategy.plan, strategy.max_failures or 0):
            spec = attrs.evolve(spec, strategy=strategy.to_json())
    return spec


def parse_strategy(fields: _Fields) -> Strategy | None:
    """The strategy fields of a release (store/strategy.py); None when none is given."""
    values = {name: fields.values.get(name) for name in STRATEGY_FIELDS}
    if all(value is None for value in values.values()):
        return None
    try:
        return validate_strategy(*values.values())
    except InvalidInput as error:
        field, _, problem = str(error).partition(": ")
        raise invalid(field, problem) from None


def _target(fields: _Fields) -> str:
    """The release's target: missing or unknown is 400 / 2002, as the original answers."""
    choices = ", ".join(f'"{target}"' for target in TARGETS)
    if not fields.has("target"):
        raise invalid("target", f"is required (one of {choices})")
    value = fields.values["target"]
    if value not in TARGETS:
        raise invalid("target", f"must be one of {choices}, got {_kind(value)} {_shown(value)}")
    assert isinstance(value, str)
    return value


@attrs.frozen
class NodeRegistration:
    name: str
    main_ip: str
    agent_port: int
    enabled: bool
    status: NodeHealth


NODE_FIELDS = ("name", "mainIp", "agentPort", "enabled", "status")


def parse_node_registration(
    document: object, default_port: int = DEFAULT_AGENT_PORT
) -> NodeRegistration:
    fields = _Fields.of(document, NODE_FIELDS)
    name = fields.text("name", required=True, empty=False, max_length=NAME_MAX)
    assert name is not None
    # The check every node address passes (the CLI's and the actors' too).
    try:
        main_ip = check_agent_host(fields.required("mainIp"))
    except InvalidAddress as error:
        raise invalid("mainIp", str(error)) from None
    port: int | None = None
    if fields.has("agentPort"):
        try:
            port = check_agent_port(fields.values["agentPort"])
        except InvalidAddress as error:
            raise invalid("agentPort", str(error)) from None
    enabled = fields.boolean("enabled")
    status = fields.health("status")
    return NodeRegistration(
        name=name,
        main_ip=main_ip,
        agent_port=default_port if port is None else port,
        enabled=True if enabled is None else enabled,
        status=NodeHealth.ONLINE if status is None else status,
    )


@attrs.frozen
class NodePatch:
    status: NodeHealth | None
    enabled: bool | None
    labels: dict[str, str | None] | None = None
    """Merged into the node's labels: a value sets a label, null removes it."""


NODE_PATCH_FIELDS = ("status", "enabled", "labels")


def parse_node_patch(document: object) -> NodePatch:
    fields = _Fields.of(document, NODE_PATCH_FIELDS)
    labels = fields.values.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            raise invalid("labels", f"must be an object of labels, got {_kind(labels)}")
        try:
            labels = check_label_changes(labels)
        except InvalidInput as error:
            raise invalid("labels", str(error)) from None
    patch = NodePatch(
        status=fields.health("status"), enabled=fields.boolean("enabled"), labels=labels
    )
    if patch.status is None and patch.enabled is None and patch.labels is None:
        raise invalid(
            "body", "nothing to change: give status, enabled and/or labels", Code.PARAM_MISSING
        )
    return patch


# --- path and query ----------------------------------------------------------------------------


def _integer_text(digits: str) -> int:
    """The value of ASCII ``digits``; past _DIGITS_MAX significant digits, 10**_DIGITS_MAX,
    which is above every bound as the real value is."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= _DIGITS_MAX else 10**_DIGITS_MAX


def _shown_integer(value: int, text: str) -> str:
    """An integer from a query or path as the message shows it: its digits, or its first."""
    return str(value) if abs(value) < 10**_DIGITS_MAX else text.strip()[:37] + "..."


def parse_id(text: str, field: str = "id") -> int:
    if not text.isascii() or not text.isdigit():
        raise invalid(field, f"must be a positive integer, got {_shown(text)}")
    value = _integer_text(text)
    if not 1 <= value <= MAX_ID:
        raise invalid(field, f"must be between 1 and {MAX_ID}, got {_shown_integer(value, text)}")
    return value


def _query_integer(query: Mapping[str, str], name: str, default: int) -> int:
    """An integer parameter of any length: beyond 30 digits it counts as 10**30, past every
    bound (Python refuses to convert very long digit strings)."""
    text = query.get(name)
    if text is None or text == "":
        return default
    stripped = text.strip()
    negative = stripped.startswith("-")
    digits = stripped[1:] if negative else stripped
    if not digits.isascii() or not digits.isdigit():
        raise invalid(name, f"must be an integer, got {_shown(text)}")
    value = _integer_text(digits)
    return -value if negative else value


def _query_int(
    query: Mapping[str, str], name: str, default: int, minimum: int, maximum: int
) -> int:
    value = _query_integer(query, name, default)
    if not minimum <= value <= maximum:
        shown = _shown_integer(value, query[name])
        raise invalid(name, f"must be between {minimum} and {maximum}, got {shown}")
    return value


@attrs.frozen
class Page:
    status: ReleaseStatus | None
    page: int
    page_size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


def parse_release_query(query: Mapping[str, str]) -> Page:
    raw_status = query.get("status") or None
    status = None
    if raw_status is not None:
        try:
            status = ReleaseStatus(raw_status)
        except ValueError:
            choices = ", ".join(status.value for status in ReleaseStatus)
            raise invalid("status", f"must be one of {choices}, got {_shown(raw_status)}") from None
    # As in the original, out-of-range numbers are clamped, never an error: page <= 0 is 1,
    # pageSize <= 0 is the default and above the maximum is the maximum. The largest page
    # keeps offsets inside a bigint. A value that is not an integer stays an error.
    page = _query_integer(query, "page", 1)
    page = min(max(page, 1), MAX_ID // PAGE_SIZE_MAX)
    page_size = _query_integer(query, "pageSize", PAGE_SIZE_DEFAULT)
    page_size = PAGE_SIZE_DEFAULT if page_size <= 0 else min(page_size, PAGE_SIZE_MAX)
    return Page(status=status, page=page, page_size=page_size)


@attrs.frozen
class EventsQuery:
    after_id: int
    limit: int


def parse_events_query(query: Mapping[str, str]) -> EventsQuery:
    return EventsQuery(
        after_id=_query_int(query, "afterId", 0, 0, MAX_ID),
        limit=_query_int(query, "limit", EVENTS_LIMIT_DEFAULT, 1, EVENTS_LIMIT_MAX),
    )


@attrs.frozen
class FollowQuery:
    follow: bool
    after_id: int | None
    """Where a stream resumes: ``Last-Event-ID`` (what EventSource sends), else ``afterId``;
    None when neither is given."""


def parse_follow_query(query: Mapping[str, str], last_event_id: str | None) -> FollowQuery:
    raw = (query.get("follow") or "false").strip().lower()
    if raw not in ("true", "false", "1", "0"):
        raise invalid("follow", f"must be true or false, got {_shown(query.get('follow'))}")
    after_id = None
    if last_event_id is not None and last_event_id.strip():
        after_id = _query_int({"Last-Event-ID": last_event_id}, "Last-Event-ID", 0, 0, MAX_ID)
    elif query.get("afterId"):
        after_id = _query_int(query, "afterId", 0, 0, MAX_ID)
    return FollowQuery(follow=raw in ("true", "1"), after_id=after_id)


# --- answers -----------------------------------------------------------------------------------


def timestamp(value: datetime | None) -> str | None:
    """ISO-8601 in UTC with a ``Z``; naive values are taken as UTC (the database's now())."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def release_item(release: Release, wait: Wait | None = None) -> dict[str, object]:
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


def step_item(release: Release) -> dict[str, object] | None:
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


def selection_item(release: Release) -> dict[str, object] | None:
    """How the release's nodes were chosen; null: every enabled, online node at creation."""
    return None if release.selection is None else release.selection.to_json()


def wait_item(wait: Wait) -> dict[str, object]:
    return {
        "releaseId": wait.ahead_id,
        "scope": wait.scope,
        "sharedNodes": wait.shared_count,
        "nodeNames": list(wait.shared),
        "reason": wait.describe(),
    }


def release_batches(nodes: Sequence[ReleaseNode]) -> list[dict[str, object]]:
    batches: dict[int, list[dict[str, object]]] = {}
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


def node_item(node: Node) -> dict[str, object]:
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


def node_detail(node: Node, runs: Sequence[NodeRun]) -> dict[str, object]:
    return {
        **node_item(node),
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


def parse_if_exists(query: Mapping[str, str]) -> bool:
    """``ifExists`` of a node registration: ``update`` (default) or ``refuse``; True when an
    existing node of that name may be replaced."""
    value = query.get("ifExists") or "update"
    if value not in ("update", "refuse"):
        raise invalid("ifExists", f"must be update or refuse, got {_shown(value)}")
    return value == "update"


def event_item(event: Event) -> dict[str, object]:
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


def token_item(token: TokenInfo) -> dict[str, object]:
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role.value,
        "createdAt": timestamp(token.created_at),
        "expiresAt": timestamp(token.expires_at),
        "lastUsedAt": timestamp(token.last_used_at),
    }


# --- verbs ------------------------------------------------------------------------------------


@attrs.frozen
class VerbRequest:
    reason: str = ""
    to_version: int | None = None
    full: bool = False


def parse_verb_body(document: object, verb: Verb) -> VerbRequest:
    """``{"reason"}`` for every verb, ``{"toVersion"}`` for a rollback and ``{"full"}`` for
    a promote; all optional."""
    allowed = {Verb.ROLLBACK: ("reason", "toVersion"), Verb.PROMOTE: ("reason", "full")}
    fields = _Fields.of(document, allowed.get(verb, ("reason",)))
    reason = fields.text("reason") or ""
    to_version = fields.integer("toVersion", minimum=1, nullable=True)
    full = fields.boolean("full") or False
    return VerbRequest(reason.strip(), to_version, full)


def verb_answer(answer: VerbAnswer) -> dict[str, object]:
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


def fleet_summary(nodes: Sequence[Node], newest: Release | None) -> dict[str, object]:
    """How many nodes run which config version, and which differ from the config of
    ``newest`` (the newest release that succeeded)."""
    counts: dict[int | None, int] = {}
    by_label: dict[str, dict[int | None, int]] = {}
    for node in nodes:
        counts[node.applied_version] = counts.get(node.applied_version, 0) + 1
        for key, value in node.labels:
            label = by_label.setdefault(f"{key}={value}", {})
            label[node.applied_version] = label.get(node.applied_version, 0) + 1

    def versions(found: dict[int | None, int]) -> list[dict[str, object]]:
        ordered = sorted(found.items(), key=lambda item: (item[0] is None, -(item[0] or 0)))
        return [{"configVersion": version, "nodes": count} for version, count in ordered]

    differing = (
        []
        if newest is None
        else [node for node in nodes if node.applied_version != newest.config_version]
    )
    return {
        "totalNodes": len(nodes),
        "versions": versions(counts),
        "byLabel": [
            {"label": label, "versions": versions(found)}
            for label, found in sorted(by_label.items())
        ],
        "newestSucceeded": None
        if newest is None
        else {
            "releaseId": newest.id,
            "version": newest.version,
            "configVersion": newest.config_version,
        },
        "differing": [
            {
                "nodeId": node.id,
                "nodeName": node.name,
                "appliedVersion": node.applied_version,
                "appliedAt": timestamp(node.applied_at),
            }
            for node in differing
        ],
    }
