"""Rows and values the store hands out and takes in. All frozen; built from records by name."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import attrs

from fleetwave.store.selection import Labels, NodeSelection, labels_from_column

APPLY_CONFIG = "apply_config"
ERROR_MSG_MAX = 255


class ReleaseStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (ReleaseStatus.SUCCESS, ReleaseStatus.FAILED, ReleaseStatus.CANCELLED)


class NodeStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self not in (NodeStatus.PENDING, NodeStatus.RUNNING)


class NodeHealth(enum.StrEnum):
    """The ``nodes.status`` column: whether the CMDB considers the edge node in service."""

    ONLINE = "online"
    OFFLINE = "offline"
    MAINTENANCE = "maintenance"


# No text column holds NUL, and a lone surrogate cannot be encoded for one.
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


def storable(text: str | None) -> str | None:
    """Text from a source that cannot be refused (an agent's answer): NUL and lone surrogates
    become U+FFFD."""
    return None if text is None else _UNSTORABLE.sub("\ufffd", text)


def clip_error(message: str | None) -> str | None:
    """error_msg is at most 255 characters (the original's column), storable."""
    message = storable(message)
    if message is None:
        return None
    return message if len(message) <= ERROR_MSG_MAX else message[: ERROR_MSG_MAX - 1] + "…"


def task_id_for(main_ip: str, version: int, attempt: int = 1) -> str:
    """The agent task id: deterministic, so a repeated dispatch is idempotent on the agent.

    The first attempt keeps the original's format; a retry's attempt n carries ``_a{n}``, so
    an agent that remembers the failed task applies the retried one afresh. ``version`` is
    the release's own unique version, never its config version."""
    base = f"{APPLY_CONFIG}_{main_ip}_{version}"
    return base if attempt <= 1 else f"{base}_a{attempt}"


PlanStep = int | str
"""A batch size: a count (``5``) or a percentage of all nodes (``"25%"``)."""

DEFAULT_PLAN: tuple[PlanStep, ...] = (1, "100%")


@attrs.frozen
class Node:
    id: int
    name: str
    main_ip: str
    agent_port: int
    enabled: bool
    status: NodeHealth
    last_seen_at: datetime | None = None
    labels: Labels = ()
    """(key, value) pairs sorted by key."""
    applied_version: int | None = None
    """The config version of the node's last success (None: none recorded yet)."""
    applied_release_version: int | None = None
    """The version of the release whose success set applied_version."""
    applied_at: datetime | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Node:
        return cls(
            id=record["id"],
            name=record["name"],
            main_ip=record["main_ip"],
            agent_port=record["agent_port"],
            enabled=record["enabled"],
            status=NodeHealth(record["status"]),
            last_seen_at=record["last_seen_at"],
            labels=labels_from_column(record["labels"]),
            applied_version=record.get("applied_version"),
            applied_release_version=record.get("applied_release_version"),
            applied_at=record.get("applied_at"),
        )


@attrs.frozen
class Release:
    id: int
    type: str
    target: str
    scope: str | None
    """The explicit scope (releases naming one run one at a time), or None."""
    version: int
    status: ReleaseStatus
    total_nodes: int
    success_nodes: int
    failed_nodes: int
    skipped_nodes: int
    cancelled_nodes: int
    current_batch: int
    plan: tuple[PlanStep, ...]
    max_parallel: int | None
    max_failures: int
    reason: str
    error: str | None
    lease_owner: str | None
    lease_epoch: int
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    selection: NodeSelection | None = None
    """How its nodes were chosen; None: every enabled, online node at creation."""
    config_version: int = 0
    """The config version agents apply; equal to ``version`` unless set (a rollback's)."""
    rollback_of: int | None = None
    held_for: int | None = None
    verb: str | None = None
    verb_by: str | None = None
    verb_reason: str | None = None
    verb_seq: int = 0
    verb_acked: int = 0

    def __attrs_post_init__(self) -> None:
        if not self.config_version:
            object.__setattr__(self, "config_version", self.version)

    @property
    def cancelling(self) -> bool:
        """A cancel was asked and the release has not ended yet (its owner reconciles)."""
        return self.verb == "cancel" and not self.status.terminal

    crash_count: int = 0
    """Crashes of this release's actors so far (the Supervisor's boundary counts them)."""
    not_before: datetime | None = None
    """No daemon claims the release before this (a crashed release's backoff)."""
    last_crash: str | None = None
    """The exception of the last crash, as ``Type: message``."""
    strategy: Mapping[str, Any] | None = None
    """The strategy's stored form (store/strategy.py); None: plan and max_failures alone."""
    step: int = 0
    """The position in the release's schedule it has reached (every step before it is done)."""
    step_ends_at: datetime | None = None
    """When the bake the release is at ends (database clock); None outside a bake."""
    promoted_to: int = 0
    """A promote passes every pause before this position."""
    batch_count: int = 0
    """The highest batch number its node rows hold (0: none)."""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Release:
        return cls(
            id=record["id"],
            type=record["type"],
            target=record["target"],
            scope=record["scope"],
            version=record["version"],
            status=ReleaseStatus(record["status"]),
            total_nodes=record["total_nodes"],
            success_nodes=record["success_nodes"],
            failed_nodes=record["failed_nodes"],
            skipped_nodes=record["skipped_nodes"],
            cancelled_nodes=record["cancelled_nodes"],
            current_batch=record["current_batch"],
            plan=parse_plan(record["plan"]),
            max_parallel=record["max_parallel"],
            max_failures=record["max_failures"],
            reason=record["reason"],
            error=record["error"],
            lease_owner=record["lease_owner"],
            lease_epoch=record["lease_epoch"],
            lease_expires_at=record["lease_expires_at"],
            created_at=record["created_at"],
            updated_at=record["updated_at"],
            started_at=record["started_at"],
            finished_at=record["finished_at"],
            selection=NodeSelection.from_column(record["selection"]),
            config_version=record.get("config_version") or record["version"],
            rollback_of=record.get("rollback_of"),
            held_for=record.get("held_for"),
            verb=record.get("verb"),
            verb_by=record.get("verb_by"),
            verb_reason=record.get("verb_reason"),
            verb_seq=record.get("verb_seq") or 0,
            verb_acked=record.get("verb_acked") or 0,
            crash_count=record.get("crash_count") or 0,
            not_before=record.get("not_before"),
            last_crash=record.get("last_crash"),
            strategy=_json_object(record.get("strategy")),
            step=record.get("step") or 0,
            step_ends_at=record.get("step_ends_at"),
            promoted_to=record.get("promoted_to") or 0,
            batch_count=record.get("batch_count") or 0,
        )


def _json_object(value: object) -> Mapping[str, Any] | None:
    if isinstance(value, str):
        import json

        value = json.loads(value)
    return value if isinstance(value, Mapping) else None


def parse_plan(value: object) -> tuple[PlanStep, ...]:
    """A plan as stored (JSON list, or NULL for releases written by other programs)."""
    if value is None:
        return DEFAULT_PLAN
    if isinstance(value, str):
        import json

        value = json.loads(value)
    if not isinstance(value, list | tuple):
        raise ValueError(f"plan must be a list, got {value!r}")
    return tuple(value)


@attrs.frozen
class ReleaseNode:
    """One row of release_task_nodes, joined with its node's address."""

    id: int
    release_id: int
    node_id: int
    node_name: str
    main_ip: str
    agent_port: int
    batch: int
    status: NodeStatus
    error_msg: str | None
    task_id: str | None
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    attempt: int = 1
    """1 for the node's first run in this release, +1 per retry that re-sends it."""
    previous_version: int | None = None
    """The config the node ran when this release first dispatched it (what a rollback
    restores)."""
    labels: Labels = ()
    """The node's labels as read with the row (what a batch's maxInFlightPer groups by)."""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ReleaseNode:
        return cls(
            id=record["id"],
            release_id=record["release_task_id"],
            node_id=record["node_id"],
            node_name=record["node_name"],
            main_ip=record["main_ip"],
            agent_port=record["agent_port"],
            batch=record["batch"],
            status=NodeStatus(record["status"]),
            error_msg=record["error_msg"],
            task_id=record["task_id"],
            attempts=record["attempts"],
            started_at=record["started_at"],
            finished_at=record["finished_at"],
            attempt=record.get("attempt") or 1,
            previous_version=record.get("previous_version"),
            labels=labels_from_column(record.get("labels")),
        )


@attrs.frozen
class Lease:
    """The fencing token of one claimed release: every write carries it."""

    release_id: int
    epoch: int


@attrs.frozen
class Claim:
    release: Release
    lease: Lease

    @property
    def claimed_at(self) -> datetime:
        """When the claim was made, by the database's clock (a claim stamps updated_at)."""
        return self.release.updated_at


@attrs.frozen
class NodeChange:
    """One node transition to persist. ``started``/``finished`` stamp the database's now()."""

    row_id: int
    status: NodeStatus
    error_msg: str | None = None
    task_id: str | None = None
    attempts: int | None = None
    started: bool = False
    finished: bool = False


@attrs.frozen
class LeaseState:
    """What a lease renewal reads of a held release: its status and its latest verb."""

    status: ReleaseStatus
    verb: str | None = None
    verb_seq: int = 0
    verb_acked: int = 0
    verb_by: str | None = None
    verb_reason: str | None = None
    promoted_to: int = 0
    """A promote passes every pause of the schedule before this position."""

    @classmethod
    def of(cls, release: Release) -> LeaseState:
        return cls(
            status=release.status,
            verb=release.verb,
            verb_seq=release.verb_seq,
            verb_acked=release.verb_acked,
            verb_by=release.verb_by,
            verb_reason=release.verb_reason,
            promoted_to=release.promoted_to,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LeaseState:
        return cls(
            status=ReleaseStatus(record["status"]),
            verb=record["verb"],
            verb_seq=record["verb_seq"],
            verb_acked=record["verb_acked"],
            verb_by=record["verb_by"],
            verb_reason=record["verb_reason"],
            promoted_to=record.get("promoted_to") or 0,
        )

    @property
    def cancel_requested(self) -> bool:
        return self.verb == "cancel" and not self.status.terminal


@attrs.frozen
class Outcome:
    """The end of a release. Recording it skips every node still pending."""

    status: ReleaseStatus
    error: str | None = None


@attrs.frozen
class ReleaseSpec:
    """What an operator asks for when creating a release."""

    target: str = "cdn"
    reason: str = ""
    plan: tuple[PlanStep, ...] = DEFAULT_PLAN
    max_parallel: int | None = None
    max_failures: int = 0
    scope: str | None = None
    type: str = APPLY_CONFIG
    requested_by: Actor | None = None
    """The API token that asked, recorded on the release's "created" event."""
    selection: NodeSelection | None = None
    """None: every enabled, online node."""
    strategy: Mapping[str, Any] | None = None
    """The strategy's stored form (store/strategy.py), checked again by the store; its plan
    and maxFailures then override ``plan`` and ``max_failures``."""
    strategy_fields: tuple[str, ...] | None = None
    """The strategy fields an operator's request gave (store/scopes.py): the store takes the
    others from the default of the release's scope. None: no default applies (the spec is
    complete as it is)."""


@attrs.frozen
class CreatedRelease:
    release: Release
    batches: tuple[tuple[int, tuple[int, ...]], ...]
    """(batch number, node ids) in plan order."""
    default_scope: str | None = None
    """The scope whose default strategy completed the release's (store/scopes.py), or None."""


@attrs.frozen
class Event:
    """One row of release_events: a transition of a release or of one of its nodes."""

    id: int
    release_id: int
    node_id: int | None
    batch: int | None
    from_status: str | None
    to_status: str
    message: str | None
    daemon_id: str | None
    created_at: datetime
    actor: Actor | None = None
    """The API token that asked for this transition, when one did."""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Event:
        actor = None
        if record.get("actor_token") is not None and record.get("actor_role") in set(Role):
            actor = Actor(record["actor_token"], Role(record["actor_role"]))
        return cls(
            id=record["id"],
            release_id=record["release_task_id"],
            node_id=record["node_id"],
            batch=record["batch"],
            from_status=record["from_status"],
            to_status=record["to_status"],
            message=record["message"],
            daemon_id=record["daemon_id"],
            created_at=record["created_at"],
            actor=actor,
        )


def node_ids_by_batch(nodes: Sequence[ReleaseNode]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    batches: dict[int, list[int]] = {}
    for node in nodes:
        batches.setdefault(node.batch, []).append(node.node_id)
    return tuple((batch, tuple(ids)) for batch, ids in sorted(batches.items()))


TOKEN_LOOKUP_CHARS: Final = 16
"""Tokens are found by this many leading hex characters of their SHA-256 (indexed); the whole
hash is then compared by the caller in constant time."""


class Role(enum.StrEnum):
    """What an API token may do; each role may do everything the roles before it may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


@attrs.frozen
class TokenInfo:
    """An API token as listed: everything but its hash. Times are the store's."""

    id: int
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TokenInfo:
        return cls(
            id=record["id"],
            name=record["name"],
            role=Role(record["role"]),
            created_at=record["created_at"],
            expires_at=record["expires_at"],
            last_used_at=record["last_used_at"],
        )


@attrs.frozen
class StoredToken:
    """An API token as looked up: its listing, the hex SHA-256 of the token, and whether it
    had expired at the store's clock when it was read."""

    info: TokenInfo
    token_hash: str
    expired: bool


@attrs.frozen
class Actor:
    """Who asked for a change through the API: the token's name and role (never the token)."""

    token_name: str
    role: Role


WAIT_NODES_SHOWN: Final = 10
"""Shared nodes a Wait names; it counts all of them."""


@attrs.frozen
class Wait:
    """What a pending release waits for: a release runs only once none of its nodes is in a
    running or paused release or an older pending one (and, with an explicit scope, none of
    that scope is ahead of it). ``ahead_id`` is the release ahead of it: the oldest active
    one, else the nearest older pending one; None: nothing is ahead, the next claim takes it.
    ``shared`` names (up to WAIT_NODES_SHOWN of) the nodes both have, ``shared_count``
    counts them; none when only the scope is shared."""

    release_id: int
    scope: str | None
    ahead_id: int | None
    ahead_status: ReleaseStatus | None
    shared: tuple[str, ...] = ()
    shared_count: int = 0

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Wait:
        status = record["ahead_status"]
        return cls(
            release_id=record["id"],
            scope=record["scope"],
            ahead_id=record["ahead_id"],
            ahead_status=None if status is None else ReleaseStatus(status),
            shared=tuple(record["shared_names"] or ()),
            shared_count=record["shared_count"],
        )

    def describe(self) -> str:
        if self.ahead_id is None or self.ahead_status is None:
            return "nothing ahead of it: waits for a daemon to claim it"
        if not self.shared_count:
            return f"behind release {self.ahead_id} of scope {self.scope} ({self.ahead_status})"
        names = ", ".join(self.shared[:3])
        more = self.shared_count - min(3, len(self.shared))
        if more > 0:
            names += f" and {more} more"
        return f"behind release {self.ahead_id} ({self.ahead_status}) on nodes {names}"


@attrs.frozen
class NodeRun:
    """One release a node took part in, as its release_task_nodes row records it."""

    release_id: int
    version: int
    batch: int
    status: NodeStatus
    error_msg: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> NodeRun:
        return cls(
            release_id=record["release_task_id"],
            version=record["version"],
            batch=record["batch"],
            status=NodeStatus(record["status"]),
            error_msg=record["error_msg"],
            started_at=record["started_at"],
            finished_at=record["finished_at"],
        )
