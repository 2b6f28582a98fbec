"""PostgresStore: the Store contract over an asyncpg pool, reached through trio-asyncio.

Every public method is Trio-flavored. Each one runs exactly one asyncio-flavored coroutine
(acquire a connection, open a transaction, run its statements) crossed once with
``trio_asyncio.aio_as_trio``, so a store operation costs one bridge crossing whatever it does.

A store is opened with ``open_postgres_store(url)``, which must run inside
``trio_asyncio.open_loop()``; ``open_loop_and_store(url)`` opens both, for tools and tests.
Opening applies pending migrations (store.migrate) unless told not to.

All times are the database's ``now()``. Connection failures surface as StoreUnavailable.

Every operation is bounded three ways, so a database that stops answering (packets dropped,
not refused) never holds a caller: the driver's command timeout per statement, a timeout on
acquiring a pooled connection, and a trio deadline around the whole operation. Transient
SQLSTATEs (connection exceptions 08, serialization failure and deadlock 40001/40P01,
insufficient resources 53, operator intervention 57 such as pg_cancel_backend's 57014,
read-only transactions 25006 after a failover, and the idle-in-transaction timeout 25P03)
surface as StoreUnavailable as well: the operation may be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeAlias, TypeVar, cast

import asyncpg
import attrs
import structlog
import trio
import trio_asyncio

from fleetwave.store import migrate as migrations
from fleetwave.store.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from fleetwave.store.fleet import Expectation, FleetNode, FleetState, ScopeFleet, scope_order
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
    labels_from_column,
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
    DueDelivery,
    Webhook,
    WebhookSpec,
    check_webhook_spec,
)

NOTIFY_CHANNEL: Final = "fleetwave_release"
# Sent by migration 0007's trigger after each statement that appended release_events rows.
EVENT_CHANNEL: Final = "fleetwave_event"
# Serialises version allocation between concurrent create_release transactions.
CREATE_LOCK_KEY: Final = 0x666C_7477_7665_7273
# A foreign writer may take a version between our max() and our insert: try again.
_VERSION_ATTEMPTS: Final = 5
# The notification connection is checked after this long without a notification.
_LISTEN_IDLE_SEC: Final = 15.0
_LISTEN_BACKOFF_MIN_SEC: Final = 0.5
_LISTEN_BACKOFF_MAX_SEC: Final = 30.0
_PING_TIMEOUT_SEC: Final = 5.0
_CLOSE_TIMEOUT_SEC: Final = 5.0
DEFAULT_OPERATION_TIMEOUT_SEC: Final = 30.0

_log = structlog.get_logger("fleetwave.store")

P = ParamSpec("P")
T = TypeVar("T")

if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record]
    PooledConnection: TypeAlias = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]


def _row(record: asyncpg.Record) -> Mapping[str, Any]:
    """Records are read by column name, as the models' from_record expects."""
    return cast("Mapping[str, Any]", record)


_UNAVAILABLE: Final = (
    OSError,  # refused, unreachable, reset, and TimeoutError
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InvalidCatalogNameError,  # the database does not exist (any more)
    asyncpg.InvalidAuthorizationSpecificationError,  # no such role, or not allowed in
    # The driver lost track of the connection's protocol state, typically when the server
    # ended the session mid-operation; that connection is discarded (_acquired).
    asyncpg.InternalClientError,
)


def _unavailable(error: BaseException) -> StoreUnavailable:
    detail = str(error).strip() or type(error).__name__
    return StoreUnavailable(f"database unavailable: {detail}")


# SQLSTATE classes and codes after which the same operation may succeed when tried again.
_TRANSIENT_CLASSES: Final = ("08", "53", "57")
_TRANSIENT_CODES: Final = frozenset({"40001", "40P01", "25006", "25P03"})


def is_transient(sqlstate: str | None) -> bool:
    """Whether a server error of this SQLSTATE says "not now" rather than "never"."""
    if not sqlstate:
        return False
    return sqlstate[:2] in _TRANSIENT_CLASSES or sqlstate in _TRANSIENT_CODES


def _is_closed_connection(error: asyncpg.InterfaceError) -> bool:
    text = str(error)
    return "connection is closed" in text or "connection was closed" in text


# After these, a connection's protocol state is not trusted: it is closed, not pooled again.
_UNTRUSTED: Final = (*_UNAVAILABLE, asyncpg.InterfaceError, asyncio.CancelledError)


@asynccontextmanager
async def _acquired(pool: Pool, wait: float | None = None) -> AsyncIterator[PooledConnection]:
    """Asyncio-flavored: a pooled connection, terminated rather than reused when an operation
    on it failed in a way that may leave the driver and the server out of step.

    asyncpg can hand back to its pool a connection whose server session ended mid-operation,
    and every later user of it then fails with InternalClientError; terminating it makes the
    pool open a fresh one instead."""
    async with pool.acquire(timeout=wait) as connection:
        try:
            yield connection
        except _UNTRUSTED:
            # A connection that closed itself is already back in the pool, detached.
            with contextlib.suppress(asyncpg.InterfaceError):
                connection.terminate()
            raise


async def _translated(operation: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Asyncio-flavored: run ``operation``, turning driver failures into StoreErrors."""
    try:
        return await operation(*args, **kwargs)
    except StoreError:
        raise
    except _UNAVAILABLE as error:
        raise _unavailable(error) from error
    except asyncpg.InterfaceError as error:
        if _is_closed_connection(error):
            raise _unavailable(error) from error
        raise
    except asyncpg.CheckViolationError as error:
        raise InvalidInput(f"value rejected by the database: {error}") from error
    except asyncpg.PostgresError as error:
        if is_transient(error.sqlstate):
            raise _unavailable(error) from error
        raise


# --- SQL -----------------------------------------------------------------------------------

# A Release row: the stored columns plus counts and the current batch, computed per release.
_RELEASE_SELECT = """
SELECT r.id, r.type, r.target, r.scope, r.version, r.status,
       r.total_nodes, r.success_nodes, r.failed_nodes,
       coalesce(c.skipped_nodes, 0)::int AS skipped_nodes,
       coalesce(c.cancelled_nodes, 0)::int AS cancelled_nodes,
       coalesce(c.current_batch, 0) AS current_batch,
       r.plan, r.max_parallel, r.max_failures, r.reason, r.error,
       r.lease_owner, r.lease_epoch, r.lease_expires_at,
       r.created_at, r.updated_at, r.started_at, r.finished_at, r.selection,
       coalesce(r.config_version, r.version) AS config_version, r.rollback_of, r.held_for,
       r.verb, r.verb_by, r.verb_reason, r.verb_seq, r.verb_acked,
       r.crash_count, r.not_before, r.last_crash,
       r.strategy, r.step, r.step_ends_at, r.promoted_to,
       coalesce(c.batch_count, 0) AS batch_count
FROM {source} r
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE n.status = 'skipped') AS skipped_nodes,
           count(*) FILTER (WHERE n.status = 'cancelled') AS cancelled_nodes,
           min(n.batch) FILTER (WHERE n.status IN ('pending', 'running', 'failed'))
               AS current_batch,
           max(n.batch) AS batch_count
    FROM release_task_nodes n
    WHERE n.release_task_id = r.id
) c ON true
"""


_SCOPE_COLUMNS: Final = "scope, strategy, set_by, set_by_role, created_at, updated_at"
_SET_SCOPE_STRATEGY: Final = f"""
INSERT INTO scope_strategies (scope, strategy, set_by, set_by_role)
VALUES ($1, $2::jsonb, $3, $4)
ON CONFLICT (scope) DO UPDATE
SET strategy = EXCLUDED.strategy, set_by = EXCLUDED.set_by, set_by_role = EXCLUDED.set_by_role,
    updated_at = now()
RETURNING {_SCOPE_COLUMNS}
"""


def _release_select(source: str = "release_tasks") -> str:
    return _RELEASE_SELECT.format(source=source)


def _probe(walked: str, probed: str) -> str:
    """Walk ``walked``'s node rows, probing ``probed``'s through the unique (release_task_id,
    node_id) index; stops at the first shared node. OFFSET 0 keeps the inner EXISTS a probe
    (flattened, the planner would join instead)."""
    return f"""EXISTS (
        SELECT 1 FROM release_task_nodes w
        WHERE w.release_task_id = {walked}.id
          AND EXISTS (
              SELECT 1 FROM release_task_nodes p
              WHERE p.release_task_id = {probed}.id AND p.node_id = w.node_id
              OFFSET 0
          )
    )"""


# Release o shares a node with release r. Of similar sizes, their node rows are merge-joined
# (cheapest then); when one is much smaller, its rows are walked and probed into the other's,
# so a 100-node release is never compared by reading all rows of a 10,000-node one.
# total_nodes is only a hint here: a wrong value written by another program costs time, never
# a wrong answer.
_SHARES_A_NODE = f"""(CASE
        WHEN o.total_nodes * 8 < r.total_nodes THEN {_probe("o", "r")}
        WHEN r.total_nodes * 8 < o.total_nodes THEN {_probe("r", "o")}
        ELSE EXISTS (
            SELECT 1
            FROM release_task_nodes theirs
            JOIN release_task_nodes mine
              ON mine.release_task_id = r.id AND mine.node_id = theirs.node_id
            WHERE theirs.release_task_id = o.id
        )
    END)"""

# Claimable: a pending release none of whose nodes belongs to an active release (running,
# paused) or to an older pending one, and, when it names a scope, no release of that scope
# active or pending before it; or a running release with an expired (or no) lease, once a
# crashed release's backoff (not_before) has passed. Older
# pending releases block newer ones, so overlapping releases start in version order even
# when one statement claims several. A release paused for a rollback does not hold that
# rollback back. Rows another claimer holds are skipped, not waited
# for. The previous status is read under the row lock, for the audit trail.
_CLAIM = f"""
WITH candidates AS (
    SELECT r.id, r.status AS from_status
    FROM release_tasks r
    WHERE (
        r.status = 'pending'
        AND NOT EXISTS (
            SELECT 1
            FROM release_tasks o
            WHERE o.id <> r.id
              AND (o.status = 'running'
                   OR (o.status = 'paused' AND o.held_for IS DISTINCT FROM r.id)
                   OR (o.status = 'pending' AND o.version < r.version))
              AND (
                  o.scope = r.scope
                  OR {_SHARES_A_NODE}
              )
        )
    ) OR (
        r.status = 'running'
        AND (r.lease_expires_at IS NULL OR r.lease_expires_at < now())
        AND (r.not_before IS NULL OR r.not_before <= now())
    )
    ORDER BY r.version
    LIMIT $2
    FOR UPDATE OF r SKIP LOCKED
), claimed AS (
    UPDATE release_tasks t
    SET status = 'running',
        lease_owner = $1,
        lease_epoch = t.lease_epoch + 1,
        lease_expires_at = now() + make_interval(secs => $3),
        started_at = coalesce(t.started_at, now()),
        updated_at = now()
    FROM candidates k
    WHERE t.id = k.id
    RETURNING t.*, k.from_status
), events AS (
    INSERT INTO release_events (release_task_id, from_status, to_status, message, daemon_id)
    SELECT id, from_status, 'running',
           'claimed by ' || $1 || ' (epoch ' || lease_epoch || ')', $1
    FROM claimed
    ORDER BY version
)
{_release_select("claimed")}
ORDER BY r.version
"""

_HEARTBEAT = """
UPDATE release_tasks t
SET lease_expires_at = now() + make_interval(secs => $4)
FROM unnest($2::bigint[], $3::bigint[]) AS l(id, epoch)
WHERE t.id = l.id AND t.lease_epoch = l.epoch AND t.lease_owner = $1
  AND t.status IN ('running', 'paused')
RETURNING t.id, t.status, t.verb, t.verb_seq, t.verb_acked, t.verb_by, t.verb_reason,
          t.promoted_to
"""

# The fence of an owner's writes: its epoch, a lease not given up, a release not ended.
_HELD = (
    "id = $1 AND lease_epoch = $2 AND lease_owner IS NOT NULL AND status IN ('running', 'paused')"
)

_ACKNOWLEDGE = f"""
UPDATE release_tasks
SET verb_acked = greatest(verb_acked, least($3, verb_seq))
WHERE {_HELD}
RETURNING id
"""

# A paused release's owner gives its lease up; a resumed one keeps it. The answer is the
# row as it was (a park changes no status).
_PARK = f"""
WITH held AS (
    SELECT id, status, lease_owner FROM release_tasks WHERE {_HELD} FOR UPDATE
), parked AS (
    UPDATE release_tasks t
    SET lease_owner = NULL, lease_expires_at = NULL, verb_acked = t.verb_seq, updated_at = now()
    FROM held h
    WHERE t.id = h.id AND h.status = 'paused'
    RETURNING t.id
), event AS (
    INSERT INTO release_events (release_task_id, from_status, to_status, message, daemon_id)
    SELECT h.id, 'paused', 'paused', 'lease released by ' || h.lease_owner || ': paused',
           h.lease_owner
    FROM held h JOIN parked p ON p.id = h.id
)
SELECT t.status, t.verb, t.verb_seq, t.verb_acked, t.verb_by, t.verb_reason, t.promoted_to
FROM release_tasks t JOIN held h ON h.id = t.id
"""

# An owner reaches step $3 of its release's schedule ($4: the seconds of the bake it starts).
_RECORD_STEP = f"""
WITH stepped AS (
    UPDATE release_tasks
    SET step = $3,
        step_ends_at = CASE WHEN $4::float8 IS NULL THEN NULL
                            ELSE now() + make_interval(secs => $4::float8) END,
        updated_at = now()
    WHERE {_HELD}
    RETURNING id, status
), event AS (
    INSERT INTO release_events (release_task_id, from_status, to_status, message, daemon_id)
    SELECT id, status, status, $5::text, $6::text FROM stepped WHERE $5::text IS NOT NULL
)
SELECT count(*) FROM stepped
"""

# A promote on a locked release row: it passes every pause before $2, with its event.
_PROMOTE = """
WITH promoted AS (
    UPDATE release_tasks
    SET promoted_to = $2, verb = 'promote', verb_by = $3, verb_reason = $4,
        verb_seq = verb_seq + 1,
        lease_owner = CASE WHEN $5 THEN lease_owner END,
        lease_expires_at = CASE WHEN $5 THEN lease_expires_at END,
        updated_at = now()
    WHERE id = $1
    RETURNING id, status
)
INSERT INTO release_events
    (release_task_id, from_status, to_status, message, actor_token, actor_role)
SELECT id, status, status, $6, $3, $7 FROM promoted
"""

_VERB_EFFECT = """
SELECT verb_acked >= $2 AS acknowledged,
       (status IN ('running', 'paused') AND lease_owner IS NOT NULL
        AND lease_expires_at > now()) AS live,
       lease_owner,
       extract(epoch FROM lease_expires_at - now())::float8 AS lease_left
FROM release_tasks
WHERE id = $1
"""

# A verb stamped on a locked release row ($6: a live owner keeps its lease; without one, a
# dead owner's lease is cleared), with its event.
_STAMP_VERB = """
WITH stamped AS (
    UPDATE release_tasks
    SET status = $2, verb = $3, verb_by = $4, verb_reason = $5, verb_seq = verb_seq + 1,
        held_for = CASE WHEN $3 = 'resume' THEN NULL ELSE coalesce($8, held_for) END,
        lease_owner = CASE WHEN $6 THEN lease_owner END,
        lease_expires_at = CASE WHEN $6 THEN lease_expires_at END,
        updated_at = now()
    WHERE id = $1
    RETURNING id
)
INSERT INTO release_events
    (release_task_id, from_status, to_status, message, actor_token, actor_role)
SELECT id, $7, $2, $9, $10, $11 FROM stamped
"""

# A retry: every node that did not succeed is pending again; one the agent may have
# received runs under the next attempt (a new taskId).
_RETRY_NODES = """
WITH again AS (
    SELECT id, node_id, batch, status,
           attempt + CASE WHEN started_at IS NOT NULL OR task_id IS NOT NULL THEN 1 ELSE 0 END
               AS next_attempt
    FROM release_task_nodes
    WHERE release_task_id = $1 AND status <> 'success'
), reset AS (
    UPDATE release_task_nodes n
    SET status = 'pending', error_msg = NULL, task_id = NULL, started_at = NULL,
        finished_at = NULL, attempts = 0, attempt = a.next_attempt, updated_at = now()
    FROM again a
    WHERE n.id = a.id
    RETURNING n.id
)
INSERT INTO release_events (release_task_id, node_id, batch, from_status, to_status, message)
SELECT $1, node_id, batch, status, 'pending', 'retry: attempt ' || next_attempt
FROM again
ORDER BY batch, id
"""

_RETRY_RELEASE = """
UPDATE release_tasks
SET status = 'running', error = NULL, finished_at = NULL, updated_at = now()
WHERE id = $1
"""

# Releases running or paused on any of the given nodes, other than $1.
_ACTIVE_ON_NODES = """
SELECT DISTINCT r.id, r.version, r.status
FROM release_tasks r
JOIN release_task_nodes n ON n.release_task_id = r.id
WHERE r.id <> $1 AND r.status IN ('running', 'paused') AND n.node_id = ANY($2::bigint[])
ORDER BY r.version
"""

# Pending releases between two versions over any of the given nodes, locked: a rollback
# pauses them.
_PENDING_ON_NODES = """
SELECT r.id, r.version
FROM release_tasks r
WHERE r.status = 'pending' AND r.version > $1 AND r.version < $2
  AND EXISTS (
      SELECT 1 FROM release_task_nodes n
      WHERE n.release_task_id = r.id AND n.node_id = ANY($3::bigint[])
  )
ORDER BY r.version
FOR UPDATE
"""

_INSERT_ROLLBACK = """
INSERT INTO release_tasks
    (type, target, version, status, total_nodes, scope, plan, max_parallel, max_failures,
     reason, config_version, rollback_of, selection, strategy)
SELECT type, target, $2, 'pending', $3, scope, plan, max_parallel, max_failures, $4, $5, id,
       $6::jsonb, $7::jsonb
FROM release_tasks
WHERE id = $1
RETURNING id
"""

# The expression is the one indexed by migration 0002 (api_tokens_hash_prefix_idx).
_TOKEN_COLUMNS = "id, name, role, created_at, expires_at, last_used_at"

_TOKENS_BY_HASH_PREFIX = f"""
SELECT {_TOKEN_COLUMNS}, token_hash, coalesce(expires_at <= now(), false) AS expired
FROM api_tokens
WHERE left(token_hash, {TOKEN_LOOKUP_CHARS}) = $1
"""

# Expired a second ago, so any claimer takes it at once; the NOTIFY tells them to look now.
_HAND_BACK = """
WITH handed AS (
    UPDATE release_tasks t
    SET lease_expires_at = now() - interval '1 second'
    FROM unnest($2::bigint[], $3::bigint[]) AS l(id, epoch)
    WHERE t.id = l.id AND t.lease_epoch = l.epoch AND t.lease_owner = $1
      AND t.status = 'running'
    RETURNING t.id
)
SELECT pg_notify($4, id::text) FROM handed
"""

# A crash of the release's actors: counted, the lease given up, the release held back until
# now() + backoff; fenced like every write of an owner. Returns the new count.
_RECORD_CRASH = """
WITH crashed AS (
    UPDATE release_tasks t
    SET crash_count = t.crash_count + 1,
        last_crash = $4,
        not_before = now() + make_interval(secs => $5::float8),
        lease_expires_at = now() - interval '1 second',
        updated_at = now()
    WHERE t.id = $1 AND t.lease_epoch = $2 AND t.lease_owner = $3 AND t.status = 'running'
    RETURNING t.id, t.crash_count
), event AS (
    INSERT INTO release_events (release_task_id, from_status, to_status, message, daemon_id)
    SELECT id, 'running', 'running',
           'release.crashed (crash ' || crash_count || ', claimable again in '
               || round($5::float8::numeric, 1)::text || ' s): ' || $4::text, $3
    FROM crashed
)
SELECT crash_count FROM crashed
"""

_FENCE = f"""
UPDATE release_tasks
SET updated_at = now()
WHERE {_HELD}
RETURNING id
"""

# A node's first success in this release records what it now runs ($2: the rows changed to
# success in this write, still showing their earlier status).
_APPLIED = """
UPDATE nodes d
SET applied_version = coalesce(r.config_version, r.version),
    applied_release_version = r.version,
    applied_at = now(),
    updated_at = now()
FROM release_task_nodes n
JOIN release_tasks r ON r.id = n.release_task_id
WHERE n.release_task_id = $1 AND n.id = ANY($2::bigint[]) AND n.status <> 'success'
  AND d.id = n.node_id
"""

# One statement for any number of node changes: the merged final values update the rows;
# the events follow every step in order (from_status = the step before, or the stored one).
_APPLY_CHANGES = """
WITH target AS (
    SELECT n.id, n.node_id, n.batch, n.status
    FROM release_task_nodes n
    WHERE n.release_task_id = $1 AND n.id = ANY($2::bigint[])
), updated AS (
    UPDATE release_task_nodes n
    SET status = c.status,
        error_msg = c.error_msg,
        task_id = coalesce(c.task_id, n.task_id),
        attempts = coalesce(c.attempts, n.attempts),
        started_at = CASE WHEN c.started THEN now() ELSE n.started_at END,
        previous_version = CASE WHEN c.started AND n.started_at IS NULL
                                THEN (SELECT d.applied_version FROM nodes d WHERE d.id = n.node_id)
                                ELSE n.previous_version END,
        finished_at = CASE WHEN c.finished THEN now() ELSE n.finished_at END,
        updated_at = now()
    FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::int[], $7::bool[],
                $8::bool[]) AS c(row_id, status, error_msg, task_id, attempts, started, finished)
    WHERE n.id = c.row_id AND n.release_task_id = $1
    RETURNING n.id
), steps AS (
    SELECT s.ord, s.status, s.message, t.node_id, t.batch,
           coalesce(lag(s.status) OVER (PARTITION BY s.row_id ORDER BY s.ord), t.status)
               AS from_status
    FROM unnest($9::bigint[], $10::text[], $11::text[]) WITH ORDINALITY
        AS s(row_id, status, message, ord)
    JOIN target t ON t.id = s.row_id
)
INSERT INTO release_events
    (release_task_id, node_id, batch, from_status, to_status, message, daemon_id)
SELECT $1, node_id, batch, from_status, status, message, $12
FROM steps
WHERE from_status IS DISTINCT FROM status
ORDER BY ord
"""

_END_NODES = """
WITH ended AS (
    UPDATE release_task_nodes n
    SET status = CASE n.status WHEN 'pending' THEN 'skipped' ELSE 'cancelled' END,
        error_msg = CASE WHEN n.status = 'pending' AND $4::text IS NOT NULL THEN $4::text
                         ELSE n.error_msg END,
        finished_at = now(),
        updated_at = now()
    WHERE n.release_task_id = $1 AND n.status IN ('pending', 'running')
    RETURNING n.id, n.node_id, n.batch, n.status
)
INSERT INTO release_events
    (release_task_id, node_id, batch, from_status, to_status, message, daemon_id)
SELECT $1, node_id, batch,
       CASE status WHEN 'skipped' THEN 'pending' ELSE 'running' END,
       status,
       CASE WHEN status = 'skipped' AND $4::text IS NOT NULL THEN $4::text
            ELSE status || ': release ' || $2::text END,
       $3
FROM ended
ORDER BY batch, id
"""

# Counters from node rows, and the release's end when there is one ($2 NULL: no outcome).
_FINISH_RELEASE = """
WITH before AS (
    SELECT status FROM release_tasks WHERE id = $1
), counts AS (
    SELECT count(*) FILTER (WHERE status = 'success')::int AS success_nodes,
           count(*) FILTER (WHERE status = 'failed')::int AS failed_nodes
    FROM release_task_nodes
    WHERE release_task_id = $1
), updated AS (
    UPDATE release_tasks r
    SET success_nodes = c.success_nodes,
        failed_nodes = c.failed_nodes,
        status = coalesce($2::text, r.status),
        error = CASE WHEN $2::text IS NULL THEN r.error ELSE $3::text END,
        finished_at = CASE WHEN $2::text IS NULL THEN r.finished_at ELSE now() END,
        lease_owner = CASE WHEN $2::text IS NULL THEN r.lease_owner END,
        lease_expires_at = CASE WHEN $2::text IS NULL THEN r.lease_expires_at END,
        updated_at = now()
    FROM counts c
    WHERE r.id = $1
    RETURNING r.id
)
INSERT INTO release_events (release_task_id, from_status, to_status, message, daemon_id)
SELECT u.id, b.status, $2::text, $5::text, $4
FROM updated u, before b
WHERE $2::text IS NOT NULL
"""

_INSERT_RELEASE = """
INSERT INTO release_tasks
    (type, target, version, status, total_nodes, scope, plan, max_parallel, max_failures,
     reason, selection, strategy)
VALUES ($1, $2, $3, 'pending', $4, $5, $6::jsonb, $7, $8, $9, $10::jsonb, $11::jsonb)
RETURNING id
"""

_ONLINE = "enabled AND status = 'online'"

_INSERT_RELEASE_NODES = """
INSERT INTO release_task_nodes (release_task_id, node_id, batch, previous_version)
SELECT $1, u.node_id, u.batch, d.applied_version
FROM unnest($2::bigint[], $3::int[]) WITH ORDINALITY AS u(node_id, batch, ord)
JOIN nodes d ON d.id = u.node_id
ORDER BY u.ord
"""

_ANNOUNCE_RELEASE = """
WITH event AS (
    INSERT INTO release_events
        (release_task_id, from_status, to_status, message, actor_token, actor_role)
    VALUES ($1, NULL, 'pending', $2, $4, $5)
)
SELECT pg_notify($3, $1::text)
"""

_RELEASE_NODES = """
SELECT n.id, n.release_task_id, n.node_id, d.name AS node_name, d.main_ip, d.agent_port,
       n.batch, n.status, n.error_msg, n.task_id, n.attempts, n.started_at, n.finished_at,
       n.attempt, n.previous_version, d.labels
FROM release_task_nodes n
JOIN nodes d ON d.id = n.node_id
WHERE n.release_task_id = $1
ORDER BY n.batch, n.id
"""

_RECENT_APPLIES = """
SELECT node_id, seconds FROM (
    SELECT node_id, extract(epoch FROM finished_at - started_at) AS seconds,
           row_number() OVER (PARTITION BY node_id ORDER BY finished_at DESC, id DESC) AS n
    FROM release_task_nodes
    WHERE status = 'success' AND started_at IS NOT NULL AND finished_at >= started_at
) AS latest WHERE n <= $1
"""
"""The apply times of every node's latest successes (store/preview.py)."""

_NODE_COLUMNS = (
    "id, name, main_ip, agent_port, enabled, status, last_seen_at, labels,"
    " applied_version, applied_release_version, applied_at"
)


_NODE_RUNS = """
SELECT n.release_task_id, r.version, n.batch, n.status, n.error_msg, n.started_at, n.finished_at
FROM release_task_nodes n
JOIN release_tasks r ON r.id = n.release_task_id
WHERE n.node_id = $1
ORDER BY n.release_task_id DESC
LIMIT $2
"""

# The claim's rule seen from a pending release: the active release of its scope, else the
# closest older pending one (the claim takes the oldest pending release of an idle scope).
# A pending release's wait: the release ahead of it (active ones first, the oldest; else the
# nearest older pending one), among those sharing a node or its explicit scope, as the claim
# decides; then the nodes they share, the first few by name and a count.
# "Newest by its end": a row without finished_at (written by another program) by its last
# update instead, as store/fleet.py has it.
_FLEET_NODES = f"""
SELECT {_NODE_COLUMNS}, e.release_id AS expected_release_id, e.version AS expected_version,
       e.config_version AS expected_config_version, e.scope AS expected_scope
FROM nodes
LEFT JOIN (
    SELECT DISTINCT ON (rn.node_id) rn.node_id, r.id AS release_id, r.version,
           coalesce(r.config_version, r.version) AS config_version, r.scope
    FROM release_task_nodes rn
    JOIN release_tasks r ON r.id = rn.release_task_id
    WHERE r.status = 'success'
    ORDER BY rn.node_id, coalesce(r.finished_at, r.updated_at) DESC, r.version DESC
) e ON e.node_id = nodes.id
ORDER BY nodes.id
"""

_NODE_EXPECTATION = """
SELECT r.id AS release_id, r.version, coalesce(r.config_version, r.version) AS config_version,
       r.scope
FROM release_task_nodes rn
JOIN release_tasks r ON r.id = rn.release_task_id
WHERE rn.node_id = $1 AND r.status = 'success'
ORDER BY coalesce(r.finished_at, r.updated_at) DESC, r.version DESC
LIMIT 1
"""

_FLEET_SCOPES = """
WITH newest AS (
    SELECT DISTINCT ON (scope) scope, id, version,
           coalesce(config_version, version) AS config_version,
           coalesce(finished_at, updated_at) AS ended_at
    FROM release_tasks
    WHERE status = 'success'
    ORDER BY scope, ended_at DESC, version DESC
)
SELECT s.scope, s.releases, w.id AS release_id, w.version, w.config_version,
       w.scope AS release_scope, w.ended_at,
       (SELECT count(*) FROM release_task_nodes rn
        WHERE rn.release_task_id = w.id) AS release_nodes,
       (SELECT count(*) FROM release_task_nodes rn JOIN nodes n ON n.id = rn.node_id
        WHERE rn.release_task_id = w.id AND n.applied_version = w.config_version)
           AS running_config
FROM (SELECT scope, count(*) AS releases FROM release_tasks GROUP BY scope) s
LEFT JOIN newest w ON w.scope IS NOT DISTINCT FROM s.scope
"""

_WAITS = f"""
SELECT r.id, r.scope, a.id AS ahead_id, a.status AS ahead_status,
       coalesce(s.names, '{{}}') AS shared_names, coalesce(s.total, 0) AS shared_count
FROM release_tasks r
LEFT JOIN LATERAL (
    SELECT o.id, o.status
    FROM release_tasks o
    WHERE o.id <> r.id
      AND (o.status = 'running'
           OR (o.status = 'paused' AND o.held_for IS DISTINCT FROM r.id)
           OR (o.status = 'pending' AND o.version < r.version))
      AND (
          o.scope = r.scope
          OR {_SHARES_A_NODE}
      )
    ORDER BY o.status = 'pending', CASE WHEN o.status = 'pending' THEN -o.version ELSE o.version END
    LIMIT 1
) a ON true
LEFT JOIN LATERAL (
    SELECT (array_agg(d.name ORDER BY d.id))[1:{WAIT_NODES_SHOWN}] AS names,
           count(*)::int AS total
    FROM release_task_nodes theirs
    JOIN release_task_nodes mine
      ON mine.release_task_id = r.id AND mine.node_id = theirs.node_id
    JOIN nodes d ON d.id = theirs.node_id
    WHERE theirs.release_task_id = a.id
) s ON true
WHERE r.id = ANY($1::bigint[]) AND r.status = 'pending'
"""

_WEBHOOK_COLUMNS = "id, url, events, description, created_at"
_DELIVERY_COLUMNS = (
    "id, webhook_id, event_id, kind, payload, status, attempts, next_attempt_at, last_status,"
    " last_error, delivered_at, created_at"
)

# Due: pending, its next attempt reached, and no other daemon's lock still running. Rows
# another daemon is taking right now are skipped, not waited for.
_CLAIM_DELIVERIES = f"""
WITH due AS (
    SELECT d.id
    FROM webhook_deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.locked_until IS NULL OR d.locked_until < now())
    ORDER BY d.next_attempt_at, d.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE webhook_deliveries d
    SET locked_by = $1,
        locked_until = now() + make_interval(secs => $3),
        attempts = d.attempts + 1
    FROM due
    WHERE d.id = due.id
    RETURNING d.*
)
SELECT {", ".join("t." + c.strip() for c in _DELIVERY_COLUMNS.split(","))}, h.url, h.secret
FROM taken t
JOIN webhooks h ON h.id = t.webhook_id
ORDER BY t.next_attempt_at, t.id
"""

_FINISH_DELIVERY = """
UPDATE webhook_deliveries
SET status = $3,
    last_status = $4,
    last_error = $5,
    next_attempt_at = CASE WHEN $6::float8 IS NULL THEN next_attempt_at
                           ELSE now() + make_interval(secs => $6::float8) END,
    delivered_at = CASE WHEN $3 = 'delivered' THEN now() END,
    locked_by = NULL,
    locked_until = NULL
WHERE id = $1 AND locked_by = $2 AND status = 'pending'
RETURNING id
"""


# --- the store -----------------------------------------------------------------------------


class PostgresStore:
    """The production Store. Build it with ``open_postgres_store``; all methods Trio-flavored."""

    def __init__(
        self,
        pool: Pool,
        loop: Any,
        url: str,
        *,
        connect_timeout: float,
        operation_timeout: float = DEFAULT_OPERATION_TIMEOUT_SEC,
    ) -> None:
        self._pool = pool
        self._loop = loop
        self._url = url
        self._connect_timeout = connect_timeout
        self._timeout = operation_timeout

    async def _call(
        self, operation: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Cross into asyncio once, run ``operation`` there, translate its failures; bounded
        by the operation timeout."""
        return await self._call_within(self._timeout, operation, *args, **kwargs)

    async def _call_within(
        self,
        seconds: float,
        operation: Callable[P, Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``_call`` under a deadline of ``seconds``: past it the asyncio side is cancelled
        (its connection terminated, see _acquired) and StoreUnavailable raised, whether or
        not the server ever answers."""
        with trio.move_on_after(seconds):
            result: T = await trio_asyncio.aio_as_trio(_translated, loop=self._loop)(
                operation, *args, **kwargs
            )
            return result
        raise StoreUnavailable(f"database unavailable: no answer within {seconds:g}s")

    def _acquired(self) -> contextlib.AbstractAsyncContextManager[PooledConnection]:
        """Asyncio-flavored: a pooled connection, waited for at most the operation timeout."""
        return _acquired(self._pool, self._timeout)

    # --- executor side ---------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, ttl: float) -> list[Claim]:
        if limit < 1:
            return []
        check_text("owner", owner)
        records = await self._call(self._fetch, _CLAIM, owner, limit, float(ttl))
        claims = []
        for record in records:
            release = Release.from_record(_row(record))
            claims.append(Claim(release=release, lease=Lease(release.id, release.lease_epoch)))
        return claims

    async def heartbeat(
        self, owner: str, leases: Sequence[Lease], ttl: float
    ) -> dict[int, LeaseState]:
        if not leases:
            return {}
        check_text("owner", owner)
        ids = [lease.release_id for lease in leases]
        epochs = [lease.epoch for lease in leases]
        records = await self._call(self._fetch, _HEARTBEAT, owner, ids, epochs, float(ttl))
        return {record["id"]: LeaseState.from_record(_row(record)) for record in records}

    async def acknowledge(self, lease: Lease, seq: int) -> bool:
        record = await self._call(self._fetchrow, _ACKNOWLEDGE, lease.release_id, lease.epoch, seq)
        return record is not None

    async def park(self, lease: Lease) -> LeaseState | None:
        record = await self._call(self._fetchrow, _PARK, lease.release_id, lease.epoch)
        return None if record is None else LeaseState.from_record(_row(record))

    async def hand_back(self, owner: str, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        check_text("owner", owner)
        ids = [lease.release_id for lease in leases]
        epochs = [lease.epoch for lease in leases]
        await self._call(self._execute, _HAND_BACK, owner, ids, epochs, NOTIFY_CHANNEL)

    async def record_crash(
        self, owner: str, lease: Lease, error: str, backoff: float
    ) -> int | None:
        record = await self._call(
            self._fetchrow,
            _RECORD_CRASH,
            lease.release_id,
            lease.epoch,
            owner,
            error,
            float(backoff),
        )
        return None if record is None else int(record["crash_count"])

    async def record(
        self,
        lease: Lease,
        changes: Sequence[NodeChange],
        outcome: Outcome | None = None,
        *,
        daemon_id: str | None = None,
    ) -> bool:
        if outcome is not None and not outcome.status.terminal:
            raise InvalidInput(f"a release ends success, failed or cancelled, not {outcome.status}")
        check_optional_text("daemon_id", daemon_id)
        return await self._call(self._record, lease, list(changes), outcome, daemon_id)

    async def _record(
        self,
        lease: Lease,
        changes: list[NodeChange],
        outcome: Outcome | None,
        daemon_id: str | None,
    ) -> bool:
        async with self._acquired() as connection, connection.transaction():
            fenced = await connection.fetchval(_FENCE, lease.release_id, lease.epoch)
            if fenced is None:
                return False
            if changes:
                succeeded = [c.row_id for c in changes if c.status is NodeStatus.SUCCESS]
                if succeeded:
                    await connection.execute(_APPLIED, lease.release_id, succeeded)
                await connection.execute(
                    _APPLY_CHANGES, lease.release_id, *_change_arrays(changes), daemon_id
                )
            outcome_status = None if outcome is None else outcome.status.value
            outcome_error = None if outcome is None else storable(outcome.error)
            message = None if outcome is None else outcome_message(outcome)
            if outcome_status is not None:
                await connection.execute(
                    _END_NODES,
                    lease.release_id,
                    outcome_status,
                    daemon_id,
                    _cancel_note(outcome, outcome_error),
                )
            await connection.execute(
                _FINISH_RELEASE,
                lease.release_id,
                outcome_status,
                outcome_error,
                daemon_id,
                message,
            )
            return True

    async def listen_releases(
        self,
        wake: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``wake()`` on every NOTIFY from create_release, until cancelled.

        Raises StoreUnavailable when the first connection fails; after that, a dropped
        connection is re-opened with backoff, and ``wake()`` is called once on reconnecting
        because notifications sent meanwhile are lost.
        """
        await self._listen(NOTIFY_CHANNEL, "release", wake, task_status)

    async def listen_events(
        self,
        wake: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``wake()`` after every statement that appended events (migration 0007's
        trigger notifies), until cancelled; reconnects as listen_releases does."""
        await self._listen(EVENT_CHANNEL, "event", wake, task_status)

    async def _listen(
        self,
        channel: str,
        what: str,
        wake: Callable[[], None],
        task_status: trio.TaskStatus[None],
    ) -> None:
        listening = False
        delay = _LISTEN_BACKOFF_MIN_SEC
        while True:
            try:
                listener = await self._call_within(
                    self._connect_timeout + self._timeout,
                    _Listener.open,
                    self._url,
                    self._connect_timeout,
                    channel,
                )
            except StoreUnavailable as error:
                if not listening:
                    raise
                _log.warning(f"{what} notifications unavailable", error=str(error), retry_sec=delay)
                await trio.sleep(delay)
                delay = min(delay * 2, _LISTEN_BACKOFF_MAX_SEC)
                continue
            try:
                if listening:
                    _log.info(f"{what} notifications restored")
                    wake()
                else:
                    listening = True
                    task_status.started()
                delay = _LISTEN_BACKOFF_MIN_SEC
                while True:
                    # An idle wait, then a liveness query bounded by the same idle time.
                    waited = 2 * _LISTEN_IDLE_SEC + self._timeout
                    if await self._call_within(waited, listener.wait, _LISTEN_IDLE_SEC):
                        wake()
            except StoreUnavailable as error:
                _log.warning(f"{what} notifications dropped", error=str(error), retry_sec=delay)
            finally:
                with trio.move_on_after(_CLOSE_TIMEOUT_SEC, shield=True):
                    await self._call(listener.close)
            await trio.sleep(delay)
            delay = min(delay * 2, _LISTEN_BACKOFF_MAX_SEC)

    # --- verbs -------------------------------------------------------------------------------

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
        return await self._call(self._steer, release_id, Verb(verb), by, reason, to_version)

    async def promote(
        self, release_id: int, *, by: Actor, reason: str = "", full: bool = False
    ) -> VerbResult:
        check_text("reason", reason, multiline=True)
        return await self._call(self._promote, release_id, by, reason, full)

    async def _promote(self, release_id: int, by: Actor, reason: str, full: bool) -> VerbResult:
        async with _acquired(self._pool) as connection, connection.transaction():
            live = await _lock_release(connection, release_id)
            steering = _Steering(connection, by, reason)
            release = await steering.release(release_id)
            target, detail = promote_target(release, full)
            if target <= release.promoted_to:
                return VerbResult(Verb.PROMOTE, release, changed=False)
            await connection.execute(
                _PROMOTE,
                release_id,
                target,
                by.token_name,
                reason or None,
                live,
                verb_message(Verb.PROMOTE, by.token_name, reason, detail),
                by.role.value,
            )
            await connection.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(release_id))
            return VerbResult(
                Verb.PROMOTE, await steering.release(release_id), changed=True, wait=live
            )

    async def record_step(
        self,
        lease: Lease,
        step: int,
        message: str | None,
        *,
        bake: float | None = None,
        daemon_id: str | None = None,
    ) -> bool:
        check_integer("step", step, 0, INT_MAX)
        record = await self._call(
            self._fetchrow,
            _RECORD_STEP,
            lease.release_id,
            lease.epoch,
            step,
            bake,
            None if message is None else storable(message),
            daemon_id,
        )
        return record is not None and bool(record["count"])

    async def verb_effect(self, release_id: int, seq: int) -> VerbEffect:
        record = await self._call(self._fetchrow, _VERB_EFFECT, release_id, seq)
        if record is None:
            raise NotFound(f"release {release_id} not found")
        live = bool(record["live"])
        return VerbEffect(
            in_effect=record["acknowledged"] or not live,
            acknowledged=record["acknowledged"],
            owner=record["lease_owner"] if live else None,
            lease_left=record["lease_left"] if live else None,
        )

    async def _steer(
        self, release_id: int, verb: Verb, by: Actor, reason: str, to_version: int | None
    ) -> VerbResult:
        async with _acquired(self._pool) as connection, connection.transaction():
            if verb is Verb.ROLLBACK:
                # A rollback creates a release: versions are allocated one at a time.
                await connection.execute("SELECT pg_advisory_xact_lock($1)", CREATE_LOCK_KEY)
            live = await _lock_release(connection, release_id)
            steering = _Steering(connection, by, reason)
            release = await steering.release(release_id)
            if verb is Verb.ROLLBACK:
                result = await steering.rollback(release, live, to_version)
            elif not decide(verb, release):
                return VerbResult(verb, release, changed=False)
            else:
                match verb:
                    case Verb.PAUSE:
                        wait = await steering.stamp(release, Verb.PAUSE, "paused", live)
                    case Verb.RESUME:
                        status = "running" if release.started_at else "pending"
                        wait = await steering.stamp(release, Verb.RESUME, status, live)
                    case Verb.CANCEL:
                        wait = await steering.cancel(release, live, reason)
                    case Verb.RETRY:
                        wait = await steering.retry(release, live)
                result = VerbResult(
                    verb, await steering.release(release_id), changed=True, wait=wait
                )
            if result.changed:
                await connection.execute(
                    "SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(release_id)
                )
            return result

    # --- releases ----------------------------------------------------------------------------

    async def create_release(self, spec: ReleaseSpec) -> CreatedRelease:
        plan = check_release_spec(spec)
        return await self._call(self._create_release, spec, plan)

    async def _create_release(
        self, spec: ReleaseSpec, plan: tuple[int | str, ...]
    ) -> CreatedRelease:
        for attempt in range(1, _VERSION_ATTEMPTS + 1):
            try:
                return await self._create_release_once(spec, plan)
            except asyncpg.UniqueViolationError as error:
                if error.constraint_name != "release_tasks_version_key":
                    raise
                if attempt == _VERSION_ATTEMPTS:
                    raise Conflict("could not allocate a release version; try again") from error
        raise AssertionError("unreachable")

    async def _create_release_once(
        self, spec: ReleaseSpec, plan: tuple[int | str, ...]
    ) -> CreatedRelease:
        async with self._acquired() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", CREATE_LOCK_KEY)
            spec, used = with_default(spec, await _scope_default(connection, spec))
            plan = check_release_spec(spec)
            node_ids = await _select_nodes(connection, spec.selection)
            with blamed_on_default(used):
                assigned = await _place(connection, spec_strategy(spec, plan), plan, node_ids)
            version = await connection.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM release_tasks"
            )
            release_id = await connection.fetchval(
                _INSERT_RELEASE,
                spec.type,
                spec.target,
                version,
                len(node_ids),
                spec.scope,
                json.dumps(list(plan)),
                spec.max_parallel,
                spec.max_failures,
                spec.reason,
                None if spec.selection is None else json.dumps(spec.selection.to_json()),
                None if (strategy := stored_strategy(spec)) is None else json.dumps(strategy),
            )
            await connection.execute(
                _INSERT_RELEASE_NODES,
                release_id,
                [node_id for node_id, _ in assigned],
                [batch for _, batch in assigned],
            )
            batches: dict[int, list[int]] = {}
            for node_id, batch in assigned:
                batches.setdefault(batch, []).append(node_id)
            message = created_note(
                created_message(version, len(node_ids), len(batches), spec.reason), used
            )
            actor = spec.requested_by
            await connection.execute(
                _ANNOUNCE_RELEASE,
                release_id,
                message,
                NOTIFY_CHANNEL,
                None if actor is None else actor.token_name,
                None if actor is None else actor.role.value,
            )
            record = await connection.fetchrow(_release_select() + " WHERE r.id = $1", release_id)
            assert record is not None
        return CreatedRelease(
            release=Release.from_record(_row(record)),
            batches=tuple((batch, tuple(ids)) for batch, ids in sorted(batches.items())),
            default_scope=None if used is None else used.scope,
        )

    async def preview_release(self, spec: ReleaseSpec) -> ReleasePreview:
        plan = check_release_spec(spec)
        spec_strategy(spec, plan)
        return await self._call(self._preview_release, spec, plan)

    async def _preview_release(
        self, spec: ReleaseSpec, plan: tuple[int | str, ...]
    ) -> ReleasePreview:
        async with self._acquired() as connection, connection.transaction(readonly=True):
            spec, used = with_default(spec, await _scope_default(connection, spec))
            plan = check_release_spec(spec)
            node_ids = await _select_nodes(connection, spec.selection)
            with blamed_on_default(used):
                placed = await _place(connection, spec_strategy(spec, plan), plan, node_ids)
            rows = await connection.fetch(
                f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = ANY($1::bigint[])", node_ids
            )
            durations = await connection.fetch(_RECENT_APPLIES, RECENT_APPLIES)
        nodes = {row["id"]: Node.from_record(_row(row)) for row in rows}
        recent: dict[int, list[float]] = {}
        for row in durations:
            recent.setdefault(row["node_id"], []).append(float(row["seconds"]))
        preview = build_preview(spec, plan, placed, nodes, recent)
        return preview if used is None else attrs.evolve(preview, default_scope=used.scope)

    # --- scope default strategies -------------------------------------------------------------

    async def scope_strategy(self, scope: str) -> ScopeStrategy | None:
        check_scope(scope)
        record = await self._call(
            self._fetchrow,
            f"SELECT {_SCOPE_COLUMNS} FROM scope_strategies WHERE scope = $1",
            scope,
        )
        return None if record is None else ScopeStrategy.from_record(_row(record))

    async def list_scope_strategies(self) -> list[ScopeStrategy]:
        records = await self._call(
            self._fetch, f"SELECT {_SCOPE_COLUMNS} FROM scope_strategies ORDER BY scope"
        )
        return [ScopeStrategy.from_record(_row(record)) for record in records]

    async def set_scope_strategy(
        self, scope: str, strategy: Mapping[str, object], *, by: Actor | None = None
    ) -> ScopeStrategy:
        check_scope(scope)
        stored = stored_default(strategy)
        if by is not None:
            check_text("set_by", by.token_name)
        record = await self._call(
            self._fetchrow,
            _SET_SCOPE_STRATEGY,
            scope,
            json.dumps(stored),
            None if by is None else by.token_name,
            None if by is None else by.role.value,
        )
        assert record is not None
        return ScopeStrategy.from_record(_row(record))

    async def clear_scope_strategy(self, scope: str) -> ScopeStrategy:
        check_scope(scope)
        record = await self._call(
            self._fetchrow,
            f"DELETE FROM scope_strategies WHERE scope = $1 RETURNING {_SCOPE_COLUMNS}",
            scope,
        )
        if record is None:
            raise NotFound(f"scope {scope} has no default strategy")
        return ScopeStrategy.from_record(_row(record))

    async def get_release(self, release_id: int) -> Release | None:
        check_integer("release_id", release_id, 1)
        record = await self._call(
            self._fetchrow, _release_select() + " WHERE r.id = $1", release_id
        )
        return None if record is None else Release.from_record(_row(record))

    async def list_releases(
        self, *, status: ReleaseStatus | None = None, offset: int = 0, limit: int = 20
    ) -> tuple[list[Release], int]:
        check_integer("offset", offset, 0)
        check_integer("limit", limit, 1)
        status_value = None if status is None else ReleaseStatus(status).value
        records, total = await self._call(self._list_releases, status_value, offset, limit)
        return [Release.from_record(_row(record)) for record in records], total

    async def _list_releases(
        self, status: str | None, offset: int, limit: int
    ) -> tuple[list[asyncpg.Record], int]:
        async with self._acquired() as connection, connection.transaction(readonly=True):
            total = await connection.fetchval(
                "SELECT count(*) FROM release_tasks WHERE $1::text IS NULL OR status = $1",
                status,
            )
            records = await connection.fetch(
                _release_select()
                + " WHERE $1::text IS NULL OR r.status = $1 ORDER BY r.id DESC OFFSET $2 LIMIT $3",
                status,
                offset,
                limit,
            )
        return records, int(total)

    async def release_nodes(self, release_id: int) -> list[ReleaseNode]:
        check_integer("release_id", release_id, 1)
        records = await self._call(self._fetch, _RELEASE_NODES, release_id)
        return [ReleaseNode.from_record(_row(record)) for record in records]

    async def release_events(
        self, release_id: int, *, after_id: int = 0, limit: int = 1000
    ) -> list[Event]:
        check_integer("release_id", release_id, 1)
        check_integer("after_id", after_id, 0)
        check_integer("limit", limit, 0)
        records = await self._call(
            self._fetch,
            "SELECT * FROM release_events WHERE release_task_id = $1 AND id > $2"
            " ORDER BY id LIMIT $3",
            release_id,
            after_id,
            limit,
        )
        return [Event.from_record(_row(record)) for record in records]

    async def first_events(self, release_ids: Sequence[int]) -> dict[int, Event]:
        for release_id in release_ids:
            check_integer("release_id", release_id, 1)
        if not release_ids:
            return {}
        records = await self._call(
            self._fetch,
            "SELECT DISTINCT ON (release_task_id) * FROM release_events"
            " WHERE release_task_id = ANY($1::bigint[]) ORDER BY release_task_id, id",
            list(release_ids),
        )
        events = (Event.from_record(_row(record)) for record in records)
        return {event.release_id: event for event in events}

    # --- nodes -------------------------------------------------------------------------------

    async def list_nodes(self) -> list[Node]:
        records = await self._call(self._fetch, f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY id")
        return [Node.from_record(_row(record)) for record in records]

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
        check_node(name, main_ip, agent_port)
        record = await self._call(
            self._fetchrow,
            "INSERT INTO nodes (name, main_ip, agent_port, enabled, status)"
            " VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (name) DO UPDATE SET main_ip = EXCLUDED.main_ip,"
            " agent_port = EXCLUDED.agent_port, enabled = EXCLUDED.enabled,"
            f" status = EXCLUDED.status, updated_at = now() WHERE $6 RETURNING {_NODE_COLUMNS}",
            name,
            main_ip,
            agent_port,
            enabled,
            NodeHealth(status).value,
            replace,
        )
        if record is None:
            raise AlreadyExists(f"node {name!r} already exists")
        return Node.from_record(_row(record))

    async def update_node(
        self,
        node_id: int,
        *,
        status: NodeHealth | None = None,
        enabled: bool | None = None,
        labels: Mapping[str, str | None] | None = None,
    ) -> Node:
        check_integer("node_id", node_id, 1)
        changes = None if labels is None else check_label_changes(labels)
        record = await self._call(
            self._update_node,
            node_id,
            None if status is None else NodeHealth(status).value,
            enabled,
            changes,
        )
        if record is None:
            raise NotFound(f"node {node_id} not found")
        return Node.from_record(_row(record))

    async def _update_node(
        self,
        node_id: int,
        status: str | None,
        enabled: bool | None,
        changes: dict[str, str | None] | None,
    ) -> asyncpg.Record | None:
        async with _acquired(self._pool) as connection, connection.transaction():
            labels = None
            if changes is not None:
                current = await connection.fetchval(
                    "SELECT labels FROM nodes WHERE id = $1 FOR UPDATE", node_id
                )
                if current is None:
                    return None
                labels = json.dumps(merge_labels(json.loads(current), changes))
            return await connection.fetchrow(
                "UPDATE nodes SET status = coalesce($2, status), enabled = coalesce($3, enabled),"
                " labels = coalesce($4::jsonb, labels), updated_at = now()"
                f" WHERE id = $1 RETURNING {_NODE_COLUMNS}",
                node_id,
                status,
                enabled,
                labels,
            )

    async def get_node(self, node_id: int) -> Node | None:
        check_integer("node_id", node_id, 1)
        record = await self._call(
            self._fetchrow, f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = $1", node_id
        )
        return None if record is None else Node.from_record(_row(record))

    async def node_runs(self, node_id: int, *, limit: int = 10) -> list[NodeRun]:
        check_integer("node_id", node_id, 1)
        records = await self._call(self._fetch, _NODE_RUNS, node_id, max(limit, 0))
        return [NodeRun.from_record(_row(record)) for record in records]

    async def fleet_state(self) -> FleetState:
        nodes, scopes = await self._call(self._fleet_state)
        return FleetState(
            nodes=tuple(
                FleetNode(
                    Node.from_record(_row(record)),
                    Expectation.from_record(_row(record), "expected_"),
                )
                for record in nodes
            ),
            scopes=tuple(
                sorted(
                    (
                        ScopeFleet(
                            scope=record["scope"],
                            releases=record["releases"],
                            newest=Expectation.from_record(
                                {**_row(record), "scope": record["release_scope"]}
                            ),
                            newest_ended_at=record["ended_at"],
                            release_nodes=record["release_nodes"] or 0,
                            running_config=record["running_config"] or 0,
                        )
                        for record in scopes
                    ),
                    key=lambda scope: scope_order(scope.scope),
                )
            ),
        )

    async def node_expectation(self, node_id: int) -> Expectation | None:
        check_integer("node_id", node_id, 1)
        record = await self._call(self._fetchrow, _NODE_EXPECTATION, node_id)
        return None if record is None else Expectation.from_record(_row(record))

    async def _fleet_state(self) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        # One snapshot for both reads: the scopes' counts agree with the nodes' expectations.
        async with (
            self._acquired() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            nodes = await connection.fetch(_FLEET_NODES)
            scopes = await connection.fetch(_FLEET_SCOPES)
        return nodes, scopes

    async def waits(self, release_ids: Sequence[int]) -> dict[int, Wait]:
        records = await self._call(self._fetch, _WAITS, list(release_ids))
        return {record["id"]: Wait.from_record(_row(record)) for record in records}

    # --- API tokens --------------------------------------------------------------------------

    async def create_token(
        self,
        name: str,
        token_hash: str,
        *,
        role: Role = Role.ADMIN,
        expires_in: timedelta | None = None,
    ) -> TokenInfo:
        check_text("name", name)
        check_text("token_hash", token_hash)
        return await self._call(self._create_token, name, token_hash, Role(role), expires_in)

    async def _create_token(
        self, name: str, token_hash: str, role: Role, expires_in: timedelta | None
    ) -> TokenInfo:
        try:
            async with self._acquired() as connection:
                record = await connection.fetchrow(
                    "INSERT INTO api_tokens (name, token_hash, role, expires_at)"
                    " VALUES ($1, $2, $3, now() + $4::interval)"
                    f" RETURNING {_TOKEN_COLUMNS}",
                    name,
                    token_hash,
                    role.value,
                    expires_in,
                )
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name == "api_tokens_name_key":
                raise AlreadyExists(f"a token named {name!r} already exists") from error
            raise AlreadyExists("a token with this value already exists") from error
        assert record is not None
        return TokenInfo.from_record(_row(record))

    async def tokens_by_hash_prefix(self, prefix: str) -> list[StoredToken]:
        check_text("prefix", prefix)
        records = await self._call(self._fetch, _TOKENS_BY_HASH_PREFIX, prefix)
        return [
            StoredToken(
                TokenInfo.from_record(_row(record)), record["token_hash"], record["expired"]
            )
            for record in records
        ]

    async def list_tokens(self) -> list[TokenInfo]:
        records = await self._call(
            self._fetch, f"SELECT {_TOKEN_COLUMNS} FROM api_tokens ORDER BY id"
        )
        return [TokenInfo.from_record(_row(record)) for record in records]

    async def revoke_token(self, key: int | str) -> TokenInfo:
        check_token_key(key)
        column = "id" if isinstance(key, int) else "name"
        record = await self._call(
            self._fetchrow,
            f"DELETE FROM api_tokens WHERE {column} = $1 RETURNING {_TOKEN_COLUMNS}",
            key,
        )
        if record is None:
            what = f"id {key}" if isinstance(key, int) else f"named {key!r}"
            raise NotFound(f"no token {what}")
        return TokenInfo.from_record(_row(record))

    async def touch_tokens(self, token_ids: Sequence[int]) -> None:
        await self._call(
            self._execute,
            "UPDATE api_tokens SET last_used_at = now() WHERE id = ANY($1::bigint[])",
            list(token_ids),
        )

    # --- the event stream --------------------------------------------------------------------

    async def events_since(
        self, after_id: int, *, missing: Sequence[int] = (), limit: int = 1000
    ) -> list[Event]:
        records = await self._call(
            self._fetch,
            "SELECT * FROM release_events WHERE id > $1 OR id = ANY($2::bigint[])"
            " ORDER BY id LIMIT $3",
            after_id,
            list(missing),
            max(limit, 0),
        )
        return [Event.from_record(_row(record)) for record in records]

    async def last_event_id(self) -> int:
        record = await self._call(
            self._fetchrow, "SELECT coalesce(max(id), 0) AS id FROM release_events"
        )
        assert record is not None
        return int(record["id"])

    # --- webhooks ----------------------------------------------------------------------------

    async def create_webhook(self, spec: WebhookSpec) -> Webhook:
        check_webhook_spec(spec)
        record = await self._call(
            self._fetchrow,
            "INSERT INTO webhooks (url, events, secret, description) VALUES ($1, $2, $3, $4)"
            f" RETURNING {_WEBHOOK_COLUMNS}",
            spec.url,
            list(spec.events),
            spec.secret,
            spec.description,
        )
        assert record is not None
        return Webhook.from_record(_row(record))

    async def list_webhooks(self) -> list[Webhook]:
        records = await self._call(
            self._fetch, f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks ORDER BY id"
        )
        return [Webhook.from_record(_row(record)) for record in records]

    async def delete_webhook(self, webhook_id: int) -> None:
        record = await self._call(
            self._fetchrow, "DELETE FROM webhooks WHERE id = $1 RETURNING id", webhook_id
        )
        if record is None:
            raise NotFound(f"webhook {webhook_id} does not exist")

    async def webhook_deliveries(self, webhook_id: int, *, limit: int = 20) -> list[Delivery]:
        records, exists = await self._call(self._webhook_deliveries, webhook_id, max(limit, 0))
        if not exists:
            raise NotFound(f"webhook {webhook_id} does not exist")
        return [Delivery.from_record(_row(record)) for record in records]

    async def _webhook_deliveries(
        self, webhook_id: int, limit: int
    ) -> tuple[list[asyncpg.Record], bool]:
        async with _acquired(self._pool) as connection, connection.transaction(readonly=True):
            exists = await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM webhooks WHERE id = $1)", webhook_id
            )
            records = await connection.fetch(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1"
                " ORDER BY id DESC LIMIT $2",
                webhook_id,
                limit,
            )
        return records, bool(exists)

    async def claim_deliveries(self, owner: str, limit: int, lock: float) -> list[DueDelivery]:
        if limit < 1:
            return []
        records = await self._call(self._fetch, _CLAIM_DELIVERIES, owner, limit, float(lock))
        return [
            DueDelivery(Delivery.from_record(_row(record)), record["url"], record["secret"])
            for record in records
        ]

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
        outcome = "delivered" if delivered else ("pending" if retry_in is not None else "failed")
        record = await self._call(
            self._fetchrow,
            _FINISH_DELIVERY,
            delivery_id,
            owner,
            outcome,
            status,
            None if error is None else clip_error(error),
            None if retry_in is None else float(retry_in),
        )
        return record is not None

    # --- health ------------------------------------------------------------------------------

    async def ping(self) -> bool:
        with trio.move_on_after(_PING_TIMEOUT_SEC):
            try:
                return await self._call(self._ping)
            except (StoreError, asyncpg.PostgresError, asyncpg.InterfaceError):
                # The contract: a health check answers, it does not raise. Anything else is a
                # defect, and propagates like one.
                return False
        return False

    async def _ping(self) -> bool:
        async with self._acquired() as connection:
            return await migrations.is_current(connection)

    # --- asyncio-flavored helpers ------------------------------------------------------------

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        async with self._acquired() as connection:
            return await connection.fetch(query, *args)

    async def _fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        async with self._acquired() as connection:
            return await connection.fetchrow(query, *args)

    async def _execute(self, query: str, *args: object) -> None:
        async with self._acquired() as connection:
            await connection.execute(query, *args)


async def _scope_default(connection: PooledConnection, spec: ReleaseSpec) -> ScopeStrategy | None:
    """Asyncio-flavored: the default strategy a release of ``spec`` takes (store/scopes.py)."""
    keys = default_scopes(spec)
    if not keys:
        return None
    records = await connection.fetch(
        f"SELECT {_SCOPE_COLUMNS} FROM scope_strategies WHERE scope = ANY($1::text[])",
        list(keys),
    )
    found = {record["scope"]: ScopeStrategy.from_record(_row(record)) for record in records}
    return first_default(keys, found)


async def _lock_release(connection: PooledConnection, release_id: int) -> bool:
    """Asyncio-flavored: lock a release row for a verb; whether a live owner holds it."""
    live = await connection.fetchval(
        "SELECT status IN ('running', 'paused') AND lease_owner IS NOT NULL"
        " AND lease_expires_at > now() FROM release_tasks WHERE id = $1 FOR UPDATE",
        release_id,
    )
    if live is None:
        raise NotFound(f"release {release_id} not found")
    return bool(live)


async def _select_nodes(connection: PooledConnection, selection: NodeSelection | None) -> list[int]:
    """Asyncio-flavored: the ids, in id order, of the nodes a release is created over."""
    if selection is None:
        rows = await connection.fetch(f"SELECT id FROM nodes WHERE {_ONLINE} ORDER BY id")
    elif selection.selector is not None:
        rows = await connection.fetch(
            f"SELECT id FROM nodes WHERE {_ONLINE} AND labels @> $1::jsonb ORDER BY id",
            json.dumps(dict(selection.selector)),
        )
    else:
        wanted: list[object]
        if selection.node_ids is not None:
            field, column, wanted = "nodeIds", "id", list(selection.node_ids)
            query = "SELECT id, name, enabled, status FROM nodes WHERE id = ANY($1::bigint[])"
        else:
            assert selection.node_names is not None
            field, column, wanted = "nodeNames", "name", list(selection.node_names)
            query = "SELECT id, name, enabled, status FROM nodes WHERE name = ANY($1::text[])"
        rows = await connection.fetch(query + " ORDER BY id", wanted)
        found = {row[column]: (row["name"], row["enabled"], row["status"]) for row in rows}
        check_named(wanted, found, field)
    if not rows:
        detail = "" if selection is None else f" matching {selection.describe()}"
        raise Conflict(f"no online nodes{detail}")
    return [row["id"] for row in rows]


async def _place(
    connection: PooledConnection,
    strategy: Strategy,
    plan: Sequence[PlanStep],
    node_ids: list[int],
) -> list[tuple[int, int]]:
    """Asyncio-flavored: (node id, batch) of a new release over ``node_ids`` (in id order);
    the nodes' labels are read only when the strategy names some (store/topology.py)."""
    if not strategy.topology_labels:
        return assign_batches(plan, node_ids)
    rows = await connection.fetch(
        "SELECT id, labels FROM nodes WHERE id = ANY($1::bigint[]) ORDER BY id", node_ids
    )
    return place_nodes(
        strategy, plan, [(row["id"], labels_from_column(row["labels"])) for row in rows]
    )


def _cancel_note(outcome: Outcome | None, error: str | None) -> str | None:
    """The error_msg of the nodes a cancelled release never dispatched."""
    if outcome is None or outcome.status is not ReleaseStatus.CANCELLED:
        return None
    return clip_error(error)


def _change_arrays(changes: Sequence[NodeChange]) -> tuple[list[Any], ...]:
    """Parameters of _APPLY_CHANGES: merged final values per row, and every step in order."""
    merged: dict[int, dict[str, Any]] = {}
    for change in changes:
        current = merged.get(change.row_id)
        error_msg = clip_error(change.error_msg)
        if current is None:
            merged[change.row_id] = {
                "status": change.status.value,
                "error_msg": error_msg,
                "task_id": storable(change.task_id),
                "attempts": change.attempts,
                "started": change.started,
                "finished": change.finished,
            }
            continue
        current["status"] = change.status.value
        current["error_msg"] = error_msg
        if change.task_id is not None:
            current["task_id"] = storable(change.task_id)
        if change.attempts is not None:
            current["attempts"] = change.attempts
        current["started"] = current["started"] or change.started
        current["finished"] = current["finished"] or change.finished
    rows = list(merged.items())
    return (
        [row_id for row_id, _ in rows],
        [values["status"] for _, values in rows],
        [values["error_msg"] for _, values in rows],
        [values["task_id"] for _, values in rows],
        [values["attempts"] for _, values in rows],
        [values["started"] for _, values in rows],
        [values["finished"] for _, values in rows],
        [change.row_id for change in changes],
        [change.status.value for change in changes],
        [clip_error(change.error_msg) for change in changes],
    )


class _Steering:
    """Asyncio-flavored: the statements of one verb, inside the transaction that locked its
    release row."""

    def __init__(self, connection: PooledConnection, by: Actor, reason: str) -> None:
        self._connection = connection
        self._actor = by
        self._by = by.token_name
        self._reason = reason

    async def release(self, release_id: int) -> Release:
        record = await self._connection.fetchrow(_release_select() + " WHERE r.id = $1", release_id)
        assert record is not None
        return Release.from_record(_row(record))

    async def nodes(self, release_id: int) -> list[ReleaseNode]:
        records = await self._connection.fetch(_RELEASE_NODES, release_id)
        return [ReleaseNode.from_record(_row(record)) for record in records]

    async def stamp(
        self,
        release: Release,
        verb: Verb,
        status: str,
        live: bool,
        *,
        reason: str | None = None,
        detail: str = "",
        held_for: int | None = None,
    ) -> bool:
        """The verb on the row and its event; True when a live owner must acknowledge it."""
        why = self._reason if reason is None else reason
        await self._connection.execute(
            _STAMP_VERB,
            release.id,
            status,
            verb.value,
            self._by,
            why or None,
            live,
            release.status.value,
            held_for,
            verb_message(verb, self._by, why, detail),
            self._by,
            self._actor.role.value,
        )
        return live

    async def cancel(self, release: Release, live: bool, reason: str, detail: str = "") -> bool:
        running = await self._connection.fetchval(
            "SELECT count(*) FROM release_task_nodes WHERE release_task_id = $1"
            " AND status = 'running'",
            release.id,
        )
        if live or running:
            # Dispatched nodes are reconciled by the owner, or by whoever claims it next.
            status = "running" if release.status is ReleaseStatus.PAUSED else release.status.value
            return await self.stamp(
                release, Verb.CANCEL, status, live, reason=reason, detail=detail or "reconciling"
            )
        message = cancel_message(self._by, reason)
        await self.stamp(release, Verb.CANCEL, release.status.value, live, reason=reason)
        await self._connection.execute(
            _END_NODES, release.id, "cancelled", None, clip_error(message)
        )
        await self._connection.execute(
            _FINISH_RELEASE, release.id, "cancelled", message, None, message
        )
        return False

    async def retry(self, release: Release, live: bool) -> bool:
        nodes = await self.nodes(release.id)
        node_ids = [node.node_id for node in nodes]
        newer = [
            version
            for version in [
                await self._connection.fetchval(
                    "SELECT max(applied_release_version) FROM nodes"
                    " WHERE id = ANY($1::bigint[]) AND applied_release_version > $2",
                    node_ids,
                    release.version,
                )
            ]
            if version is not None
        ]
        for other in await self._connection.fetch(_ACTIVE_ON_NODES, release.id, node_ids):
            if other["version"] > release.version:
                newer.append(other["version"])
            else:
                raise Conflict(
                    f"release {other['id']} (version {other['version']}) is {other['status']} "
                    f"on nodes of release {release.id}: retry once it ends"
                )
        if newer:
            raise superseded(max(newer))
        again = sum(node.status is not NodeStatus.SUCCESS for node in nodes)
        if not again:
            raise Conflict(f"release {release.id}: every node succeeded, nothing to retry")
        await self._connection.execute(_RETRY_NODES, release.id)
        await self._connection.execute(_RETRY_RELEASE, release.id)
        await self._connection.execute(_FINISH_RELEASE, release.id, None, None, None, None)
        return await self.stamp(
            release, Verb.RETRY, "running", live, detail=f"{again} node(s) again"
        )

    async def rollback(self, release: Release, live: bool, to_version: int | None) -> VerbResult:
        decide(Verb.ROLLBACK, release)
        existing = await self._connection.fetchrow(
            _release_select()
            + " WHERE r.rollback_of = $1 AND r.status IN ('pending', 'running', 'paused')"
            " ORDER BY r.id LIMIT 1",
            release.id,
        )
        if existing is not None:
            return VerbResult(
                Verb.ROLLBACK,
                release,
                changed=False,
                rollback=Release.from_record(_row(existing)),
            )
        nodes = await self.nodes(release.id)
        node_ids = [node.node_id for node in nodes]
        applied = {
            record["id"]: record["applied_version"]
            for record in await self._connection.fetch(
                "SELECT id, applied_version FROM nodes WHERE id = ANY($1::bigint[])", node_ids
            )
        }
        good = {
            record["v"]
            for record in await self._connection.fetch(
                "SELECT DISTINCT coalesce(config_version, version) AS v FROM release_tasks"
                " WHERE success_nodes > 0"
            )
        }
        plan = rollback_plan(release, nodes, applied, good, to_version)
        why = f"rolled back to config {plan.config_version}"
        if self._reason:
            why += f": {self._reason}"
        wait = False
        if not release.status.terminal and not release.cancelling:
            wait = await self.cancel(release, live, why, "rollback")
        version = await self._connection.fetchval(
            "SELECT coalesce(max(version), 0) + 1 FROM release_tasks"
        )
        labels = {node.node_id: node.labels for node in nodes}
        placed, topology = rollback_topology(
            strategy_of(release),
            validate_plan(list(release.plan or DEFAULT_PLAN)),
            [(node_id, labels[node_id]) for node_id in plan.node_ids],
        )
        reason = rollback_reason(release, plan.config_version, self._by, self._reason)
        created_id = await self._connection.fetchval(
            _INSERT_ROLLBACK,
            release.id,
            version,
            len(placed),
            reason,
            plan.config_version,
            json.dumps(NodeSelection(node_ids=plan.node_ids).to_json()),
            None if topology is None else json.dumps(topology.to_json()),
        )
        await self._connection.execute(
            _INSERT_RELEASE_NODES,
            created_id,
            [node_id for node_id, _ in placed],
            [batch for _, batch in placed],
        )
        await self._connection.execute(
            _ANNOUNCE_RELEASE,
            created_id,
            f"created: {reason}; {len(placed)} nodes in {placed[-1][1]} batches",
            NOTIFY_CHANNEL,
            self._by,
            self._actor.role.value,
        )
        held = []
        for other in await self._connection.fetch(
            _PENDING_ON_NODES, release.version, version, list(plan.node_ids)
        ):
            paused = await self.release(other["id"])
            await self.stamp(
                paused,
                Verb.PAUSE,
                "paused",
                False,
                reason=f"held for rollback release {created_id} (version {version})",
                held_for=created_id,
            )
            held.append(await self.release(other["id"]))
        if release.status.terminal:
            await self.stamp(
                release,
                Verb.ROLLBACK,
                release.status.value,
                False,
                detail=f"release {created_id} restores config {plan.config_version}",
            )
        return VerbResult(
            Verb.ROLLBACK,
            await self.release(release.id),
            changed=True,
            wait=wait,
            rollback=await self.release(created_id),
            held=tuple(held),
        )


class _Listener:
    """Asyncio-flavored: a dedicated connection LISTENing on the release channel."""

    def __init__(self, connection: Connection, queue: asyncio.Queue[bool]) -> None:
        self._connection = connection
        self._queue = queue

    @classmethod
    async def open(cls, url: str, connect_timeout: float, channel: str) -> _Listener:
        queue: asyncio.Queue[bool] = asyncio.Queue()
        connection: Connection = await asyncpg.connect(url, timeout=connect_timeout)

        def notified(*_: object) -> None:
            queue.put_nowait(True)

        def terminated(*_: object) -> None:
            queue.put_nowait(False)

        try:
            connection.add_termination_listener(terminated)
            await connection.add_listener(channel, notified)
        except BaseException:
            connection.terminate()
            raise
        return cls(connection, queue)

    async def wait(self, idle: float) -> bool:
        """True after a notification (a burst counts once); False after ``idle`` quiet
        seconds once the connection proved alive. Raises StoreUnavailable when it dropped."""
        try:
            alive = await asyncio.wait_for(self._queue.get(), idle)
        except TimeoutError:
            await self._connection.fetchval("SELECT 1", timeout=idle)
            return False
        while alive and not self._queue.empty():
            alive = self._queue.get_nowait()
        if not alive or self._connection.is_closed():
            raise StoreUnavailable("database unavailable: notification connection closed")
        return True

    async def close(self) -> None:
        if self._connection.is_closed():
            return
        try:
            await asyncio.wait_for(self._connection.close(), _CLOSE_TIMEOUT_SEC)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self._connection.terminate()


async def _open_pool(
    url: str,
    min_size: int,
    max_size: int,
    connect_timeout: float,
    apply_migrations: bool,
    server_settings: dict[str, str],
    command_timeout: float,
) -> Pool:
    """Asyncio-flavored: migrate the schema when asked, then connect the pool.

    Migrations run on a connection of their own, without the pool's command timeout: an
    index built over a large table may take longer than any operation of the store."""
    if apply_migrations:
        await _migrate_and_report(url, connect_timeout)
    pool: Pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=command_timeout,
        server_settings=server_settings,
    )
    return pool


def _driver_noise(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The asyncio loop's handler of errors no task awaited, which here come only from the
    driver: a lost connection leaves a "Future exception was never retrieved" behind, for
    instance, while the operation that used it has already failed as StoreUnavailable.

    trio-asyncio's own handler re-raises such errors into the loop's nursery, which would end
    the whole program for what is a failure already handled; they are logged instead."""
    error = context.get("exception")
    _log.warning(
        "store.driver_error",
        message=context.get("message", ""),
        error=None if error is None else f"{type(error).__name__}: {error}",
    )


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = 10.0,
    apply_migrations: bool = True,
    idle_in_transaction_timeout: float | None = None,
    operation_timeout: float = DEFAULT_OPERATION_TIMEOUT_SEC,
) -> AsyncIterator[PostgresStore]:
    """Trio-flavored: open a PostgresStore on ``url`` and close its pool on exit.

    Must run inside ``trio_asyncio.open_loop()``; the store keeps that loop and may be used
    from any task of the same Trio run while the block is open. Applies pending migrations
    unless ``apply_migrations`` is False. Raises StoreUnavailable when the database cannot be
    reached.

    With ``idle_in_transaction_timeout`` (seconds), the server ends any session of this store
    that sits that long inside a transaction: a process stopped mid-transaction (SIGSTOP, a
    frozen VM) then releases its row locks, and other daemons can take its releases over.

    ``operation_timeout`` (seconds) bounds every statement (the driver's command timeout),
    every wait for a pooled connection, and every store operation as a whole (a trio
    deadline): past it the operation raises StoreUnavailable.
    """
    server_settings = {}
    if idle_in_transaction_timeout is not None:
        milliseconds = max(1, round(idle_in_transaction_timeout * 1000))
        server_settings["idle_in_transaction_session_timeout"] = f"{milliseconds}ms"
    loop = trio_asyncio.current_loop.get()
    if loop is None:
        raise RuntimeError("open_postgres_store() must run inside trio_asyncio.open_loop()")
    loop.set_exception_handler(_driver_noise)
    pool: Pool = await trio_asyncio.aio_as_trio(_translated, loop=loop)(
        _open_pool,
        url,
        min_size,
        max_size,
        connect_timeout,
        apply_migrations,
        server_settings,
        operation_timeout,
    )
    try:
        yield PostgresStore(
            pool, loop, url, connect_timeout=connect_timeout, operation_timeout=operation_timeout
        )
    finally:
        with trio.move_on_after(_CLOSE_TIMEOUT_SEC, shield=True) as scope:
            await trio_asyncio.aio_as_trio(pool.close, loop=loop)()
        if scope.cancelled_caught:
            pool.terminate()


@asynccontextmanager
async def open_loop_and_store(url: str, **options: Any) -> AsyncIterator[PostgresStore]:
    """Trio-flavored: ``trio_asyncio.open_loop()`` and ``open_postgres_store(url)`` together,
    for programs and tests that do not open the asyncio loop themselves."""
    async with trio_asyncio.open_loop(), open_postgres_store(url, **options) as store:
        yield store


async def _migrate_and_report(url: str, connect_timeout: float) -> tuple[list[int], int]:
    connection: Connection = await asyncpg.connect(url, timeout=connect_timeout)
    try:
        applied = await migrations.migrate(connection)
        return applied, await migrations.schema_version(connection)
    finally:
        await connection.close()


async def migrate_and_report(url: str, *, connect_timeout: float = 10.0) -> tuple[list[int], int]:
    """Trio-flavored: apply pending migrations to the database at ``url``; return their
    versions and the schema version after them. Inside ``trio_asyncio.open_loop()``."""
    result: tuple[list[int], int] = await trio_asyncio.aio_as_trio(_translated)(
        _migrate_and_report, url, connect_timeout
    )
    return result


async def migrate_database(url: str, *, connect_timeout: float = 10.0) -> list[int]:
    """Trio-flavored: apply pending migrations to the database at ``url``; return their
    versions (empty when it was current). Must run inside ``trio_asyncio.open_loop()``."""
    applied, _ = await migrate_and_report(url, connect_timeout=connect_timeout)
    return applied
