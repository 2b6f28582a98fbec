"""MemoryStore: the Store contract held in memory, for simulations under a virtual clock.

Times come from ``trio.current_time()`` mapped onto a UTC wall-clock base, so leases expire in
simulated time under pytest-trio's ``autojump_clock``. Every operation is atomic (it never
awaits while changing state), which is what a PostgreSQL transaction gives the real store.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import trio

from fleetwave.store.errors import AlreadyExists, Conflict, InvalidInput, NotFound, StoreUnavailable
from fleetwave.store.fleet import (
    Expectation,
    FleetNode,
    FleetState,
    ScopeFleet,
    end_order,
    scope_order,
)
from fleetwave.store.inputs import (
    INT_MAX,
    check_integer,
    check_node,
    check_optional_text,
    check_release_spec,
    check_text,
    check_token_key,
)
from fleetwave.store.messages import created_message, outcome_message
from fleetwave.store.models import (
    DEFAULT_PLAN,
    TOKEN_LOOKUP_CHARS,
    WAIT_NODES_SHOWN,
    Actor,
    Claim,
    CreatedRelease,
    Event,
    Lease,
    LeaseState,
    Node,
    NodeChange,
    NodeHealth,
    NodeRun,
    NodeStatus,
    Outcome,
    PlanStep,
    Release,
    ReleaseNode,
    ReleaseSpec,
    ReleaseStatus,
    Role,
    StoredToken,
    TokenInfo,
    Wait,
    clip_error,
    node_ids_by_batch,
    storable,
)
from fleetwave.store.plan import assign_batches, validate_plan
from fleetwave.store.preview import RECENT_APPLIES, ReleasePreview, build_preview, spec_strategy
from fleetwave.store.scopes import (
    ScopeStrategy,
    blamed_on_default,
    check_scope,
    created_note,
    default_scopes,
    first_default,
    stored_default,
    with_default,
)
from fleetwave.store.selection import (
    NodeSelection,
    check_label_changes,
    check_named,
    labels_value,
    merge_labels,
)
from fleetwave.store.strategy import Strategy, promote_target, stored_strategy, strategy_of
from fleetwave.store.topology import place_nodes, rollback_topology
from fleetwave.store.verbs import (
    Verb,
    VerbEffect,
    VerbResult,
    cancel_message,
    decide,
    rollback_plan,
    rollback_reason,
    superseded,
    verb_message,
)
from fleetwave.store.webhooks import (
    Delivery,
    DeliveryStatus,
    DueDelivery,
    Webhook,
    WebhookSpec,
    check_webhook_spec,
    event_kinds,
    idempotency_key,
)


@attrs.define
class _ReleaseRow:
    id: int
    type: str
    target: str
    scope: str | None
    version: int
    status: ReleaseStatus
    total_nodes: int
    plan: tuple[int | str, ...] | None
    max_parallel: int | None
    max_failures: int
    reason: str
    created_at: datetime
    updated_at: datetime
    error: str | None = None
    success_nodes: int = 0
    failed_nodes: int = 0
    lease_owner: str | None = None
    lease_epoch: int = 0
    lease_expires_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    selection: NodeSelection | None = None
    config_version: int | None = None
    rollback_of: int | None = None
    held_for: int | None = None
    verb: str | None = None
    verb_by: str | None = None
    verb_reason: str | None = None
    verb_seq: int = 0
    verb_acked: int = 0
    crash_count: int = 0
    not_before: datetime | None = None
    last_crash: str | None = None
    strategy: Mapping[str, Any] | None = None
    step: int = 0
    step_ends_at: datetime | None = None
    promoted_to: int = 0


@attrs.define
class _NodeRow:
    id: int
    release_id: int
    node_id: int
    batch: int
    status: NodeStatus
    error_msg: str | None = None
    task_id: str | None = None
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int = 1
    previous_version: int | None = None


@attrs.define
class _TokenRow:
    info: TokenInfo
    token_hash: str


@attrs.define
class _HookRow:
    hook: Webhook
    secret: str


@attrs.define
class _DeliveryRow:
    id: int
    webhook_id: int
    event_id: int
    kind: str
    payload: dict[str, object]
    created_at: datetime
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    next_attempt_at: datetime | None = None
    locked_by: str | None = None
    locked_until: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None

    def value(self) -> Delivery:
        assert self.next_attempt_at is not None
        return Delivery(
            id=self.id,
            webhook_id=self.webhook_id,
            event_id=self.event_id,
            kind=self.kind,
            payload=self.payload,
            status=self.status,
            attempts=self.attempts,
            next_attempt_at=self.next_attempt_at,
            last_status=self.last_status,
            last_error=self.last_error,
            delivered_at=self.delivered_at,
            created_at=self.created_at,
        )


def expectation(row: _ReleaseRow) -> Expectation:
    return Expectation(
        release_id=row.id,
        version=row.version,
        config_version=row.config_version or row.version,
        scope=row.scope,
    )


def ended_at(row: _ReleaseRow) -> datetime:
    """When a release ended; for a row another program wrote without one, its last update."""
    return row.finished_at or row.updated_at


def newest_success(rows: Sequence[_ReleaseRow]) -> _ReleaseRow | None:
    """The newest of ``rows``, by its end, that succeeded (store/fleet.py)."""
    ended = [row for row in rows if row.status is ReleaseStatus.SUCCESS]
    if not ended:
        return None
    return max(ended, key=lambda row: end_order(ended_at(row), row.version))


@attrs.define
class MemoryStore:
    """In-memory Store. Setting ``unavailable`` makes every operation raise StoreUnavailable,
    as a database that went away would."""

    _nodes: dict[int, Node] = attrs.field(factory=dict)
    _node_names: dict[str, int] = attrs.field(factory=dict)
    """Node id by name (the first node of a name, as a scan in id order finds it)."""
    _releases: dict[int, _ReleaseRow] = attrs.field(factory=dict)
    _release_nodes: dict[int, list[_NodeRow]] = attrs.field(factory=dict)
    _row_index: dict[int, dict[int, _NodeRow]] = attrs.field(factory=dict)
    """A release's node rows by row id, built on first use (rows are added, never removed)."""
    _events: list[Event] = attrs.field(factory=list)
    _tokens: dict[int, _TokenRow] = attrs.field(factory=dict)
    _wakers: list[Callable[[], None]] = attrs.field(factory=list)
    _event_wakers: list[Callable[[], None]] = attrs.field(factory=list)
    _uncommitted: list[Event] = attrs.field(factory=list)
    _in_statement: bool = False
    _hooks: dict[int, _HookRow] = attrs.field(factory=dict)
    _deliveries: dict[int, _DeliveryRow] = attrs.field(factory=dict)
    _scope_strategies: dict[str, ScopeStrategy] = attrs.field(factory=dict)
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _token_ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _base: datetime | None = None
    unavailable: bool = False
    record_calls: int = 0
    """How many record() calls were made: simulations assert writes are coalesced."""

    def now(self) -> datetime:
        current = trio.current_time()
        if self._base is None:
            self._base = datetime.now(UTC) - timedelta(seconds=current)
        return self._base + timedelta(seconds=current)

    async def _available(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.unavailable:
            raise StoreUnavailable("database unavailable: simulated outage")

    def _next_id(self) -> int:
        return next(self._ids)

    # --- executor side ---------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, ttl: float) -> list[Claim]:
        await self._available()
        if limit < 1:
            return []
        check_text("owner", owner)
        now = self.now()
        claimable = [
            row
            for row in self._releases.values()
            if (
                row.status is ReleaseStatus.RUNNING
                and (row.lease_expires_at is None or row.lease_expires_at < now)
                and (row.not_before is None or row.not_before <= now)
            )
            or (row.status is ReleaseStatus.PENDING and not self._blocked(row))
        ]
        claimable.sort(key=lambda row: row.version)
        claims = []
        for row in claimable[:limit]:
            previous = row.status
            row.status = ReleaseStatus.RUNNING
            row.lease_owner = owner
            row.lease_epoch += 1
            row.lease_expires_at = now + timedelta(seconds=ttl)
            row.started_at = row.started_at or now
            row.updated_at = now
            self._event(
                row.id,
                None,
                None,
                previous,
                row.status,
                f"claimed by {owner} (epoch {row.lease_epoch})",
                owner,
            )
            claims.append(Claim(self._release(row), Lease(row.id, row.lease_epoch)))
        return claims

    def _ahead(self, pending: _ReleaseRow) -> list[_ReleaseRow]:
        """Releases running, paused, or pending with an older version than ``pending``; a
        release paused for the rollback ``pending`` is not ahead of it."""
        return [
            other
            for other in self._releases.values()
            if other.id != pending.id
            and (
                other.status in (ReleaseStatus.RUNNING, ReleaseStatus.PAUSED)
                or (other.status is ReleaseStatus.PENDING and other.version < pending.version)
            )
            and not (other.status is ReleaseStatus.PAUSED and other.held_for == pending.id)
        ]

    def _blocked(self, pending: _ReleaseRow) -> bool:
        """A release ahead of ``pending`` shares a node with it, or names the same scope."""
        mine = {node.node_id for node in self._release_nodes[pending.id]}
        for other in self._ahead(pending):
            if pending.scope is not None and other.scope == pending.scope:
                return True
            if any(node.node_id in mine for node in self._release_nodes[other.id]):
                return True
        return False

    async def heartbeat(
        self, owner: str, leases: Sequence[Lease], ttl: float
    ) -> dict[int, LeaseState]:
        await self._available()
        if not leases:
            return {}
        check_text("owner", owner)
        now = self.now()
        held = {}
        for lease in leases:
            row = self._releases.get(lease.release_id)
            if (
                row is not None
                and row.lease_epoch == lease.epoch
                and row.lease_owner == owner
                and row.status in (ReleaseStatus.RUNNING, ReleaseStatus.PAUSED)
            ):
                row.lease_expires_at = now + timedelta(seconds=ttl)
                held[row.id] = self._lease_state(row)
        return held

    def _held(self, lease: Lease) -> _ReleaseRow | None:
        """The row when ``lease`` is current: the fence of every write of an owner."""
        row = self._releases.get(lease.release_id)
        if (
            row is None
            or row.lease_epoch != lease.epoch
            or row.lease_owner is None
            or row.status not in (ReleaseStatus.RUNNING, ReleaseStatus.PAUSED)
        ):
            return None
        return row

    async def acknowledge(self, lease: Lease, seq: int) -> bool:
        await self._available()
        row = self._held(lease)
        if row is None:
            return False
        row.verb_acked = max(row.verb_acked, min(seq, row.verb_seq))
        return True

    async def park(self, lease: Lease) -> LeaseState | None:
        await self._available()
        row = self._held(lease)
        if row is None:
            return None
        if row.status is ReleaseStatus.PAUSED:
            owner = row.lease_owner
            row.lease_owner = None
            row.lease_expires_at = None
            row.verb_acked = row.verb_seq
            row.updated_at = self.now()
            self._event(
                row.id,
                None,
                None,
                row.status,
                row.status,
                f"lease released by {owner}: paused",
                owner,
            )
        return self._lease_state(row)

    def _lease_state(self, row: _ReleaseRow) -> LeaseState:
        return LeaseState.of(self._release(row))

    async def hand_back(self, owner: str, leases: Sequence[Lease]) -> None:
        await self._available()
        if not leases:
            return
        check_text("owner", owner)
        now = self.now()
        for lease in leases:
            row = self._releases.get(lease.release_id)
            if row is not None and row.lease_epoch == lease.epoch and row.lease_owner == owner:
                row.lease_expires_at = now - timedelta(seconds=1)
        for wake in list(self._wakers):
            wake()

    async def record_crash(
        self, owner: str, lease: Lease, error: str, backoff: float
    ) -> int | None:
        await self._available()
        row = self._releases.get(lease.release_id)
        if (
            row is None
            or row.lease_epoch != lease.epoch
            or row.lease_owner != owner
            or row.status is not ReleaseStatus.RUNNING
        ):
            return None
        now = self.now()
        row.crash_count += 1
        row.last_crash = error
        row.not_before = now + timedelta(seconds=backoff)
        row.lease_expires_at = now - timedelta(seconds=1)
        row.updated_at = now
        self._event(
            row.id,
            None,
            None,
            row.status,
            row.status,
            f"release.crashed (crash {row.crash_count}, claimable again in "
            f"{round(backoff, 1)} s): {error}",
            owner,
        )
        return row.crash_count

    async def record(
        self,
        lease: Lease,
        changes: Sequence[NodeChange],
        outcome: Outcome | None = None,
        *,
        daemon_id: str | None = None,
    ) -> bool:
        await self._available()
        if outcome is not None and not outcome.status.terminal:
            raise InvalidInput(f"a release ends success, failed or cancelled, not {outcome.status}")
        check_optional_text("daemon_id", daemon_id)
        self.record_calls += 1
        row = self._held(lease)
        if row is None:
            return False
        with self._statement():
            self._record(row, changes, outcome, daemon_id)
        return True

    def _record(
        self,
        row: _ReleaseRow,
        changes: Sequence[NodeChange],
        outcome: Outcome | None,
        daemon_id: str | None,
    ) -> None:
        now = self.now()
        by_id = self._rows_by_id(row.id)
        for change in changes:
            node = by_id.get(change.row_id)
            if node is None:
                continue
            previous = node.status
            node.status = change.status
            row.success_nodes += (node.status is NodeStatus.SUCCESS) - (
                previous is NodeStatus.SUCCESS
            )
            row.failed_nodes += (node.status is NodeStatus.FAILED) - (previous is NodeStatus.FAILED)
            node.error_msg = clip_error(change.error_msg)
            if change.task_id is not None:
                node.task_id = storable(change.task_id)
            if change.attempts is not None:
                node.attempts = change.attempts
            if change.started:
                if node.started_at is None:
                    node.previous_version = self._nodes[node.node_id].applied_version
                node.started_at = now
            if change.finished:
                node.finished_at = now
            if node.status is NodeStatus.SUCCESS and previous is not NodeStatus.SUCCESS:
                self._nodes[node.node_id] = attrs.evolve(
                    self._nodes[node.node_id],
                    applied_version=row.config_version or row.version,
                    applied_release_version=row.version,
                    applied_at=now,
                )
            if previous is not node.status:
                self._event(
                    row.id,
                    node.node_id,
                    node.batch,
                    previous,
                    node.status,
                    node.error_msg,
                    daemon_id,
                )
        if outcome is not None:
            self._end_nodes(row, outcome, daemon_id)
            self._event(
                row.id, None, None, row.status, outcome.status, outcome_message(outcome), daemon_id
            )
            row.status = outcome.status
            row.error = storable(outcome.error)
            row.finished_at = now
            row.lease_owner = None
            row.lease_expires_at = None
            self._count(row)  # counted in full once more at the end; per change before
        row.updated_at = now

    def _end_nodes(self, row: _ReleaseRow, outcome: Outcome, daemon_id: str | None) -> None:
        """A release's end: nodes never dispatched are skipped, nodes still open cancelled.

        A cancelled release names its cancel on every node it never dispatched."""
        now = self.now()
        cancelled = outcome.status is ReleaseStatus.CANCELLED and outcome.error
        for node in self._release_nodes[row.id]:
            if node.status is NodeStatus.PENDING:
                node.status = NodeStatus.SKIPPED
                node.finished_at = now
                if cancelled:
                    node.error_msg = clip_error(outcome.error)
                self._event(
                    row.id,
                    node.node_id,
                    node.batch,
                    NodeStatus.PENDING,
                    node.status,
                    outcome.error if cancelled else f"skipped: release {outcome.status}",
                    daemon_id,
                )
            elif node.status is NodeStatus.RUNNING:
                node.status = NodeStatus.CANCELLED
                node.finished_at = now
                self._event(
                    row.id,
                    node.node_id,
                    node.batch,
                    NodeStatus.RUNNING,
                    node.status,
                    f"cancelled: release {outcome.status}",
                    daemon_id,
                )

    def _rows_by_id(self, release_id: int) -> dict[int, _NodeRow]:
        rows = self._release_nodes[release_id]
        index = self._row_index.get(release_id)
        if index is None or len(index) != len(rows):
            index = {node.id: node for node in rows}
            self._row_index[release_id] = index
        return index

    def _count(self, row: _ReleaseRow) -> None:
        statuses = [node.status for node in self._release_nodes[row.id]]
        row.success_nodes = statuses.count(NodeStatus.SUCCESS)
        row.failed_nodes = statuses.count(NodeStatus.FAILED)

    async def listen_releases(
        self,
        wake: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._wakers.append(wake)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._wakers.remove(wake)

    # --- verbs ------------------------------------------------------------------------------

    async def steer(
        self,
        release_id: int,
        verb: Verb,
        *,
        by: Actor,
        reason: str = "",
        to_version: int | None = None,
    ) -> VerbResult:
        if verb is Verb.PROMOTE:
            return await self.promote(release_id, by=by, reason=reason)
        await self._available()
        row = self._releases.get(release_id)
        if row is None:
            raise NotFound(f"release {release_id} not found")
        if verb is Verb.ROLLBACK:
            result = self._rollback(row, by, reason, to_version)
        elif not decide(verb, self._release(row)):
            return VerbResult(verb, self._release(row), changed=False)
        else:
            match verb:
                case Verb.PAUSE:
                    wait = self._pause(row, by, reason)
                case Verb.RESUME:
                    wait = self._resume(row, by, reason)
                case Verb.CANCEL:
                    wait = self._cancel(row, by, reason)
                case Verb.RETRY:
                    wait = self._retry(row, by, reason)
            result = VerbResult(verb, self._release(row), changed=True, wait=wait)
        if result.changed:
            for wake in list(self._wakers):
                wake()
        return result

    async def promote(
        self, release_id: int, *, by: Actor, reason: str = "", full: bool = False
    ) -> VerbResult:
        await self._available()
        row = self._releases.get(release_id)
        if row is None:
            raise NotFound(f"release {release_id} not found")
        release = self._release(row)
        target, detail = promote_target(release, full)
        if target <= row.promoted_to:
            return VerbResult(Verb.PROMOTE, release, changed=False)
        row.promoted_to = target
        wait = self._verb(row, Verb.PROMOTE, by, reason, row.status, detail)
        for wake in list(self._wakers):
            wake()
        return VerbResult(Verb.PROMOTE, self._release(row), changed=True, wait=wait)

    async def record_step(
        self,
        lease: Lease,
        step: int,
        message: str | None,
        *,
        bake: float | None = None,
        daemon_id: str | None = None,
    ) -> bool:
        await self._available()
        check_integer("step", step, 0, INT_MAX)
        row = self._held(lease)
        if row is None:
            return False
        now = self.now()
        row.step = step
        row.step_ends_at = None if bake is None else now + timedelta(seconds=bake)
        row.updated_at = now
        if message is not None:
            self._event(row.id, None, None, row.status, row.status, message, daemon_id)
        return True

    async def verb_effect(self, release_id: int, seq: int) -> VerbEffect:
        await self._available()
        row = self._releases.get(release_id)
        if row is None:
            raise NotFound(f"release {release_id} not found")
        live = self._lease_live(row)
        acknowledged = row.verb_acked >= seq
        left = None
        if live and row.lease_expires_at is not None:
            left = (row.lease_expires_at - self.now()).total_seconds()
        return VerbEffect(
            in_effect=acknowledged or not live,
            acknowledged=acknowledged,
            owner=row.lease_owner if live else None,
            lease_left=left,
        )

    def _lease_live(self, row: _ReleaseRow) -> bool:
        return (
            row.status in (ReleaseStatus.RUNNING, ReleaseStatus.PAUSED)
            and row.lease_owner is not None
            and row.lease_expires_at is not None
            and row.lease_expires_at > self.now()
        )

    def _verb(
        self, row: _ReleaseRow, verb: Verb, by: Actor, reason: str, previous: str, detail: str = ""
    ) -> bool:
        """Stamp a verb on the row with its event; True when a live owner must acknowledge it.

        Without a live lease the verb holds at once, and a lease left by a dead owner is
        cleared: no daemon holds the release until it is claimed again."""
        row.verb, row.verb_by, row.verb_reason = verb.value, by.token_name, reason or None
        row.verb_seq += 1
        row.updated_at = self.now()
        live = self._lease_live(row)
        if not live:
            row.lease_owner = None
            row.lease_expires_at = None
        self._event(
            row.id,
            None,
            None,
            previous,
            row.status,
            verb_message(verb, by.token_name, reason, detail),
            None,
            actor=by,
        )
        return live

    def _pause(self, row: _ReleaseRow, by: Actor, reason: str) -> bool:
        previous = row.status
        row.status = ReleaseStatus.PAUSED
        return self._verb(row, Verb.PAUSE, by, reason, previous)

    def _resume(self, row: _ReleaseRow, by: Actor, reason: str) -> bool:
        previous = row.status
        # Never started: back in the queue, in version order behind the releases before it.
        row.status = ReleaseStatus.RUNNING if row.started_at else ReleaseStatus.PENDING
        row.held_for = None
        return self._verb(row, Verb.RESUME, by, reason, previous)

    def _cancel(self, row: _ReleaseRow, by: Actor, reason: str, detail: str = "") -> bool:
        previous = row.status
        nodes = self._release_nodes[row.id]
        if self._lease_live(row) or any(n.status is NodeStatus.RUNNING for n in nodes):
            # Dispatched nodes are reconciled by the owner, or by whoever claims it next.
            if row.status is ReleaseStatus.PAUSED:
                row.status = ReleaseStatus.RUNNING
            return self._verb(row, Verb.CANCEL, by, reason, previous, detail or "reconciling")
        message = cancel_message(by.token_name, reason)
        self._verb(row, Verb.CANCEL, by, reason, previous, detail)
        self._end_nodes(row, Outcome(ReleaseStatus.CANCELLED, message), None)
        self._event(row.id, None, None, previous, ReleaseStatus.CANCELLED, message, None, actor=by)
        row.status = ReleaseStatus.CANCELLED
        row.error = message
        row.finished_at = self.now()
        self._count(row)
        return False

    def _retry(self, row: _ReleaseRow, by: Actor, reason: str) -> bool:
        nodes = self._release_nodes[row.id]
        node_ids = {node.node_id for node in nodes}
        newer = [
            version
            for node_id in node_ids
            if (version := self._nodes[node_id].applied_release_version or 0) > row.version
        ]
        for other in self._releases.values():
            if (
                other.id != row.id
                and other.status in (ReleaseStatus.RUNNING, ReleaseStatus.PAUSED)
                and node_ids & {n.node_id for n in self._release_nodes[other.id]}
            ):
                if other.version > row.version:
                    newer.append(other.version)
                else:
                    raise Conflict(
                        f"release {other.id} (version {other.version}) is {other.status} on "
                        f"nodes of release {row.id}: retry once it ends"
                    )
        if newer:
            raise superseded(max(newer))
        again = [node for node in nodes if node.status is not NodeStatus.SUCCESS]
        if not again:
            raise Conflict(f"release {row.id}: every node succeeded, nothing to retry")
        for node in again:
            previous = node.status
            if node.started_at is not None or node.task_id is not None:
                node.attempt += 1
            node.status = NodeStatus.PENDING
            node.error_msg = node.task_id = node.started_at = node.finished_at = None
            node.attempts = 0
            self._event(
                row.id,
                node.node_id,
                node.batch,
                previous,
                node.status,
                f"retry: attempt {node.attempt}",
                None,
            )
        previous_status = row.status
        row.status = ReleaseStatus.RUNNING
        row.error = None
        row.finished_at = None
        self._count(row)
        return self._verb(
            row, Verb.RETRY, by, reason, previous_status, f"{len(again)} node(s) again"
        )

    def _rollback(
        self, row: _ReleaseRow, by: Actor, reason: str, to_version: int | None
    ) -> VerbResult:
        release = self._release(row)
        decide(Verb.ROLLBACK, release)
        for other in self._releases.values():
            if other.rollback_of == row.id and not other.status.terminal:
                return VerbResult(
                    Verb.ROLLBACK, release, changed=False, rollback=self._release(other)
                )
        nodes = self._node_list(row.id)
        applied = {node.id: node.applied_version for node in self._nodes.values()}
        good = {
            other.config_version or other.version
            for other in self._releases.values()
            if other.success_nodes > 0
        }
        plan = rollback_plan(release, nodes, applied, good, to_version)
        wait = False
        why = f"rolled back to config {plan.config_version}" + (f": {reason}" if reason else "")
        if not row.status.terminal and not release.cancelling:
            wait = self._cancel(row, by, why, "rollback")
        version = max(other.version for other in self._releases.values()) + 1
        steps = validate_plan(list(row.plan or DEFAULT_PLAN))
        labels = {node.node_id: node.labels for node in nodes}
        placed, topology = rollback_topology(
            strategy_of(release), steps, [(node_id, labels[node_id]) for node_id in plan.node_ids]
        )
        created = self._insert(
            version,
            placed,
            status=ReleaseStatus.PENDING,
            type=row.type,
            target=row.target,
            scope=row.scope,
            plan=row.plan,
            max_parallel=row.max_parallel,
            max_failures=row.max_failures,
            reason=rollback_reason(release, plan.config_version, by.token_name, reason),
            config_version=plan.config_version,
            rollback_of=row.id,
            selection=NodeSelection(node_ids=plan.node_ids),
        )
        created.strategy = None if topology is None else topology.to_json()
        self._event(
            created.id,
            None,
            None,
            None,
            created.status,
            f"created: {created.reason}; {len(placed)} nodes in {placed[-1][1]} batches",
            None,
            actor=by,
        )
        targets = set(plan.node_ids)
        held = []
        for other in sorted(self._releases.values(), key=lambda r: r.version):
            if (
                other.status is ReleaseStatus.PENDING
                and release.version < other.version < version
                and targets & {n.node_id for n in self._release_nodes[other.id]}
            ):
                other.status = ReleaseStatus.PAUSED
                other.held_for = created.id
                self._verb(
                    other,
                    Verb.PAUSE,
                    by,
                    f"held for rollback release {created.id} (version {version})",
                    ReleaseStatus.PENDING,
                )
                held.append(self._release(other))
        if row.status.terminal:
            self._verb(
                row,
                Verb.ROLLBACK,
                by,
                reason,
                row.status,
                f"release {created.id} restores config {plan.config_version}",
            )
        return VerbResult(
            Verb.ROLLBACK,
            self._release(row),
            changed=True,
            wait=wait,
            rollback=self._release(created),
            held=tuple(held),
        )

    # --- releases ---------------------------------------------------------------------------

    async def create_release(self, spec: ReleaseSpec) -> CreatedRelease:
        await self._available()
        plan = check_release_spec(spec)
        spec, used = with_default(spec, first_default(default_scopes(spec), self._scope_strategies))
        plan = check_release_spec(spec)
        online = self._select_nodes(spec.selection)
        with blamed_on_default(used):
            placed = self._place(spec_strategy(spec, plan), plan, online)
        version = max((row.version for row in self._releases.values()), default=0) + 1
        row = self._insert(
            version,
            placed,
            status=ReleaseStatus.PENDING,
            type=spec.type,
            target=spec.target,
            scope=spec.scope,
            plan=plan,
            max_parallel=spec.max_parallel,
            max_failures=spec.max_failures,
            reason=spec.reason,
            selection=spec.selection,
        )
        row.strategy = stored_strategy(spec)
        batches = len({batch for _, batch in placed})
        message = created_note(created_message(version, len(online), batches, spec.reason), used)
        self._event(row.id, None, None, None, row.status, message, None, actor=spec.requested_by)
        for wake in list(self._wakers):
            wake()
        nodes = await self.release_nodes(row.id)
        return CreatedRelease(
            self._release(row), node_ids_by_batch(nodes), None if used is None else used.scope
        )

    async def preview_release(self, spec: ReleaseSpec) -> ReleasePreview:
        await self._available()
        plan = check_release_spec(spec)
        spec, used = with_default(spec, first_default(default_scopes(spec), self._scope_strategies))
        plan = check_release_spec(spec)
        with blamed_on_default(used):
            placed = self._place(
                spec_strategy(spec, plan), plan, self._select_nodes(spec.selection)
            )
        done = [
            node
            for rows in self._release_nodes.values()
            for node in rows
            if node.status is NodeStatus.SUCCESS
            and node.started_at is not None
            and node.finished_at is not None
            and node.finished_at >= node.started_at
        ]
        done.sort(key=lambda node: (node.finished_at, node.id), reverse=True)
        recent: dict[int, list[float]] = {}
        for node in done:
            assert node.finished_at is not None and node.started_at is not None
            latest = recent.setdefault(node.node_id, [])
            if len(latest) < RECENT_APPLIES:
                latest.append((node.finished_at - node.started_at).total_seconds())
        nodes = {node_id: self._nodes[node_id] for node_id, _ in placed}
        preview = build_preview(spec, plan, placed, nodes, recent)
        return preview if used is None else attrs.evolve(preview, default_scope=used.scope)

    # --- scope default strategies -----------------------------------------------------------

    async def scope_strategy(self, scope: str) -> ScopeStrategy | None:
        await self._available()
        return self._scope_strategies.get(check_scope(scope))

    async def list_scope_strategies(self) -> list[ScopeStrategy]:
        await self._available()
        return [self._scope_strategies[scope] for scope in sorted(self._scope_strategies)]

    async def set_scope_strategy(
        self, scope: str, strategy: Mapping[str, object], *, by: Actor | None = None
    ) -> ScopeStrategy:
        await self._available()
        check_scope(scope)
        stored = stored_default(strategy)
        if by is not None:
            check_text("set_by", by.token_name)
        now = self.now()
        before = self._scope_strategies.get(scope)
        row = ScopeStrategy(scope, stored, by, before.created_at if before else now, now)
        self._scope_strategies[scope] = row
        return row

    async def clear_scope_strategy(self, scope: str) -> ScopeStrategy:
        await self._available()
        row = self._scope_strategies.pop(check_scope(scope), None)
        if row is None:
            raise NotFound(f"scope {scope} has no default strategy")
        return row

    def _place(
        self, strategy: Strategy, plan: Sequence[PlanStep], node_ids: list[int]
    ) -> list[tuple[int, int]]:
        """(node id, batch) of a new release over ``node_ids`` (store/topology.py)."""
        if not strategy.topology_labels:
            return assign_batches(plan, node_ids)
        return place_nodes(
            strategy, plan, [(node_id, self._nodes[node_id].labels) for node_id in node_ids]
        )

    def _select_nodes(self, selection: NodeSelection | None) -> list[int]:
        def usable(node: Node) -> bool:
            return node.enabled and node.status is NodeHealth.ONLINE

        nodes = sorted(self._nodes.values(), key=lambda node: node.id)
        if selection is None:
            chosen = [node.id for node in nodes if usable(node)]
        elif selection.selector is not None:
            chosen = [
                node.id for node in nodes if usable(node) and selection.matches_labels(node.labels)
            ]
        else:
            by_key: dict[object, Node]
            if selection.node_ids is not None:
                field, wanted = "nodeIds", list[object](selection.node_ids)
                by_key = {node.id: node for node in nodes}
            else:
                assert selection.node_names is not None
                field, wanted = "nodeNames", list[object](selection.node_names)
                by_key = {node.name: node for node in nodes}
            found = {
                key: (by_key[key].name, by_key[key].enabled, str(by_key[key].status))
                for key in wanted
                if key in by_key
            }
            check_named(wanted, found, field)
            chosen = sorted(by_key[key].id for key in wanted)
        if not chosen:
            detail = "" if selection is None else f" matching {selection.describe()}"
            raise Conflict(f"no online nodes{detail}")
        return chosen

    def insert_foreign_node(self, name: str, main_ip: str | None, agent_port: int | None) -> int:
        """Insert a node row the way another program might, unchecked (a schema without
        fleetwave's constraints can hold an empty address, NULL or port 0); return its id."""
        node_id = self._next_id()
        self._nodes[node_id] = Node(
            id=node_id,
            name=name,
            main_ip=main_ip,  # type: ignore[arg-type]
            agent_port=agent_port,  # type: ignore[arg-type]
            enabled=True,
            status=NodeHealth.ONLINE,
        )
        self._node_names.setdefault(name, node_id)
        return node_id

    def insert_seed_release(
        self, version: int, batches: Sequence[Sequence[int]], *, status: str = "pending"
    ) -> int:
        """Insert a release the way the original CMDB did: seed columns only, no plan/scope."""
        placed = [
            (node_id, number) for number, batch in enumerate(batches, start=1) for node_id in batch
        ]
        return self._insert(version, placed, status=ReleaseStatus(status)).id

    def _insert(
        self,
        version: int,
        placed: Sequence[tuple[int, int]],
        *,
        status: ReleaseStatus,
        type: str = "apply_config",
        target: str = "cdn",
        scope: str | None = None,
        plan: tuple[int | str, ...] | None = None,
        max_parallel: int | None = None,
        max_failures: int = 0,
        reason: str = "",
        selection: NodeSelection | None = None,
        config_version: int | None = None,
        rollback_of: int | None = None,
    ) -> _ReleaseRow:
        """One release row and its node rows; ``placed`` is (node id, batch) in order."""
        now = self.now()
        row = _ReleaseRow(
            id=self._next_id(),
            type=type,
            target=target,
            scope=scope,
            version=version,
            status=status,
            total_nodes=len(placed),
            plan=plan,
            max_parallel=max_parallel,
            max_failures=max_failures,
            reason=reason,
            created_at=now,
            updated_at=now,
            selection=selection,
            config_version=config_version,
            rollback_of=rollback_of,
        )
        self._releases[row.id] = row
        self._release_nodes[row.id] = [
            _NodeRow(
                id=self._next_id(),
                release_id=row.id,
                node_id=node_id,
                batch=batch,
                status=NodeStatus.PENDING,
                previous_version=self._nodes[node_id].applied_version
                if node_id in self._nodes
                else None,
            )
            for node_id, batch in placed
        ]
        return row

    async def get_release(self, release_id: int) -> Release | None:
        await self._available()
        check_integer("release_id", release_id, 1)
        row = self._releases.get(release_id)
        return None if row is None else self._release(row)

    async def list_releases(
        self, *, status: ReleaseStatus | None = None, offset: int = 0, limit: int = 20
    ) -> tuple[list[Release], int]:
        await self._available()
        check_integer("offset", offset, 0)
        check_integer("limit", limit, 1)
        rows = [row for row in self._releases.values() if status is None or row.status is status]
        rows.sort(key=lambda row: row.id, reverse=True)
        return [self._release(row) for row in rows[offset : offset + limit]], len(rows)

    async def release_nodes(self, release_id: int) -> list[ReleaseNode]:
        await self._available()
        check_integer("release_id", release_id, 1)
        return self._node_list(release_id)

    def _node_list(self, release_id: int) -> list[ReleaseNode]:
        rows = sorted(self._release_nodes.get(release_id, []), key=lambda n: (n.batch, n.id))
        result = []
        for row in rows:
            node = self._nodes[row.node_id]
            result.append(
                ReleaseNode(
                    id=row.id,
                    release_id=row.release_id,
                    node_id=row.node_id,
                    node_name=node.name,
                    main_ip=node.main_ip,
                    agent_port=node.agent_port,
                    batch=row.batch,
                    status=row.status,
                    error_msg=row.error_msg,
                    task_id=row.task_id,
                    attempts=row.attempts,
                    started_at=row.started_at,
                    finished_at=row.finished_at,
                    attempt=row.attempt,
                    previous_version=row.previous_version,
                    labels=node.labels,
                )
            )
        return result

    async def release_events(
        self, release_id: int, *, after_id: int = 0, limit: int = 1000
    ) -> list[Event]:
        await self._available()
        check_integer("release_id", release_id, 1)
        check_integer("after_id", after_id, 0)
        check_integer("limit", limit, 0)
        matching = [e for e in self._events if e.release_id == release_id and e.id > after_id]
        return matching[:limit]

    async def first_events(self, release_ids: Sequence[int]) -> dict[int, Event]:
        await self._available()
        for release_id in release_ids:
            check_integer("release_id", release_id, 1)
        wanted = set(release_ids)
        found: dict[int, Event] = {}
        for event in self._events:
            if event.release_id in wanted:
                found.setdefault(event.release_id, event)
        return found

    # --- nodes -------------------------------------------------------------------------------

    async def list_nodes(self) -> list[Node]:
        await self._available()
        return sorted(self._nodes.values(), key=lambda node: node.id)

    async def upsert_node(
        self,
        name: str,
        main_ip: str,
        agent_port: int,
        *,
        enabled: bool = True,
        status: NodeHealth = NodeHealth.ONLINE,
        replace: bool = True,
    ) -> Node:
        await self._available()
        check_node(name, main_ip, agent_port)
        known = self._node_names.get(name)
        existing = None if known is None else self._nodes.get(known)
        if existing is not None and not replace:
            raise AlreadyExists(f"node {name!r} already exists")
        node_id = existing.id if existing is not None else self._next_id()
        node = Node(
            id=node_id,
            name=name,
            main_ip=main_ip,
            agent_port=agent_port,
            enabled=enabled,
            status=status,
            last_seen_at=existing.last_seen_at if existing else None,
            labels=existing.labels if existing else (),
        )
        self._nodes[node_id] = node
        self._node_names.setdefault(name, node_id)
        return node

    async def update_node(
        self,
        node_id: int,
        *,
        status: NodeHealth | None = None,
        enabled: bool | None = None,
        labels: Mapping[str, str | None] | None = None,
    ) -> Node:
        changes = None if labels is None else check_label_changes(labels)
        await self._available()
        check_integer("node_id", node_id, 1)
        node = self._nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        if changes is not None:
            merged = merge_labels(dict(node.labels), changes)
            node = attrs.evolve(node, labels=labels_value(merged))
        if status is not None:
            node = attrs.evolve(node, status=status)
        if enabled is not None:
            node = attrs.evolve(node, enabled=enabled)
        self._nodes[node_id] = node
        return node

    async def get_node(self, node_id: int) -> Node | None:
        await self._available()
        check_integer("node_id", node_id, 1)
        return self._nodes.get(node_id)

    async def node_runs(self, node_id: int, *, limit: int = 10) -> list[NodeRun]:
        await self._available()
        check_integer("node_id", node_id, 1)
        runs = [
            NodeRun(
                release_id=row.release_id,
                version=self._releases[row.release_id].version,
                batch=row.batch,
                status=row.status,
                error_msg=row.error_msg,
                started_at=row.started_at,
                finished_at=row.finished_at,
            )
            for rows in self._release_nodes.values()
            for row in rows
            if row.node_id == node_id
        ]
        runs.sort(key=lambda run: run.release_id, reverse=True)
        return runs[: max(limit, 0)]

    async def node_expectation(self, node_id: int) -> Expectation | None:
        await self._available()
        check_integer("node_id", node_id, 1)
        included = [
            self._releases[release_id]
            for release_id, members in self._release_nodes.items()
            if any(member.node_id == node_id for member in members)
        ]
        found = newest_success(included)
        return None if found is None else expectation(found)

    async def fleet_state(self) -> FleetState:
        await self._available()
        newest = newest_success
        included: dict[int, list[_ReleaseRow]] = {}
        scopes: dict[str | None, list[_ReleaseRow]] = {}
        for row in self._releases.values():
            scopes.setdefault(row.scope, []).append(row)
            for member in self._release_nodes[row.id]:
                included.setdefault(member.node_id, []).append(row)
        nodes = []
        for node in sorted(self._nodes.values(), key=lambda node: node.id):
            expected = newest(included.get(node.id, []))
            nodes.append(FleetNode(node, None if expected is None else expectation(expected)))
        groups = []
        for scope, rows in sorted(scopes.items(), key=lambda item: scope_order(item[0])):
            latest = newest(rows)
            members = [] if latest is None else self._release_nodes[latest.id]
            config = None if latest is None else expectation(latest).config_version
            groups.append(
                ScopeFleet(
                    scope=scope,
                    releases=len(rows),
                    newest=None if latest is None else expectation(latest),
                    newest_ended_at=None if latest is None else ended_at(latest),
                    release_nodes=len(members),
                    running_config=sum(
                        1 for m in members if self._nodes[m.node_id].applied_version == config
                    ),
                )
            )
        return FleetState(nodes=tuple(nodes), scopes=tuple(groups))

    async def waits(self, release_ids: Sequence[int]) -> dict[int, Wait]:
        await self._available()
        waits = {}
        for release_id in release_ids:
            row = self._releases.get(release_id)
            if row is None or row.status is not ReleaseStatus.PENDING:
                continue
            mine = {node.node_id for node in self._release_nodes[row.id]}
            blocking = [
                other
                for other in self._ahead(row)
                if (row.scope is not None and other.scope == row.scope)
                or (mine & {node.node_id for node in self._release_nodes[other.id]})
            ]
            active = [o for o in blocking if o.status is not ReleaseStatus.PENDING]
            ahead = (
                min(active, key=lambda other: other.version)
                if active
                else max(blocking, key=lambda other: other.version, default=None)
            )
            shared: list[str] = []
            if ahead is not None:
                theirs = {node.node_id for node in self._release_nodes[ahead.id]}
                shared = [self._nodes[n].name for n in sorted(mine & theirs)]
            waits[release_id] = Wait(
                release_id=release_id,
                scope=row.scope,
                ahead_id=None if ahead is None else ahead.id,
                ahead_status=None if ahead is None else ahead.status,
                shared=tuple(shared[:WAIT_NODES_SHOWN]),
                shared_count=len(shared),
            )
        return waits

    # --- the event stream --------------------------------------------------------------------

    async def events_since(
        self, after_id: int, *, missing: Sequence[int] = (), limit: int = 1000
    ) -> list[Event]:
        await self._available()
        wanted = set(missing)
        found = [e for e in self._events if e.id > after_id or e.id in wanted]
        return found[: max(limit, 0)]

    async def last_event_id(self) -> int:
        await self._available()
        return self._events[-1].id if self._events else 0

    async def listen_events(
        self,
        wake: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._event_wakers.append(wake)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._event_wakers.remove(wake)

    # --- webhooks ----------------------------------------------------------------------------

    async def create_webhook(self, spec: WebhookSpec) -> Webhook:
        await self._available()
        check_webhook_spec(spec)
        hook = Webhook(self._next_id(), spec.url, tuple(spec.events), spec.description, self.now())
        self._hooks[hook.id] = _HookRow(hook, spec.secret)
        return hook

    async def list_webhooks(self) -> list[Webhook]:
        await self._available()
        return [row.hook for _, row in sorted(self._hooks.items())]

    async def delete_webhook(self, webhook_id: int) -> None:
        await self._available()
        if self._hooks.pop(webhook_id, None) is None:
            raise NotFound(f"webhook {webhook_id} does not exist")
        for delivery_id in [d.id for d in self._deliveries.values() if d.webhook_id == webhook_id]:
            del self._deliveries[delivery_id]

    async def webhook_deliveries(self, webhook_id: int, *, limit: int = 20) -> list[Delivery]:
        await self._available()
        if webhook_id not in self._hooks:
            raise NotFound(f"webhook {webhook_id} does not exist")
        rows = [d for d in self._deliveries.values() if d.webhook_id == webhook_id]
        rows.sort(key=lambda d: d.id, reverse=True)
        return [row.value() for row in rows[: max(limit, 0)]]

    async def claim_deliveries(self, owner: str, limit: int, lock: float) -> list[DueDelivery]:
        await self._available()
        now = self.now()
        due = [
            d
            for d in self._deliveries.values()
            if d.status is DeliveryStatus.PENDING
            and d.next_attempt_at is not None
            and d.next_attempt_at <= now
            and (d.locked_until is None or d.locked_until < now)
        ]
        due.sort(key=lambda d: (d.next_attempt_at or now, d.id))
        taken = []
        for row in due[: max(limit, 0)]:
            row.locked_by = owner
            row.locked_until = now + timedelta(seconds=lock)
            row.attempts += 1
            hook = self._hooks[row.webhook_id]
            taken.append(DueDelivery(row.value(), hook.hook.url, hook.secret))
        return taken

    async def finish_delivery(
        self,
        delivery_id: int,
        owner: str,
        *,
        delivered: bool,
        status: int | None = None,
        error: str | None = None,
        retry_in: float | None = None,
    ) -> bool:
        await self._available()
        row = self._deliveries.get(delivery_id)
        if row is None or row.locked_by != owner or row.status is not DeliveryStatus.PENDING:
            return False
        now = self.now()
        if delivered:
            row.status = DeliveryStatus.DELIVERED
            row.delivered_at = now
        elif retry_in is None:
            row.status = DeliveryStatus.FAILED
        else:
            row.next_attempt_at = now + timedelta(seconds=retry_in)
        row.last_status = status
        row.last_error = clip_error(error)
        row.locked_by = None
        row.locked_until = None
        return True

    # --- tokens and health ----------------------------------------------------------------

    async def create_token(
        self,
        name: str,
        token_hash: str,
        *,
        role: Role = Role.ADMIN,
        expires_in: timedelta | None = None,
    ) -> TokenInfo:
        await self._available()
        check_text("name", name)
        check_text("token_hash", token_hash)
        if any(row.info.name == name for row in self._tokens.values()):
            raise AlreadyExists(f"a token named {name!r} already exists")
        if any(row.token_hash == token_hash for row in self._tokens.values()):
            raise AlreadyExists("a token with this value already exists")
        now = self.now()
        info = TokenInfo(
            id=next(self._token_ids),
            name=name,
            role=Role(role),
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
            last_used_at=None,
        )
        self._tokens[info.id] = _TokenRow(info, token_hash)
        return info

    async def tokens_by_hash_prefix(self, prefix: str) -> list[StoredToken]:
        await self._available()
        check_text("prefix", prefix)
        now = self.now()
        return [
            StoredToken(
                row.info,
                row.token_hash,
                expired=row.info.expires_at is not None and row.info.expires_at <= now,
            )
            for row in self._tokens.values()
            if row.token_hash[:TOKEN_LOOKUP_CHARS] == prefix
        ]

    async def list_tokens(self) -> list[TokenInfo]:
        await self._available()
        return [self._tokens[token_id].info for token_id in sorted(self._tokens)]

    async def revoke_token(self, key: int | str) -> TokenInfo:
        await self._available()
        check_token_key(key)
        for token_id, row in self._tokens.items():
            if (token_id == key) if isinstance(key, int) else (row.info.name == key):
                del self._tokens[token_id]
                return row.info
        what = f"id {key}" if isinstance(key, int) else f"named {key!r}"
        raise NotFound(f"no token {what}")

    async def touch_tokens(self, token_ids: Sequence[int]) -> None:
        await self._available()
        now = self.now()
        for token_id in token_ids:
            row = self._tokens.get(token_id)
            if row is not None:
                row.info = attrs.evolve(row.info, last_used_at=now)

    async def ping(self) -> bool:
        await self._available()
        return True

    # --- internals ------------------------------------------------------------------------------

    def _event(
        self,
        release_id: int,
        node_id: int | None,
        batch: int | None,
        from_status: str | None,
        to_status: str,
        message: str | None,
        daemon_id: str | None,
        *,
        actor: Actor | None = None,
    ) -> None:
        event = Event(
            id=len(self._events) + 1,
            release_id=release_id,
            node_id=node_id,
            batch=batch,
            from_status=None if from_status is None else str(from_status),
            to_status=str(to_status),
            message=message,
            daemon_id=daemon_id,
            created_at=self.now(),
            actor=actor,
        )
        self._events.append(event)
        self._uncommitted.append(event)
        if not self._in_statement:
            self._commit_events()

    @contextlib.contextmanager
    def _statement(self) -> Iterator[None]:
        """Events appended inside are one statement's, as migration 0007's trigger sees them:
        their webhook deliveries are decided once the whole change is made."""
        self._in_statement = True
        try:
            yield
        finally:
            self._in_statement = False
            self._commit_events()

    def _commit_events(self) -> None:
        events, self._uncommitted = self._uncommitted, []
        if not events:
            return
        for wake in list(self._event_wakers):
            wake()
        if not self._hooks:
            return
        # The last node event of a batch (from running to an end) ends it, when nothing in
        # the batch is left open.
        last_of_batch: dict[tuple[int, int], int] = {}
        for event in events:
            if (
                event.node_id is not None
                and event.batch is not None
                and event.from_status == "running"
                and event.to_status in ("success", "failed", "cancelled")
            ):
                last_of_batch[(event.release_id, event.batch)] = event.id
        for event in events:
            done = False
            if event.batch is not None and last_of_batch.get((event.release_id, event.batch)) == (
                event.id
            ):
                done = all(
                    node.status.terminal
                    for node in self._release_nodes[event.release_id]
                    if node.batch == event.batch
                )
            for kind in event_kinds(event, batch_done=done):
                for hook_id, hook in sorted(self._hooks.items()):
                    if kind in hook.hook.events:
                        self._queue_delivery(hook_id, event, kind)

    def _queue_delivery(self, hook_id: int, event: Event, kind: str) -> None:
        row = self._releases[event.release_id]
        nodes = self._release_nodes[event.release_id]
        node = None if event.node_id is None else self._nodes.get(event.node_id)
        batch_counts = None
        if kind == "batch.finished":
            counts: dict[str, int] = {}
            for member in nodes:
                if member.batch == event.batch:
                    counts[str(member.status)] = counts.get(str(member.status), 0) + 1
            batch_counts = counts
        payload: dict[str, object] = {
            "idempotencyKey": idempotency_key(hook_id, event.id, kind),
            "kind": kind,
            "eventId": event.id,
            "releaseId": event.release_id,
            "version": row.version,
            "target": row.target,
            "releaseStatus": str(row.status),
            "totalNodes": row.total_nodes,
            "successNodes": sum(n.status is NodeStatus.SUCCESS for n in nodes),
            "failedNodes": sum(n.status is NodeStatus.FAILED for n in nodes),
            "batch": event.batch,
            "node": None
            if event.node_id is None
            else {
                "id": event.node_id,
                "name": None if node is None else node.name,
                "mainIp": None if node is None else node.main_ip,
            },
            "fromStatus": event.from_status,
            "toStatus": event.to_status,
            "message": event.message,
            "daemonId": event.daemon_id,
            "batchCounts": batch_counts,
            "createdAt": event.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        delivery = _DeliveryRow(
            id=self._next_id(),
            webhook_id=hook_id,
            event_id=event.id,
            kind=kind,
            payload=payload,
            created_at=self.now(),
            next_attempt_at=self.now(),
        )
        self._deliveries[delivery.id] = delivery

    def _release(self, row: _ReleaseRow) -> Release:
        nodes = self._release_nodes.get(row.id, [])
        statuses = [node.status for node in nodes]
        open_batches = [
            node.batch
            for node in nodes
            if node.status in (NodeStatus.PENDING, NodeStatus.RUNNING, NodeStatus.FAILED)
        ]
        return Release(
            id=row.id,
            type=row.type,
            target=row.target,
            scope=row.scope,
            version=row.version,
            status=row.status,
            total_nodes=row.total_nodes,
            success_nodes=row.success_nodes,
            failed_nodes=row.failed_nodes,
            skipped_nodes=statuses.count(NodeStatus.SKIPPED),
            cancelled_nodes=statuses.count(NodeStatus.CANCELLED),
            current_batch=min(open_batches, default=0),
            plan=row.plan if row.plan is not None else (1, "100%"),
            max_parallel=row.max_parallel,
            max_failures=row.max_failures,
            reason=row.reason,
            error=row.error,
            lease_owner=row.lease_owner,
            lease_epoch=row.lease_epoch,
            lease_expires_at=row.lease_expires_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            selection=row.selection,
            config_version=row.config_version or row.version,
            rollback_of=row.rollback_of,
            held_for=row.held_for,
            verb=row.verb,
            verb_by=row.verb_by,
            verb_reason=row.verb_reason,
            verb_seq=row.verb_seq,
            verb_acked=row.verb_acked,
            crash_count=row.crash_count,
            not_before=row.not_before,
            last_crash=row.last_crash,
            strategy=row.strategy,
            batch_count=max((node.batch for node in nodes), default=0),
            step=row.step,
            step_ends_at=row.step_ends_at,
            promoted_to=row.promoted_to,
        )
